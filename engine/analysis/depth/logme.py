"""LogME per depth (You et al. 2021): the evidence of Bayesian linear regression of Bob's labels on
what Bob's retrained part gets as input at depth l, Alice's layer l-1 output (l = 1: the input
itself, since Bob then retrains every layer)."""
from __future__ import annotations

import numpy as np

from engine.analysis.depth.task import compact
from engine.analysis.depth.cost import EIGH_FLOPS, gram_flops
from engine.analysis.estimators import logme


def predict(task) -> np.ndarray:
    y = task.labels
    scores = []
    for l in range(1, task.L + 1):
        f, spent = compact(task.features(l - 1))
        task.count(spent)
        d = f.shape[1]
        task.count(gram_flops(task.n, d) + EIGH_FLOPS * d ** 3 + 2.0 * task.n * d * d)
        scores.append(logme(f, y))
    return np.array(scores)
