"""bench/history.py on synthetic saved runs, and bench/conftest.py's saving through pytest-benchmark.

The synthetic runs have the layout pytest-benchmark autosaves (`<storage>/<machine id>/NNNN_*.json`)
with what bench/conftest.py adds: machine_info.kind and extra_info.ratios.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench import history  # noqa: E402
from bench.conftest import bf16_native, cpu_model, machine_kind  # noqa: E402

RATIO = "whole build mnist:fashion vs DatasetWriter"
EPYC = "AMD EPYC, 2 cores, bf16"
XEON = "Intel Xeon, 8 cores, bf16"


def save_run(storage: Path, n: int, value: float, kind: str = EPYC, commit: str = "a" * 40,
             floor: float = 15.0, spread: float | None = None, name: str = RATIO) -> None:
    folder = storage / "Linux-CPython-3.11-64bit"
    folder.mkdir(parents=True, exist_ok=True)
    run = {"machine_info": {"node": "box", "kind": kind},
           "commit_info": {"id": commit, "dirty": False},
           "datetime": f"2026-12-01T10:{n:02d}:00+00:00",
           "benchmarks": [{"name": "test_build", "extra_info": {"ratios": {name: {
               "value": value, "floor": floor, "ci_floor": 12.0, "spread": spread,
               "workload": ""}}}}]}
    (folder / f"{n:04d}_{commit[:8]}_20261201.json").write_text(json.dumps(run))


def flags_of(storage: Path, kind: str = EPYC) -> list[list[str]]:
    return [p.flags for p in history.groups(history.load(storage))[RATIO, "", kind]]


def test_a_regression_is_flagged(tmp_path):
    for n, v in enumerate([20.1, 21.0, 19.6, 20.5, 10.2]):  # the last one halves
        save_run(tmp_path, n, v)
    flags = flags_of(tmp_path)
    assert flags[:4] == [[]] * 4
    assert flags[4] == ["UNDER FLOOR 15", "DROP 10.30 > spread 1.40"]


def test_a_drop_above_the_floor_is_flagged(tmp_path):
    for n, v in enumerate([30.0, 30.5, 29.8, 30.2, 25.0]):  # still above the floor of 15
        save_run(tmp_path, n, v)
    assert flags_of(tmp_path)[4] == ["DROP 5.20 > spread 0.70"]


def test_noise_within_the_spread_is_not_flagged(tmp_path):
    for n, v in enumerate([20.1, 21.0, 19.6, 20.5, 19.7, 20.9, 19.8]):
        save_run(tmp_path, n, v)
    assert flags_of(tmp_path) == [[]] * 7


def test_a_declared_spread_judges_drops_before_history_has_one(tmp_path):
    save_run(tmp_path, 0, 20.0, spread=0.2)
    save_run(tmp_path, 1, 17.0, spread=0.2)  # -15%: within the declared 20%
    save_run(tmp_path, 2, 12.0, spread=0.2)  # -29%
    assert flags_of(tmp_path) == [[], [], ["UNDER FLOOR 15", "DROP 5.00 > spread 3.40"]]


def test_without_a_spread_a_drop_is_not_judged(tmp_path):
    save_run(tmp_path, 0, 20.0)
    save_run(tmp_path, 1, 16.0)
    assert flags_of(tmp_path) == [[], []]


def test_runs_from_different_machines_are_never_compared(tmp_path):
    for n, v in enumerate([30.0, 30.5, 29.8, 30.2]):
        save_run(tmp_path, 2 * n, v, kind=XEON)
        save_run(tmp_path, 2 * n + 1, 20.0 + n / 10)  # every EPYC run far under the Xeon's
    grouped = history.groups(history.load(tmp_path))
    assert set(grouped) == {(RATIO, "", XEON), (RATIO, "", EPYC)}
    assert [p.value for p in grouped[RATIO, "", EPYC]] == [20.0, 20.1, 20.2, 20.3]
    assert all(not p.flags for points in grouped.values() for p in points)


def test_main_prints_plots_and_writes_a_page(tmp_path, capsys):
    for n, v in enumerate([20.1, 21.0, 19.6, 20.5, 10.2]):
        save_run(tmp_path / "store", n, v, commit=f"{n:x}" * 40)
    save_run(tmp_path / "store", 9, 5.0, name="sweep mix mlp: batched vs naive", floor=3.0)
    assert history.main(["--storage", str(tmp_path / "store"), "--out", str(tmp_path / "out"),
                         "--last", "3"]) == 0
    text = capsys.readouterr().out
    assert "11111111" not in text and "22222222" in text and "44444444" in text  # the last 3
    assert "10.20x  UNDER FLOOR 15  DROP" in text and f"machine: {EPYC}" in text
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["sweep-mix-mlp-batched-vs-naive.png",
                    "whole-build-mnist-fashion-vs-datasetwriter.png"]
    page = (tmp_path / "out" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "UNDER FLOOR" in page


@pytest.mark.parametrize("content", ["{not json", '{"benchmarks": []}'])
def test_a_file_that_is_not_a_run_is_one_line(tmp_path, capsys, content):
    (tmp_path / "x.json").write_text(content)
    assert history.main(["--storage", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench.history: {tmp_path / 'x.json'}: not a pytest-benchmark run")
    assert err.count("\n") == 1


def test_a_missing_storage_is_one_line(tmp_path, capsys):
    assert history.main(["--storage", str(tmp_path / "none")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_machine_description():
    flags = "flags\t\t: fpu sse avx512f avx512_bf16 vaes\n"
    assert bf16_native("model name\t: AMD EPYC 7B13\n" + flags)
    assert bf16_native("flags : fpu amx_tile amx_bf16\n")
    assert not bf16_native("flags : fpu avx512f avx512_vnni\n") and not bf16_native("")
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert machine_kind("AMD EPYC", 2, True, None) == EPYC
    assert machine_kind("X", 8, False, "NVIDIA H200") == "X, 8 cores, NVIDIA H200"


TRIVIAL = """
import os

