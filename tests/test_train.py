from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TWO_HALF_SHAPE, two_half_arrays
from engine.train.checkpoint import load_checkpoint, save_checkpoint
from engine.errors import EngineError
from engine.train.freeze import MODES, frozen_prefix, layer_plan, prepare_bob
from engine.train.models import build_model
from engine.train.device import DeviceData
from engine.train.trainer import (CompiledModelCache, epoch_batches, evaluate, feature_budget, fit,
                                  make_runner)

SHAPE = TWO_HALF_SHAPE  # conftest.two_half_arrays
CNN = {"width": 8}  # small enough for fast CPU tests


@pytest.fixture(scope="module")
def data():
    return DeviceData.from_arrays(*two_half_arrays(256, seed=0), "cpu")


@pytest.fixture(scope="module")
def test_data(data):
    return DeviceData.from_arrays(*two_half_arrays(128, seed=1), "cpu", stats=data.stats)


@pytest.fixture(scope="module")
def alice(data):
    """Alice's trained cnn state: BN running stats are non-trivial."""
    model = build_model("cnn", SHAPE, 10, **CNN)
    params = prepare_bob(model, None, retrain_from=1, mode="scratch", seed=100)
    fit(model, params, data, "alice_label", epochs=2, seed=100)
    return {k: v.clone() for k, v in model.state_dict().items()}


def cnn():
    return build_model("cnn", SHAPE, 10, **CNN)


