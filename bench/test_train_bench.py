"""Training engine throughput: the sweep's fine-tune path against a naive PyTorch loop, same work.

Run with `make bench` (needs real MNIST and Fashion-MNIST under ENGINE_DATA_ROOT).

The work, identical for both: a `mnist:fashion` beta 0.75 dataset, an Alice pre-trained once
(1 epoch), then one fine-tune (mode finetune) per depth l = 1..L of the reference `cnn` (L = 5,
the `--layers all` mix of a sweep), BENCH_TRAIN_EPOCHS epochs each, batch 128, SGD lr 0.01 momentum 0.9, on all of
Bob's training samples, each followed by evaluation on the whole test split.

- engine: `engine.sweep.run_bob` as a sweep calls it: the dataset loaded onto the device once per
  module (uint8, normalised per batch on the device), one `CompiledModelCache` shared by Alice and
  every fine-tune, frozen-prefix features cached per fit.
- naive: `bench/naive_baseline.py`: eager fp32, a per-sample `Dataset` + `DataLoader`, a full
  forward through every layer at every step.

One benchmark round is the five fine-tunes of one path. Rounds alternate naive, engine, naive,
engine, ... (the naive round runs in pedantic's `setup`, timed by hand), so both see the same
machine conditions; the benchmark's own statistics are the engine's. Figures in `extra_info`:
fine-tunes per hour of each (from the fastest round), per-depth seconds (fastest per depth), their
ratio, the device and the test accuracies.

Sizes: BENCH_TRAIN_N (default 10000) training samples, BENCH_TEST_N (default 2000) test samples,
BENCH_TRAIN_EPOCHS (default 1; sweeps default to 10) epochs per fine-tune, BENCH_TRAIN_ROUNDS
(default 2) rounds; see bench/RESULTS.md for the sizes behind each figure.
The CUDA variant runs unchanged where `torch.cuda.is_available()` (skipped otherwise).
"""
import os
import sys
import time
from pathlib import Path

import pytest
import torch

import engine
from engine import paths
from engine.alice import device_name, load_data, pretrain
from engine.beton import read_beton
from engine.checkpoint import load_checkpoint
from engine.freeze import frozen_prefix
from engine.runs import AliceSpec, BobSpec, n_layers
from engine.sweep import run_bob
from engine.train import CompiledModelCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
import naive_baseline  # noqa: E402

ROOT = Path(os.environ.get("ENGINE_DATA_ROOT", "data"))
if not (ROOT / "MNIST" / "raw").is_dir() or not (ROOT / "FashionMNIST" / "raw").is_dir():
    pytest.skip("real MNIST and Fashion-MNIST needed under ENGINE_DATA_ROOT", allow_module_level=True)

PAIR, BETA = "mnist:fashion", 0.75
N_TRAIN = int(os.environ.get("BENCH_TRAIN_N", 10_000))
N_TEST = int(os.environ.get("BENCH_TEST_N", 2_000))
ROUNDS = int(os.environ.get("BENCH_TRAIN_ROUNDS", 2))
EPOCHS = int(os.environ.get("BENCH_TRAIN_EPOCHS", 1))
ARCH, BATCH, SEED = "cnn", 128, 0
L = n_layers(ARCH)
DEPTHS = list(range(1, L + 1))  # --layers all
WARMUP_N = 256  # samples per warm-up fine-tune (first-call costs: kernels, allocator, compiling)
MIN_ACC = 0.5  # chance is 0.1 (10 Fashion-MNIST classes)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return engine.build_data(PAIR, BETA, n_train=N_TRAIN, n_test=N_TEST, data_root=ROOT,
                             out=tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="module")
def host_arrays(dataset):
    """The naive baseline's input: the same splits as uint8 NHWC numpy arrays in host memory."""
    fields = ["image", "bob_label"]
    return (read_beton(paths.split_file(dataset, "train"), fields),
            read_beton(paths.split_file(dataset, "test"), fields))


