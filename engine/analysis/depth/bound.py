"""The transferability bound at the head-only end (Mehra et al. 2023, engine.analysis.bound): an
upper bound on Bob's loss when he keeps all of Alice's layers and only re-maps her head. It says
nothing about deeper retraining, so it is used as a rule between the two ends: the score runs
linearly from -H(Y) at l = 1 (the loss of predicting Bob's class prior, in nats) to -bound at
l = L, so the head alone is chosen when the bound certifies it beats the prior, and retraining
everything otherwise. Needs samples of Alice's task (`task.source`); where it does not apply
(no source, or a head input wider than the bound's feature map allows with no identity label
map), every score is nan."""
from __future__ import annotations

import numpy as np

from engine.analysis.bound import MAX_DIM, penultimate_features, transfer_bound
from engine.errors import EngineError

STEPS = 100  # Adam steps for the learned transforms


def predict(task) -> np.ndarray:
    nan = np.full(task.L, np.nan)
    if task.source is None:
        return nan
    zs = penultimate_features(task.alice, task.source)
    zt = penultimate_features(task.alice, task.data)
    y = task.labels
    mode = "learned-all" if zt.shape[1] <= MAX_DIM else "fixed-all"
    try:
        b = transfer_bound(zs, task.source.labels["alice_label"].cpu().numpy(), zt, y,
                           task.alice.head, mode=mode, steps=STEPS, seed=task.seed,
                           n_target_classes=task.n_classes)
    except EngineError:
        return nan
    n, d = task.n, zt.shape[1]
    pre = sum(task.fwd[:-1])
    # two forward passes to the head's input, the n x n transport costs (2 n^2 d) and, learned,
    # the steps on 256-sample batches through A (2 d^2 per sample and side, x3 for backward)
    task.count((len(task.source) + n) * pre + 2.0 * n * len(task.source) * d
               + (STEPS * 3 * 2 * 256 * 2.0 * d * d if mode != "fixed-all" else 0))
    p = np.bincount(y, minlength=task.n_classes) / n
    prior_loss = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return -(prior_loss + (float(b["bound"]) - prior_loss) * np.linspace(0, 1, task.L))
