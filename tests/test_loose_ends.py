"""Issue 19, part 5: loose ends found by trying the engine as a new user would. Each test failed
on the engine before the fix."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import engine
from engine.cli import main
from engine.data import beton
from engine.data.manifest import _VERIFIED
from engine.errors import EngineError
from engine.locks import output_lock
from test_report import make_store, monotone
from test_sweep import sweep_argv, tiny_pair  # noqa: F401 - tiny_pair is a fixture


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len([e for e in err if "error" in e]) == 1 and "Traceback" not in "".join(err), err
    return err[-1]


# A task with one class --------------------------------------------------------------------------

def test_single_class_folder_is_refused_before_anything_is_written(fake_root, tmp_path, capsys):
    folder = tmp_path / "only-cats"
    for i in range(4):
        (folder / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (28, 28), (10 * i, 0, 0)).save(folder / "cat" / f"{i}.png")
    out = tmp_path / "out"
    rc = main(["build-data", "--pair", f"mnist:folder:{folder}", "--beta", "0.5",
               "--data-root", str(fake_root), "--out", str(out)])
    line = one_line(capsys)
    assert rc == 2 and "1 class (cat)" in line and "at least two" in line, line
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


# inspect verifies ---------------------------------------------------------------------------------

def test_inspect_verifies_the_dataset(tiny_pair, tmp_path, capsys):
    data = engine.build_data(tiny_pair, 0.5, n_train=200, n_test=100, out=tmp_path / "d")
    assert main(["inspect", str(data)]) == 0
    assert "verified     train.beton, test.beton" in capsys.readouterr().out
    f = beton.BetonFile(data / "train.beton")
    offset = int(f.metadata["image"][100]) + 10
    del f
    with open(data / "train.beton", "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))
    _VERIFIED.clear()
    assert main(["inspect", str(data)]) == 2
    assert "train.beton is corrupt" in one_line(capsys)


# A nearly full disk -------------------------------------------------------------------------------

def test_up_front_refusal_states_the_reserve(monkeypatch, tmp_path):
    from engine.data import resources
    monkeypatch.setattr(resources, "free_bytes", lambda where: 40 << 20)
    with pytest.raises(EngineError) as caught:
        resources.require(resources.Estimate(disk=32 << 20), tmp_path, "build-data")
    message = str(caught.value)
    assert "~32.0 MiB" in message and "16.0 MiB free as a reserve" in message
    assert "~48.0 MiB in all" in message and "only 40.0 MiB is free" in message


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_writing_names_the_file_and_its_filesystem(tmp_path, monkeypatch, capsys):
    from engine import atomic
    from matplotlib.figure import Figure
    out = make_store(tmp_path / "sweep", monotone, modes=("finetune", "scratch"))
    asked = []
    monkeypatch.setattr(atomic, "free_bytes", lambda p: asked.append(Path(p)) or 5 << 20)
    csv = tmp_path / "export" / "all.csv"
    monkeypatch.setattr(pd.DataFrame, "to_csv", _enospc)
    assert main(["results", str(out), "--csv", str(csv)]) == 2
    line = one_line(capsys)
    assert f"cannot write {csv}: the disk is full (5.0 MiB free)" in line, line
    assert asked == [csv]  # the free space of the CSV's filesystem, not the working directory's
    monkeypatch.setattr(Figure, "savefig", _enospc)
    assert main(["report", str(out)]) == 2
    line = one_line(capsys)
    assert f"cannot write {out / 'report'}/" in line and ".png: the disk is full" in line, line
    from engine.analysis import figures  # `engine analyze` draws through the same helper
    rows = pd.DataFrame({"beta": [0.0], "weighted_source_loss": [1.0], "conditional_entropy": [1.0],
                         "tau_wasserstein": [1.0], "bound": [3.0], "target_loss": [1.0],
                         "bob_test_loss": [1.0]})
    with pytest.raises(OSError) as caught:
        figures.bound(rows, tmp_path / "analysis" / "bound.png")
    assert caught.value.filename == str(tmp_path / "analysis" / "bound.png")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_holder_file_leaves_no_temporary_on_a_full_disk(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    out.mkdir()
    stale = out / f"..lock.json.tmp-{_dead_pid()}"  # left by an older engine refused on a full disk
    stale.write_bytes(b"")
    real = Path.write_text

    def full(self, *args, **kwargs):
        if ".lock.json.tmp-" in self.name:
            real(self, "")  # the file is created, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with output_lock(out, log=None):
        pass
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


# Refused before any work, --dry-run included --------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("flags, needle", [
    (["--n-bob", "513"], "--n-bob 513 exceeds the 512 training samples"),
    (["--alice-epochs", "0"], "--alice-epochs"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:PORT"], "no Ray cluster answers at"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_values_are_refused_before_any_work(tiny_pair, tmp_path, capsys, flags, needle, dry_run):
    if "ray" in flags:
        pytest.importorskip("ray")
        flags = [f.replace("PORT", str(_closed_port())) for f in flags]
    out = tmp_path / "sweep"
    argv = sweep_argv(tiny_pair, out, *flags, *(["--dry-run"] if dry_run else []))
    assert main(argv) == 2
    assert needle in one_line(capsys)
    assert not (out / "datasets").exists()


@pytest.mark.parametrize("flags, notice", [
    (["--executor", "batched", "--cpus-per-unit", "2"],
     "notice: --cpus-per-unit is ignored by --executor batched (it applies to --executor ray)"),
    (["--executor", "serial", "--max-group", "4"],
     "notice: --max-group is ignored by --executor serial (it applies to --executor batched and ray)"),
    (["--executor", "batched", "--max-retries", "5", "--gpus-per-unit", "0.5"],
     "notice: --gpus-per-unit is ignored by --executor batched"),
])
def test_options_the_executor_ignores_get_a_notice(tiny_pair, tmp_path, capsys, flags, notice):
    assert main(sweep_argv(tiny_pair, tmp_path / "o", *flags, "--dry-run")) == 0
    assert notice in capsys.readouterr().err


def test_a_changed_sweep_json_is_replaced_with_a_notice(tiny_pair, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = sweep_argv(tiny_pair, out, "--layers", "3", "--modes", "finetune", "--baselines", "none")
    assert main(argv) == 0
    spec = json.loads((out / "sweep.json").read_text())
    (out / "sweep.json").write_text(json.dumps({**spec, "betas": [0.5], "max_group": 3}))
    capsys.readouterr()
    assert main(argv) == 0  # the command line wins, and says what it replaced
    err = capsys.readouterr().err
    assert f"notice: {out / 'sweep.json'} held another spec (betas, max_group differ)" in err
    assert f"engine sweep --from {out}" in err
    assert json.loads((out / "sweep.json").read_text()) == spec
    assert main(argv) == 0 and "held another spec" not in capsys.readouterr().err
