"""Alices pre-trained together (engine.train.batched_alice) against `train_alice`, one at a time:
the same weights and metrics within the batched tests' tolerances, the same checkpoints written
(names, specs, metric keys), and the batched executor's Alice stage writing what `pretrain`
writes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import engine
from engine import paths
from engine.spec import AliceSpec
from engine.sweep.executors import BatchedExecutor, Context, SerialExecutor
from engine.threads import one_thread
from engine.train.alice import load_data, train_alice
from engine.train.batched_alice import train_alices
from engine.train.checkpoint import load_checkpoint
from engine.train.device import DeviceData
from conftest import two_half_arrays
from test_batched import LOSS_TOL, WEIGHT_TOL
from test_sweep import tiny_pair  # noqa: F401  (fixture)

OPTIONS = {"mlp": dict(depth=2, width=32), "cnn": dict(depth=2, width=4)}


def _data(seed: int) -> tuple[DeviceData, DeviceData, int]:
    train = DeviceData.from_arrays(*two_half_arrays(64, seed), "cpu")
    test = DeviceData.from_arrays(*two_half_arrays(40, seed + 100), "cpu", stats=train.stats)
    return train, test, 10


def _recorder(store: dict):
    def write(*args):
        spec, (epoch, state, model_spec, metrics) = (args[0], args[1:]) if len(args) == 5 \
            else (None, args)
        store[(spec.id if spec else None, epoch)] = (
            {k: v.detach().clone() for k, v in state.items()}, model_spec, metrics)
    return write


@pytest.mark.parametrize("arch,optimizer", [("mlp", "sgd"), ("cnn", "adam")])
def test_batched_alices_match_train_alice(arch, optimizer):
    data = {"d0": _data(1), "d1": _data(2)}
    specs = [AliceSpec(dataset=d, arch=arch, optimizer=optimizer, epochs=2, batch_size=16,
                       seed=s, **OPTIONS[arch]) for d in data for s in (0, 3)]
    together: dict = {}
    with one_thread():
        finals = train_alices(specs, data, "cpu", (0, 1), write=_recorder(together))
        for spec in specs:
            alone: dict = {}
            train, test, classes = data[spec.dataset]
            metrics = train_alice(spec, train, test, classes, (0, 1), "cpu",
                                  write=lambda *a: _recorder(alone)(*a))
            assert finals[spec.id].keys() == metrics.keys()
            for key in ("train_loss", "train_acc", "test_loss"):
                assert finals[spec.id][key] == pytest.approx(
                    metrics[key], rel=LOSS_TOL["rtol"], abs=LOSS_TOL["atol"]), key
            assert abs(finals[spec.id]["test_acc"] - metrics["test_acc"]) <= 1 / 40 + 1e-9
            for epoch in (0, 1, None):
                s_alone, spec_alone, m_alone = alone[(None, epoch)]
                s_group, spec_group, m_group = together[(spec.id, epoch)]
                assert spec_group == spec_alone and m_group.keys() == m_alone.keys()
                assert s_group.keys() == s_alone.keys()
                for name, t in s_alone.items():
                    tol = {} if epoch == 0 else WEIGHT_TOL  # initial weights: bit for bit
                    torch.testing.assert_close(s_group[name], t, **tol, msg=(epoch, name))


def test_batched_executor_writes_what_pretrain_writes(tiny_pair, tmp_path):  # noqa: F811
    data = engine.build_data(tiny_pair, 0.5, n_train=256, n_test=128, out=tmp_path / "datasets")
    specs = [AliceSpec(dataset=data.name, arch="mlp", epochs=2, seed=s, depth=2, width=16)
             for s in (0, 1, 2)]
    trees = {}
    for executor in (SerialExecutor(), BatchedExecutor()):
        out = tmp_path / executor.name
        log: list[str] = []
        ctx = Context(out=out, dataset_dirs={data.name: data}, device=torch.device("cpu"),
                      log=log.append, alice_save_epochs=(0, 2))
        executor.pretrain(specs, ctx)
        trees[executor.name] = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
        for spec in specs:
            _, saved, metrics = load_checkpoint(paths.alice_checkpoint(out, spec.id),
                                                require_digest=True)
            assert saved["alice"] == spec.to_dict() and metrics["saved_epochs"] == [0, 2]
        if executor.name == "batched":
            assert any("batched, 3 Alices" in line for line in log), log
            executor.pretrain(specs, ctx)  # complete: reused, nothing rewritten
            assert sum("reusing Alice" in line for line in log) == 3
    assert trees["serial"] == trees["batched"]
    serial = load_checkpoint(paths.alice_checkpoint(tmp_path / "serial", specs[1].id))
    batched = load_checkpoint(paths.alice_checkpoint(tmp_path / "batched", specs[1].id))
    assert batched[2].keys() == serial[2].keys()
    assert batched[2]["test_acc"] == pytest.approx(serial[2]["test_acc"], abs=2 / 128)
    train, _ = load_data(Path(data), torch.device("cpu"))
    assert batched[2]["n_train"] == len(train)
