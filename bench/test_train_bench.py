"""Training engine throughput: the engine against a naive PyTorch loop, same work, same machine.

Run with `make bench` (needs real MNIST and Fashion-MNIST under ENGINE_DATA_ROOT).

The data, identical for both: a `mnist:fashion` beta 0.75 dataset and one Alice pre-trained once
(1 epoch). Bob's runs use all of the training split, BENCH_TRAIN_EPOCHS epochs, batch 128, SGD
0.01/0.9, seed 0, each followed by evaluation on the whole test split. Two workloads:

- `test_finetunes_engine_vs_naive`: one `finetune` run per depth l = 1..L of the reference `cnn`
  (L = 5). Engine: `engine.sweep.executors.run_bob` as a serial sweep calls it (data on the device once, one
  `CompiledModelCache`, frozen-prefix features cached for fits of two or more epochs).
- `test_sweep_engine_vs_naive`: every run of `engine sweep --layers all` with the default modes and
  baselines for one (beta, seed): finetune and reinit at l = 1..5, scratch, random-frozen at
  l = 2..5 (15 runs). Engine: `engine.sweep.driver.run_sweep` itself (serial executor), results store and all, which trains
  the 13 distinct computations among the 15 runs (engine.spec.BobSpec.computation_id).

Naive: `bench/naive_baseline.py` run as a script in a process of its own (so the engine's
process-wide settings do not reach it): eager fp32, per-sample `Dataset` + `DataLoader`, a full
forward every step, every run trained. Its figure is the sum of the per-run times it reports, which
leaves out its interpreter start, imports and warm-up run (in the naive's favour).

One benchmark round is one workload on one side. Rounds alternate naive, engine, naive, ...
(the naive round runs in pedantic's `setup`), so both see the same machine conditions; the
benchmark's own statistics are the engine's. Figures in `extra_info`: fine-tunes per hour of each
(from the fastest round), their ratio, per-run seconds, the device and the test accuracies.

Sizes: BENCH_TRAIN_N (default 10000) training samples, BENCH_TEST_N (default 2000) test samples,
BENCH_TRAIN_EPOCHS (default 1; sweeps default to 10) epochs per run, BENCH_TRAIN_ROUNDS
(default 2) rounds; see bench/RESULTS.md for the sizes behind each figure.
The CUDA variant of the first workload (engine and naive process both on the GPU) runs where
`torch.cuda.is_available()` (skipped otherwise).
"""
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engine
from engine import paths
from engine.train.alice import device_name, load_data, pretrain
from engine.train.checkpoint import load_checkpoint
from engine.spec import BobSpec, Training, n_layers
from engine.sweep.expand import alice_spec, expand_sweep
from engine.store import ResultsStore
from engine.sweep.driver import run_sweep
from engine.sweep.executors import run_bob
from engine.sweep.spec import SweepSpec
from engine.train.trainer import CompiledModelCache

ROOT = Path(os.environ.get("ENGINE_DATA_ROOT", "data"))
if not (ROOT / "MNIST" / "raw").is_dir() or not (ROOT / "FashionMNIST" / "raw").is_dir():
    pytest.skip("real MNIST and Fashion-MNIST needed under ENGINE_DATA_ROOT", allow_module_level=True)

PAIR, BETA = "mnist:fashion", 0.75
N_TRAIN = int(os.environ.get("BENCH_TRAIN_N", 10_000))
N_TEST = int(os.environ.get("BENCH_TEST_N", 2_000))
ROUNDS = int(os.environ.get("BENCH_TRAIN_ROUNDS", 2))
EPOCHS = int(os.environ.get("BENCH_TRAIN_EPOCHS", 1))
ARCH, BATCH, SEED = "cnn", 128, 0
ALICE = Training(epochs=1, batch_size=BATCH)
BOB = Training(epochs=EPOCHS, batch_size=BATCH)
L = n_layers(ARCH)
DEPTHS = list(range(1, L + 1))  # --layers all
WARMUP_N = 256  # samples per warm-up run (first-call costs: kernels, allocator, compiling)
MIN_ACC = 0.5  # chance is 0.1 (10 Fashion-MNIST classes)
NAIVE = Path(__file__).resolve().parent / "naive_baseline.py"


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory):
    """A sweep directory holding the dataset and Alice, as `engine sweep` lays them out."""
    out = tmp_path_factory.mktemp("sweep")
    dataset = engine.build_data(PAIR, BETA, n_train=N_TRAIN, n_test=N_TEST, data_root=ROOT,
                                out=paths.sweep_datasets(out))
    alice = alice_spec(dataset.name, ARCH, SEED, ALICE)
    ckpt = pretrain(dataset, alice, out, device="cpu")
    return {"out": out, "dataset": dataset, "alice": alice, "ckpt": ckpt}


