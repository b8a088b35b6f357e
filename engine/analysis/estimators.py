"""Transferability estimators: scores of source features or predictions against target labels,
computed without training on the target. Higher means the source should transfer better.

- `logme`: LogME (You et al. 2021), the maximised evidence of Bayesian linear regression.
- `h_score`: H-score (Bao et al. 2019), class-separability of the features.
- `leep`: LEEP (Nguyen et al. 2020), likelihood of an empirical classifier on soft source labels.
- `nce`: NCE (Tran et al. 2019), negative conditional entropy of target given hard source labels.

Labels are non-negative integers; only the classes present count (absent class indices are
ignored). Feature products run in the input's precision over blocks of rows and are summed in
float64: float32 features use float32 BLAS, float64 features stay float64 throughout.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg

CHUNK = 8192  # rows per product: bounds temporaries to CHUNK x features
LOGME_TOL = 1e-12  # change of evidence / n (nats per sample) that ends LogME's fixed point
LOGME_MAX_ITER = 1000
PROB_ATOL = 1e-3  # how far a row of source probabilities may sum from 1 (float32 softmax, rounding)
TINY = np.finfo(np.float64).tiny  # keeps alpha, beta finite when a fit is exact


# Input checks ------------------------------------------------------------------------------------

def _features(features) -> np.ndarray:
    f = np.asarray(features)
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(f"features must be 2-D [samples >= 2, features >= 1], got shape {f.shape}")
    if not (np.issubdtype(f.dtype, np.floating) or np.issubdtype(f.dtype, np.integer)):
        raise ValueError(f"features must be numbers, got {f.dtype}")
    if f.dtype not in (np.float32, np.float64):
        f = f.astype(np.float32 if f.dtype == np.float16 else np.float64)
    return f


def _labels(labels, n: int | None = None, name: str = "labels") -> tuple[np.ndarray, int]:
    """Labels as codes 0..k-1 of the k classes present, and k."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] == 0 or (n is not None and y.shape[0] != n):
        want = "a non-empty vector" if n is None else f"a vector of {n} labels (one per sample)"
        raise ValueError(f"{name} must be {want}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class indices, got {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"{name} must be non-negative class indices, got {y.min()}")
    classes, codes = np.unique(y, return_inverse=True)
    return codes.reshape(-1), len(classes)


def _source_probs(source_probs) -> np.ndarray:
    p = np.asarray(source_probs)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"source_probs must be 2-D [samples, source classes], got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        raise ValueError(f"source_probs must be floats, got {p.dtype}")
    if not np.isfinite(p).all() or p.min() < 0:
        raise ValueError("source_probs must be finite and non-negative")
    sums = p.sum(1, dtype=np.float64)
    worst = np.abs(sums - 1).max()
    if worst > PROB_ATOL:
        raise ValueError(f"each row of source_probs must sum to 1 (softmax outputs, not logits); "
                         f"one sums to {sums[np.argmax(np.abs(sums - 1))]:.6g}")
    return p


# Shared products ---------------------------------------------------------------------------------

def _gram(f: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """(F - shift)^T (F - shift) in float64, from blockwise products in F's precision."""
    d = f.shape[1]
    out = np.zeros((d, d))
    shift = None if shift is None else shift.astype(f.dtype)
    for start in range(0, f.shape[0], CHUNK):
        block = f[start:start + CHUNK]
        if shift is not None:
            block = block - shift
        out += block.T @ block  # NumPy calls BLAS syrk for a.T @ a
    if not np.isfinite(out).all():
        raise ValueError("features contain NaN or inf (or overflow their precision)")
    return out


def _class_sums(x: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """[k, columns]: the float64 sum of the rows of `x` in each class."""
    return np.stack([x[codes == c].sum(0, dtype=np.float64) for c in range(k)])


# LogME -------------------------------------------------------------------------------------------

def _log_evidence(alpha, beta, sigma, z2, yy, n):
    """Log evidence of y under y = F w + noise, w ~ N(0, I / alpha), noise ~ N(0, 1 / beta), in
    the eigenbasis of F^T F (eigenvalues sigma [d]); z2 = (V^T F^T y)^2 per class [k, d],
    yy = ||y||^2 [k]; alpha, beta [k]. Returns (evidence, gamma, ||m||^2, ||y - F m||^2)."""
    a, b = alpha[:, None], beta[:, None]
    w = 1 / (a / b + sigma)  # 1 / (t + sigma_j), t = alpha / beta
    gamma = (sigma * w).sum(1)  # effective number of parameters
    m2 = (z2 * w * w).sum(1)  # ||m||^2, m = beta A^-1 F^T y, A = alpha I + beta F^T F
    res2 = np.maximum(yy - (z2 * (2 * a / b + sigma) * w * w).sum(1), TINY)
    d = sigma.shape[0]
    evidence = (d * np.log(alpha) + n * np.log(beta) - np.log(a + b * sigma).sum(1)
                - beta * res2 - alpha * m2 - n * math.log(2 * math.pi)) / 2
    return evidence, gamma, np.maximum(m2, TINY), res2


def logme(features, labels) -> float:
    """LogME (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
    Learning"): for each class c, the log evidence p(y_c | F) of Bayesian linear regression of the
    one-hot target y_c on the features F [n, d] (prior w ~ N(0, alpha^-1 I), noise precision beta),

        log p = d/2 log alpha + n/2 log beta - n/2 log 2 pi - beta/2 ||y - F m||^2
                - alpha/2 ||m||^2 - 1/2 log det(alpha I + beta F^T F),

    maximised over alpha, beta by MacKay's fixed point (gamma = sum sigma_j / (alpha/beta +
    sigma_j), alpha = gamma / ||m||^2, beta = (n - gamma) / ||y - F m||^2) in the eigenbasis of
    F^T F until the evidence stops changing, divided by n and averaged over classes. Features are
    used as given (no centring or bias column), as in the paper. The maximum may lie at infinity
    (alpha -> inf for a class the features do not predict: the evidence of w = 0; beta -> inf when
    they fit it exactly, possible if n <= d); the evidence still converges, to its supremum.
    """
    f = _features(features)
    n = f.shape[0]
    codes, k = _labels(labels, n)
    sigma, v = np.linalg.eigh(_gram(f))
    sigma = np.maximum(sigma, 0)  # F^T F is PSD; negative eigenvalues are rounding
    z2 = (_class_sums(f, codes, k) @ v) ** 2  # (F^T y_c) in the eigenbasis, squared
    yy = np.bincount(codes, minlength=k).astype(np.float64)  # ||y_c||^2 of one-hot targets
    alpha, beta = np.ones(k), np.ones(k)
    previous = np.full(k, -np.inf)
    for _ in range(LOGME_MAX_ITER):
        evidence, gamma, m2, res2 = _log_evidence(alpha, beta, sigma, z2, yy, n)
        if np.all(np.abs(evidence - previous) <= LOGME_TOL * n):
            break
        previous = evidence
        alpha, beta = gamma / m2, np.maximum(n - gamma, TINY) / res2
    return float(np.mean(evidence / n))


# H-score -----------------------------------------------------------------------------------------

def _pinv_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """pinv(a) @ b for symmetric positive semi-definite `a`.

    pinv drops eigenvalues below d * eps * lambda_max (numpy.linalg.matrix_rank's tolerance).
    When Cholesky succeeds and LAPACK's condition estimate shows none is that small, pinv is the
    inverse and a Cholesky solve (d^3 / 3 flops) gives it; otherwise an eigendecomposition does.
    """
    d = a.shape[0]
    cutoff = d * np.finfo(np.float64).eps
    try:
        factor = scipy.linalg.cho_factor(a, lower=True, check_finite=False)
        rcond, _ = scipy.linalg.lapack.dpocon(factor[0], np.abs(a).sum(0).max(), uplo="L")
        # The 1-norm rcond bounds lambda_min / lambda_max from below; 10x covers the estimate.
        if rcond > 10 * cutoff:
            return scipy.linalg.cho_solve(factor, b, check_finite=False)
    except np.linalg.LinAlgError:
        pass
    lam, v = np.linalg.eigh(a)
    keep = lam > cutoff * lam.max()
    return v[:, keep] @ ((v[:, keep].T @ b) / lam[keep, None])


def h_score(features, labels) -> float:
    """H-score (Bao et al. 2019, "An Information-Theoretic Approach to Transferability in Task
    Transfer Learning"): tr(pinv(cov(f)) cov(E[f | y])), the between-class covariance of the
    features measured in the metric of their total covariance (both 1/n-normalised; the scale
    cancels). Features with zero variance are dropped first (they carry no class information,
    and pinv ignores them).
    """
    f = _features(features)
    n = f.shape[0]
    codes, k = _labels(labels, n)
    mean = f.mean(0, dtype=np.float64)
    cov = _gram(f, shift=mean) / n
    counts = np.bincount(codes, minlength=k)
    deviation = _class_sums(f, codes, k) / counts[:, None] - mean  # [k, d] class mean - mean
    live = np.diag(cov) > 0
    if not live.any():
        return 0.0
    # cov(E[f|y]) = sum_c (n_c / n) dev_c dev_c^T, so the trace is sum_c (n_c/n) dev_c^T pinv dev_c
    w = (deviation * np.sqrt(counts / n)[:, None])[:, live]
    return float(np.sum(w.T * _pinv_solve(cov[np.ix_(live, live)], w.T)))


# LEEP and NCE ------------------------------------------------------------------------------------

def leep(source_probs, labels) -> float:
    """LEEP (Nguyen et al. 2020, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations"). With theta_i(z) the source model's probability of source class z for sample
    i, the empirical joint P(y, z) = 1/n sum_{i: y_i = y} theta_i(z), P(y | z) = P(y, z) / P(z),
    and LEEP = 1/n sum_i log sum_z P(y_i | z) theta_i(z) (natural log; <= 0, higher is better).
    """
    theta = _source_probs(source_probs)
    n = theta.shape[0]
    codes, k = _labels(labels, n)
    joint = _class_sums(theta, codes, k) / n  # [k, z]
    pz = joint.sum(0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z); P(z) = 0 unused
    total = 0.0
    for start in range(0, n, CHUNK):
        block = theta[start:start + CHUNK].astype(np.float64)
        eep = (block @ cond.T)[np.arange(block.shape[0]), codes[start:start + CHUNK]]
        total += np.log(eep).sum()
    return total / n


def nce(source_labels, labels) -> float:
    """NCE (Tran et al. 2019, "Transferability and Hardness of Supervised Classification Tasks"):
    -H(Y | Z) = sum_{y,z} P(y, z) log P(y | z) over the empirical joint of target labels Y and
    hard source labels Z (e.g. the source model's argmax) on the same samples (natural log;
    <= 0, higher is better).
    """
    z, nz = _labels(source_labels, name="source_labels")
    y, k = _labels(labels, len(z))
    counts = np.bincount(z * k + y, minlength=nz * k).reshape(nz, k).astype(np.float64)
    per_z = np.broadcast_to(counts.sum(1, keepdims=True), counts.shape)
    seen = counts > 0
    return float(np.sum(counts[seen] * np.log(counts[seen] / per_z[seen])) / len(z))
