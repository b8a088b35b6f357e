"""The depth predictors, by name. A predictor is one function `predict(task) -> scores`:
given an `engine.analysis.depth.task.Task` (Alice, Bob's n_bob training samples, the sweep's
budget), it returns one float per candidate depth l = 1..L, higher = better, nan = no opinion;
the depth it picks is the highest score, the deepest on ties (`task.choose`). It reads nothing
but the task (never the test split) and reports its dense linear algebra with `task.count(flops)`
(layer activations are charged to it automatically when it reads `task.features`). Adding one
is a new module in this package with `predict` and one line here."""
from __future__ import annotations

from typing import Callable

import numpy as np

from engine.analysis.depth import bound, cka, constant, correlation, halving, hscore, logme, probe
from engine.errors import EngineError

PREDICTORS: dict[str, Callable[..., np.ndarray]] = {
    "logme": logme.predict,
    "h-score": hscore.predict,
    "probe": probe.predict,
    "cka-scratch": cka.predict,
    "bound": bound.predict,
    "halving": halving.predict,
    "correlation": correlation.predict,
    "retrain-all": constant.retrain_all,
    "head-only": constant.head_only,
}

BASELINES = ("retrain-all", "head-only")  # constant picks (engine.analysis.depth.constant)


def get(names: list[str] | None = None) -> dict[str, Callable[..., np.ndarray]]:
    """The predictors called `names` (all when None), in registry order."""
    if names is None:
        return dict(PREDICTORS)
    unknown = [n for n in names if n not in PREDICTORS]
    if unknown:
        raise EngineError(f"unknown predictor {unknown[0]!r}; choose from: "
                          f"{', '.join(PREDICTORS)}")
    return {n: PREDICTORS[n] for n in PREDICTORS if n in names}
