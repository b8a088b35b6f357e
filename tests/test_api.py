"""The Python API (engine.api, README "From Python"): importable without side effects, the CLI's
checks and messages as one exception type, and the example script run end to end."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import engine
from engine.cli import main
from test_sweep import sweep_argv, tiny_pair  # noqa: F401 - tiny_pair is a fixture

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(arch="mlp", depth=2, width=16, epochs=1, alice_epochs=1, n_train=512, n_test=256,
            device="cpu")


def test_import_has_no_side_effects(tmp_path):
    code = ("import sys, engine\n"
            "heavy = {'torch', 'pandas', 'numpy', 'matplotlib', 'pyarrow', 'numba', 'filelock'}\n"
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
            "print(callable(engine.sweep), engine.EngineError.__module__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "ENGINE_CACHE_DIR": str(tmp_path / "c")})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.splitlines() == ["[]", "True engine.errors"]
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a cache directory


@pytest.mark.parametrize("options, flags", [
    (dict(betas=[0, 1.5]), ["--betas", "0,1.5"]),
    (dict(betas=[0], epochs=0), ["--betas", "0", "--epochs", "0"]),
    (dict(betas=[0], arch="vgg"), ["--betas", "0", "--arch", "vgg"]),
    (dict(betas=[0], optimizer="sgdd"), ["--betas", "0", "--optimizer", "sgdd"]),
    (dict(betas=[0], n_bob=[0]), ["--betas", "0", "--n-bob", "0"]),
    (dict(betas=[0], executor="serial", max_group=0), ["--betas", "0", "--executor", "serial",
                                                       "--max-group", "0"]),
])
def test_errors_are_engine_errors_with_the_cli_message(tmp_path, capsys, options, flags):
    out = tmp_path / "o"
    argv = ["sweep", "--pair", "mnist:svhn", *flags, "--out", str(out), "--dry-run"]
    assert main(argv) == 2
    cli = capsys.readouterr().err.strip()
    with pytest.raises(engine.EngineError) as caught:
        engine.sweep(pair="mnist:svhn", out=out, dry_run=True, **options)
    assert cli == f"engine sweep: error: {caught.value}"


def test_unknown_options_and_environment_errors(tmp_path, monkeypatch):
    with pytest.raises(engine.EngineError, match="unknown option 'n_trian' of engine sweep "
                                                 r"\(did you mean 'n-train'\?\)"):
        engine.sweep(pair="mnist:svhn", betas=[0], n_trian=5, dry_run=True)
    with pytest.raises(engine.EngineError, match="no results in"):
        engine.results(tmp_path)
    with pytest.raises(engine.EngineError, match="unknown analysis 'ckaa'"):
        engine.analyze("ckaa", tmp_path)
    with pytest.raises(engine.EngineError, match="is not a directory"):
        engine.status(tmp_path / "missing")
    from test_report import make_store, monotone
    from matplotlib.figure import Figure
    out = make_store(tmp_path / "s", monotone, modes=("finetune", "scratch"))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)  # an OSError becomes the CLI's one line
    with pytest.raises(engine.EngineError, match=f"cannot write {out / 'report'}/.*disk is full"):
        engine.report(out)


def test_sweep_results_report_status_and_pretrain(tiny_pair, tmp_path):
    import engine.sweep.driver  # noqa: F401 - binds the package as engine.sweep: still callable
    out = tmp_path / "sweep"
    dry = engine.sweep(pair=tiny_pair, betas=[0, 1], out=out, dry_run=True, **TINY)
    assert (dry.total, dry.ran, dry.dry_run) == (18, 0, True) and not out.exists()
    res = engine.sweep(tiny_pair, [0, 1], layers=[3], modes="finetune", baselines="none",
                       executor="serial", out=out, **TINY)
    assert (res.out, res.total, res.done_before, res.ran) == (out, 2, 0, 2)
    df = res.table()
    assert isinstance(df, pd.DataFrame) and len(df) == 2 and set(df["beta"]) == {0.0, 1.0}
    assert df.equals(engine.results(out))
    s = res.status()
    assert (s["runs_done"], s["running"], s["state"]) == (2, False, "finished")
    assert engine.report(out)[-1] == out / "report" / "report.html"
    # The CLI and the API make the same spec: same run IDs, nothing to do.
    assert main(sweep_argv(tiny_pair, out, "--layers", "3", "--modes", "finetune",
                           "--baselines", "none", "--executor", "serial")) == 0
    assert len(engine.results(out)) == 2
    again = engine.sweep(from_dir=out, seeds=[0, 1])  # --from, extended by a value given here
    assert (again.total, again.done_before, again.ran) == (4, 2, 2)
    data = sorted(d for d in (out / "datasets").iterdir() if d.is_dir())[0]
    weights = engine.pretrain(data, arch="mlp", depth=2, width=16, epochs=1, out=tmp_path / "a",
                              device="cpu")
    assert weights.name == "model.safetensors" and weights.is_file()
    with pytest.raises(engine.EngineError, match="save-epochs"):
        engine.pretrain(data, arch="mlp", epochs=1, save_epochs=[3], out=tmp_path / "a")


def test_the_example_script_runs_end_to_end(tiny_pair, tmp_path):
    out = tmp_path / "example"
    env = {**os.environ, "EXAMPLE_PAIR": tiny_pair, "EXAMPLE_OUT": str(out),
           "EXAMPLE_N_TRAIN": "512", "EXAMPLE_N_TEST": "256", "PYTHONUNBUFFERED": "1"}
    script = ROOT / "examples" / "transfer_notebook.py"
    assert "# %%" in script.read_text()
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert any(line.startswith("refused: --betas: 2 is outside [0, 1]") for line in lines)
    assert "finished" in lines and lines[-1] == str(out / "acc_vs_beta.png")
    png = (out / "acc_vs_beta.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    df = engine.results(out)
    assert set(df["beta"]) == {0.0, 0.5, 1.0} and len(df) == 3 * 9
    assert json.loads((out / "sweep.json").read_text())["archs"] == ["mlp"]


def test_readme_from_python_lists_every_function_with_its_docstring():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python"):]
    section = section[:section.index("\n## ", 1)]
    for name in engine.__all__:
        obj = getattr(engine, name)
        if callable(obj) and not isinstance(obj, type):
            assert f"`engine.{name}(" in section, name
            assert (obj.__doc__ or "").strip(), name  # the reference the section summarises


def test_api_functions_stay_callable_after_their_modules_load(tmp_path):
    """`engine.status` once became its module `engine.status` after its first call (importing a
    submodule binds it on the package): no API name may be a module of the package."""
    import pkgutil
    submodules = {m.name for m in pkgutil.iter_modules(engine.__path__)}
    assert not (set(engine.__all__) - {"sweep"}) & submodules  # sweep: a callable package
    for _ in range(2):
        with pytest.raises(engine.EngineError, match="is not a directory"):
            engine.status(tmp_path / "missing")
