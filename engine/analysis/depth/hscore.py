"""H-score per depth (Bao et al. 2019) on Alice's layer l-1 output (l = 1: the input)."""
from __future__ import annotations

import numpy as np

from engine.analysis.depth.task import compact
from engine.analysis.depth.cost import gram_flops
from engine.analysis.estimators import h_score


def predict(task) -> np.ndarray:
    y = task.labels
    scores = []
    for l in range(1, task.L + 1):
        f, spent = compact(task.features(l - 1))
        task.count(spent)
        d = f.shape[1]
        task.count(gram_flops(task.n, d) + d ** 3 / 3 + 2.0 * d * d * task.n_classes)
        scores.append(h_score(f, y))
    return np.array(scores)
