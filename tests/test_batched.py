"""engine.train.batched against the serial path (`run_bob` in engine.sweep), member by member.

Tolerance: float32 reassociation only (grouped convolutions, batched matmuls, other reduction
orders): gradients differ by ~1e-6 relative. Some runs amplify that: a scratch cnn member here
(BatchNorm over 16 samples) moves its weights by 1.5e-5 in three serial steps when its initial
weights are perturbed by 1e-7 relative. Observed batched-vs-serial worst cases over this file:
per-step loss 3e-6 absolute (1.7e-4 relative, at a loss near 0.02), test loss 1.3e-4 relative,
weights and BN statistics 9e-5 absolute. So losses must agree to LOSS_TOL (rtol 1e-3, atol 1e-4),
weights and BN statistics to WEIGHT_TOL (rtol = atol = 1e-3), test accuracy to one test sample;
frozen layers bit for bit. Swapping two members' shuffling, initial weights, BN statistics or
optimizer state changes these by 1e-2 or more, and the perturbation tests show the check fails.
"""
from __future__ import annotations

import shutil

import pytest
import torch

from engine.spec import MODES, BobSpec, frozen_prefix, n_layers
from engine.train import batched, features, grouped, trainer
from engine.train.freeze import prepare_bob
from engine.train.batched import Member, group_key, member_state, train_group
from engine.train.models import build_model
from engine.threads import one_thread
from engine.train.device import DeviceData
from engine.train.trainer import CompiledModelCache
from conftest import TWO_HALF_SHAPE, two_half_arrays

LOSS_TOL = dict(rtol=1e-3, atol=1e-4)
WEIGHT_TOL = dict(rtol=1e-3, atol=1e-3)
TRAIN_STEP = trainer.train_step
N_TRAIN, N_TEST, BATCH = 48, 40, 16
ARCH_OPTIONS = {"mlp": dict(depth=2, width=32), "cnn": dict(depth=2, width=4)}  # L = 3


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors here are small: on a busy 2-core machine torch's thread hand-offs dominate."""
    with one_thread():
        yield


def _datasets() -> list[tuple[DeviceData, DeviceData]]:
    """Two datasets, standing for two betas: different images and labels."""
    out = []
    for seed in (1, 2):
        train = DeviceData.from_arrays(*two_half_arrays(N_TRAIN, seed), "cpu")
        test = DeviceData.from_arrays(*two_half_arrays(N_TEST, seed + 100), "cpu",
                                      stats=train.stats)
        out.append((train, test))
    return out


DATA = _datasets()


