"""`engine status DIR [--json]`: read while a sweep runs (started here in a subprocess), after it
was killed, and after it finished; it never takes the sweep's lock."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from engine.cli import main
from engine.locks import output_holder
from test_sweep import sweep_argv, tiny_pair  # noqa: F401 - tiny_pair is a fixture


def status(out) -> dict:
    r = subprocess.run([sys.executable, "-m", "engine", "status", str(out), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_for(out, proc, ok, timeout=240) -> dict:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (out / "sweep.json").exists():
            s = status(out)
            if ok(s):
                return s
        assert proc.poll() is None, "the sweep ended before the status was seen"
        time.sleep(0.3)
    pytest.fail("the sweep's status did not get there in time")


def test_status_of_a_running_a_killed_and_a_finished_sweep(tiny_pair, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = sweep_argv(tiny_pair, out, "--seeds", "0,1", "--epochs", "200", "--executor", "serial")
    proc = subprocess.Popen([sys.executable, "-m", "engine", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # A rate needs a trained run's row in the store: its copies may be read first.
        first = wait_for(out, proc, lambda s: s["running"] and s["runs_done"] > 0
                         and (s["runs_per_min"] or 0) > 0)
        second = wait_for(out, proc, lambda s: s["runs_done"] > first["runs_done"])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for s in (first, second):
        assert s["running"] and s["state"] == "running" and s["holder"]["pid"] == proc.pid
        assert s["runs_total"] == 36 and s["alices_total"] == 4 and s["datasets_built"] == 2
        assert s["runs_to_train"] < 28 and s["runs_per_min"] > 0 and s["eta_s"] > 0
        assert s["spec"].startswith("sweep npz:") and "betas 0,1" in s["spec"]
    assert second["runs_to_train"] < first["runs_to_train"]

    killed = status(out)
    assert not killed["running"] and killed["state"] == "stopped" and killed["eta_s"] is None
    assert "killed" in killed["last_error"] and killed["runs_done"] >= second["runs_done"]
    assert output_holder(out) is None

    assert main(argv) == 0  # resumes
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "runs: 36 of 36 done, 0 to train" in text and "not running (finished at" in text
    done = status(out)
    assert (done["running"], done["state"], done["runs_done"], done["eta_s"]) == \
        (False, "finished", 36, 0.0)
    assert done["alices_done"] == 4 and done["last_error"] is None


def test_status_reports_the_last_error_and_bad_directories(tiny_pair, tmp_path, capsys,
                                                           monkeypatch):
    out = tmp_path / "sweep"
    argv = sweep_argv(tiny_pair, out, "--layers", "3", "--modes", "finetune", "--baselines", "none")
    assert main(argv) == 0
    from engine.sweep import executors

    def broken(*args, **kwargs):
        raise RuntimeError("the trainer broke")

    monkeypatch.setattr(executors.EXECUTORS["batched"], "map", broken)
    argv[argv.index("--betas") + 1] = "0,0.5"  # beta 0 is stored, beta 0.5 fails
    assert main(argv) == 1
    capsys.readouterr()
    assert main(["status", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["state"] == "failed" and s["last_error"] == "the trainer broke" and not s["running"]
    assert s["runs_total"] == 2 and s["runs_done"] == 1 and s["runs_to_train"] == 1
    (out / "run-state.json").unlink()  # a sweep from before state files: counted from its spec
    assert main(["status", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["state"], s["runs_total"], s["runs_done"]) == ("unknown", 2, 2)  # rows stored
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err
