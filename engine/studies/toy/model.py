"""Gaussian feature-correlation model (Mohamud & Brink 2025, Figs. 1-2): the two covariance
scenarios, Alice's ridge weights in closed form, and Bob's accuracy from Sheppard's formula.

Features x = [x_A; x_B] ~ N(0, Sigma), x_A, x_B in R^k (Alice's group, Bob's group).
Labels: y_A = sign(u^T x), y_B = sign(v^T x), u = [1_k; 0_k], v = [0_k; 1_k] (sign of the sum of
each group's features; a score of exactly 0 counts as +1, which has probability 0).

Scenarios, both valid for alpha in [-1, 1] (closed) and rejected outside it: there Sigma is
positive semi-definite; beyond it S1 has the eigenvalue 1 - |alpha| < 0, and S2 stays PSD only
for some lengths (at alpha = 1 it is already the full stationary kernel, so larger alpha means
nothing):
  S1 paired features: Sigma = (1 - |alpha|) I_2k + |alpha| [[I, sI], [sI, I]], s = sign(alpha),
     i.e. [[I, alpha I], [alpha I, I]]: feature i correlates with feature k + i only, by alpha.
     Eigenvalues 1 + alpha and 1 - alpha (k each); singular at |alpha| = 1.
  S2 pixel-like: features sit on a line at positions 0..2k-1, Alice's group on the left and Bob's
     on the right (like the side-by-side images of `engine build-data`), with the stationary kernel
     K_ij = exp(-|i - j| / length) (length = k unless given), and
     Sigma = [[K_AA, alpha K_AB], [alpha K_BA, K_BB]] = (1 + alpha)/2 K + (1 - alpha)/2 DKD,
     D = diag(I_k, -I_k): a convex combination of two positive definite matrices, so positive
     definite for alpha in [-1, 1]; groups independent at alpha = 0, Sigma = K at alpha = 1.

Alice's weights, ridge least squares: w = argmin E[(y_A - w^T x)^2] + lam |w|^2
  = (Sigma + lam I)^-1 E[x y_A], and for Gaussian x, E[x sign(u^T x)] = sqrt(2/pi) Sigma u /
  sqrt(u^T Sigma u), so w is proportional to (Sigma + lam I)^-1 Sigma u (lam > 0 keeps
  Sigma + lam I invertible at |alpha| = 1).
  Two features (k = 1, S1): w ~ [1 + lam - alpha^2, alpha lam].
  S1, any k: Sigma = I + alpha P with P = [[0, I], [I, 0]], P^2 = I, so
  (Sigma + lam I)^-1 = ((1 + lam) I - alpha P) / ((1 + lam)^2 - alpha^2) and, as
  Sigma u = [1; alpha 1], w ~ [a 1_k; b 1_k], a = 1 + lam - alpha^2, b = alpha lam: the
  two-feature result, pair by pair.
  S2 has no such simple form; there w = solve(Sigma + lam I, Sigma u), the same formula.

Bob's accuracy with Alice's network w: the scores (w^T x, v^T x) are jointly Gaussian with
  correlation rho = w^T Sigma v / sqrt(w^T Sigma w v^T Sigma v), and
  P[same sign] = 1 - arccos(rho)/pi (Sheppard 1899). As is: 1 - arccos(rho)/pi. Output layer
  retrained (Bob may flip the sign of the one output weight): 1 - arccos(|rho|)/pi.
  S1: rho = alpha (1 + 2 lam - alpha^2) / sqrt(a^2 + 2 alpha a b + b^2), independent of k;
  rho = 0 at alpha = 0 (chance), sign(rho) = sign(alpha), |rho| = 1 at |alpha| = 1.
"""
from __future__ import annotations

import math

import numpy as np

from engine.errors import EngineError

SCENARIOS = ("S1", "S2")
ALPHA_RANGE = {"S1": (-1.0, 1.0), "S2": (-1.0, 1.0)}  # closed: Sigma is PSD exactly here


def check(scenario: str, k: int, alpha: float, lam: float | None = None) -> None:
    """EngineError unless the scenario exists, k >= 1, alpha is in its valid range, and lam > 0."""
    if scenario not in SCENARIOS:
        raise EngineError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise EngineError(f"k must be an integer >= 1 (features per group), got {k!r}")
    lo, hi = ALPHA_RANGE[scenario]
    if not lo <= alpha <= hi:  # also rejects NaN
        raise EngineError(f"alpha={alpha} is outside [{lo:g}, {hi:g}], where scenario {scenario}'s "
                          f"covariance is positive semi-definite")
    if lam is not None and not lam > 0:
        raise EngineError(f"lam must be > 0 (ridge strength), got {lam}")


