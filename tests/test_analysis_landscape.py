"""engine.analysis.landscape (barriers, module criticality) and engine.analysis.attribution."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import TWO_HALF_SHAPE, two_half_arrays
from engine.analysis.attribution import attribution_mass, attributions, half_columns
from engine.analysis.landscape import (barrier_height, interpolate, interpolate_state,
                                       module_criticality)
from engine.errors import EngineError
from engine.train.freeze import prepare_bob
from engine.train.models import Head, LayeredNet, build_model
from engine.threads import one_thread
from engine.train.device import DeviceData
from engine.train.trainer import evaluate, fit

SHAPE = TWO_HALF_SHAPE  # conftest.two_half_arrays
HALVES = {"left": {"columns": [0, 28]}, "right": {"columns": [28, 56]}}  # as in a manifest
METHODS = ("saliency", "grad_x_input", "integrated_gradients")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors here are small: on a busy 2-core machine torch's thread hand-offs dominate."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def data():
    return DeviceData.from_arrays(*two_half_arrays(256, seed=0), "cpu")


def trained_mlp(data, seed, epochs=3):
    """(model, initial state, final state) of a small mlp trained on alice_label."""
    model = build_model("mlp", SHAPE, 10, depth=2, width=32)
    params = prepare_bob(model, None, retrain_from=1, mode="scratch", seed=seed)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, params, data, "alice_label", epochs=epochs, optimizer="adam", batch_size=32,
        seed=seed)
    return model, init, {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- barriers -------------------------------------------------------------------------------------

def test_barrier_height_on_hand_made_curves():
    assert barrier_height([0.0, 1.0, 0.0]) == 1.0
    assert barrier_height([1.0, 0.5, 0.0]) == 0.0           # on the chord
    assert barrier_height([1.0, 0.0, 1.0]) == 0.0           # below the chord: no barrier
    # t = 0, 1/3, 2/3, 1; chord 2 - 2t = 2, 4/3, 2/3, 0
    assert barrier_height([2.0, 3.0, 1.0, 0.0]) == pytest.approx(3.0 - 4 / 3)
    assert barrier_height([0.5, 0.5]) == 0.0
    with pytest.raises(ValueError):
        barrier_height([1.0])


def test_interpolate_state_blends_floats_and_batchnorm_stats():
    a, b = build_model("cnn", SHAPE, 10, width=4), build_model("cnn", SHAPE, 10, width=4)
    sa, sb = a.state_dict(), b.state_dict()
    sb["layers.0.1.running_mean"].fill_(2.0)
    sb["layers.0.1.num_batches_tracked"].fill_(7)
    mid = interpolate_state(sa, sb, 0.5)
    for k in sa:
        if torch.is_floating_point(sa[k]):
            assert torch.allclose(mid[k], (sa[k] + sb[k]) / 2, atol=1e-6), k
    assert torch.allclose(mid["layers.0.1.running_mean"], torch.full((4,), 1.0))  # from 0 and 2
    assert interpolate_state(sa, sb, 0.4)["layers.0.1.num_batches_tracked"] == 0  # nearer end
    assert interpolate_state(sa, sb, 0.6)["layers.0.1.num_batches_tracked"] == 7
    assert same(interpolate_state(sa, sb, 0.0), sa) and same(interpolate_state(sa, sb, 1.0), sb)


def test_barrier_is_zero_for_identical_end_points(data):
    model, _, final = trained_mlp(data, seed=1, epochs=1)
    r = interpolate(model, final, final, data, "alice_label", k=5)
    assert np.allclose(r["t"], np.linspace(0, 1, 5))
    assert np.allclose(r["loss"], r["loss"][0]) and np.allclose(r["acc"], r["acc"][0])
    assert r["loss_barrier"] == pytest.approx(0.0, abs=1e-6)
    assert r["error_barrier"] == pytest.approx(0.0, abs=1e-9)


def test_barrier_is_positive_between_differently_seeded_models(data):
    model_a, _, state_a = trained_mlp(data, seed=1)
    model_b, _, state_b = trained_mlp(data, seed=2)
    probe = build_model("mlp", SHAPE, 10, depth=2, width=32)
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    r = interpolate(probe, state_a, state_b, data, "alice_label", k=7)
    assert same(probe.state_dict(), before)  # the model's own weights come back
    acc_a, loss_a = evaluate(model_a, data, "alice_label")
    acc_b, loss_b = evaluate(model_b, data, "alice_label")
    assert r["loss"][0] == pytest.approx(loss_a, rel=1e-5) and r["acc"][-1] == acc_b
    assert r["loss_barrier"] > 0.1, r["loss"]
    assert r["loss_barrier"] == barrier_height(r["loss"])


# --- module criticality ---------------------------------------------------------------------------

class Ignored(nn.Module):
    """A block whose weights never reach the output: x + 0 * linear(x)."""

    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x):
        return x + 0.0 * self.lin(x)


@pytest.fixture(scope="module")
def criticality(data):
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Flatten(), nn.Linear(28 * 56, 16), nn.ReLU()), Ignored(16),
              Head(16, 10)]
    model = LayeredNet(layers, {"arch": "test"})
    init = {k: v.clone() for k, v in model.state_dict().items()}
    params = [p for i in (0, 2) for p in model.layers[i].parameters()]
    fit(model, params, data, "alice_label", epochs=8, optimizer="adam", batch_size=32, seed=0)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # a trained-looking, far-from-init value for the ignored block
        final["layers.1.lin.weight"] += 1.0
    model.load_state_dict(final)
    result = module_criticality(model, init, final, data, "alice_label",
                                alphas=np.linspace(0, 1, 5), sigmas=[0.0, 0.1, 0.5],
                                threshold=0.1, n_noise=2)
    return model, final, result


def test_criticality_grid_shapes(criticality):
    model, final, r = criticality
    assert r["layers"] == [1, 2, 3]
    assert r["error"].shape == (3, 5, 3) and r["max_alpha"].shape == (3, 3)
    assert r["criticality"].shape == (3,) and r["noise_std"].shape == (3, 3)
    assert ((r["error"] >= 0) & (r["error"] <= 1)).all()
    assert same(model.state_dict(), final)  # restored
    assert (r["error"][:, 0, 0] <= 0.1).all()  # the trained network itself is under the threshold


def test_a_layer_that_does_not_reach_the_output_is_not_critical(criticality):
    _, _, r = criticality
    ignored = r["error"][1]
    assert np.allclose(ignored, ignored[0, 0])  # rewinding or noise changes nothing
    assert r["criticality"][1] == 0.0 and (r["max_alpha"][1] == 1.0).all()
    assert r["distance"][1] > 0


def test_a_trained_layer_is_critical(criticality):
    _, _, r = criticality
    # Layer 1 moved far and carries the task: fully rewound, the network is near chance. (The
    # head here barely moves from its init - layer 1 learns to fit it - so it is not critical.)
    assert r["error"][0, -1, 0] > 0.5
    assert r["criticality"][0] > 0 and r["max_alpha"][0, 0] < 1.0
    assert r["distance"][0] > r["distance"][2]


def test_criticality_input_errors(criticality, data):
    model, final, _ = criticality
    with pytest.raises(EngineError, match="alphas"):
        module_criticality(model, final, final, data, "alice_label", [1.5], [0.0], 0.1)
    with pytest.raises(EngineError, match="threshold"):
        module_criticality(model, final, final, data, "alice_label", [0.0], [0.0], 2.0)


# --- attribution ----------------------------------------------------------------------------------

def half_linear(side, seed=0):
    """A linear model on the flattened image whose weights are zero outside one half."""
    torch.manual_seed(seed)
    model = LayeredNet([Head(28 * 56, 10)], {"arch": "linear"})
    with torch.no_grad():
        w = model.head.weight.view(10, 1, 28, 56)
        w[..., 28:].zero_() if side == "left" else w[..., :28].zero_()
    return model


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_one_half_model_puts_all_mass_on_that_half(data, method, side):
    other = "right" if side == "left" else "left"
    for target in ("pred", "alice_label"):
        r = attribution_mass(half_linear(side), data, HALVES, method=method, target=target,
                             steps=8, batch_size=100)
        assert r[side] == pytest.approx(1.0, abs=1e-12) and r[other] == pytest.approx(0.0)
        assert r[f"{side}_per_sample"].shape == (256,) and np.allclose(r[f"{side}_per_sample"], 1)
        assert r["n"] == 256 and r["method"] == method and r["target"] == target


def test_integrated_gradients_are_complete(data):
    """IG sums to f(x) - f(baseline) (Sundararajan et al.'s completeness axiom)."""
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, 10, depth=2, width=16).eval()
    x, y = data.inputs(slice(0, 8)), data.labels["alice_label"][:8]
    ig = attributions(model, x, y, "integrated_gradients", steps=200)
    with torch.no_grad():
        gain = model(x).gather(1, y[:, None])[:, 0] - model(torch.zeros_like(x)).gather(
            1, y[:, None])[:, 0]
    assert torch.allclose(ig.sum(dim=(1, 2, 3)), gain, atol=2e-3, rtol=1e-3)


