"""Fault drills (issue 12): kills at random moments, two writers at once, corrupted artefacts, a full
disk and absurd sizes. Each drill runs the real CLI in subprocesses where a kill or a second
process is part of the drill, and checks the outcome: the reference bytes and metrics, nothing
recorded twice, no stray files, and one line (no traceback) for every failure."""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import paths
from engine.atomic import TEMP_PATTERN
from engine.cli import main
from engine.data import beton
from engine.data.digest import file_digest
from engine.data.manifest import _VERIFIED, verify_dataset
from engine.errors import EngineError
from engine.locks import is_lock_file, output_lock
from engine.store import ResultsStore

RNG = random.Random(12)  # the "random moments", reproducible


# Helpers ------------------------------------------------------------------------------------------

def _npz(path: Path, seed: int, n_train=400, n_test=100) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(n) % 10
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("fault_sources")
    return f"npz:{_npz(d / 'a.npz', 0)}:npz:{_npz(d / 'b.npz', 1)}"


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "engine", *map(str, args)]


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy())


def killed_at(delay: float, *args) -> int:
    """Start the CLI, SIGKILL it after `delay` seconds (if still running); its return code."""
    p = subprocess.Popen(_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=os.environ.copy())
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
    return p.wait()


def stray(root: Path) -> list[Path]:
    """Temporary or half-written files under `root` (lock files are expected and ignored)."""
    return [p for p in Path(root).rglob("*")
            if TEMP_PATTERN.match(p.name) or ".damaged-" in p.name]


def one_line_error(result, *needles, status=2):
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert lines and all(n in lines[-1] for n in needles), result.stderr
    assert len([line for line in lines if "error" in line]) == 1, result.stderr
    return lines[-1]


def _digests(dataset: Path) -> dict[str, str]:
    return {s: file_digest(dataset / f"{s}.beton") for s in ("train", "test")}


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))
    _VERIFIED.clear()


BUILD = ["--beta", "0.5", "--n-train", "120000", "--n-test", "2000"]


@pytest.fixture(scope="module")
def reference(pair, tmp_path_factory):
    """A reference build (its digests) and how long the CLI takes for it."""
    out = tmp_path_factory.mktemp("reference")
    t0 = time.monotonic()
    r = cli("build-data", "--pair", pair, *BUILD, "--out", out)
    assert r.returncode == 0, r.stderr
    d = Path(r.stdout.strip().splitlines()[-1])
    return _digests(d), time.monotonic() - t0, d.name


# Kills --------------------------------------------------------------------------------------------

def test_build_data_killed_at_random_moments_then_rerun(pair, reference, tmp_path):
    digests, seconds, key = reference
    out = tmp_path / "o"
    for _ in range(3):
        killed_at(RNG.uniform(0.3, seconds), "build-data", "--pair", pair, *BUILD, "--out", out)
    r = cli("build-data", "--pair", pair, *BUILD, "--out", out)
    assert r.returncode == 0, r.stderr
    d = out / key
    assert Path(r.stdout.strip()) == d and _digests(d) == digests
    assert stray(out) == []
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "test.beton", "train.beton"]


def test_force_rebuild_killed_leaves_no_temporary_behind(pair, reference, tmp_path):
    digests, seconds, key = reference
    out = tmp_path / "o"
    assert cli("build-data", "--pair", pair, *BUILD, "--out", out).returncode == 0
    for _ in range(2):
        killed_at(RNG.uniform(0.5, seconds), "build-data", "--pair", pair, *BUILD, "--out", out,
                  "--force")
    r = cli("build-data", "--pair", pair, *BUILD, "--out", out)  # reuses, and tidies up
    assert r.returncode == 0 and "reusing" in r.stderr, r.stderr
    assert _digests(out / key) == digests and stray(out) == []


def test_pretrain_killed_then_rerun_gives_the_reference_network(pair, tmp_path):
    from engine.train.checkpoint import load_checkpoint
    r = cli("build-data", "--pair", pair, "--beta", "1", "--n-train", "2000", "--n-test", "300",
            "--out", tmp_path / "data")
    data = r.stdout.strip()
    args = ["pretrain", "--data", data, "--arch", "mlp", "--depth", "2", "--width", "32",
            "--epochs", "3", "--save-epochs", "1", "--device", "cpu"]
    t0 = time.monotonic()
    ref = cli(*args, "--out", tmp_path / "ref")
    seconds = time.monotonic() - t0
    assert ref.returncode == 0, ref.stderr
    killed_at(RNG.uniform(0.5 * seconds, seconds), *args, "--out", tmp_path / "o")
    again = cli(*args, "--out", tmp_path / "o")
    assert again.returncode == 0, again.stderr
    a, _, ma = load_checkpoint(ref.stdout.strip())
    b, _, mb = load_checkpoint(again.stdout.strip())
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert ma["test_acc"] == mb["test_acc"]
    assert stray(tmp_path / "o") == []