def test_trivial(benchmark, track):
    benchmark.pedantic(sum, args=(range(1000),), rounds=3, iterations=1)
    track("trivial: fast vs slow", float(os.environ["RATIO"]), floor=2.0, ci_floor=1.5)
"""


def test_two_saved_runs_are_read_back_with_machine_and_commit(tmp_path):
    """The real conftest (as a plugin) saves two runs through pytest-benchmark's autosave in a
    git repository; the history prints both with the machine and the commit, and --ci-floors
    fails the run whose ratio is under its CI floor (which is still saved)."""
    repo, storage = tmp_path / "repo", tmp_path / "store"
    repo.mkdir()
    (repo / "test_trivial.py").write_text(TRIVIAL)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "trivial"], check=True)
    commit = subprocess.run(git[:3] + ["rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    codes = []
    for ratio in ("3.0", "1.0"):
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "bench.conftest", "-p", "no:cacheprovider",
             "--ci-floors", "--benchmark-autosave", f"--benchmark-storage={storage}",
             "test_trivial.py"], cwd=repo, env={**env, "RATIO": ratio}, capture_output=True,
            text=True, timeout=300)
        codes.append(done.returncode)
        if ratio == "1.0":
            assert "tracked ratio under its CI floor: trivial: fast vs slow = 1.00x" in done.stdout
    assert codes == [0, 1]
    saved = sorted(storage.rglob("*.json"))
    assert len(saved) == 2
    machine = json.loads(saved[0].read_text())["machine_info"]
    assert machine["peak_gflop_per_s"]["cpu_fp32"] > 0 and machine["cores"] == os.cpu_count()
    done = subprocess.run([sys.executable, "-m", "bench.history", "--storage", str(storage),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"  machine: {machine['kind']}" in lines
    runs = [line for line in lines if commit[:8] in line]
    assert len(runs) == 2 and "3.00x" in runs[0] and "1.00x  UNDER FLOOR 2" in runs[1]
