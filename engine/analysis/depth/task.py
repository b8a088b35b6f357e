"""What every depth predictor is given: one (dataset, Alice, n_bob) task.

A `Task` holds Alice's network, Bob's n_bob training samples (the sweep's own draw,
`train.subset(n_bob, seed)`; never the test split), his number of classes, the sweep's training
budget for one fine-tune, and optionally samples of Alice's own task (for the transfer bound).
Activations of every layer on Bob's samples are computed once, on first use, and their cost is
kept apart (`feature_cost`) so that every predictor that reads them is charged for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine.analysis.depth.cost import Cost, Meter, layer_flops
from engine.errors import EngineError
from engine.train.device import DeviceData
from engine.train.models import LayeredNet

LABEL = "bob_label"
POOL_ABOVE = 4096  # conv maps wider than this (C*H*W) are pooled, as engine.analysis.artifacts
POOL_GRID = (2, 4)  # rows x columns kept when pooling: left and right halves stay apart


@dataclass(frozen=True)
class Budget:
    """One of the sweep's fine-tunes: its epochs and optimiser settings."""
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float | None = None
    batch_size: int = 128


@dataclass
class Task:
    alice: LayeredNet
    data: DeviceData                      # Bob's n_bob training samples, labels[LABEL]
    n_classes: int
    budget: Budget = field(default_factory=Budget)
    seed: int = 0
    alice_id: str = "alice"
    dataset_key: str = "task"
    source: DeviceData | None = None      # samples of Alice's task, labels["alice_label"]
    n_sweep_eval: int = 0                 # test samples each sweep run is evaluated on
    meter: Meter | None = None            # the running predictor's meter (set by run_predictor)
    _features: list[np.ndarray] | None = None
    feature_cost: Cost = field(default_factory=Cost)
    touched: bool = False                 # whether the running predictor read the features

    def __post_init__(self):
        if len(self.data) < 4:
            raise EngineError(f"a depth prediction needs at least 4 of Bob's samples, got "
                              f"{len(self.data)}")

    @property
    def L(self) -> int:
        return self.alice.n_layers

    @property
    def n(self) -> int:
        return len(self.data)

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels[LABEL].cpu().numpy()

    @property
    def fwd(self) -> list[float]:
        """Forward FLOPs per sample of each of Alice's layers."""
        if not hasattr(self, "_fwd"):
            self._fwd = layer_flops(self.alice, self.data.input_shape)
        return self._fwd

    def count(self, flops: float) -> None:
        if self.meter is not None:
            self.meter.count(flops)

    def features(self, k: int) -> np.ndarray:
        """float32 [n, d]: layer k's output on Bob's samples (0 = the normalised input, L = the
        logits), flattened; conv maps wider than POOL_ABOVE averaged to a POOL_GRID grid."""
        if not 0 <= k <= self.L:
            raise ValueError(f"layer must be in 0..{self.L}, got {k}")
        self.touched = True
        if self._features is None:
            with Meter() as m:
                self._features = _activations(self.alice, self.data)
            m.count(self.n * sum(self.fwd))
            self.feature_cost = m.cost
        return self._features[k]


def _flat(h: torch.Tensor) -> torch.Tensor:
    if h.dim() == 4 and h[0].numel() > POOL_ABOVE:
        h = F.adaptive_avg_pool2d(h, POOL_GRID)
    return h.flatten(1).float()


def _activations(model: LayeredNet, data: DeviceData, batch_size: int = 512) -> list[np.ndarray]:
    model.eval()
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(model.n_layers + 1)]
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = data.inputs(slice(start, start + batch_size))
            for k, h in enumerate([x, *model.activations(x)]):
                per_layer[k].append(_flat(h).cpu())
    return [torch.cat(c).numpy() for c in per_layer]


def compact(f: np.ndarray) -> tuple[np.ndarray, float]:
    """(features, FLOPs spent): features wider than they have samples (d > n) replaced by their
    coordinates in their own row space, F V (F = U S V^T, n x n). LogME and H-score depend on F
    only through F^T F's non-zero spectrum and projections within that row space, so both are
    unchanged (LogME's d log alpha - sum log(alpha + beta sigma_j) loses exactly the zero
    eigenvalues' terms), while the eigendecompositions shrink from d^3 to n^3."""
    n, d = f.shape
    if d <= n:
        return f, 0.0
    u, s, _ = np.linalg.svd(f.astype(np.float64), full_matrices=False)
    return (u * s).astype(f.dtype), 4.0 * n * n * d + 9.0 * n ** 3


def choose(scores) -> int:
    """The depth (1-based) a score curve picks: the highest finite score, the deepest on ties
    (retraining less costs less); 0 when no score is finite."""
    s = np.asarray(scores, dtype=float)
    ok = np.isfinite(s)
    if not ok.any():
        return 0
    best = s[ok].max()
    return int(np.flatnonzero(ok & (s == best))[-1]) + 1


def run_predictor(fn, task: Task) -> tuple[np.ndarray, Cost]:
    """(scores [L], cost) of predictor `fn` on `task`. The shared activations are computed once
    per task outside any predictor's meter and charged (wall time and FLOPs) to each predictor
    that reads them."""
    task.features(0)
    task.fwd
    task.touched = False
    with Meter() as meter:
        task.meter = meter
        try:
            scores = np.asarray(fn(task), dtype=float)
        finally:
            task.meter = None
    if scores.shape != (task.L,):
        raise ValueError(f"a predictor must return {task.L} scores, got shape {scores.shape}")
    return scores, meter.cost + task.feature_cost if task.touched else meter.cost
