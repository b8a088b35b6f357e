"""Linear CKA: invariances, agreement with n x n Gram-matrix formulas, streaming, layer matrices."""
import numpy as np
import pytest
import torch

from engine.analysis import CKAAccumulator, cka_matrix, linear_cka
from engine.analysis import similarity
from engine.errors import EngineError
from engine.train.models import build_model
from engine.train.device import DeviceData


def gram_cka(X, Y):
    """Biased CKA from centred n x n Gram matrices: <HKH, HLH> / (||HKH|| ||HLH||)."""
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def hsic_u(K, L):
    """Song et al. 2012 unbiased HSIC, written out with n x n matrices."""
    n = len(K)
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


def u_statistic_cka(X, Y):
    K, L = X @ X.T, Y @ Y.T
    return hsic_u(K, L) / np.sqrt(hsic_u(K, K) * hsic_u(L, L))


def pair(n=60, p=7, q=5, offset=0.0, seed=0):
    """Related representations: Y is a noisy linear readout of part of X; both off-centre."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) + offset
    Y = X[:, :3] @ rng.standard_normal((3, q)) + rng.standard_normal((n, q)) - offset
    return X, Y


@pytest.mark.parametrize("unbiased", [False, True])
def test_identical_inputs_give_one(unbiased):
    X, _ = pair(offset=5.0)
    assert linear_cka(X, X, unbiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(unbiased):
    X, Y = pair()
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((X.shape[1], X.shape[1])))
    base = linear_cka(X, Y, unbiased)
    assert linear_cka(X @ Q, Y, unbiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(3.7 * X, 0.01 * Y, unbiased) == pytest.approx(base, rel=1e-10)
    assert linear_cka(2.0 * X @ Q + 4.0, Y, unbiased) == pytest.approx(base, rel=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
def test_not_invariant_to_a_general_invertible_map(unbiased):
    # Y reads out feature 0 of five independent features: CKA ~ 1/sqrt(5). Stretching feature 0
    # (an invertible map) makes X dominated by it: CKA -> 1.
    rng = np.random.default_rng(2)
    X = rng.standard_normal((500, 5))
    Y = X[:, :1]
    A = np.diag([10.0, 1, 1, 1, 1]) + np.triu(np.full((5, 5), 0.1), 1)
    assert abs(np.linalg.det(A)) > 1
    before, after = linear_cka(X, Y, unbiased), linear_cka(X @ A, Y, unbiased)
    assert before == pytest.approx(1 / np.sqrt(5), abs=0.05)
    assert after > 0.95


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_biased_matches_gram_matrix_formula(offset):
    for n, p, q in [(60, 7, 5), (20, 40, 30)]:  # more samples than features, and fewer
        X, Y = pair(n, p, q, offset=offset)
        assert linear_cka(X, Y) == pytest.approx(gram_cka(X, Y), rel=1e-9)


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_unbiased_matches_u_statistic(offset):
    for n, p, q in [(60, 7, 5), (20, 40, 30), (4, 3, 2)]:
        X, Y = pair(n, p, q, offset=offset)
        assert linear_cka(X, Y, unbiased=True) == pytest.approx(u_statistic_cka(X, Y), rel=1e-9)


def test_unbiased_is_stable_far_from_the_origin():
    # HSIC_1 is shift-invariant; with an offset of 1e4 the uncentred n x n formula loses ~8
    # digits to cancellation, the accumulator (which shifts by a batch mean) does not.
    X, Y = pair(60, 7, 5)
    exact = linear_cka(X, Y, unbiased=True)
    assert linear_cka(X + 1e4, Y - 1e4, unbiased=True) == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("unbiased", [False, True])
def test_accumulator_over_mini_batches_equals_full_estimate(unbiased):
    X, Y = pair(n=101, offset=5.0)
    acc = CKAAccumulator()
    edges = [0, 1, 4, 21, 22, 60, 101]  # first batch of one sample sets the shift
    for lo, hi in zip(edges[:-1], edges[1:]):
        acc.update(X[lo:hi], Y[lo:hi])
    assert acc.n == 101
    assert acc.value(unbiased=unbiased) == pytest.approx(linear_cka(X, Y, unbiased), rel=1e-10)
    assert acc.value(unbiased=unbiased) == pytest.approx(
        u_statistic_cka(X, Y) if unbiased else gram_cka(X, Y), rel=1e-6)


def test_linear_cka_chunks_large_inputs(monkeypatch):
    X, Y = pair(n=50, offset=3.0)
    whole = linear_cka(X, Y), linear_cka(X, Y, unbiased=True)
    monkeypatch.setattr(similarity, "CHUNK", 8)
    assert linear_cka(X, Y) == pytest.approx(whole[0], rel=1e-12)
    assert linear_cka(X, Y, unbiased=True) == pytest.approx(whole[1], rel=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_float32_and_torch_inputs(unbiased):
    X, Y = pair(n=300, offset=10.0)
    exact = linear_cka(X, Y, unbiased)
    got = linear_cka(torch.from_numpy(X).float(), Y.astype(np.float32), unbiased)
    assert got == pytest.approx(exact, rel=1e-5)


def test_constant_representation_gives_nan_and_bad_inputs_raise():
    X, _ = pair()
    assert np.isnan(linear_cka(X, np.ones((len(X), 3))))
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(X, X[:-1])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(X[:, 0], X)
    with pytest.raises(ValueError, match="at least 4 samples"):
        linear_cka(X[:3], X[:3], unbiased=True)
    acc = CKAAccumulator()
    with pytest.raises(ValueError, match="no samples"):
        acc.value()
    acc.update(X[:5], X[:5])
    with pytest.raises(ValueError, match="features"):
        acc.update(X[5:, :3], X[5:])


# cka_matrix ---------------------------------------------------------------------------------------

@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (70, 6, 6, 1), dtype=np.uint8)
    return DeviceData.from_arrays(images, {"y": rng.integers(0, 3, 70)}, "cpu")


def models():
    torch.manual_seed(0)
    mlp = build_model("mlp", (6, 6, 1), 3, depth=2, width=16)
    cnn = build_model("cnn", (6, 6, 1), 3, depth=2, width=4)
    return mlp, cnn


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matrix_of_a_model_with_itself_has_unit_diagonal(data, unbiased):
    mlp, _ = models()
    m = cka_matrix(mlp, mlp, data, batch_size=16, unbiased=unbiased)
    assert m.shape == (mlp.n_layers, mlp.n_layers)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-5)
    np.testing.assert_allclose(m, m.T, atol=1e-5)


def test_cka_matrix_matches_linear_cka_on_full_activations(data):
    mlp, cnn = models()
    cnn.train()
    m = cka_matrix(mlp, cnn, data, batch_size=16, max_samples=50)
    assert m.shape == (mlp.n_layers, cnn.n_layers) == (3, 3)
    assert cnn.training  # the caller's model keeps its mode
    with torch.no_grad():
        x = data.inputs(slice(0, 50))
        acts_a = [h.flatten(1) for h in mlp.eval().activations(x)]
        acts_b = [h.flatten(1) for h in cnn.eval().activations(x)]
    expected = [[linear_cka(a, b) for b in acts_b] for a in acts_a]
    np.testing.assert_allclose(m, expected, rtol=1e-4)


def test_cka_matrix_wide_layers_use_the_exact_gram_path(data, monkeypatch):
    mlp, cnn = models()
    full = cka_matrix(mlp, cnn, data, max_samples=64)
    monkeypatch.setattr(similarity, "MAX_STATS_BYTES", 1000)
    with pytest.raises(EngineError, match="GiB"):
        cka_matrix(mlp, cnn, data, method="features")
    np.testing.assert_allclose(cka_matrix(mlp, cnn, data, max_samples=64), full, atol=1e-6)
    monkeypatch.setattr(similarity, "GRAM_MAX_SAMPLES", 32)
    with pytest.raises(EngineError, match="max_samples"):
        cka_matrix(mlp, cnn, data, max_samples=64)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matrix_gram_path_equals_feature_path(unbiased):
    torch.manual_seed(0)
    a = build_model("cnn", (12, 24, 1), 4, depth=2, width=4)
    b = build_model("cnn", (12, 24, 1), 4, depth=2, width=4)
    x = torch.randn(40, 1, 12, 24)
    feats = cka_matrix(a, b, x, batch_size=16, unbiased=unbiased, method="features")
    grams = cka_matrix(a, b, x, batch_size=16, unbiased=unbiased, method="gram")
    assert feats.shape == grams.shape == (a.n_layers, b.n_layers)
    np.testing.assert_allclose(grams, feats, atol=1e-6)
