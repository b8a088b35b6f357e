"""`engine reproduce` end to end at --scale smoke on the real MNIST-family data: every claim
trained, judged and reported; the report opens in a real browser; a second run trains nothing;
a killed run resumes; bad input is one line and exit 2."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine
from engine import paths
from engine.cli import main
from engine.store import ResultsStore
from engine.studies.claims import registry
from engine.studies.claims.runner import run_ids
from engine.studies.claims.scales import scale
from engine.studies.claims.stats import VERDICTS
from browser import assert_not_blank, render

KEYS = ("id", "paper", "effect", "ci_low", "ci_high", "seeds", "verdict", "seeds_needed", "figure")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    code = main(["reproduce", "--scale", "smoke", "--out", str(out)])
    assert code == 0
    return out


def test_every_claim_gets_a_verdict_with_its_interval_and_seeds(smoke, capsys):
    records = json.loads(paths.verdicts_file(smoke).read_text())
    assert [r["id"] for r in records] == list(registry())
    for r in records:
        assert set(KEYS) <= set(r)
        assert r["verdict"] in VERDICTS
        assert 0 <= r["seeds"] <= scale("smoke").seeds
        if r["seeds"] >= 2 and r["effect"] is not None:
            assert r["ci_low"] <= r["effect"] <= r["ci_high"]
        if r["figure"] is not None:
            assert (smoke / r["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (smoke / "report.md").read_text()
    assert "| claim | paper | effect [95% interval] | seeds | verdict | seeds needed |" in report


def test_the_claims_share_one_store_whose_rows_are_the_sweeps_runs(smoke):
    from engine.studies.claims.runner import needs
    from engine.sweep.plan import expand
    sweeps, _ = needs(registry().values(), scale("smoke"))
    stored = set(ResultsStore(paths.claims_runs(smoke), read_only=True).table()["run_id"])
    wanted = set().union(*(run_ids(s) for s in sweeps.values()))
    assert stored <= wanted and len(stored) == len({*stored})
    for s in sweeps.values():  # every run of every sweep stored once, in one precision
        assert len(run_ids(s) & stored) == len(expand(s))


def test_the_report_page_renders_with_every_figure(smoke, tmp_path):
    page = smoke / "report.html"
    shown = render(page, tmp_path)
    figures = [r for r in json.loads(paths.verdicts_file(smoke).read_text()) if r["figure"]]
    assert shown.images == len(figures) > 0
    assert shown.loaded == shown.images
    assert_not_blank(shown.screenshot)


def test_a_second_run_trains_nothing_and_reuses_the_evidence(smoke, capfd):
    assert main(["reproduce", "mb-above-chance", "mb-monotone-beta", "--scale", "smoke",
                 "--out", str(smoke)]) == 0
    err = capfd.readouterr().err
    assert "0 to run" in err and "evaluating" not in err


def test_report_only_judges_a_subset_from_what_is_stored(smoke, capfd):
    assert main(["reproduce", "mb-above-chance", "--scale", "smoke", "--out", str(smoke),
                 "--report-only"]) == 0
    records = json.loads(paths.verdicts_file(smoke).read_text())
    assert [r["id"] for r in records] == ["mb-above-chance"]
    assert "to run" not in capfd.readouterr().err


def test_the_python_api_is_the_same_call(smoke):
    page = engine.reproduce("mb-above-chance", scale="smoke", out=smoke, report_only=True)
    assert page == smoke / "report.html" and page.is_file()
    assert "mb-toy-rotation" in engine.reproduce(list=True, scale="smoke")


def test_list_names_every_claim_with_its_runs_and_time(capsys):
    assert main(["reproduce", "--list", "--scale", "small"]) == 0
    out = capsys.readouterr().out
    for claim in registry():
        assert claim in out
    assert "min" in out.splitlines()[-1] and "runs" in out.splitlines()[-1]


@pytest.mark.parametrize("argv,message", [
    (["nope-claim"], "unknown claim 'nope-claim'"),
    (["--seeds", "0"], "--seeds"),
    (["--scale", "huge"], "--scale"),
    (["--report-only"], "holds no results yet"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capfd, argv, message):
    assert main(["reproduce", *argv, "--out", str(tmp_path / "empty")]) == 2
    err = capfd.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_killed_run_resumes_and_loses_nothing(tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "engine", "reproduce", "mb-above-chance", "--scale", "smoke",
            "--seeds", "3", "--out", str(out), "--executor", "serial"]
    log = paths.claims_runs(out) / "results" / "_runs.jsonl"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be killed; give it more work")
    proc.kill()
    proc.wait()
    before = {json.loads(line)["run_id"] for line in log.read_text().splitlines() if line.strip()}
    assert before
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(before)} already done" in done.stderr or "already done" in done.stderr
    rows = ResultsStore(paths.claims_runs(out), read_only=True).table()
    assert before <= set(rows["run_id"]) and rows["run_id"].is_unique
    assert (out / "report.html").is_file()
