"""Linear CKA between representations, exact and streamed over mini-batches.

Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited") of
X [n, p] and Y [n, q], samples in rows, with Gram matrices K = X X^T and L = Y Y^T:

    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

Biased HSIC is tr(K_c L_c) / (n - 1)^2 with K_c the centred Gram. For linear kernels
tr(K_c L_c) = ||Y_c^T X_c||_F^2 (X_c: column-centred features), so

    CKA = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F).

Unbiased HSIC is the U-statistic of Song et al. 2012 (used for CKA by Nguyen et al. 2021 and
Neyshabur et al. 2020). With K~, L~ the Grams with zeroed diagonals and 1 the ones vector:

    HSIC_1 = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)).

Feature-space form (derived here; no n x n matrix). Let a_i = ||x_i||^2, b_i = ||y_i||^2 (the
Gram diagonals), s_x = X^T 1, s_y = Y^T 1. Then K~ = X X^T - diag(a), so
    tr(K~ L~)   = tr(K L) - sum_i a_i b_i         = ||X^T Y||_F^2 - sum a b
    1^T K~ 1    = ||s_x||^2 - sum a
    K~ 1        = X s_x - a,   L~ 1 = Y s_y - b
    1^T K~ L~ 1 = (X s_x - a)^T (Y s_y - b)
                = s_x^T (X^T Y) s_y - s_y . (Y^T a) - s_x . (X^T b) + sum a b.
Every term is a sum over samples (X^T Y, s_x, s_y, sum a, sum b, sum a b, X^T b, Y^T a), so the
unbiased estimator accumulates exactly over mini-batches, like the biased one. HSIC_1 is also
invariant to shifting X or Y by a constant vector (it estimates a covariance), which lets the
accumulator subtract a fixed per-feature shift (the first batch's mean) before summing: the
statistics then stay small and the uncentred sums do not cancel catastrophically.

Products run in the input's precision (float32 activations use float32 BLAS; float64 stays
float64), one mini-batch at a time, and are summed in float64.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor

from engine.errors import EngineError

CHUNK = 8192  # rows per product in linear_cka: bounds temporaries to CHUNK x features
MAX_STATS_BYTES = 4 * 2**30  # cka_matrix refuses statistics larger than this (float64 p x q)


def _matrix(x, name: str) -> Tensor:
    """`x` as a 2-D float32 or float64 tensor (NumPy arrays are wrapped, not copied)."""
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2 or t.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D [samples, features], got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32 if t.is_floating_point() else torch.float64)
    return t


def _self_product(x: Tensor) -> Tensor:
    """x^T x. On the CPU through NumPy, whose `a.T @ a` calls BLAS syrk (half of gemm's flops)."""
    if x.device.type == "cpu":
        a = x.numpy()
        return torch.from_numpy(a.T @ a)
    return x.T @ x


class _Moments:
    """Sums over samples of one representation, after subtracting a fixed shift c (fixed by the
    first batch): n, s = sum (x - c), G = sum (x - c)(x - c)^T, and with a_i = ||x_i - c||^2:
    sum a, sum a^2 and X^T a."""

    def __init__(self, first: Tensor):
        p, dev, f64 = first.shape[1], first.device, torch.float64
        self.shift = first.mean(0)  # any nearby point works; the batch mean keeps sums small
        self.dtype = first.dtype
        self.n = 0
        self.s = torch.zeros(p, dtype=f64, device=dev)
        self.gram = torch.zeros(p, p, dtype=f64, device=dev)
        self.xa = torch.zeros(p, dtype=f64, device=dev)
        self.sa = torch.zeros((), dtype=f64, device=dev)
        self.saa = torch.zeros((), dtype=f64, device=dev)

    def add(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Add a batch; returns it shifted, and its row norms a (float64), for the cross terms."""
        if x.shape[1] != self.s.shape[0]:
            raise ValueError(f"batch has {x.shape[1]} features, earlier batches {self.s.shape[0]}")
        xs = x.to(self.s.device, self.dtype) - self.shift
        a = xs.square().sum(1)
        ones_a = torch.stack([torch.ones_like(a), a], 1)
        sums = xs.T @ ones_a  # column sums and X^T a in one pass
        self.n += xs.shape[0]
        self.s += sums[:, 0]
        self.xa += sums[:, 1]
        self.gram += _self_product(xs)
        a = a.double()
        self.sa += a.sum()
        self.saa += a.square().sum()
        return xs, a


class _Cross:
    """Sums over samples coupling X and Y: X^T Y, sum a b, X^T b and Y^T a (shifted data)."""

    def __init__(self, p: int, q: int, device: torch.device):
        f64 = torch.float64
        self.xy = torch.zeros(p, q, dtype=f64, device=device)
        self.sab = torch.zeros((), dtype=f64, device=device)
        self.xb = torch.zeros(p, dtype=f64, device=device)
        self.ya = torch.zeros(q, dtype=f64, device=device)

    def add(self, xs: Tensor, a: Tensor, ys: Tensor, b: Tensor) -> None:
        dtype = torch.promote_types(xs.dtype, ys.dtype)  # float32 only when both are
        xs, ys = xs.to(dtype), ys.to(dtype)
        self.xy += xs.T @ ys
        self.sab += a @ b
        self.xb += xs.T @ b.to(xs.dtype)
        self.ya += ys.T @ a.to(ys.dtype)


def _hsic(n: int, sx, sy, xy, sa, sb, sab, xb, ya, unbiased: bool) -> float:
    """HSIC from shifted sums, up to a factor common to all three HSICs of one CKA."""
    if not unbiased:
        return float((xy - torch.outer(sx, sy) / n).square().sum())
    trace = xy.square().sum() - sab
    ones_k = sx @ sx - sa
    ones_l = sy @ sy - sb
    ones_kl = sx @ xy @ sy - sy @ ya - sx @ xb + sab
    return float(trace + ones_k * ones_l / ((n - 1) * (n - 2)) - 2 * ones_kl / (n - 2))


def _cka(x: _Moments, y: _Moments, c: _Cross, unbiased: bool) -> float:
    """CKA from the statistics; nan when either representation is constant (0/0)."""
    n = x.n
    if unbiased and n < 4:
        raise ValueError(f"the unbiased estimator needs at least 4 samples, got {n}")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 samples, got {n}")
    hxy = _hsic(n, x.s, y.s, c.xy, x.sa, y.sa, c.sab, c.xb, c.ya, unbiased)
    hxx = _hsic(n, x.s, x.s, x.gram, x.sa, x.sa, x.saa, x.xa, x.xa, unbiased)
    hyy = _hsic(n, y.s, y.s, y.gram, y.sa, y.sa, y.saa, y.xa, y.xa, unbiased)
    if hxx <= 0 or hyy <= 0:
        return math.nan
    return hxy / math.sqrt(hxx * hyy)


class CKAAccumulator:
    """Linear CKA between X and Y fed in mini-batches of paired rows; exact for both estimators.

        acc = CKAAccumulator()
        for xb, yb in batches:
            acc.update(xb, yb)
        acc.value(), acc.value(unbiased=True)

    Holds float64 p x p, q x q and p x q statistics on the first batch's device, so memory does
    not grow with the number of samples.
    """

    def __init__(self):
        self._x: _Moments | None = None
        self._y: _Moments | None = None
        self._c: _Cross | None = None

    @property
    def n(self) -> int:
        return 0 if self._x is None else self._x.n

    def update(self, x, y) -> None:
        x, y = _matrix(x, "X"), _matrix(y, "Y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"X and Y must have the same samples, got {x.shape[0]} and "
                             f"{y.shape[0]} rows")
        if x.shape[0] == 0:
            return
        if self._x is None:
            self._x, self._y = _Moments(x), _Moments(y.to(x.device))
            self._c = _Cross(x.shape[1], y.shape[1], x.device)
        xs, a = self._x.add(x)
        ys, b = self._y.add(y)
        self._c.add(xs, a, ys, b)

    def value(self, unbiased: bool = False) -> float:
        if self._x is None:
            raise ValueError("no samples accumulated")
        return _cka(self._x, self._y, self._c, unbiased)


def linear_cka(X, Y, unbiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) of X [n, p] and Y [n, q], samples in rows.

    Biased: ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with column-centred X_c, Y_c.
    Unbiased (`unbiased=True`): the same ratio of HSIC_1 U-statistics (Song et al. 2012; as in
    Nguyen et al. 2021), computed in feature space (see the module docstring). NumPy arrays or
    torch tensors; float32 inputs use float32 products summed in float64. nan when X or Y is
    constant (or, unbiased, when its self-HSIC estimate is not positive).
    """
    X, Y = _matrix(X, "X"), _matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same samples, got {X.shape[0]} and "
                         f"{Y.shape[0]} rows")
    acc = CKAAccumulator()
    for start in range(0, X.shape[0], CHUNK):
        acc.update(X[start:start + CHUNK], Y[start:start + CHUNK])
    return acc.value(unbiased)


def _stats_bytes(widths_a: list[int], widths_b: list[int]) -> int:
    """float64 bytes of cka_matrix's statistics: every layer's Gram and every cross product."""
    return 8 * (sum(p * p for p in widths_a) + sum(q * q for q in widths_b)
                + sum(widths_a) * sum(widths_b))


GRAM_MAX_SAMPLES = 4096  # the sample-space path holds n x n Grams and n x width activations


def _gram_hsic(k: Tensor, l: Tensor, unbiased: bool) -> float:
    """HSIC from n x n Gram matrices: biased tr(HKH HLH)/(n-1)^2 (Gretton et al. 2005) or the
    unbiased U-statistic of Song et al. (2012) on the zero-diagonal Grams."""
    n = k.shape[0]
    if not unbiased:
        kc = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
        lc = l - l.mean(0, keepdim=True) - l.mean(1, keepdim=True) + l.mean()
        return float((kc * lc).sum()) / (n - 1) ** 2
    k = k - torch.diag(torch.diag(k))
    l = l - torch.diag(torch.diag(l))
    ones_k, ones_l = k.sum(1), l.sum(1)
    value = ((k * l).sum() + ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2))
             - 2.0 / (n - 2) * (ones_k * ones_l).sum())
    return float(value) / (n * (n - 3))


