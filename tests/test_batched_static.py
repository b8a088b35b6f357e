"""The batched step as the GPU runs it: static compilation (one graph per program and padded group
size), no step output read after the next step, dummy members, the frozen layers inside the step
when their outputs do not fit the memory plan, and the memory plan itself.

Compilation here uses the `aot_eager` backend (dynamo and AOT autograd, as inductor sees them,
without generating code): what recompiles and what breaks graphs is decided before the backend.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from engine.train import batched, grouped, trainer
from engine.train.batched import train_group
from engine.train.device import MemoryPlan, usable_memory
from test_batched import LOSS_TOL, N_TEST, _batched, _check, _members, _serial


def test_run_epochs_reads_no_step_output_after_the_next_step():
    """A step that overwrites its previous outputs when it runs again, as a CUDA-graph replay
    does: the epoch totals must still be the sum of what each step returned."""
    previous: list[torch.Tensor] = []

    def step(x, y):
        for t in previous:
            t.fill_(-1000)  # the memory the next replay reuses
        previous.clear()
        loss, right = x.sum().reshape(()), (y > 0).sum()
        previous.extend([loss, right])
        return loss, right

    batches = lambda: ((torch.tensor([float(i)]), torch.tensor([i])) for i in range(1, 5))  # noqa: E731
    last = trainer.run_epochs(2, batches, step)
    assert last["loss_sum"].item() == 1 + 2 + 3 + 4
    assert last["correct"].item() == 4 and last["seen"] == 4 and last["steps"] == 8


def test_pack_gives_canonical_strides():
    """A 1-input-channel conv weight in channels-last keeps its odd stride under .contiguous();
    the step returns it contiguous, so the next step would recompile for the stride."""
    w = torch.randn(4, 1, 3, 3).contiguous(memory_format=torch.channels_last)
    program = (("conv", "c", 1, 1, 1),)
    packed = grouped.pack(program, [{"c.weight": w}, {"c.weight": w}], ["c.weight"])
    assert packed["c.weight"].stride() == torch.empty(8, 1, 3, 3).stride()


def test_dummy_members_change_no_member_result(monkeypatch):
    members = _members("cnn", "sgd", 32, modes=("finetune", "random-frozen"), seeds=(0,))
    assert len(members) == 4
    plain, padded = _batched(members), _batched(members, size=8)
    for a, b in zip(plain, padded):
        for key in ("test_acc", "test_loss", "train_loss", "train_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6), key
        for name, t in a["state"].items():
            torch.testing.assert_close(b["state"][name], t, rtol=1e-6, atol=1e-6, msg=name)
    assert len(padded) == 4


def test_uncached_group_runs_the_frozen_layers_inside_the_step(monkeypatch):
    """Over a forced feature budget of 0 bytes, a group trains from its members' images with
    the frozen layers inside the step: no eager prefix call per step, and the serial results."""
    members = _members("cnn", "sgd", 32, modes=("finetune", "reinit", "random-frozen"))
    calls, eager = [], batched._prefix_out
    monkeypatch.setattr(batched, "_prefix_out", lambda *a: calls.append(1) or eager(*a))
    per_step, seen = [], {}

    def after(step, group):
        per_step.append(len(calls))
        seen.update(prefix=group.prefix, feats=group.feats)

    out = _batched(members, after_step=after, budget=0)
    assert seen["feats"] is None and seen["prefix"]
    assert len(per_step) > 2 and len(set(per_step)) == 1, per_step  # none during training
    for b, m in zip(out, members):
        _check(b, _serial(m, monkeypatch))


def _compiled_groups(specs_by_group, backend="aot_eager"):
    for members in specs_by_group:
        train_group(members, "cpu", compile=True, backend=backend)


def test_one_graph_per_program_and_padded_size(monkeypatch):
    """Two programs (frozen depths 1 and 2) at two group sizes (3 -> 8 slots, 10 -> 16), under
    bf16 autocast as on CUDA: four graphs, no graph break; the same shapes again with other
    members compile nothing new."""
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(grouped, "_STEPS", {})

    def groups(seeds):
        out = []
        for retrain_from in (2, 3):
            for n in (3, 10):
                ms = _members("cnn", "sgd", 32, modes=("finetune",), seeds=seeds[:n],
                              retrain_from=retrain_from, epochs=1)
                out.append([dataclasses.replace(m, spec=dataclasses.replace(
                    m.spec, precision="bf16")) for m in ms if m.train is ms[0].train][:n])
        return out

    _compiled_groups(groups(list(range(10))))
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 4
    slots = [s["K_padded"] for s in list(batched.GROUP_STATS)[-4:]]
    assert slots == [8, 16, 8, 16]
    with torch._dynamo.config.patch(error_on_recompile=True):
        _compiled_groups(groups(list(range(20, 30))))
    assert counters["stats"]["unique_graphs"] == 4 and not counters["graph_break"]


def test_compiled_uncached_group_matches_eager(monkeypatch):
    """The in-step prefix compiles whole and computes what the eager step does."""
    torch._dynamo.reset()
    counters.clear()
    members = _members("cnn", "adam", 32, modes=("finetune", "random-frozen"), seeds=(0,))
    monkeypatch.setattr(batched.MemoryPlan, "SHARES", (0.0, 0.3, 0.0))  # nothing cached
    eager = train_group(members, "cpu", compile=False)
    compiled = train_group(members, "cpu", compile=True, backend="aot_eager")
    assert list(batched.GROUP_STATS)[-1]["features"] == "in-step"
    assert not counters["graph_break"]
    for e, c in zip(eager, compiled):
        for key in ("test_loss", "train_loss"):
            assert c[key] == pytest.approx(e[key], rel=LOSS_TOL["rtol"], abs=LOSS_TOL["atol"])


def test_memory_plan_shares_do_not_overlap():
    plan = MemoryPlan.of(torch.device("cpu"), usable=1000)
    assert plan.features + plan.groups + plan.store <= 1000
    assert min(plan.features, plan.groups, plan.store) > 0
    assert usable_memory(torch.device("cpu")) > 0


def test_groups_close_where_their_features_would_pass_the_plan(monkeypatch):
    """Members of two datasets (two sources' features each): with a feature share that holds
    one dataset's features, the call trains two groups, each from cached features."""
    members = _members("mlp", "sgd", 32, modes=("finetune",), seeds=(0, 1), retrain_from=3)
    _, _, feature = batched._sizes(members[0], batched._key(members[0])[6])
    one = (32 + 32 + 2 * N_TEST) * feature  # a dataset: two seeds' subsets (at most) + test
    monkeypatch.setattr(batched.MemoryPlan, "of",
                        classmethod(lambda cls, device, usable=None: cls(one, 1 << 30, 0)))
    before = len(batched.GROUP_STATS)
    out = train_group(members, "cpu")
    stats = list(batched.GROUP_STATS)[before:]
    assert [s["K"] for s in stats] == [2, 2]
    assert all(s["features"] == "cached" for s in stats)
    whole = train_group(members, "cpu", max_group=None)
    assert len(out) == len(whole) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_step_matches_eager():
    """On CUDA: the compiled static step (inductor) against the eager step, cached and in-step."""
    members = _members("cnn", "sgd", 32, modes=("finetune", "random-frozen"), seeds=(0, 1))
    moved = [batched.Member(m.spec, _to_cuda(m.train), _to_cuda(m.test),
                            None if m.alice_state is None else
                            {k: v.cuda() for k, v in m.alice_state.items()}, m.n_classes)
             for m in members]
    eager = train_group(moved, "cuda", compile=False)
    compiled = train_group(moved, "cuda", compile=True)
    for e, c in zip(eager, compiled):
        assert c["test_loss"] == pytest.approx(e["test_loss"], rel=2e-2, abs=2e-2)


def _to_cuda(data):
    from engine.train.device import DeviceData
    return DeviceData(data.images.cuda(), {k: v.cuda() for k, v in data.labels.items()},
                      data.mean.cuda(), data.std.cuda())


@pytest.mark.parametrize("first", ["serial runner", "batched step"])
def test_compiled_graphs_go_to_the_engine_cache(monkeypatch, tmp_path, first):
    """Whichever compiles first in a process, inductor's directory is the engine's: inductor
    sets the variable to its own default at its first compile, after which it would stay."""
    from engine.train.models import build_model
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path))
    if first == "serial runner":
        trainer.make_runner(build_model("mlp", (4, 4, 1), 3, depth=1, width=4), 0, compile=True,
                            backend="aot_eager")
    else:
        monkeypatch.setattr(grouped, "_STEPS", {})
        grouped.step_fn((("linear", "l"),), (), "sgd", torch.device("cpu"), True, "aot_eager")
    import os
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