@pytest.fixture(scope="module", params=[
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device")),
])
def setup(request, dataset, tmp_path_factory):
    """Per device, as a sweep does per dataset: data on the device once, one CompiledModelCache,
    Alice pre-trained once through that cache."""
    device = torch.device(request.param)
    train, test = load_data(dataset, device)
    cache = CompiledModelCache(device)
    alice = AliceSpec(dataset=dataset.name, arch=ARCH, epochs=1, batch_size=BATCH, seed=SEED)
    ckpt = pretrain(dataset, alice, tmp_path_factory.mktemp(f"sweep-{device.type}"), device=device,
                    data=(train, test), cache=cache)
    state, _, metrics = load_checkpoint(ckpt)
    return {"device": device, "train": train, "test": test, "cache": cache, "alice": alice,
            "alice_state": {k: v.to(device) for k, v in state.items()},
            "alice_cpu_state": state, "alice_acc": metrics["test_acc"],
            "n_classes": int(train.labels["bob_label"].max()) + 1}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def naive_round(s, host, n=None) -> tuple[dict, dict]:
    """The same five fine-tunes through the naive baseline."""
    (tr, te), seconds, accs = host, {}, {}
    images, labels = tr["image"][:n], tr["bob_label"][:n]
    for l in DEPTHS:
        t0 = time.perf_counter()
        accs[l] = naive_baseline.finetune(images, labels, te["image"], te["bob_label"],
                                          s["alice_cpu_state"], retrain_from=l,
                                          n_classes=s["n_classes"], arch=ARCH, epochs=EPOCHS,
                                          batch_size=BATCH, seed=SEED,
                                          device=s["device"].type, stats=s["train"].stats)
        _sync(s["device"])
        seconds[l] = time.perf_counter() - t0
    return seconds, accs


def test_finetunes_engine_vs_naive(benchmark, setup, host_arrays):
    s = setup
    # Warm-up on a few samples, untimed: kernel selection, allocator growth, and on CUDA the
    # compilation of every (frozen_upto) split, paid once per sweep.
    engine_round(s, n_bob=WARMUP_N)
    naive_round(s, host_arrays, n=WARMUP_N)

    engine_rounds, naive_rounds, loads = [], [], []

    def run_naive():  # pedantic's setup: untimed by the benchmark, timed here
        loads.append(os.getloadavg()[0])
        naive_rounds.append(naive_round(s, host_arrays))

    def run_engine():
        engine_rounds.append(engine_round(s))

    benchmark.pedantic(run_engine, setup=run_naive, rounds=ROUNDS, iterations=1, warmup_rounds=0)

    def summarise(rounds):
        per_depth = {l: min(r[0][l] for r in rounds) for l in DEPTHS}
        best_round = min(sum(r[0].values()) for r in rounds)
        accs = {l: rounds[-1][1][l] for l in DEPTHS}
        return per_depth, best_round, accs

    e_depth, e_round, e_acc = summarise(engine_rounds)
    n_depth, n_round, n_acc = summarise(naive_rounds)
    benchmark.extra_info.update({
        "device": device_name(s["device"]),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dataset": f"{PAIR} beta {BETA}", "n_train": N_TRAIN, "n_test": N_TEST,
        "arch": ARCH, "depths": DEPTHS, "epochs": EPOCHS, "batch_size": BATCH,
        "rounds": ROUNDS, "load_avg_1min_before_rounds": loads,
        "engine_finetunes_per_hour": len(DEPTHS) * 3600 / e_round,
        "naive_finetunes_per_hour": len(DEPTHS) * 3600 / n_round,
        "ratio": n_round / e_round,
        "engine_round_s": [sum(r[0].values()) for r in engine_rounds],
        "naive_round_s": [sum(r[0].values()) for r in naive_rounds],
        "engine_seconds_per_depth": e_depth,
        "naive_seconds_per_depth": n_depth,
        "ratio_per_depth": {l: n_depth[l] / e_depth[l] for l in DEPTHS},
        "frozen_layers_per_depth": {l: frozen_prefix(L, l, "finetune") for l in DEPTHS},
        "engine_test_acc": e_acc,
        "naive_test_acc": n_acc,
        "alice_test_acc": s["alice_acc"],
    })
    for accs in (e_acc, n_acc):
        assert min(accs.values()) > MIN_ACC, accs