def _gram_cka(k: Tensor, l: Tensor, unbiased: bool) -> float:
    denom = _gram_hsic(k, k, unbiased) * _gram_hsic(l, l, unbiased)
    return _gram_hsic(k, l, unbiased) / float(np.sqrt(denom)) if denom > 0 else float("nan")


def _gram_matrix(model_a, model_b, inputs, n: int, batch_size: int, unbiased: bool,
                 device: torch.device) -> np.ndarray:
    """Sample-space CKA: exact, memory n x n per layer instead of width x width, for wide layers
    such as flattened conv maps."""
    grams = []
    for net in (model_a, model_b):
        acts = None
        for start in range(0, n, batch_size):
            x = inputs(slice(start, min(start + batch_size, n))).to(device)
            batch = [h.flatten(1).double() for h in net.activations(x)]
            acts = batch if acts is None else [torch.cat([a, b]) for a, b in zip(acts, batch)]
        grams.append([a @ a.T for a in acts])
        del acts
    return np.array([[_gram_cka(ka, kb, unbiased) for kb in grams[1]] for ka in grams[0]])


@torch.no_grad()
def cka_matrix(model_a, model_b, data, *, batch_size: int = 512, max_samples: int | None = None,
               unbiased: bool = False, device: str | torch.device = "cpu",
               method: str = "auto") -> np.ndarray:
    """Linear CKA between every layer of `model_a` and every layer of `model_b`: [L_a, L_b].

    Both models see the same inputs: the first `max_samples` samples of `data` (all if None; use
    `data.subset(n, seed)` for a random subset), a `DeviceData` (normalised by `data.inputs`) or
    a tensor of ready inputs. Each activation is flattened per sample. One forward pass per batch
    per model, in eval mode under no_grad, on copies of the models moved to `device` (the caller's
    models are untouched).

    `method="features"` accumulates per-layer and per-pair feature-space statistics in float64,
    so the widths, not the sample count, bound memory (flattened conv maps are wide: 50,176
    features would need 20 GB). `method="gram"` computes the same CKA exactly from n x n sample
    Grams (n <= GRAM_MAX_SAMPLES). `"auto"` uses features unless they exceed MAX_STATS_BYTES.
    """
    if method not in ("auto", "features", "gram"):
        raise EngineError(f"method must be auto, features or gram, got {method!r}")
    device = torch.device(device)
    n = len(data) if max_samples is None else min(int(max_samples), len(data))
    if n < 1 or batch_size < 1:
        raise EngineError(f"max_samples and batch_size must be at least 1, got "
                          f"{max_samples} and {batch_size}")
    inputs = data.inputs if hasattr(data, "inputs") else data.__getitem__
    nets = [copy.deepcopy(m).to(device).eval() for m in (model_a, model_b)]
    if method == "auto":
        x = inputs(slice(0, 1)).to(device)
        widths = ([h[0].numel() for h in nets[0].activations(x)],
                  [h[0].numel() for h in nets[1].activations(x)])
        method = "gram" if _stats_bytes(*widths) > MAX_STATS_BYTES else "features"
    if method == "gram":
        if n > GRAM_MAX_SAMPLES:
            raise EngineError(f"these layers are too wide for feature-space CKA; sample-space CKA "
                              f"holds n x n Grams, so pass max_samples <= {GRAM_MAX_SAMPLES}")
        return _gram_matrix(nets[0], nets[1], inputs, n, batch_size, unbiased, device)
    side_a: list[_Moments] = []
    side_b: list[_Moments] = []
    cross: list[list[_Cross]] = []
    for start in range(0, n, batch_size):
        x = inputs(slice(start, min(start + batch_size, n))).to(device)
        acts_a, acts_b = ([h.flatten(1) for h in net.activations(x)] for net in nets)
        if not cross:
            widths = [h.shape[1] for h in acts_a], [h.shape[1] for h in acts_b]
            need = _stats_bytes(*widths)
            if need > MAX_STATS_BYTES:
                raise EngineError(
                    f"CKA statistics for layer widths {widths[0]} x {widths[1]} need "
                    f"{need / 2**30:.1f} GiB (limit {MAX_STATS_BYTES / 2**30:.0f} GiB): they are "
                    f"features x features, so compare narrower (e.g. globally pooled) models")
            side_a = [_Moments(h) for h in acts_a]
            side_b = [_Moments(h) for h in acts_b]
            cross = [[_Cross(ha.shape[1], hb.shape[1], device) for hb in acts_b] for ha in acts_a]
        shifted_a = [m.add(h) for m, h in zip(side_a, acts_a)]
        shifted_b = [m.add(h) for m, h in zip(side_b, acts_b)]
        for i, (xs, a) in enumerate(shifted_a):
            for j, (ys, b) in enumerate(shifted_b):
                cross[i][j].add(xs, a, ys, b)
    return np.array([[_cka(side_a[i], side_b[j], cross[i][j], unbiased)
                      for j in range(len(side_b))] for i in range(len(side_a))])