def layer_state(model, i):
    return {k: v.clone() for k, v in model.layers[i].state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def alice_layer(alice, i):
    prefix = f"layers.{i}."
    return {k[len(prefix):]: v for k, v in alice.items() if k.startswith(prefix)}


# Freezing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["finetune", "reinit", "random-frozen"])
def test_frozen_layers_bit_identical_after_fit(data, alice, mode):
    model, l = cnn(), 3
    params = prepare_bob(model, alice, retrain_from=l, mode=mode, seed=0)
    before = [layer_state(model, i) for i in range(model.n_layers)]
    fit(model, params, data, "bob_label", epochs=2, seed=0, frozen_upto=l - 1,
        feature_cache_bytes=0)
    for i in range(l - 1):  # params and buffers (running_mean/var, num_batches_tracked)
        assert same(layer_state(model, i), before[i])
        assert not any(p.requires_grad for p in model.layers[i].parameters())
    for i in range(l - 1, model.n_layers):
        after = layer_state(model, i)
        for name, p in model.layers[i].named_parameters():
            assert p.requires_grad and not torch.equal(after[name], before[i][name]), name
    bn = model.layers[l - 1][1]
    assert not torch.equal(bn.running_mean, before[l - 1]["1.running_mean"])
    assert bn.num_batches_tracked.item() == before[l - 1]["1.num_batches_tracked"].item() + 4


def test_mode_starting_points(alice):
    l, L = 3, 5
    models = {m: cnn() for m in MODES}
    trainable = {m: prepare_bob(models[m], alice, retrain_from=l, mode=m, seed=0) for m in MODES}
    for mode, model in models.items():
        from_alice = [same(layer_state(model, i), alice_layer(alice, i)) for i in range(L)]
        expected = {
            "finetune": [True, True, True, True, False],
            "reinit": [True, True, False, False, False],
            "scratch": [False] * 5,
            "random-frozen": [False] * 5,
        }[mode]
        assert from_alice == expected, mode
        assert not torch.equal(model.head.weight, alice[f"layers.{L - 1}.weight"])
        first_trained = 0 if mode == "scratch" else l - 1
        want = [id(p) for p in model.layers[first_trained:].parameters()]
        assert [id(p) for p in trainable[mode]] == want, mode
        assert frozen_prefix(L, l, mode) == first_trained


def test_fresh_layers_are_shared_across_modes_and_seeded(alice):
    reinit, scratch, other_seed = cnn(), cnn(), cnn()
    prepare_bob(reinit, alice, retrain_from=3, mode="reinit", seed=7)
    prepare_bob(scratch, None, retrain_from=1, mode="scratch", seed=7)
    prepare_bob(other_seed, None, retrain_from=1, mode="scratch", seed=8)
    for i in range(2, 5):
        assert same(layer_state(reinit, i), layer_state(scratch, i))
        assert not same(layer_state(other_seed, i), layer_state(scratch, i))


def test_random_frozen_stays_fixed_and_differs_from_alice(data, alice):
    model = cnn()
    params = prepare_bob(model, alice, retrain_from=4, mode="random-frozen", seed=3)
    before = [layer_state(model, i) for i in range(3)]
    fit(model, params, data, "bob_label", epochs=1, seed=0, frozen_upto=3)
    for i in range(3):
        assert same(layer_state(model, i), before[i])
        assert not torch.equal(before[i]["0.weight"], alice[f"layers.{i}.0.weight"])


def test_reused_model_carries_nothing_over(data, alice):
    """A cached model reset by prepare_bob equals a freshly built one."""
    reused, fresh = cnn(), cnn()
    params = prepare_bob(reused, alice, retrain_from=2, mode="finetune", seed=0)
    fit(reused, params, data, "bob_label", epochs=1, seed=0, frozen_upto=1)
    prepare_bob(reused, alice, retrain_from=2, mode="finetune", seed=1)
    prepare_bob(fresh, alice, retrain_from=2, mode="finetune", seed=1)
    assert same(reused.state_dict(), fresh.state_dict())


def test_layer_plan_linear_probe():
    plan = layer_plan(5, 5, "finetune")
    assert [p.trainable for p in plan] == [False] * 4 + [True]
    assert plan[-1].source == "fresh"


@pytest.mark.parametrize("l, mode", [(0, "finetune"), (6, "reinit"), (2, "frozen")])
def test_prepare_bob_bad_args(alice, l, mode):
    with pytest.raises(EngineError):
        prepare_bob(cnn(), alice, retrain_from=l, mode=mode, seed=0)


def test_prepare_bob_needs_matching_alice(alice):
    with pytest.raises(EngineError, match="none were given"):
        prepare_bob(cnn(), None, retrain_from=2, mode="finetune", seed=0)
    with pytest.raises(EngineError, match="shape"):
        prepare_bob(build_model("cnn", SHAPE, 10, width=4), alice, retrain_from=2,
                    mode="finetune", seed=0)
    partial = {k: v for k, v in alice.items() if not k.startswith("layers.1.")}
    with pytest.raises(EngineError, match="lack"):
        prepare_bob(cnn(), partial, retrain_from=2, mode="finetune", seed=0)


# Training ----------------------------------------------------------------------------------------

def test_fit_learns(data, test_data):
    model = cnn()
    params = prepare_bob(model, None, retrain_from=1, mode="scratch", seed=0)
    out = fit(model, params, data, "bob_label", epochs=4, seed=0)
    assert out["train_acc"] > 0.9 and out["steps"] == 8 and out["samples_per_epoch"] == 256
    assert out["wall_s"] > 0 and out["samples_per_s"] > 0 and not out["feature_cache"]
    acc, loss = evaluate(model, test_data, "bob_label")
    assert acc > 0.6 and loss < 1.5


def test_fit_learns_mlp_adam(data, test_data):
    model = build_model("mlp", SHAPE, 10, width=64)
    params = prepare_bob(model, None, retrain_from=1, mode="scratch", seed=0)
    out = fit(model, params, data, "bob_label", epochs=10, optimizer="adam", seed=0)
    assert out["lr"] == 1e-3 and out["train_acc"] > 0.9
    assert evaluate(model, test_data, "bob_label")[0] > 0.5


def test_finetune_transfers_across_halves(data, test_data, alice):
    """Bob's linear probe on Alice's frozen features: learns something (above chance)."""
    model = cnn()
    params = prepare_bob(model, alice, retrain_from=5, mode="finetune", seed=0)
    fit(model, params, data, "alice_label", epochs=3, seed=0, frozen_upto=4)
    assert evaluate(model, test_data, "alice_label")[0] > 0.3


def _run(data, alice, seed, mode="finetune", **kw):
    model = cnn()
    params = prepare_bob(model, alice, retrain_from=3, mode=mode, seed=seed)
    out = fit(model, params, data, "bob_label", epochs=2, seed=seed,
              frozen_upto=frozen_prefix(5, 3, mode), **kw)
    return model, out


def _metrics(out):
    return {k: v for k, v in out.items() if k not in ("wall_s", "samples_per_s")}


def test_fit_is_deterministic(data, alice):
    m1, a = _run(data, alice, seed=4)
    m2, b = _run(data, alice, seed=4)
    _, c = _run(data, alice, seed=5)
    assert _metrics(a) == _metrics(b)
    assert same(m1.state_dict(), m2.state_dict())
    assert a["train_loss"] != c["train_loss"]


@pytest.mark.parametrize("arch, l, mode", [("cnn", 3, "finetune"), ("cnn", 5, "reinit"),
                                           ("mlp", 3, "random-frozen")])
def test_feature_cache_matches_full_path(data, arch, l, mode):
    torch.manual_seed(0)
    alice_model = build_model(arch, SHAPE, 10, width=8)
    alice = alice_model.state_dict()
    results = {}
    for budget in (0, 2**30):
        model = build_model(arch, SHAPE, 10, width=8)
        params = prepare_bob(model, alice, retrain_from=l, mode=mode, seed=0)
        out = fit(model, params, data, "bob_label", epochs=2, seed=0, frozen_upto=l - 1,
                  feature_cache_bytes=budget)
        results[budget] = (out, model.state_dict())
    (full, full_state), (cached, cached_state) = results[0], results[2**30]
    assert not full["feature_cache"] and cached["feature_cache"]
    assert cached["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5, abs=1e-6)
    assert cached["train_acc"] == full["train_acc"]
    for k in full_state:
        torch.testing.assert_close(cached_state[k], full_state[k], rtol=1e-4, atol=1e-5)


def test_feature_cache_respects_budget(data, alice):
    _, out = _run(data, alice, seed=0, feature_cache_bytes=1000)
    assert not out["feature_cache"]
    _, out = _run(data, alice, seed=0, mode="scratch")
    assert not out["feature_cache"]  # nothing frozen, nothing to cache


def test_feature_budget_is_half_the_free_memory():
    budget = feature_budget(torch.device("cpu"))
    assert 0 < budget
    if Path("/proc/meminfo").is_file():
        meminfo = Path("/proc/meminfo").read_text().split()
        available = int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024
        assert budget == pytest.approx(available / 2, rel=0.2)


def test_one_epoch_fit_does_not_cache_features(data, alice):
    model = cnn()
    params = prepare_bob(model, alice, retrain_from=3, mode="finetune", seed=0)
    out = fit(model, params, data, "bob_label", epochs=1, seed=0, frozen_upto=2)
    assert not out["feature_cache"]  # each prefix output would be used once
    _, out = _run(data, alice, seed=0)  # two epochs, the default budget
    assert out["feature_cache"]


def test_compiled_model_cache_reuses_one_model(data, alice):
    cache = CompiledModelCache("cpu", compile=False)
    r1 = cache.get("cnn", SHAPE, 10, frozen_upto=2, **CNN)
    assert cache.get("cnn", SHAPE, 10, frozen_upto=2, **CNN) is r1
    assert cache.get("cnn", SHAPE, 10, frozen_upto=1, **CNN) is not r1
    assert len(cache) == 2
    outs = []
    for _ in range(2):
        params = prepare_bob(r1.model, alice, retrain_from=3, mode="finetune", seed=4)
        out = fit(r1.model, params, data, "bob_label", epochs=2, seed=4, frozen_upto=2, runner=r1)
        outs.append(_metrics(out))
    _, fresh = _run(data, alice, seed=4)
    assert outs[0] == outs[1] == _metrics(fresh)
    with pytest.raises(ValueError):
        fit(r1.model, params, data, "bob_label", epochs=1, seed=0, frozen_upto=1, runner=r1)


def test_compiled_runner_matches_eager(data, alice):
    """The compiled path (dynamo graph capture; aot_eager avoids a C++ build) is the same maths."""
    torch._dynamo.reset()
    cache = CompiledModelCache("cpu", compile=True, backend="aot_eager")
    runner = cache.get("cnn", SHAPE, 10, frozen_upto=2, **CNN)
    params = prepare_bob(runner.model, alice, retrain_from=3, mode="finetune", seed=4)
    out = fit(runner.model, params, data, "bob_label", epochs=2, seed=4, frozen_upto=2,
              runner=runner)
    _, eager = _run(data, alice, seed=4)
    assert out["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    assert evaluate(runner.model, data, "bob_label", runner=runner)[0] == pytest.approx(
        out["train_acc"], abs=0.1)


def test_compiled_runner_is_not_recompiled_across_runs(data, test_data, alice):
    """Later runs reuse the first run's graphs: weights are reset in place, not rebuilt."""
    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    cache = CompiledModelCache("cpu", compile=True, backend=counting_backend)
    after_first = None
    for seed, mode in [(0, "finetune"), (1, "finetune"), (2, "reinit"), (3, "finetune")]:
        runner = cache.get("cnn", SHAPE, 10, frozen_upto=2, **CNN)  # as engine.sweep.executors.run_bob does
        params = prepare_bob(runner.model, alice, retrain_from=3, mode=mode, seed=seed)
        for epochs in (1, 2):  # the prefix runs per step, then on cached features
            fit(runner.model, params, data, "bob_label", epochs=epochs, seed=seed, frozen_upto=2,
                runner=runner)
        evaluate(runner.model, test_data, "bob_label", runner=runner)
        if after_first is None:
            after_first = len(graphs)
    assert after_first > 0 and len(graphs) == after_first


def test_fit_argument_errors(data, alice):
    model = cnn()
    params = prepare_bob(model, alice, retrain_from=3, mode="finetune", seed=0)
    with pytest.raises(EngineError, match="optimizer"):
        fit(model, params, data, "bob_label", epochs=1, optimizer="lbfgs", seed=0, frozen_upto=2)
    with pytest.raises(EngineError, match="no label"):
        fit(model, params, data, "carol_label", epochs=1, seed=0, frozen_upto=2)
    with pytest.raises(ValueError, match="frozen layer"):
        fit(model, params, data, "bob_label", epochs=1, seed=0, frozen_upto=3)
    small = build_model("cnn", SHAPE, 5, **CNN)
    p = prepare_bob(small, None, retrain_from=1, mode="scratch", seed=0)
    with pytest.raises(EngineError, match="outputs"):
        fit(small, p, data, "bob_label", epochs=1, seed=0)


# Data --------------------------------------------------------------------------------------------

def test_device_data_layout_and_stats(data, test_data):
    assert len(data) == 256 and data.input_shape == SHAPE
    assert data.images.dtype == torch.uint8 and data.images.shape == (256, 1, 28, 56)
    assert data.labels["bob_label"].dtype == torch.int64
    x = data.inputs(slice(None))
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-4
    assert test_data.stats == data.stats
    raw = torch.from_numpy(two_half_arrays(256, seed=0)[0]).double() / 255
    assert data.stats[0][0] == pytest.approx(raw.mean().item(), rel=1e-6)
    assert data.stats[1][0] == pytest.approx(raw.std(unbiased=False).item(), rel=1e-6)


def test_device_data_rejects_bad_input():
    images, labels = two_half_arrays(8, seed=0)
    with pytest.raises(EngineError):
        DeviceData.from_arrays(images.astype(np.float32), labels, "cpu")
    with pytest.raises(EngineError):
        DeviceData.from_arrays(images, {"bob_label": labels["bob_label"][:4]}, "cpu")
    with pytest.raises(EngineError):
        DeviceData.from_arrays(images, labels, "cpu", stats=([0.5, 0.5], [0.2, 0.2]))


def test_subset():
    images, labels = two_half_arrays(64, seed=0)
    full = DeviceData.from_arrays(images, {**labels, "index": np.arange(64)}, "cpu")
    assert full.subset(None, seed=0) is full
    a, b, c = full.subset(20, seed=1), full.subset(20, seed=1), full.subset(20, seed=2)
    assert len(a) == 20 and torch.equal(a.images, b.images)
    assert not torch.equal(a.labels["index"], c.labels["index"])
    idx = a.labels["index"]
    assert len(set(idx.tolist())) == 20
    assert torch.equal(a.images, full.images[idx])  # labels stay with their images
    assert torch.equal(a.labels["bob_label"], full.labels["bob_label"][idx])
    assert set(full.subset(10, seed=1).labels["index"].tolist()) <= set(idx.tolist())  # nested
    assert a.stats == full.stats
    for n in (0, 65):
        with pytest.raises(EngineError):
            full.subset(n, seed=0)


def test_epoch_batches():
    g = torch.Generator().manual_seed(0)
    batches = epoch_batches(300, 128, g)
    assert [len(b) for b in batches] == [128, 128]
    assert len(set(torch.cat(batches).tolist())) == 256
    assert [len(b) for b in epoch_batches(100, 128, g)] == [100]


def test_make_runner_splits_model():
    model = cnn().eval()
    runner = make_runner(model, 2)
    x = torch.randn(2, 1, 28, 56)
    assert torch.equal(runner.tail(runner.prefix(x)), model(x))


# Checkpoints -------------------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path, alice):
    model = cnn()
    model.load_state_dict(alice)
    path = tmp_path / "sub" / "alice.safetensors"
    metrics = {"test_acc": 0.5, "train_loss": float("nan")}
    save_checkpoint(path, model.state_dict(), model.spec, metrics)
    state, spec, got = load_checkpoint(path)
    assert same(state, model.state_dict())
    assert spec == model.spec
    assert got["test_acc"] == 0.5 and np.isnan(got["train_loss"])
    assert [p.name for p in path.parent.iterdir()] == ["alice.safetensors"]  # no temp file


def test_checkpoint_errors(tmp_path, alice):
    with pytest.raises(EngineError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(EngineError, match="corrupt"):
        load_checkpoint(garbage)
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, alice, {"arch": "cnn"}, {})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(EngineError, match="corrupt"):
        load_checkpoint(truncated)