def _alice(arch: str, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build_model(arch, TWO_HALF_SHAPE, 10, **ARCH_OPTIONS[arch])
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def _members(arch: str, optimizer: str, n_bob: int | None, *, modes=MODES, seeds=(0, 1),
             retrain_from: int = 2, epochs: int = 2) -> list[Member]:
    out = []
    for d, (train, test) in enumerate(DATA):
        alice = _alice(arch, 10 + d)
        for seed in seeds:
            for mode in modes:
                uses_alice = mode in ("finetune", "reinit")
                spec = BobSpec(alice_id=f"alice{d}" if uses_alice else "", dataset=f"data{d}",
                               arch=arch, retrain_from=retrain_from, mode=mode, n_bob=n_bob,
                               seed=seed, epochs=epochs, optimizer=optimizer, batch_size=BATCH,
                               **ARCH_OPTIONS[arch])
                out.append(Member(spec, train, test, alice if uses_alice else None, 10))
    return out


def _groups(members: list[Member]) -> list[list[Member]]:
    groups: dict[tuple, list[Member]] = {}
    for m in members:
        key = group_key(m.spec, m.train.input_shape, m.n_classes, m.spec.n_bob or len(m.train))
        groups.setdefault(key, []).append(m)
    return list(groups.values())


def _serial(m: Member, monkeypatch) -> dict:
    """The serial path of one run, as `run_bob` takes it, with the loss after every step and the
    final state dict."""
    losses = []

    def recording_step(runner, opt, x, y, **kw):
        loss, right = TRAIN_STEP(runner, opt, x, y, **kw)
        losses.append(loss.item() / len(y))
        return loss, right

    monkeypatch.setattr(trainer, "train_step", recording_step)
    spec, train = m.spec, m.train
    L = n_layers(spec.arch, spec.depth, spec.width, spec.global_pool)
    frozen = frozen_prefix(L, spec.retrain_from, spec.mode)
    runner = CompiledModelCache("cpu", compile=False).get(
        spec.arch, train.input_shape, m.n_classes, frozen_upto=frozen, depth=spec.depth,
        width=spec.width, global_pool=spec.global_pool)
    params = prepare_bob(runner.model, m.alice_state, retrain_from=spec.retrain_from,
                         mode=spec.mode, seed=spec.seed)
    data = train.subset(spec.n_bob, spec.seed)
    fit = trainer.fit(runner.model, params, data, "bob_label", epochs=spec.epochs, lr=spec.lr,
                      optimizer=spec.optimizer, batch_size=spec.batch_size, seed=spec.seed,
                      frozen_upto=frozen, runner=runner)
    test_acc, test_loss = trainer.evaluate(runner.model, m.test, "bob_label", runner=runner)
    state = {n: t.detach().clone() for n, t in runner.model.state_dict().items()}
    return {"test_acc": test_acc, "test_loss": test_loss, "train_acc": fit["train_acc"],
            "train_loss": fit["train_loss"], "losses": losses, "state": state}


def _batched(members: list[Member], perturb=None, after_step=None, budget=None,
             size=None) -> list[dict]:
    """One group through batched's own stages, so tests can perturb it; members in order.
    `budget` (bytes) None: the device's; 0: no frozen-feature cache (the frozen layers run in
    the step); `size`: slots, padded with dummies."""
    budget = trainer.feature_budget(torch.device("cpu")) if budget is None else budget
    cache = batched._feature_cache(members, batched._key(members[0])[6], budget, "cpu")
    group = batched._setup(members, cache, size)
    losses = [[] for _ in members]

    def on_step(s, loss, g):
        for k, v in enumerate(loss.tolist()):
            losses[k].append(v)
        if after_step is not None:
            after_step(s, g)

    if perturb is not None:
        perturb(group)
    batched._run(group, False, on_step)
    out = batched._evaluate(group, budget, cache)
    return [{**o, "losses": losses[k], "state": member_state(group, k), "frozen": group.frozen}
            for k, o in enumerate(out)]


def _check(b: dict, s: dict, n_test: int = N_TEST) -> None:
    """Raises AssertionError where a batched member's result is not its serial run's."""
    assert len(b["losses"]) == len(s["losses"])
    torch.testing.assert_close(torch.tensor(b["losses"]), torch.tensor(s["losses"]),
                               **LOSS_TOL)
    assert b["state"].keys() == s["state"].keys()
    for name, t in s["state"].items():
        layer = int(name.split(".")[1])
        if layer < b["frozen"]:
            assert torch.equal(b["state"][name], t), f"frozen {name} changed"
        else:
            torch.testing.assert_close(b["state"][name], t, **WEIGHT_TOL, msg=name)
    for key in ("train_loss", "train_acc", "test_loss"):
        assert b[key] == pytest.approx(s[key], rel=LOSS_TOL["rtol"], abs=LOSS_TOL["atol"]), key
    assert abs(b["test_acc"] - s["test_acc"]) <= 1 / n_test + 1e-9
    for key in ("n_layers", "n_bob", "wall_s", "samples_per_s"):
        assert key in b


@pytest.mark.parametrize("arch,optimizer", [("mlp", "sgd"), ("mlp", "adam"), ("cnn", "sgd"),
                                            ("cnn", "adam")])
def test_batched_matches_serial_every_step(arch, optimizer, monkeypatch):
    for n_bob in (32, None):  # two sample counts: separate groups
        members = _members(arch, optimizer, n_bob)
        groups = _groups(members)
        assert sorted(len(g) for g in groups) == [4, 12]  # scratch (frozen 0); the other modes
        for group in groups:
            for b, m in zip(_batched(group), group):
                _check(b, _serial(m, monkeypatch))


def test_uncached_prefix_per_step_matches_serial(monkeypatch):
    members = _members("cnn", "sgd", 32, modes=("finetune", "reinit", "random-frozen"))
    seen = {}
    out = _batched(members, perturb=lambda g: seen.update(cached=g.feats is not None), budget=0)
    assert seen == {"cached": False}
    for b, m in zip(out, members):
        _check(b, _serial(m, monkeypatch))


def test_out_of_memory_halves_the_group(monkeypatch):
    members = _members("mlp", "sgd", 32, modes=("finetune", "reinit", "random-frozen"))
    whole = train_group(members, "cpu")
    sizes, run = [], batched._run

    def small_device(group, *args, **kw):
        sizes.append(len(group.members))
        if len(group.members) > 3:
            raise torch.cuda.OutOfMemoryError("fake")
        return run(group, *args, **kw)

    monkeypatch.setattr(batched, "_run", small_device)
    halves = train_group(members, "cpu")
    assert sizes == [12, 6, 3, 3, 6, 3, 3]
    for a, b in zip(whole, halves):
        for key in ("test_acc", "test_loss", "train_loss", "train_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6)


def _swap(t: torch.Tensor, a: int, b: int, K: int) -> None:
    v = t.unflatten(0, (K, -1))
    v[[a, b]] = v[[b, a]].clone()


def _swap_all(tensors: dict, a: int, b: int, K: int) -> None:
    for t in tensors.values():
        _swap(t, a, b, K)


@pytest.mark.parametrize("what", ["shuffling", "initial weights", "BN statistics",
                                  "optimizer state"])
def test_check_detects_swapped_members(what, monkeypatch):
    # Two scratch members on one dataset differing only in seed; cnn for BN, Adam for 2 moments.
    members = _members("cnn", "adam", 32, modes=("scratch",), seeds=(0, 1))[:2]
    K = len(members)
    serial = [_serial(m, monkeypatch) for m in members]
    for b, s in zip(_batched(members), serial):  # unperturbed: passes
        _check(b, s)
    perturb = after = None
    if what == "shuffling":
        perturb = lambda g: g.generators.reverse()  # noqa: E731
    elif what == "initial weights":
        perturb = lambda g: _swap_all(g.params, 0, 1, K)  # noqa: E731
    elif what == "BN statistics":  # equal (0, 1) at the start: swap after a step
        after = lambda s, g: s == 0 and _swap_all(g.buffers, 0, 1, K)  # noqa: E731
    else:
        after = lambda s, g: s == 1 and [_swap_all(o, 0, 1, K) for o in g.opt.values()]  # noqa: E731
    swapped = _batched(members, perturb, after)
    with pytest.raises(AssertionError):
        _check(swapped[0], serial[0])


def test_head_only_group_of_50(monkeypatch):
    members = _members("mlp", "sgd", 32, modes=("finetune",), seeds=range(25), retrain_from=3,
                       epochs=1)
    assert len(_groups(members)) == 1 and len(members) == 50
    seen = {}
    out = _batched(members, perturb=lambda g: seen.update(group=g))
    group = seen["group"]
    # Frozen features once per (Alice, dataset) over the union of subsets, not once per member.
    assert group.feats.shape[0] <= 2 * N_TRAIN and group.feats.shape[1:] == (32,)
    for k in (0, 1, 26, 49):
        _check(out[k], _serial(members[k], monkeypatch))
    calls, compute = [], features.frozen_features
    monkeypatch.setattr(features, "frozen_features",
                        lambda *a: calls.append(len(a[1])) or compute(*a))
    public = train_group(members, "cpu", max_group=16)  # 4 groups
    # The 4 groups share the prefix outputs: once per (Alice, dataset) for training, once per
    # (Alice, test split) for evaluation.
    assert sorted(calls) == [N_TEST, N_TEST, N_TRAIN, N_TRAIN], calls
    for k in (0, 49):
        for key in ("test_acc", "test_loss", "train_loss"):
            assert public[k][key] == pytest.approx(out[k][key], rel=1e-6, abs=1e-6)


def test_deeper_groups_continue_from_shallower_prefix_outputs(monkeypatch):
    from engine.sweep.executors import train_groups
    members = [m for l in (3, 2) for m in _members("mlp", "sgd", 32, modes=("finetune",),
                                                    retrain_from=l, epochs=1)]
    calls, compute = [], features.frozen_features
    monkeypatch.setattr(features, "frozen_features",
                        lambda *a: calls.append(len(a[1])) or compute(*a))
    alone = [r for l in (3, 2) for r in train_group(
        [m for m in members if m.spec.retrain_from == l], "cpu")]
    assert len(calls) == 8  # 2 depths x 2 Alices x 2 splits, each prefix from the images
    calls.clear()
    shared = [r for _, r in train_groups(members, "cpu", None)]
    # Frozen depth 1 first; depth 2 continues from its outputs (layer 1 only).
    assert len(calls) == 4
    by_spec = {m.spec: r for m, r in zip(members, alone)}
    for (spec, r) in zip([m.spec for m in sorted(members, key=lambda m: m.spec.retrain_from)],
                         shared):
        for key in ("test_acc", "test_loss", "train_loss"):
            assert r[key] == pytest.approx(by_spec[spec][key], rel=1e-5, abs=1e-6), (spec, key)


def test_prefix_store_serves_only_rows_it_computed():
    store = features.PrefixStore(budget=1 << 20)
    rows = torch.tensor([1, 3, 5, 7])
    out = torch.arange(4.0).unsqueeze(1)
    store.keep("k", rows, 2, out)
    assert store.start("k", rows, 3)[0] == 2 and store.start("k", rows, 3)[1] is out
    depth, part = store.start("k", torch.tensor([3, 7]), 2)
    assert depth == 2 and part.flatten().tolist() == [1.0, 3.0]
    assert store.start("k", torch.tensor([3, 4]), 3) == (0, None)  # row 4 never computed
    assert store.start("k", rows, 1) == (0, None)  # stored deeper than asked
    assert store.start("other", rows, 3) == (0, None)
    features.PrefixStore(budget=8).keep("k", rows, 2, out)  # over budget: not kept, no error


def test_serial_runs_share_prefix_outputs_through_a_store(monkeypatch):
    """The batched executor's runs that train alone (conv tails on the CPU) take their frozen
    prefix's outputs from a PrefixStore: same metrics as computing the prefix themselves."""
    from engine.sweep.executors import run_bob
    monkeypatch.setattr(features, "MIN_FLOPS_PER_BYTE", 0)  # the tiny test cnn: share anyway
    (train, test), alice = DATA[0], _alice("cnn", 10)
    specs = [BobSpec(alice_id="a" if mode != "random-frozen" else "", dataset="d", arch="cnn",
                     retrain_from=l, mode=mode, n_bob=n_bob, seed=1, epochs=1,
                     batch_size=BATCH, **ARCH_OPTIONS["cnn"])
             for l in (2, 3) for mode in ("finetune", "reinit", "random-frozen")
             for n_bob in (32, None)]
    kw = dict(n_classes=10, cache=CompiledModelCache("cpu", compile=False),
              device=torch.device("cpu"))
    plain = [run_bob(s, train, test, alice_state=alice if s.alice_id else None, **kw)
             for s in specs]
    calls, compute = [], features.frozen_features
    monkeypatch.setattr(features, "frozen_features",
                        lambda *a: calls.append(len(a[1])) or compute(*a))
    store = features.PrefixStore(1 << 30)
    shared = [run_bob(s, train, test, alice_state=alice if s.alice_id else None, store=store,
                      **kw) for s in specs]
    # From the images only at depth 1, once per (source, split): Alice's and seed 1's, train
    # and test; depth 2 continues from them, and runs sharing a source reuse its outputs.
    assert sorted(calls) == [N_TEST, N_TEST, N_TRAIN, N_TRAIN], calls
    for s, a, b in zip(specs, plain, shared):
        for key in ("test_acc", "test_loss", "train_loss", "train_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (s, key)


def test_prefix_outputs_are_shared_only_where_recomputing_costs_more():
    from engine.train.trainer import make_runner
    train = DeviceData.from_arrays(*two_half_arrays(8, 0), "cpu")
    model = build_model("cnn", TWO_HALF_SHAPE, 10)  # the reference cnn
    # One 3x3 conv of 1 -> 32 channels: 4.5 FLOP per output byte; two layers: 153.
    assert not features.worth_sharing(make_runner(model, 1), train)
    assert features.worth_sharing(make_runner(model, 2), train)


def test_train_group_public_api_and_state():
    members = _members("cnn", "sgd", 32, seeds=(3,))
    groups = _groups(members)
    group = max(groups, key=len)
    out = train_group(group, "cpu", return_state=True)
    assert len(out) == len(group)
    for m, o in zip(group, out):
        assert o["n_bob"] == 32 and o["n_layers"] == 3 and 0 <= o["test_acc"] <= 1
        assert o["state"]["layers.0.0.weight"].shape == (4, 1, 3, 3)
    with pytest.raises(Exception, match="group_key"):
        train_group(members, "cpu")  # scratch and the other modes differ in frozen depth


def _inductor_cpu_available() -> bool:
    return shutil.which("g++") is not None or shutil.which("c++") is not None


@pytest.mark.skipif(not _inductor_cpu_available(), reason="no C++ compiler for inductor")
def test_compiled_step_no_graph_break_no_recompile(monkeypatch):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(grouped, "_STEPS", {})
    first = _members("mlp", "adam", 32, modes=("finetune", "random-frozen"), seeds=(0,))
    eager = train_group(first, "cpu", compile=False)
    compiled = train_group(first, "cpu", compile=True)
    for e, c in zip(eager, compiled):
        for key in ("test_loss", "train_loss"):  # inductor fuses (FMA): reassociation again
            assert c[key] == pytest.approx(e[key], rel=LOSS_TOL["rtol"], abs=LOSS_TOL["atol"])
    assert not counters["graph_break"]
    # Same group shape, other members: not one recompile.
    with torch._dynamo.config.patch(error_on_recompile=True):
        train_group(_members("mlp", "adam", 32, modes=("reinit", "random-frozen"), seeds=(5,)),
                    "cpu", compile=True)
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 1
