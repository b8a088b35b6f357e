"""Sweep commands users run, batched against one at a time (issue 16's CPU figures).

- `test_head_only_command`: `engine sweep --pair mnist:fashion --betas 0,0.5,1 --seeds 0,1
  --arch cnn --layers 5 --modes finetune --baselines none --n-bob 250,500,1000,2000 --epochs 2`
  on 3000 training samples: 24 head-only runs over 6 Alices, the workload a new user tried
  (issue 16, item 6). Each side is the whole command (`run_sweep`) on a copy of a directory
  whose datasets and Alices are ready, minus the command's fixed cost: the same command on a
  finished directory (verifying datasets and checkpoints, planning, nothing to train).
- `test_alice_stage`: the Alice stage of an mlp sweep (3 betas x 2 seeds = 6 Alices, 3000
  samples, 2 epochs), `BatchedExecutor().pretrain` against `SerialExecutor().pretrain`.

- `test_precision_mix[mlp|cnn]`: the default sweep mix with `--precision fp32` against `bf16`
  (issue 16: where the CPU computes bf16 natively, auto picks bf16; measured, with the accuracy
  difference beside the seeds' spread). Not a tracked ratio: it depends on the CPU's bf16.

Tracked ratios (bench/conftest.py `track`): head-only command batched vs serial (goal >= 1.3x),
Alice stage batched vs one at a time. Sizes: BENCH_SWEEP_N (default 3000) training samples,
BENCH_PRECISION_N (default 1000) for the precision mixes.
"""
from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

import engine
from engine import paths
from engine.spec import Training
from engine.store import ResultsStore
from engine.sweep.driver import run_sweep
from engine.sweep.executors import BatchedExecutor, Context, SerialExecutor
from engine.sweep.expand import alice_spec
from engine.sweep.spec import SweepSpec

ROOT = Path(os.environ.get("ENGINE_DATA_ROOT", "data"))
if not (ROOT / "MNIST" / "raw").is_dir() or not (ROOT / "FashionMNIST" / "raw").is_dir():
    pytest.skip("real MNIST and Fashion-MNIST needed under ENGINE_DATA_ROOT", allow_module_level=True)

PAIR, BETAS, SEEDS = "mnist:fashion", (0.0, 0.5, 1.0), (0, 1)
N_TRAIN = int(os.environ.get("BENCH_SWEEP_N", 3000))
N_TEST = 500
QUIET = io.StringIO()


def _head_only(executor: str) -> SweepSpec:
    return SweepSpec(pair=PAIR, betas=BETAS, seeds=SEEDS, archs=("cnn",), layers=(5,),
                     modes=("finetune",), baselines=(), n_bobs=(250, 500, 1000, 2000),
                     bob=Training(epochs=2), alice=Training(epochs=1), n_train=N_TRAIN,
                     n_test=N_TEST, data_root=str(ROOT), device="cpu", executor=executor)


@pytest.fixture(scope="module")
def ready(tmp_path_factory) -> Path:
    """A sweep directory with the head-only command's datasets and Alices, and no Bob run."""
    out = tmp_path_factory.mktemp("sweep") / "ready"
    sweep = _head_only("serial")
    run_sweep(sweep.replace(n_bobs=(1,), layers=(5,)), out, stdout=QUIET, stderr=QUIET)
    shutil.rmtree(out / "results")
    return out


def _command(ready: Path, tmp: Path, executor: str) -> float:
    """Seconds of the whole head-only command on a fresh copy of `ready`."""
    out = tmp / executor
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(ready, out)
    start = time.perf_counter()
    counts = run_sweep(_head_only(executor), out, stdout=QUIET, stderr=QUIET)
    seconds = time.perf_counter() - start
    assert counts["ran"] == 24
    return seconds


def test_head_only_command(benchmark, track, ready, tmp_path):
    _command(ready, tmp_path, "batched")  # warm-up: first-call costs of both paths
    _command(ready, tmp_path, "serial")
    times = {"serial": [], "batched": []}
    for _ in range(2):
        for executor in times:
            times[executor].append(_command(ready, tmp_path, executor))
    fixed = benchmark.pedantic(lambda: run_sweep(_head_only("batched"), tmp_path / "batched",
                                                 stdout=QUIET, stderr=QUIET), rounds=3)
    fixed_s = benchmark.stats.stats.min
    serial, batched = min(times["serial"]), min(times["batched"])
    ratio = (serial - fixed_s) / (batched - fixed_s)
    benchmark.extra_info.update(serial_s=serial, batched_s=batched, fixed_s=fixed_s,
                                runs=24, ratio=ratio)
    assert fixed["ran"] == 0
    track("head-only sweep command, batched vs serial", ratio, floor=1.3,
          workload=f"n_train={N_TRAIN}")