def naive_round(s, runs: list[tuple[int, str]], device: str = "cpu") -> list[dict]:
    """The runs [(l, mode)] through the naive baseline in a fresh process: one dict per run."""
    cmd = [sys.executable, str(NAIVE), str(s["dataset"]), str(s["ckpt"]),
           ",".join(f"{l}:{m}" for l, m in runs), "--arch", ARCH, "--epochs", str(EPOCHS),
           "--batch-size", str(BATCH), "--seed", str(SEED), "--warmup-n", str(WARMUP_N),
           "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary(engine_rounds: list[float], naive_rounds: list[float], n_runs: int) -> dict:
    e, n = min(engine_rounds), min(naive_rounds)
    return {"engine_finetunes_per_hour": n_runs * 3600 / e,
            "naive_finetunes_per_hour": n_runs * 3600 / n, "ratio": n / e,
            "engine_round_s": engine_rounds, "naive_round_s": naive_rounds}


def _common_info(device) -> dict:
    return {"device": device_name(device), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "dataset": f"{PAIR} beta {BETA}",
            "n_train": N_TRAIN, "n_test": N_TEST, "arch": ARCH, "epochs": EPOCHS,
            "batch_size": BATCH, "rounds": ROUNDS}


# Workload 1: one finetune run per depth ---------------------------------------------------------

@pytest.fixture(scope="module", params=[
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device")),
])
def setup(request, sweep_out):
    """Per device, as a sweep does per dataset: data on the device once, one CompiledModelCache."""
    device = torch.device(request.param)
    train, test = load_data(sweep_out["dataset"], device)
    state, _, metrics = load_checkpoint(sweep_out["ckpt"])
    return {**sweep_out, "device": device, "train": train, "test": test,
            "cache": CompiledModelCache(device),
            "alice_state": {k: v.to(device) for k, v in state.items()},
            "alice_acc": metrics["test_acc"],
            "n_classes": int(train.labels["bob_label"].max()) + 1}


def engine_round(s, n_bob=None) -> tuple[dict, dict]:
    """The five fine-tunes through the sweep's path: {l: seconds}, {l: test accuracy}."""
    seconds, accs = {}, {}
    for l in DEPTHS:
        spec = BobSpec(alice_id=s["alice"].id, dataset=s["alice"].dataset, arch=ARCH,
                       retrain_from=l, mode="finetune", n_bob=n_bob, seed=SEED, epochs=EPOCHS,
                       batch_size=BATCH)
        t0 = time.perf_counter()
        m = run_bob(spec, s["train"], s["test"], n_classes=s["n_classes"],
                    alice_state=s["alice_state"], cache=s["cache"], device=s["device"])
        _sync(s["device"])
        seconds[l], accs[l] = time.perf_counter() - t0, m["test_acc"]
    return seconds, accs


def test_finetunes_engine_vs_naive(benchmark, setup):
    s = setup
    engine_round(s, n_bob=WARMUP_N)  # untimed: kernel selection, allocator growth, compiling
    runs = [(l, "finetune") for l in DEPTHS]
    engine_rounds, naive_rounds, loads = [], [], []

    def run_naive():  # pedantic's setup: untimed by the benchmark, timed by the naive process
        loads.append(os.getloadavg()[0])
        naive_rounds.append(naive_round(s, runs, s["device"].type))

    benchmark.pedantic(lambda: engine_rounds.append(engine_round(s)), setup=run_naive,
                       rounds=ROUNDS, iterations=1, warmup_rounds=0)

    e_depth = {l: min(r[0][l] for r in engine_rounds) for l in DEPTHS}
    n_depth = {l: min(r[i]["seconds"] for r in naive_rounds) for i, l in enumerate(DEPTHS)}
    e_acc = engine_rounds[-1][1]
    n_acc = {l: naive_rounds[-1][i]["test_acc"] for i, l in enumerate(DEPTHS)}
    benchmark.extra_info.update({
        **_common_info(s["device"]), "workload": "finetune at l = 1..5",
        "load_avg_1min_before_rounds": loads,
        **_summary([sum(r[0].values()) for r in engine_rounds],
                   [sum(x["seconds"] for x in r) for r in naive_rounds], len(DEPTHS)),
        "engine_seconds_per_depth": e_depth, "naive_seconds_per_depth": n_depth,
        "ratio_per_depth": {l: n_depth[l] / e_depth[l] for l in DEPTHS},
        "engine_test_acc": e_acc, "naive_test_acc": n_acc, "alice_test_acc": s["alice_acc"],
    })
    for accs in (e_acc, n_acc):
        assert min(accs.values()) > MIN_ACC, accs


# Workload 2: a whole `engine sweep --layers all` for one (beta, seed) -------------------------

def test_sweep_engine_vs_naive(benchmark, sweep_out):
    s = sweep_out
    specs = expand_sweep([BETA], [ARCH], [SEED], datasets={BETA: s["dataset"].name}, bob=BOB,
                         alice=ALICE)
    runs = [(spec.retrain_from, spec.mode) for spec in specs]
    spec = SweepSpec(PAIR, betas=(BETA,), seeds=(SEED,), archs=(ARCH,), bob=BOB, alice=ALICE,
                     device="cpu", n_train=N_TRAIN, n_test=N_TEST, data_root=str(ROOT),
                     executor="serial")
    results = paths.sweep_out(s["out"]) / "results"

    def sweep(**changes):
        shutil.rmtree(results, ignore_errors=True)  # every run again, Alice and data reused
        t0 = time.perf_counter()
        counts = run_sweep(spec.replace(**changes), s["out"], stderr=io.StringIO())
        return time.perf_counter() - t0, counts

    sweep(n_bobs=(WARMUP_N,))  # untimed warm-up
    engine_rounds, naive_rounds, loads = [], [], []

    def run_naive():
        loads.append(os.getloadavg()[0])
        naive_rounds.append(naive_round(s, runs))

    benchmark.pedantic(lambda: engine_rounds.append(sweep()), setup=run_naive, rounds=ROUNDS,
                       iterations=1, warmup_rounds=0)

    assert all(counts["ran"] == len(specs) for _, counts in engine_rounds)
    df = ResultsStore(s["out"], read_only=True).table()
    trained = df[df["computed_by"] == ""]
    benchmark.extra_info.update({
        **_common_info(torch.device("cpu")), "workload": "engine sweep --layers all, 1 beta, 1 seed",
        "runs": len(specs), "engine_trained": len(trained), "load_avg_1min_before_rounds": loads,
        **_summary([t for t, _ in engine_rounds],
                   [sum(x["seconds"] for x in r) for r in naive_rounds], len(specs)),
        "naive_seconds_per_run": {f"{x['l']}:{x['mode']}": x["seconds"] for x in naive_rounds[-1]},
        "engine_seconds_per_run": {f"{r.retrain_from}:{r.mode}": r.wall_s
                                   for r in trained.itertuples()},
        "engine_test_acc": {f"{r.retrain_from}:{r.mode}": r.test_acc for r in df.itertuples()},
        "naive_test_acc": {f"{x['l']}:{x['mode']}": x["test_acc"] for x in naive_rounds[-1]},
    })
    assert len(df) == len(specs) and len(trained) == len(specs) - 2
    assert df.loc[df["mode"] != "random-frozen", "test_acc"].min() > MIN_ACC