SWEEP = ["--betas", "0", "--arch", "mlp", "--layers", "4,5", "--seeds", "0", "--epochs", "1",
         "--alice-epochs", "1", "--n-train", "600", "--n-test", "200", "--modes", "finetune",
         "--baselines", "none", "--device", "cpu"]


def _runs(out: Path) -> list[dict]:
    log = out / "results" / "_runs.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _metrics(out: Path) -> dict:
    df = ResultsStore(out, read_only=True, log=None).table()
    return {r.run_id: (r.test_acc, r.test_loss) for r in df.itertuples()}


@pytest.fixture(scope="module")
def sweep_reference(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_ref")
    t0 = time.monotonic()
    r = cli("sweep", "--pair", pair, *SWEEP, "--out", out)
    if r.returncode != 0:
        pytest.fail(f"reference sweep failed: {r.stderr[-500:]}")
    return _metrics(out), time.monotonic() - t0


def test_sweep_killed_at_random_moments_then_resumed(pair, sweep_reference, tmp_path):
    metrics, seconds = sweep_reference
    out = tmp_path / "s"
    for _ in range(3):
        killed_at(RNG.uniform(1.0, seconds), "sweep", "--pair", pair, *SWEEP, "--out", out)
    r = cli("sweep", "--pair", pair, *SWEEP, "--out", out)
    assert r.returncode == 0, r.stderr
    ids = [row["run_id"] for row in _runs(out)]
    assert len(ids) == len(set(ids)) == len(metrics)  # nothing recorded twice
    assert _metrics(out) == metrics
    assert stray(out) == []


@pytest.mark.parametrize("second", [["--layers", "4,5"], ["--layers", "5,3"]],
                         ids=["identical", "overlapping"])
def test_two_sweeps_on_one_directory_record_every_run_once(pair, sweep_reference, tmp_path,
                                                           second):
    out = tmp_path / "s"
    out.mkdir()
    other = [*SWEEP]
    other[other.index("--layers") + 1] = second[1]
    logs = [tmp_path / "first.err", tmp_path / "second.err"]
    # The test holds the directory's lock until both sweeps have said that they wait for it, so
    # that they really run at the same time (started 0.2 s apart, a fast first sweep could finish
    # before the second had imported torch), then lets them race for it.
    with output_lock(out, log=None):
        procs = []
        for args, log in zip((SWEEP, other), logs):
            with open(log, "w") as err:
                procs.append(subprocess.Popen(_cmd("sweep", "--pair", pair, *args, "--out", out),
                                              stdout=subprocess.DEVNULL, stderr=err))
        deadline = time.monotonic() + 240
        while not all(f"locked by pid {os.getpid()} " in log.read_text() for log in logs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                [log.read_text()[-500:] for log in logs]
            time.sleep(0.1)
    for proc in procs:
        proc.wait(timeout=300)
    errs = [log.read_text() for log in logs]
    assert all(proc.returncode == 0 for proc in procs), errs
    ids = [row["run_id"] for row in _runs(out)]
    assert len(ids) == len(set(ids))
    metrics, _ = sweep_reference
    got = _metrics(out)
    assert all(got[k] == v for k, v in metrics.items() if k in got)


def test_two_build_data_at_once_one_builds_the_other_reuses(pair, reference, tmp_path):
    digests, _, key = reference
    out = tmp_path / "o"
    procs = [subprocess.Popen(_cmd("build-data", "--pair", pair, *BUILD, "--out", out),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert sum("written" in err for _, err in results) == 1  # exactly one of them built
    assert any("reusing" in err or "waiting" in err for _, err in results)
    assert _digests(out / key) == digests and stray(out) == []


# Corruption ---------------------------------------------------------------------------------------

@pytest.fixture
def small(pair, tmp_path):
    return engine.build_data(pair, 0.5, n_train=3000, n_test=500, out=tmp_path / "d")


@pytest.mark.parametrize("area", ["image", "label"])
def test_flipped_beton_byte_is_detected_before_use(small, pair, tmp_path, area):
    f = beton.BetonFile(small / "train.beton")
    if area == "image":
        offset = int(f.metadata["image"][1500]) + 700
    else:  # alice_label of sample 10, in the metadata table
        base = f.metadata.ctypes.data - f._data.ctypes.data
        offset = base + 10 * f.metadata.dtype.itemsize + f.metadata.dtype.fields["alice_label"][1]
    del f
    _flip(small / "train.beton", offset)
    with pytest.raises(EngineError, match="train.beton is corrupt.*--force"):
        verify_dataset(small)
    r = cli("pretrain", "--data", small, "--arch", "mlp", "--epochs", "1", "--out", tmp_path / "a")
    one_line_error(r, "train.beton is corrupt", "--force")
    assert not (tmp_path / "a" / "alice").exists() or not list((tmp_path / "a").rglob("*.safetensors"))
    # build-data can rebuild it on its own: a notice, then the original bytes again
    r = cli("build-data", "--pair", pair, "--beta", "0.5", "--n-train", "3000", "--n-test", "500",
            "--out", tmp_path / "d")
    assert r.returncode == 0 and "notice:" in r.stderr and "rebuilding" in r.stderr, r.stderr
    verify_dataset(small)


def test_label_outside_the_manifest_classes_is_refused(small):
    manifest = json.loads((small / "manifest.json").read_text())
    manifest["sources"]["left"]["classes"] = manifest["sources"]["left"]["classes"][:3]
    (small / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="alice_label .* outside the manifest's 3 classes"):
        verify_dataset(small)


def test_manifest_with_nan_or_missing_keys_is_one_line(small, capsys):
    text = (small / "manifest.json").read_text()
    (small / "manifest.json").write_text(text.replace('"build_seconds": ', '"build_seconds": NaN, "x": ', 1))
    assert main(["inspect", str(small)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (small / "manifest.json").write_text(json.dumps({"key": "k", "spec": {}, "splits": {}}))
    assert main(["inspect", str(small)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "malformed" in err


def test_manifests_are_strict_json(small):
    json.loads((small / "manifest.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"{c} in manifest"))


def test_flipped_checkpoint_byte_is_detected_and_alice_retrained(small, tmp_path):
    from engine.train.checkpoint import load_checkpoint
    args = ["pretrain", "--data", small, "--arch", "mlp", "--depth", "2", "--width", "16",
            "--epochs", "1", "--device", "cpu", "--out", tmp_path / "a"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    ckpt = Path(r.stdout.strip())
    good = {k: v.clone() for k, v in load_checkpoint(ckpt)[0].items()}  # not the file's pages
    _flip(ckpt, ckpt.stat().st_size - 100)  # inside the last tensor's bytes
    with pytest.raises(EngineError, match="checkpoint .* is corrupt"):
        load_checkpoint(ckpt)
    r = cli(*args)
    assert r.returncode == 0 and "notice:" in r.stderr and "retraining" in r.stderr, r.stderr
    again, _, _ = load_checkpoint(ckpt)
    assert all((good[k] == again[k]).all() for k in good)


def _row(i: int) -> dict:
    from engine.store import COLUMNS
    row = {}
    for name, dtype in COLUMNS.items():
        row[name] = (f"{name}-{i}" if str(dtype) == "string" else i if str(dtype) == "int64"
                     else i / 10)
    row["finished_at"] = "2026-01-01T00:00:00+00:00"
    return row


def test_flipped_parquet_part_is_rebuilt_from_the_run_log(tmp_path, capsys):
    out = tmp_path / "sweep"
    with ResultsStore(out, log=None) as store:
        for i in range(20):
            store.record(_row(i))
    part = next((out / "results").glob("part-*.parquet"))
    _flip(part, part.stat().st_size // 3)
    reader = ResultsStore(out, read_only=True, log=lambda m: print(m))
    assert len(reader.table()) == 20  # read-only: the log fills in
    assert main(["results", str(out)]) in (0, 2)  # whatever the table says, no traceback
    assert "Traceback" not in capsys.readouterr().err
    lines = []
    with ResultsStore(out, log=lines.append) as store:
        assert len(store.completed_ids()) == 20
    assert len(lines) == 1 and part.name in lines[0] and "_runs.jsonl" in lines[0]
    assert len(ResultsStore(out, read_only=True, log=None).table()) == 20
    assert not part.exists()  # set aside (hidden) and rebuilt as a new part


# Full disk ----------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs when running as root (and allowed to mount); otherwise skip."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("not root: the injected-ENOSPC drills cover this")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_full_disk_build_is_one_line_and_leaves_nothing(pair, small_disk, monkeypatch):
    from engine.data import resources
    monkeypatch.setattr(resources, "DISK_RESERVE", -(1 << 40))  # get past the up-front check
    r = cli("build-data", "--pair", pair, "--beta", "0.5", "--n-train", "5000", "--n-test", "500",
            "--out", small_disk)  # up-front check in the subprocess: refused before writing
    one_line_error(r, "would write", "free")
    with pytest.raises(EngineError, match="disk is full"):
        engine.build_data(pair, 0.5, n_train=5000, n_test=500, out=small_disk)
    assert [p for p in small_disk.rglob("*") if p.is_file() and not is_lock_file(p)] == []


def test_injected_enospc_everywhere_is_one_line(pair, tmp_path, monkeypatch, capsys):
    """Where no tmpfs can be mounted: ENOSPC injected into the writers."""
    from engine.data import beton as beton_mod
    real = os.pwrite
    calls = {"n": 0}

    def full(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(beton_mod.os, "pwrite", full)
    with pytest.raises(EngineError, match="disk is full"):
        engine.build_data(pair, 0.5, n_train=20000, n_test=500, out=tmp_path / "d")
    assert [p for p in (tmp_path / "d").rglob("*") if p.is_file() and not is_lock_file(p)] == []
    monkeypatch.undo()
    # the results store: the run log append and a Parquet part
    out = tmp_path / "sweep"
    store = ResultsStore(out, log=None)
    import builtins
    real_open = builtins.open

    def full_open(file, mode="r", *a, **k):
        if "a" in mode or "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full_open)
    with pytest.raises(EngineError, match="disk is full"):
        store.record(_row(1))
    monkeypatch.undo()
    store.record(_row(1))
    store.close()
    # `results --csv` onto a full disk: one line from the CLI
    monkeypatch.setattr(builtins, "open", full_open)
    assert main(["results", str(out), "--csv", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk is full" in err[0]
    monkeypatch.undo()
    assert not list(tmp_path.glob("*.csv")) and stray(tmp_path) == []


# Absurd sizes, wrong paths, locks -------------------------------------------------------------------

@pytest.mark.parametrize("flags,needle", [
    (["--n-train", "1000000000000"], "would write"),
    (["--n-train", "0"], "positive integer"),
    (["--n-test", "-5"], "positive integer"),
])
def test_absurd_sizes_are_refused_up_front(pair, tmp_path, flags, needle):
    r = cli("build-data", "--pair", pair, "--beta", "0.5", *flags, "--out", tmp_path / "o")
    one_line_error(r, needle)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*"))


def test_file_where_a_directory_is_expected(pair, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    one_line_error(cli("build-data", "--pair", pair, "--beta", "0.5", "--out", blocker), "file")
    one_line_error(cli("inspect", blocker), "file")
    one_line_error(cli("results", blocker), "")


def test_read_only_output_is_one_line(pair, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True)
    try:
        r = cli("build-data", "--pair", pair, "--beta", "0.5", "--n-train", "100", "--n-test",
                "50", "--out", ro / "x")
        if r.returncode == 0:
            pytest.skip("cannot make a read-only directory here")
        one_line_error(r, "")
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_closed_pipe_is_quiet(pair, tmp_path):
    p = subprocess.Popen(_cmd("inspect", "--help"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    _, err = p.communicate(timeout=60)
    assert b"Traceback" not in err


def test_output_lock_names_the_holder_and_survives_a_killed_holder(tmp_path):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from engine.locks import output_lock\n"
                               f"with output_lock({str(out)!r}, log=None):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(EngineError, match=f"in use by pid {holder.pid} on .* since"):
        with output_lock(out, wait=False):
            pass
    lines = []
    with pytest.raises(EngineError, match="still locked"):
        with output_lock(out, log=lines.append, timeout=1.0):
            pass
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0]
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with output_lock(out, wait=False):  # the kernel released the killed holder's lock
        info = json.loads((out / ".lock.json").read_text())
        assert info["pid"] == os.getpid()
