"""`engine choose-depth` against what it saves: one fine-tune per depth (issue 18).

On a new dataset (mnist:fashion at beta 0.5, BENCH_DEPTH_N = 3000 training samples) and an mlp
Alice pre-trained on it for one epoch, Bob has n_bob = BENCH_DEPTH_NBOB (1000) samples. Measured
side by side: `engine choose-depth` with the default predictor (the whole command, `recommend`:
loading the dataset and the checkpoint, Bob's activations, the predictor), and the L = 5
fine-tunes it replaces, each on those n_bob samples for the sweep's default 10 epochs, with the
sweep's own code (`run_bob`, serial, on the CPU) but without the test-split evaluation. The
tracked ratio is fine-tunes time / choose-depth time (goal >= 10: a tenth of the sweep's cost).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pytest

from engine import paths

ROOT = Path(os.environ.get("ENGINE_DATA_ROOT", "data"))
if not (ROOT / "MNIST" / "raw").is_dir() or not (ROOT / "FashionMNIST" / "raw").is_dir():
    pytest.skip("real MNIST and Fashion-MNIST needed under ENGINE_DATA_ROOT", allow_module_level=True)

N_TRAIN = int(os.environ.get("BENCH_DEPTH_N", 3000))
N_BOB = int(os.environ.get("BENCH_DEPTH_NBOB", 1000))
EPOCHS = 10


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from engine.cli import main
    out = tmp_path_factory.mktemp("depth")
    data = engine_build(out)
    assert main(["pretrain", "--data", str(data), "--arch", "mlp", "--epochs", "1",
                 "--out", str(out), "--device", "cpu"]) == 0
    alice = next(p for p in paths.alice_dir(out, "x").parent.iterdir()
                 if (p / "model.safetensors").is_file())
    return data, alice


def engine_build(out: Path) -> Path:
    import engine
    return engine.build_data("mnist:fashion", 0.5, n_train=N_TRAIN, n_test=500,
                             data_root=str(ROOT), out=str(out / "datasets"))


def _choose(data: Path, alice: Path, predictor: str) -> dict:
    from engine.analysis.depth.recommend import recommend
    return recommend(argparse.Namespace(
        data=str(data), alice=str(alice), n_bob=N_BOB, predictor=predictor, arch=None, seed=0,
        epochs=EPOCHS, optimizer="sgd", lr=None, batch_size=128, evaluations=None, json=True))


def _fine_tunes(data: Path, alice: Path) -> float:
    """Seconds of one fine-tune per depth (the sweep's run_bob, no test evaluation)."""
    import torch
    from engine.analysis.artifacts import _model_from
    from engine.data.manifest import read_manifest
    from engine.spec import BobSpec
    from engine.sweep.executors import run_bob
    from engine.train.alice import load_data
    from engine.train.trainer import CompiledModelCache
    model, spec, _ = _model_from(alice / "model.safetensors")
    train, test = load_data(data, torch.device("cpu"))
    one = type(test)(test.images[:1], {k: v[:1] for k, v in test.labels.items()}, test.mean,
                     test.std)
    classes = len(read_manifest(data)["sources"]["right"]["classes"])
    cache = CompiledModelCache(torch.device("cpu"), compile=False)
    start = time.perf_counter()
    for l in range(1, model.n_layers + 1):
        s = BobSpec(alice_id=spec["id"], dataset=read_manifest(data)["key"], arch="mlp",
                    retrain_from=l, mode="finetune", n_bob=N_BOB, epochs=EPOCHS)
        run_bob(s, train, one, n_classes=classes, alice_state=model.state_dict(), cache=cache,
                device=torch.device("cpu"))
    return time.perf_counter() - start


@pytest.mark.parametrize("predictor", ["h-score", "correlation"])
def test_choose_depth_vs_fine_tunes(benchmark, track, task, predictor):
    data, alice = task
    fine = _fine_tunes(data, alice)
    answer = benchmark.pedantic(lambda: _choose(data, alice, predictor), rounds=3, iterations=1)
    chosen = benchmark.stats.stats.median
    benchmark.extra_info.update({"fine_tunes_s": fine, "choose_depth_s": chosen,
                                 "depth": answer["depth"], "n_bob": N_BOB, "epochs": EPOCHS})
    track(f"choose-depth ({predictor}) vs one fine-tune per depth", fine / chosen, floor=10,
          workload=f"mlp n_train={N_TRAIN} n_bob={N_BOB} epochs={EPOCHS}")