def group_vectors(k: int) -> tuple[np.ndarray, np.ndarray]:
    """u = [1_k; 0_k] (Alice's label direction), v = [0_k; 1_k] (Bob's)."""
    u = np.r_[np.ones(k), np.zeros(k)]
    return u, 1.0 - u


def kernel(k: int, length: float | None = None) -> np.ndarray:
    """S2's stationary kernel on positions 0..2k-1: K_ij = exp(-|i - j| / length)."""
    length = float(k if length is None else length)
    if not length > 0:
        raise EngineError(f"length must be > 0 (S2 correlation length in features), got {length}")
    pos = np.arange(2 * k)
    return np.exp(-np.abs(pos[:, None] - pos[None, :]) / length)


def covariance(scenario: str, k: int, alpha: float, length: float | None = None) -> np.ndarray:
    """Sigma (2k x 2k) of scenario S1 or S2 at correlation alpha (see the module docstring)."""
    check(scenario, k, alpha)
    if scenario == "S1":
        return np.eye(2 * k) + alpha * np.kron([[0.0, 1.0], [1.0, 0.0]], np.eye(k))
    sigma = kernel(k, length)
    sigma[:k, k:] *= alpha
    sigma[k:, :k] *= alpha
    return sigma


def s1_weights(alpha: float, lam: float) -> tuple[float, float]:
    """S1 ridge weights per feature, unnormalised: (a, b) = (1 + lam - alpha^2, alpha lam)."""
    return 1.0 + lam - alpha ** 2, alpha * lam


def s1_rho(alpha: float, lam: float) -> float:
    """S1 correlation of Alice's score with Bob's: alpha (1 + 2 lam - alpha^2) / |(a, b)|_Sigma."""
    a, b = s1_weights(alpha, lam)
    return alpha * (1 + 2 * lam - alpha ** 2) / math.sqrt(a * a + 2 * alpha * a * b + b * b)


def alice_weights(scenario: str, k: int, alpha: float, lam: float,
                  length: float | None = None) -> np.ndarray:
    """Alice's population ridge weights (2k,), scaled to unit norm: (Sigma + lam I)^-1 Sigma u."""
    check(scenario, k, alpha, lam)
    if scenario == "S1":
        a, b = s1_weights(alpha, lam)
        w = np.r_[np.full(k, a), np.full(k, b)]
    else:
        sigma = covariance(scenario, k, alpha, length)
        w = np.linalg.solve(sigma + lam * np.eye(2 * k), sigma @ group_vectors(k)[0])
    return w / np.linalg.norm(w)


def components(w: np.ndarray) -> tuple[float, float]:
    """(own, other): the mean weight on Alice's group and on Bob's, scaled to unit length."""
    k = len(w) // 2
    own, other = float(np.mean(w[:k])), float(np.mean(w[k:]))
    norm = math.hypot(own, other)
    return own / norm, other / norm


def correlation(sigma: np.ndarray, w: np.ndarray, v: np.ndarray) -> float:
    """Correlation of the Gaussian scores w^T x and v^T x under x ~ N(0, sigma)."""
    return float(w @ sigma @ v / math.sqrt((w @ sigma @ w) * (v @ sigma @ v)))


def sheppard(rho: float) -> float:
    """P[sign(s1) = sign(s2)] for jointly Gaussian, zero-mean s1, s2 with correlation rho."""
    return 1.0 - math.acos(min(1.0, max(-1.0, rho))) / math.pi


def bob_accuracy(scenario: str, k: int, alpha: float, lam: float,
                 length: float | None = None) -> tuple[float, float]:
    """Bob's analytic accuracy with Alice's ridge network: (as is, output layer retrained)."""
    if scenario == "S1":
        check(scenario, k, alpha, lam)
        rho = s1_rho(alpha, lam)
    else:
        w = alice_weights(scenario, k, alpha, lam, length)
        rho = correlation(covariance(scenario, k, alpha, length), w, group_vectors(k)[1])
    return sheppard(rho), sheppard(abs(rho))


def sample(scenario: str, k: int, alpha: float, n: int, rng: np.random.Generator,
           length: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n draws of (x, y_A, y_B): x (n, 2k) float64 ~ N(0, Sigma), labels in {-1, +1}."""
    sigma = covariance(scenario, k, alpha, length)
    vals, vecs = np.linalg.eigh(sigma)
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))  # root @ root.T = Sigma, also when singular
    x = rng.standard_normal((n, 2 * k)) @ root.T
    u, v = group_vectors(k)
    return x, np.where(x @ u >= 0, 1.0, -1.0), np.where(x @ v >= 0, 1.0, -1.0)