def test_alice_stage(benchmark, track, tmp_path_factory):
    root = tmp_path_factory.mktemp("alices")
    dirs = {b: engine.build_data(PAIR, b, n_train=N_TRAIN, n_test=N_TEST, data_root=ROOT,
                                 out=root / "datasets") for b in BETAS}
    specs = [alice_spec(d.name, "mlp", s, Training(epochs=2)) for d in dirs.values()
             for s in SEEDS]

    def stage(executor) -> float:
        out = root / executor.name
        shutil.rmtree(out, ignore_errors=True)
        ctx = Context(out=out, dataset_dirs={d.name: d for d in dirs.values()},
                      device=torch.device("cpu"))
        start = time.perf_counter()
        executor.pretrain(specs, ctx)
        return time.perf_counter() - start

    stage(BatchedExecutor())  # warm-up
    serial = min(stage(SerialExecutor()) for _ in range(2))
    benchmark.pedantic(lambda: stage(BatchedExecutor()), rounds=2)
    batched = benchmark.stats.stats.min
    benchmark.extra_info.update(serial_s=serial, batched_s=batched, alices=len(specs))
    track("Alice stage (mlp, 6 Alices), batched vs one at a time", serial / batched, floor=1.5,
          workload=f"n_train={N_TRAIN}")


PRECISION_N = int(os.environ.get("BENCH_PRECISION_N", 1000))


def _mix(arch: str, precision: str) -> SweepSpec:
    return SweepSpec(pair=PAIR, betas=(0.0, 1.0), seeds=SEEDS, archs=(arch,),
                     bob=Training(epochs=1), alice=Training(epochs=1), n_train=PRECISION_N,
                     n_test=N_TEST, data_root=str(ROOT), device="cpu", executor="batched",
                     precision=precision)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_precision_mix(benchmark, arch, tmp_path):
    """The default sweep mix (2 betas x 2 seeds = 60 runs, Alices included) in fp32 and in bf16
    autocast, whole commands, alternating. Meaningful where the CPU computes bf16 natively
    (`machine_info.bf16_native`); elsewhere bf16 is emulated. Accuracy: the mean |test accuracy
    fp32 - bf16| per run beside the seeds' own spread (mean |seed 0 - seed 1| in fp32)."""
    datasets = tmp_path / "datasets"
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    tables = {}
    for round_ in range(2):
        for precision in (("fp32", "bf16") if round_ == 0 else ("bf16", "fp32")):
            out = tmp_path / f"{precision}-{round_}"
            sweep = _mix(arch, precision).replace(datasets_dir=str(datasets))
            start = time.perf_counter()
            run_sweep(sweep, out, stdout=QUIET, stderr=QUIET)
            times[precision].append(time.perf_counter() - start)
            tables[precision] = ResultsStore(out, read_only=True).table()
    fp32, bf16 = (tables[p].assign(key=lambda t: t["dataset"] + t["mode"]
                                   + t["retrain_from"].astype(str) + t["seed"].astype(str))
                  .set_index("key")["test_acc"] for p in ("fp32", "bf16"))
    by_seed = tables["fp32"].pivot_table(index=["dataset", "mode", "retrain_from"],
                                         columns="seed", values="test_acc")
    benchmark.pedantic(lambda: None, rounds=1)
    benchmark.extra_info.update(
        fp32_s=min(times["fp32"]), bf16_s=min(times["bf16"]),
        bf16_speedup=min(times["fp32"]) / min(times["bf16"]),
        mean_abs_acc_diff=float((fp32 - bf16.loc[fp32.index]).abs().mean()),
        seed_spread=float((by_seed[0] - by_seed[1]).abs().mean()),
        precisions=sorted(set(tables["bf16"]["precision"])))
    assert set(tables["bf16"]["precision"]) == {"bf16"}
