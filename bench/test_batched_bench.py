"""Many fine-tunes per step: the batched executor against the serial one and the naive loop.

Run with `make bench` (needs real MNIST and Fashion-MNIST under ENGINE_DATA_ROOT). Same work on
every side, measured side by side in one run on one machine:

- `test_sweep_mix[mlp|cnn]`: the default sweep mix (`engine sweep --layers all`: finetune and
  reinit at l = 1..L, scratch, random-frozen at l = 2..L; 15 runs per beta and seed) at 3 betas x
  2 seeds = 90 runs, through `engine.sweep.driver.execute` with `--executor serial` and
  `--executor batched` (results store included), and through `bench/naive_baseline.py` (one
  process per (beta, seed), every run trained, its summed per-run times).
- `test_head_only`: 100 head-only runs (l = L finetune, seeds 0..99, one Alice, one dataset),
  serial vs batched.

Alices are pre-trained once per architecture, before any timing, and shared by all sides. The
sweep mix's sides alternate over rounds (naive, serial, batched, then the reverse, so a load that
drifts weighs on each side alike; BENCH_MIX_ROUNDS, default 2 for the mlp and 1 for the cnn, whose
round takes ~9 min) and each side's fastest round counts; the benchmark's own time is a round of
all three. Engine sides run after an untimed warm-up of the same runs on 256 samples (first-call
costs), the naive loop warms up in each of its processes.
Figures go to `extra_info`: fine-tunes/hour per side, the ratios, the FP32 FLOP rate reached by the
batched side (FLOPs counted with torch.utils.flop_counter per layer, the least work any trainer
must do: see `_flops`) and its fraction of this machine's measured fp32 peak (the `peak` fixture,
bench/conftest.py), and the largest accuracy difference between serial and batched.

Tracked ratios (bench/conftest.py): per sweep mix, batched vs naive and batched vs serial; the
mlp mix is in the quick bench (`make bench-quick`, CI). The head-only figure is not tracked: no
sweep command produces 100 Bob seeds on one Alice.

Sizes: BENCH_MIX_N (default 2000) training and BENCH_MIX_TEST_N (default 1000) test samples per
dataset, BENCH_MIX_EPOCHS (default 1). The head-only runs: each side once, after its warm-up.
"""
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import engine
from engine import paths
from engine.spec import BobSpec, Training, n_layers
from engine.sweep.driver import execute
from engine.sweep.expand import alice_spec, expand_sweep
from engine.train.alice import device_name, pretrain

ROOT = Path(os.environ.get("ENGINE_DATA_ROOT", "data"))
if not (ROOT / "MNIST" / "raw").is_dir() or not (ROOT / "FashionMNIST" / "raw").is_dir():
    pytest.skip("real MNIST and Fashion-MNIST needed under ENGINE_DATA_ROOT", allow_module_level=True)

PAIR, BETAS, SEEDS = "mnist:fashion", (0.0, 0.5, 1.0), (0, 1)
N_TRAIN = int(os.environ.get("BENCH_MIX_N", 2000))
N_TEST = int(os.environ.get("BENCH_MIX_TEST_N", 1000))
EPOCHS = int(os.environ.get("BENCH_MIX_EPOCHS", 1))
MIX_ROUNDS = {"mlp": 2, "cnn": 1}
ROUNDS_ENV = os.environ.get("BENCH_MIX_ROUNDS")
HEADS = 100
WARMUP_N = 256
ALICE = Training(epochs=1)
BOB = Training(epochs=EPOCHS)
NAIVE = Path(__file__).resolve().parent / "naive_baseline.py"
# (floor, CI floor, spread). Floors: the project's goals at torch's default threads (one per
# core): >= 3x naive for the mlp mix, >= 1.9x for the cnn mix, the default executor no slower than
# serial (the mlp's 1.5x: 2.0x measured). CI floors and spreads (relative): from 14 quick runs
# (one torch thread per side; honest 2.36-4.89x and 1.34-3.32x, a planted 2x slower batched step
# 1.57-2.05x and 1.03-1.05x), bench/RESULTS.md; one-thread runs are held to their CI floors.
FLOORS = {"mlp": {"naive": (3.0, 2.0, 0.3), "serial": (1.5, 1.2, 0.3)},
          "cnn": {"naive": (1.9, None, None), "serial": (1.0, None, None)}}