def test_attribution_shares_of_a_real_model_add_up(data):
    model, _, _ = trained_mlp(data, seed=3, epochs=1)
    manifest = {"halves": {"left": {"columns": [0, 28], "resized": False},
                           "right": {"columns": [28, 56], "resized": False}}}
    r = attribution_mass(model, data, manifest, method="grad_x_input")
    assert np.allclose(r["left_per_sample"] + r["right_per_sample"], 1.0)
    assert 0 < r["left"] < 1 and r["left"] + r["right"] == pytest.approx(1.0)
    assert model.training  # the mode it came in


def test_attribution_input_errors(data):
    model = half_linear("left")
    with pytest.raises(EngineError, match="unknown attribution method"):
        attribution_mass(model, data, HALVES, method="gradcam")
    with pytest.raises(EngineError, match="target must be"):
        attribution_mass(model, data, HALVES, target="carol_label")
    with pytest.raises(EngineError, match="wide"):
        attribution_mass(model, data, {"left": [0, 28], "right": [28, 64]})
    assert half_columns({"left": [0, 28], "right": (28, 56)}) == {"left": (0, 28),
                                                                  "right": (28, 56)}


# --- end points that alias the model (issue 12) -------------------------------------------------

def test_live_state_dict_end_points_are_not_overwritten(data):
    """`model.state_dict()` shares storage with the model; `interpolate` loads every point into
    that model. The end points must still be the two networks: t = 0 gives the initial network's
    accuracy and t = 1 the trained one's, and the live state is left as it was."""
    model, init, final = trained_mlp(data, seed=1)
    acc_final = evaluate(model, data, "alice_label")[0]
    model.load_state_dict(init)
    acc_init = evaluate(model, data, "alice_label")[0]
    model.load_state_dict(final)
    c = interpolate(model, init, model.state_dict(), data, "alice_label", k=5)  # live end point
    assert c["acc"][0] == acc_init and c["acc"][-1] == acc_final and acc_final > acc_init
    assert same(model.state_dict(), final)
    c = interpolate(model, model.state_dict(), init, data, "alice_label", k=5)
    assert c["acc"][0] == acc_final and c["acc"][-1] == acc_init


def test_criticality_with_live_final_state_rewinds_nothing_at_zero(data):
    """alpha = 0, sigma = 0 is the trained network itself, for every layer, even when the final
    state passed is the model's live `state_dict()`."""
    model, init, final = trained_mlp(data, seed=2)
    error = 1 - evaluate(model, data, "alice_label")[0]
    c = module_criticality(model, init, model.state_dict(), data, "alice_label", [0.0, 1.0],
                           [0.0, 0.1], threshold=0.5, n_noise=1)
    assert np.allclose(c["error"][:, 0, 0], error)
    assert (c["error"][:, 1, 0] > error).any()  # rewinding a layer fully costs something
    assert same(model.state_dict(), final)
