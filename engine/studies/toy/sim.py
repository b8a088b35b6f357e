"""Simulated counterpart of `engine.studies.toy.model`: Alice's network trained by SGD on n samples, Bob's
accuracy measured on fresh samples.

Each (scenario, alpha) draws three independent sets of n samples: Alice trains on the first, Bob
refits the output layer on the second, and every accuracy is measured on the third.
  Linear Alice: score w^T x, then an output layer that is a gain g (1 for Alice); no biases, as in
    the closed form (x has mean 0 and the labels are balanced). Trained by full-batch SGD
    (`train_linear`) on 0.5 mean (y_A - w^T x)^2 + 0.5 lam |w|^2, whose minimiser is the sample
    ridge solution `ridge` (float64, so the two agree to ~1e-10).
  MLP Alice (hidden > 0): x -> ReLU(W1 x + b1) = h -> w2^T h + c, same squared loss plus
    0.5 MLP_DECAY |W|^2 on both weight matrices; no closed form, so no analytic accuracy.
  Bob as is: predicts sign(Alice's output). Retrained: keeps Alice's features and refits her output
    layer by least squares on y_B: the gain g for the linear net (so he can rescale and flip the
    sign, nothing more), w2 and c for the MLP.
Caveat: the MLP's first layer keeps random projections of Bob's group from its initialisation
(MLP_DECAY barely shrinks them in MLP_STEPS steps), so MLP-retrained is far above chance even at
alpha = 0: that is Bob reading random features, not transfer of what Alice learnt.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.threads import one_thread
from engine.studies.toy.model import SCENARIOS, check, components, sample

LINEAR_STEPS = 5000  # a cap; it stops at a vanishing gradient
MLP_STEPS, MLP_LR, MLP_DECAY = 600, 0.1, 1e-3


@dataclass(frozen=True)
class Simulated:
    weights: np.ndarray          # Alice's trained linear weights (2k,), unit norm
    own: float                   # `components(weights)`
    other: float
    as_is: float                 # Bob's test accuracies, fractions
    retrained: float
    mlp_as_is: float | None      # None without an MLP (hidden = 0)
    mlp_retrained: float | None


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """Sample ridge least squares, no intercept: (X^T X / n + lam I) w = X^T y / n."""
    n, d = x.shape
    return np.linalg.solve(x.T @ x / n + lam * np.eye(d), x.T @ y / n)


def train_linear(x: np.ndarray, y: np.ndarray, lam: float, max_steps: int = LINEAR_STEPS,
                 tol: float = 1e-10) -> np.ndarray:
    """Linear network weights w trained by full-batch SGD on the ridge loss above, until every
    gradient component is below `tol`. The loss is quadratic with Hessian H, so the step and
    momentum are Polyak's heavy-ball optimum from H's extreme eigenvalues mu <= L:
    step 4 / (sqrt L + sqrt mu)^2, momentum ((sqrt L - sqrt mu) / (sqrt L + sqrt mu))^2."""
    n, d = x.shape
    mu, big = np.linalg.eigvalsh(x.T @ x / n + lam * np.eye(d))[[0, -1]]
    lr = 4.0 / (np.sqrt(big) + np.sqrt(mu)) ** 2
    momentum = ((np.sqrt(big) - np.sqrt(mu)) / (np.sqrt(big) + np.sqrt(mu))) ** 2
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=float(lr), momentum=float(momentum))
    with one_thread():
        for _ in range(max_steps):
            opt.zero_grad()
            loss = 0.5 * ((xt @ w - yt) ** 2).mean() + 0.5 * lam * (w @ w)
            loss.backward()
            if w.grad.abs().max() < tol:
                break
            opt.step()
    return w.detach().numpy()


def train_mlp(x: np.ndarray, y: np.ndarray, hidden: int, seed: int,
              steps: int = MLP_STEPS) -> tuple[nn.Module, nn.Linear]:
    """A one-hidden-layer ReLU MLP trained by full-batch SGD; returns (features, output layer)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU())
        head = nn.Linear(hidden, 1)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    params = list(features.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=MLP_LR, momentum=0.9)
    with one_thread():
        for _ in range(steps):
            opt.zero_grad()
            decay = features[0].weight.square().sum() + head.weight.square().sum()
            error = head(features(xt)).squeeze(1) - yt
            loss = 0.5 * (error ** 2).mean() + 0.5 * MLP_DECAY * decay
            loss.backward()
            opt.step()
    return features, head


def agreement(output: np.ndarray, y: np.ndarray) -> float:
    """Fraction of samples where sign(output) (0 counts as +1) equals the label y in {-1, +1}."""
    return float(np.mean(np.where(output >= 0, 1.0, -1.0) == y))


def retrained(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
              bias: bool = False) -> float:
    """Test accuracy of an output layer refit by least squares on frozen features (n, m)."""
    if bias:
        f_train, f_test = np.c_[f_train, np.ones(len(f_train))], np.c_[f_test, np.ones(len(f_test))]
    coef = np.linalg.lstsq(f_train, y_train, rcond=None)[0]
    return agreement(f_test @ coef, y_test)


def rng_for(seed: int, scenario: str, alpha: float) -> np.random.Generator:
    """The same stream for the same (seed, scenario, alpha), whatever else is on the grid."""
    return np.random.default_rng([seed, SCENARIOS.index(scenario), round(1e6 * (alpha + 1))])


def simulate(scenario: str, k: int, alpha: float, n: int, lam: float, seed: int = 0,
             hidden: int = 0, length: float | None = None) -> Simulated:
    """Train Alice on n samples, then measure Bob's accuracy both ways on n fresh test samples."""
    check(scenario, k, alpha, lam)
    rng = rng_for(seed, scenario, alpha)
    x_a, y_a, _ = sample(scenario, k, alpha, n, rng, length)
    x_b, _, y_b = sample(scenario, k, alpha, n, rng, length)
    x_t, _, y_t = sample(scenario, k, alpha, n, rng, length)

    w = train_linear(x_a, y_a, lam)
    score_b, score_t = x_b @ w, x_t @ w
    own, other = components(w)
    mlp = (None, None)
    if hidden > 0:
        features, head = train_mlp(x_a, y_a, hidden, seed)
        with torch.no_grad():
            h_b, h_t = (features(torch.as_tensor(z, dtype=torch.float32)) for z in (x_b, x_t))
            out_t = head(h_t).squeeze(1).numpy()
        mlp = (agreement(out_t, y_t), retrained(h_b.numpy(), y_b, h_t.numpy(), y_t, bias=True))
    return Simulated(w / np.linalg.norm(w), own, other, agreement(score_t, y_t),
                     retrained(score_b[:, None], y_b, score_t[:, None], y_t), *mlp)