QUIET = io.StringIO()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Datasets per beta; Alices are added per architecture by `setup`."""
    out = tmp_path_factory.mktemp("batched")
    dirs = {beta: engine.build_data(PAIR, beta, n_train=N_TRAIN, n_test=N_TEST, data_root=ROOT,
                                    out=paths.sweep_datasets(out)) for beta in BETAS}
    return {"out": out, "dirs": dirs, "alices": {}}


def _setup(datasets, arch: str) -> dict:
    """`datasets` with every Alice of `arch` (per beta and seed), each trained once."""
    for beta in BETAS:
        for s in SEEDS:
            if (arch, beta, s) not in datasets["alices"]:
                a = alice_spec(datasets["dirs"][beta].name, arch, s, ALICE)
                pretrain(datasets["dirs"][beta], a, datasets["out"] / "base", device="cpu")
                datasets["alices"][arch, beta, s] = a
    return datasets


def _run(setup, name: str, specs: list[BobSpec], executor: str,
         warm: bool = True) -> tuple[float, pd.DataFrame]:
    """Seconds for `specs` through `executor` (after an untimed warm-up); the rows written."""
    root = setup["out"] / f"{name}-{executor}"
    shutil.rmtree(root, ignore_errors=True)
    for d in (root, root / "warm"):
        shutil.copytree(setup["out"] / "base" / "alice", d / "alice")
    dataset_dirs = {d.name: d for d in setup["dirs"].values()}
    alices = list(setup["alices"].values())
    if warm:
        small = [BobSpec(**{**s.to_dict(), "n_bob": WARMUP_N}) for s in specs]
        execute(root / "warm", small, alices, dataset_dirs, executor=executor, device="cpu",
                stderr=QUIET)
    t0 = time.perf_counter()
    counts = execute(root, specs, alices, dataset_dirs, executor=executor, device="cpu",
                     stderr=QUIET)
    seconds = time.perf_counter() - t0
    assert counts["ran"] == len(specs)
    return seconds, pd.read_parquet(root / "results")


def _naive(setup, arch: str) -> tuple[float, dict]:
    """The sweep mix through the naive loop: summed per-run seconds, test accuracy per run."""
    seconds, accs = 0.0, {}
    for beta in BETAS:
        for seed in SEEDS:
            specs = expand_sweep([beta], [arch], [seed], datasets={beta: "d"}, bob=BOB, alice=ALICE)
            runs = ",".join(f"{s.retrain_from}:{s.mode}" for s in specs)
            a = setup["alices"][arch, beta, seed]
            cmd = [sys.executable, str(NAIVE), str(setup["dirs"][beta]),
                   str(paths.alice_checkpoint(setup["out"] / "base", a.id)), runs, "--arch", arch,
                   "--epochs", str(EPOCHS), "--seed", str(seed), "--warmup-n", str(WARMUP_N)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            for line in done.stdout.splitlines():
                if line.startswith("{"):
                    r = json.loads(line)
                    seconds += r["seconds"]
                    accs[f"{beta}:{seed}:{r['l']}:{r['mode']}"] = r["test_acc"]
    return seconds, accs


def _flops(setup, specs: list[BobSpec], arch: str) -> float:
    """FP32 FLOPs of training and evaluating `specs` once each: the least any trainer must do.
    Computation counted once (`computation_id`); the frozen prefix over a dataset's train and
    test splits counted once per prefix source (Alice, or a random prefix's seed) up to the
    deepest frozen depth its runs use: a source's layer i is the same at every depth, so deeper
    prefixes continue from shallower outputs (engine.train.features.PrefixStore)."""
    from torch.utils.flop_counter import FlopCounterMode
    from engine.spec import frozen_prefix
    from engine.train.models import build_model
    shape = (28, 56, 1)
    model = build_model(arch, shape, 10)
    L = model.n_layers
    per_sample = {}
    for k in range(L):  # FLOPs per sample of layers k..L-1: forward, and forward + backward
        x = torch.randn(8, shape[2], *shape[:2])
        with torch.no_grad():
            for layer in model.layers[:k]:
                x = layer(x)
        tail = torch.nn.Sequential(*model.layers[k:])
        with FlopCounterMode(display=False) as fwd:
            with torch.no_grad():
                tail(x)
        with FlopCounterMode(display=False) as both:  # no gradient for the frozen features
            tail(x).sum().backward()
        per_sample[k] = (fwd.get_total_flops() / 8, both.get_total_flops() / 8)
    steps = (N_TRAIN // BOB.batch_size) * BOB.batch_size * EPOCHS
    total, deepest = 0.0, {}
    for s in {s.computation_id: s for s in specs}.values():
        k = frozen_prefix(L, s.retrain_from, s.mode)
        total += steps * per_sample[k][1] + N_TEST * per_sample[k][0]
        if k:
            source = (s.alice_id or s.seed, s.dataset)
            deepest[source] = max(deepest.get(source, 0), k)
    for k in deepest.values():
        total += (N_TRAIN + N_TEST) * (per_sample[0][0] - per_sample[k][0])
    return total


@pytest.mark.parametrize("arch", [pytest.param("mlp", marks=pytest.mark.quick), "cnn"])
def test_sweep_mix(benchmark, track, peak, datasets, arch):
    setup = _setup(datasets, arch)
    specs = []
    for beta in BETAS:
        specs += expand_sweep([beta], [arch], list(SEEDS), datasets={beta: setup["dirs"][beta].name},
                              bob=BOB, alice=ALICE)
    seconds, out = {"naive": [], "serial": [], "batched": []}, {}
    sides = {"naive": lambda: _naive(setup, arch)}
    for executor in ("serial", "batched"):
        sides[executor] = lambda e=executor: _run(setup, f"mix-{arch}", specs, e,
                                                  warm=not seconds[e])

    def one_round():
        order = list(sides) if len(seconds["naive"]) % 2 == 0 else list(sides)[::-1]
        for side in order:
            s, out[side] = sides[side]()
            seconds[side].append(s)

    rounds = int(ROUNDS_ENV) if ROUNDS_ENV else MIX_ROUNDS[arch]
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    naive_s, serial_s, batched_s = (min(seconds[k]) for k in ("naive", "serial", "batched"))
    naive_acc, serial_df, batched_df = out["naive"], out["serial"], out["batched"]
    per_hour = {k: len(specs) * 3600 / v for k, v in
                (("naive", naive_s), ("serial", serial_s), ("batched", batched_s))}
    acc = serial_df.set_index("run_id")["test_acc"]
    diff = (batched_df.set_index("run_id")["test_acc"] - acc).abs().max()
    flops = _flops(setup, specs, arch)
    benchmark.extra_info.update({
        "workload": f"default sweep mix, {arch}, 3 betas x 2 seeds", "runs": len(specs),
        "device": device_name(torch.device("cpu")), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "n_train": N_TRAIN, "n_test": N_TEST,
        "epochs": EPOCHS, "seconds": {"naive": naive_s, "serial": serial_s, "batched": batched_s},
        "seconds_per_round": seconds,
        "finetunes_per_hour": per_hour,
        "batched_vs_naive": per_hour["batched"] / per_hour["naive"],
        "batched_vs_serial": per_hour["batched"] / per_hour["serial"],
        "serial_vs_naive": per_hour["serial"] / per_hour["naive"],
        "batched_gflop_per_s": flops / batched_s / 1e9,
        "cpu_fp32_peak_gflop_per_s": peak["cpu_fp32"],
        "batched_fraction_of_fp32_peak": flops / batched_s / 1e9 / peak["cpu_fp32"],
        "max_abs_test_acc_diff_serial_batched": float(diff),
        "mean_test_acc": {"naive": sum(naive_acc.values()) / len(naive_acc),
                          "serial": float(acc.mean()), "batched": float(batched_df["test_acc"].mean())},
    })
    workload = (f"{N_TRAIN}/{N_TEST} samples, epochs {EPOCHS}, "
                f"torch threads {torch.get_num_threads()}")
    for other in ("naive", "serial"):
        floor, ci_floor, spread = FLOORS[arch][other]
        if torch.get_num_threads() != os.cpu_count() and ci_floor is not None:
            floor = ci_floor
        track(f"sweep mix {arch}: batched vs {other}", per_hour["batched"] / per_hour[other],
              floor=floor, ci_floor=ci_floor, spread=spread, workload=workload)
    assert len(batched_df) == len(specs) and set(batched_df["executor"]) == {"batched"}
    assert diff < 0.02, diff  # same runs: only floating-point reassociation differs


def test_head_only(benchmark, datasets):
    setup = _setup(datasets, "cnn")
    beta = BETAS[-1]
    a = setup["alices"]["cnn", beta, 0]
    L = n_layers("cnn")
    specs = [BobSpec(alice_id=a.id, dataset=a.dataset, arch="cnn", retrain_from=L, mode="finetune",
                     seed=s, epochs=EPOCHS) for s in range(HEADS)]
    serial_s, serial_df = _run(setup, "heads", specs, "serial")
    batched = {}
    benchmark.pedantic(lambda: batched.update(zip(("s", "df"), _run(setup, "heads", specs,
                                                                     "batched"))),
                       rounds=1, iterations=1, warmup_rounds=0)
    diff = (batched["df"].set_index("run_id")["test_acc"]
            - serial_df.set_index("run_id")["test_acc"]).abs().max()
    benchmark.extra_info.update({
        "workload": f"{HEADS} head-only runs (cnn, l = L, one Alice)", "n_train": N_TRAIN,
        "n_test": N_TEST, "epochs": EPOCHS,
        "seconds": {"serial": serial_s, "batched": batched["s"]},
        "finetunes_per_hour": {"serial": HEADS * 3600 / serial_s,
                               "batched": HEADS * 3600 / batched["s"]},
        "batched_vs_serial": serial_s / batched["s"],
        "max_abs_test_acc_diff_serial_batched": float(diff),
    })
    assert diff < 0.02, diff
