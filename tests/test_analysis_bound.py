import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from engine.analysis.bound import (classwise_wasserstein1, lipschitz_constant,
                                   penultimate_features, transfer_bound, wasserstein1)
from engine.errors import EngineError
from engine.threads import one_thread

REAL = Path(os.environ.get("ENGINE_DATA_ROOT", "/nonexistent"))
HAVE_REAL = all((REAL / d / "raw" / f"{s}-images-idx3-ubyte.gz").is_file()
                for d in ("MNIST", "FashionMNIST") for s in ("train", "t10k"))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tensors here are small: on a busy 2-core machine torch's thread hand-offs dominate."""
    with one_thread():
        yield


def blobs(n, k, d, seed, shift=0.0):
    """Unit-variance Gaussian classes around fixed means (the same means for every seed)."""
    means = np.random.default_rng(123).normal(scale=3.0, size=(k, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return means[y] + rng.normal(size=(n, d)) + shift, y, means


def bayes_head(means):
    """The Bayes classifier of unit-variance Gaussians, equal priors: W = means, c = -|m|^2 / 2."""
    head = nn.Linear(means.shape[1], len(means))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(means))
        head.bias.copy_(torch.tensor(-0.5 * (means ** 2).sum(1)))
    return head


# --- exact W1 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_wasserstein1_matches_brute_force_permutations(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
    best = min(np.mean(np.linalg.norm(x - y[list(p)], axis=1))
               for p in itertools.permutations(range(6)))
    assert wasserstein1(x, y) == pytest.approx(best, rel=1e-9)


def test_wasserstein1_matches_linear_sum_assignment():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) * 2
    cost = np.linalg.norm(x[:, None] - y[None], axis=2)
    rows, cols = linear_sum_assignment(cost)
    assert wasserstein1(x, y) == pytest.approx(cost[rows, cols].mean(), rel=1e-9)


def test_wasserstein1_special_cases():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    v = np.array([1.0, -2.0, 0.5, 0.0])
    assert wasserstein1(x, x) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein1(x, x + v) == pytest.approx(np.linalg.norm(v), rel=1e-9)  # a translation
    # masses: all of x's mass on its first point
    a = np.zeros(30)
    a[0] = 5.0
    expected = np.linalg.norm(x[:1] - x, axis=1).mean()
    assert wasserstein1(x, x, a=a) == pytest.approx(expected, rel=1e-9)


def test_classwise_wasserstein1_is_the_prior_weighted_sum():
    xs, ys, _ = blobs(200, 3, 4, seed=0)
    xt, yt, _ = blobs(120, 3, 4, seed=1, shift=1.0)
    expected = sum((yt == t).mean() * wasserstein1(xs[ys == t], xt[yt == t]) for t in range(3))
    assert classwise_wasserstein1(xs, ys, xt, yt) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(EngineError, match="no source samples"):
        classwise_wasserstein1(xs[ys != 2], ys[ys != 2], xt, yt)


# --- the Lipschitz constant -----------------------------------------------------------------------

def test_lipschitz_constant_is_sqrt2_spectral_norm_and_bounds_the_loss():
    torch.manual_seed(0)
    head = nn.Linear(6, 4)
    tau = lipschitz_constant(head)
    assert tau == pytest.approx(np.sqrt(2) * np.linalg.svd(head.weight.detach().numpy(),
                                                           compute_uv=False)[0], rel=1e-6)
    z1, z2 = torch.randn(2000, 6) * 3, torch.randn(2000, 6) * 3
    y = torch.randint(0, 4, (2000,))
    gap = (F.cross_entropy(head(z1), y, reduction="none")
           - F.cross_entropy(head(z2), y, reduction="none")).abs()
    assert (gap <= tau * (z1 - z2).norm(dim=1) + 1e-5).all()


# --- the bound ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shifted():
    """Source and target from the same classes, the target shifted by a constant vector."""
    zs, ys, means = blobs(300, 4, 5, seed=0)
    zt, yt, _ = blobs(300, 4, 5, seed=1, shift=np.array([2.0, -1.0, 0.0, 1.0, 0.5]))
    return zs, ys, zt, yt, bayes_head(means)


@pytest.fixture(scope="module")
def bounds(shifted):
    return {mode: transfer_bound(*shifted, mode=mode, steps=100)
            for mode in ("fixed-all", "learned-A", "learned-all")}


@pytest.mark.parametrize("mode", ["fixed-all", "learned-A", "learned-all"])
def test_bound_terms_are_consistent_and_bound_the_transferred_loss(bounds, mode):
    r = bounds[mode]
    for key in ("weighted_source_loss", "conditional_entropy", "wasserstein", "tau"):
        assert r[key] >= 0, key
    assert r["tau"] > 0
    total = r["weighted_source_loss"] + r["conditional_entropy"] + r["tau"] * r["wasserstein"]
    assert r["bound"] == pytest.approx(total, rel=1e-9)
    assert r["tau_wasserstein"] == pytest.approx(r["tau"] * r["wasserstein"])
    assert r["bound"] >= r["target_loss"]  # a theorem for the empirical measures
    assert r["prior"].sum() == pytest.approx(1.0)
    mass = r["prior"] > 0
    assert np.allclose(r["label_map"][:, mass].sum(0), 1.0)
    assert 0 <= r["target_acc"] <= 1 and r["mode"] == mode


