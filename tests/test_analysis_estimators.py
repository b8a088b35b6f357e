"""Transferability estimators against their published formulas, computed independently here."""
import math
from collections import Counter

import numpy as np
import pytest
import scipy.optimize

from engine.analysis import h_score, leep, logme, nce
from engine.analysis import estimators


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def good_and_bad_features(n=200, k=4, seed=0):
    """One-hot labels plus small noise (informative) and pure noise, same shape."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    good = np.eye(k)[y] + 0.1 * rng.standard_normal((n, k))
    return y, np.hstack([good, rng.standard_normal((n, 3))]), rng.standard_normal((n, k + 3))


# LogME -------------------------------------------------------------------------------------------

def direct_log_evidence(log_alpha, log_beta, F, y):
    """The closed-form evidence of Bayesian linear regression, with plain matrices."""
    alpha, beta = math.exp(log_alpha), math.exp(log_beta)
    n, d = F.shape
    A = alpha * np.eye(d) + beta * F.T @ F
    m = beta * np.linalg.solve(A, F.T @ y)
    return (d / 2 * log_alpha + n / 2 * log_beta - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((y - F @ m) ** 2) - alpha / 2 * m @ m
            - np.linalg.slogdet(A)[1] / 2)


def direct_logme(F, labels):
    """Per class: maximise the evidence over (log alpha, log beta) with scipy; / n; mean."""
    scores = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)
        best = max((scipy.optimize.minimize(
            lambda v: -direct_log_evidence(v[0], v[1], F, y), start, method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 5000})
            for start in ([0.0, 0.0], [3.0, 3.0])), key=lambda r: -r.fun)
        scores.append(-best.fun / len(F))
    return float(np.mean(scores))


@pytest.mark.parametrize("n, d", [(80, 6), (25, 40)])
def test_logme_is_the_maximised_evidence(n, d):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, n)
    # Weak class signal: with n < d a target can be interpolated, and a strong signal puts the
    # evidence's supremum at beta -> infinity, where no optimiser (nor float64) can follow it.
    F = rng.standard_normal((n, d)) + 0.3 * np.eye(3)[labels] @ rng.standard_normal((3, d))
    assert logme(F, labels) == pytest.approx(direct_logme(F, labels), rel=1e-7)


def test_logme_ranks_informative_features_above_noise():
    y, good, bad = good_and_bad_features()
    assert logme(good, y) > logme(bad, y) + 0.1


# H-score -----------------------------------------------------------------------------------------

def direct_h_score(f, labels, rcond=1e-15):
    """tr(pinv(cov(f)) cov(g)) with g_i = E[f | y_i], as explicit covariance matrices."""
    g = np.zeros_like(f)
    for c in np.unique(labels):
        g[labels == c] = f[labels == c].mean(0)
    cov_f, cov_g = np.cov(f, rowvar=False), np.cov(g, rowvar=False)
    return np.trace(np.linalg.pinv(cov_f, rcond=rcond) @ cov_g)


def test_h_score_matches_covariance_formula():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 5, 150)
    f = rng.standard_normal((150, 8)) + np.eye(5)[labels] @ rng.standard_normal((5, 8))
    assert h_score(f, labels) == pytest.approx(direct_h_score(f, labels), rel=1e-10)


def test_h_score_uses_the_pseudo_inverse_for_singular_covariance():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 60)
    f = rng.standard_normal((60, 5)) + np.eye(3)[labels] @ rng.standard_normal((3, 5))
    f = np.hstack([f, f[:, :2] @ [[1.0], [2.0]], np.full((60, 1), 7.0)])  # dependent, constant
    assert h_score(f, labels) == pytest.approx(direct_h_score(f, labels, rcond=1e-10), rel=1e-8)
    wide = rng.standard_normal((10, 30))  # n < d: covariance of rank n - 1
    labels = np.arange(10) % 2
    assert h_score(wide, labels) == pytest.approx(
        direct_h_score(wide, labels, rcond=1e-10), rel=1e-8)


def test_h_score_ranks_informative_features_above_noise():
    y, good, bad = good_and_bad_features()
    assert h_score(good, y) > 5 * h_score(bad, y)


def test_float32_features_agree_with_float64():
    y, good, _ = good_and_bad_features(n=500)
    assert logme(good.astype(np.float32), y) == pytest.approx(logme(good, y), rel=1e-5)
    assert h_score(good.astype(np.float32), y) == pytest.approx(h_score(good, y), rel=1e-5)


# LEEP --------------------------------------------------------------------------------------------

def direct_leep(theta, labels):
    """Nguyen et al. 2020, Eqs. 1-3, with explicit loops over samples, classes, source classes."""
    n, nz = theta.shape
    classes = sorted(set(labels.tolist()))
    joint = {(y, z): sum(theta[i, z] for i in range(n) if labels[i] == y) / n
             for y in classes for z in range(nz)}
    marginal = {z: sum(joint[y, z] for y in classes) for z in range(nz)}
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[labels[i], z] / marginal[z] * theta[i, z] for z in range(nz)))
    return total / n


def test_leep_matches_empirical_conditional_loop():
    rng = np.random.default_rng(4)
    theta = softmax(rng.standard_normal((40, 5)) * 2)
    labels = rng.integers(0, 3, 40)
    assert leep(theta, labels) == pytest.approx(direct_leep(theta, labels), rel=1e-12)


def test_leep_ranks_informative_source_above_uninformative():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 300)
    source = (labels * 2 + rng.integers(0, 2, 300)) % 6  # each target class maps to 2 of 6
    good = softmax(5 * np.eye(6)[source] + rng.standard_normal((300, 6)))
    bad = softmax(rng.standard_normal((300, 6)))
    assert leep(good, labels) > leep(bad, labels) + 0.5


# NCE ---------------------------------------------------------------------------------------------

def direct_nce(source, labels):
    """-H(Y|Z) = sum_{z,y} P(z,y) log P(y|z) from explicit counts."""
    n = len(labels)
    pairs, per_z = Counter(zip(source.tolist(), labels.tolist())), Counter(source.tolist())
    return sum(c / n * math.log(c / per_z[z]) for (z, _), c in pairs.items())


def test_nce_matches_explicit_counts():
    rng = np.random.default_rng(6)
    source, labels = rng.integers(0, 7, 90), rng.integers(0, 4, 90)
    assert nce(source, labels) == pytest.approx(direct_nce(source, labels), rel=1e-12)
    assert nce(labels, labels) == 0.0  # Z determines Y


def test_nce_ranks_informative_source_above_uninformative():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, 400)
    noisy = np.where(rng.random(400) < 0.1, rng.integers(0, 8, 400), labels + 4)
    assert nce(noisy, labels) > nce(rng.integers(0, 8, 400), labels) + 0.5


# Labels and validation ---------------------------------------------------------------------------

def test_only_present_classes_count():
    y, good, _ = good_and_bad_features()
    sparse = np.array([0, 5, 9, 40])[y]  # same partition, gappy indices
    assert logme(good, sparse) == pytest.approx(logme(good, y), rel=1e-12)
    assert h_score(good, sparse) == pytest.approx(h_score(good, y), rel=1e-12)
    theta = softmax(good)
    assert leep(theta, sparse) == pytest.approx(leep(theta, y), rel=1e-12)
    assert nce(sparse, y) == 0.0


def test_blockwise_products_match_one_block(monkeypatch):
    y, good, _ = good_and_bad_features()
    whole = logme(good, y), h_score(good, y), leep(softmax(good), y)
    monkeypatch.setattr(estimators, "CHUNK", 7)
    assert logme(good, y) == pytest.approx(whole[0], rel=1e-10)
    assert h_score(good, y) == pytest.approx(whole[1], rel=1e-10)
    assert leep(softmax(good), y) == pytest.approx(whole[2], rel=1e-12)


@pytest.mark.parametrize("fn", [logme, h_score])
def test_feature_estimators_reject_bad_inputs(fn):
    y, good, _ = good_and_bad_features(n=20)
    with pytest.raises(ValueError, match="one per sample"):
        fn(good, y[:-1])
    with pytest.raises(ValueError, match="2-D"):
        fn(good[:, 0], y)
    with pytest.raises(ValueError, match="non-negative"):
        fn(good, y - 1)
    with pytest.raises(ValueError, match="integer"):
        fn(good, y.astype(float))
    bad = good.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fn(bad, y)


def test_prediction_estimators_reject_bad_inputs():
    y = np.array([0, 1, 1, 2])
    theta = softmax(np.random.default_rng(8).standard_normal((4, 3)))
    with pytest.raises(ValueError, match="sum to 1"):
        leep(theta * 2, y)
    with pytest.raises(ValueError, match="non-negative"):
        leep(theta - 0.5, y)
    with pytest.raises(ValueError, match="2-D"):
        leep(theta[0], y)
    with pytest.raises(ValueError, match="one per sample"):
        leep(theta, y[:3])
    with pytest.raises(ValueError, match="one per sample"):
        nce(y, y[:3])
    with pytest.raises(ValueError, match="source_labels must be non-negative"):
        nce(y - 1, y)