def test_fixed_all_uses_identity_transforms(bounds, shifted):
    r = bounds["fixed-all"]
    zs, ys, zt, yt, head = shifted
    assert r["conditional_entropy"] == 0.0
    assert np.array_equal(r["A"], np.eye(5)) and not r["b"].any()
    assert r["tau"] == pytest.approx(lipschitz_constant(head))
    assert r["wasserstein"] == pytest.approx(classwise_wasserstein1(zs, ys, zt, yt), rel=1e-9)
    prior_t = np.bincount(yt, minlength=4) / len(yt)
    expected = sum(prior_t[s] * F.cross_entropy(head(torch.tensor(zs[ys == s]).float()),
                                                torch.tensor(ys[ys == s])).item()
                   for s in range(4))
    assert r["weighted_source_loss"] == pytest.approx(expected, rel=1e-5)


def test_learned_modes_tighten_the_bound(bounds):
    fixed = bounds["fixed-all"]["bound"]
    assert bounds["learned-all"]["bound"] <= fixed
    # the shift is an affine map: learning b must help a lot
    assert bounds["learned-A"]["bound"] < 0.8 * fixed
    assert bounds["learned-A"]["transforms"] == "learned"


def test_learned_all_finds_a_permuted_label_map():
    zs, ys, means = blobs(300, 4, 5, seed=0)
    zt, yt, _ = blobs(300, 4, 5, seed=1)
    perm = np.array([2, 0, 3, 1])  # target class perm[s] is source class s
    head = bayes_head(means)
    fixed = transfer_bound(zs, ys, zt, perm[yt], head, mode="fixed-all")
    learned = transfer_bound(zs, ys, zt, perm[yt], head, mode="learned-all", steps=50)
    assert learned["bound"] < 0.5 * fixed["bound"]
    assert np.array_equal(learned["label_map"].argmax(0), perm)
    assert learned["target_acc"] > 0.9 > fixed["target_acc"]


def test_bound_input_errors(shifted):
    zs, ys, zt, yt, head = shifted
    with pytest.raises(EngineError, match="unknown mode"):
        transfer_bound(zs, ys, zt, yt, head, mode="learned-B")
    with pytest.raises(EngineError, match="features must be"):
        transfer_bound(zs[:, :3], ys, zt, yt, head, mode="fixed-all")
    with pytest.raises(EngineError, match="use learned-all"):  # target class 3 has no source
        transfer_bound(zs[ys != 3], ys[ys != 3], zt, yt, head, mode="learned-A")


# --- real data ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not HAVE_REAL, reason="MNIST/FashionMNIST not under ENGINE_DATA_ROOT")
def test_real_mnist_fashion_bound_is_above_the_target_loss(tmp_path):
    """Alice's mlp (2 epochs on alice_label) gives the features; the target task is bob_label at
    beta 1; Bob's linear head is trained on the target features."""
    import engine
    from engine.train.alice import load_data
    from engine.train.freeze import prepare_bob
    from engine.train.models import build_model
    from engine.train.trainer import fit

    out = engine.build_data("mnist:fashion", 1.0, seed=0, n_train=2000, n_test=500,
                            data_root=REAL, out=tmp_path)
    train, test = load_data(out, torch.device("cpu"))
    model = build_model("mlp", train.input_shape, 10, depth=2, width=64)
    params = prepare_bob(model, None, retrain_from=1, mode="scratch", seed=0)
    fit(model, params, train, "alice_label", epochs=2, optimizer="adam", seed=0)
    zs, zt = penultimate_features(model, train), penultimate_features(model, test)
    assert zs.shape == (2000, 64) and zt.shape == (500, 64)

    bob = nn.Linear(64, 10)
    opt = torch.optim.Adam(bob.parameters(), lr=1e-2)
    x, y = torch.from_numpy(penultimate_features(model, train)), train.labels["bob_label"]
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(bob(x), y).backward()
        opt.step()

    ys, yt = train.labels["alice_label"].numpy(), test.labels["bob_label"].numpy()
    for mode in ("fixed-all", "learned-A", "learned-all"):
        r = transfer_bound(zs, ys, zt, yt, model.head, mode=mode, target_head=bob, steps=60)
        assert r["finetuned_acc"] > 0.8, r["finetuned_acc"]
        assert r["bound"] > r["finetuned_loss"], (mode, r["bound"], r["finetuned_loss"])
        assert r["bound"] >= r["target_loss"], (mode, r["bound"], r["target_loss"])
