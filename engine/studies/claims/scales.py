"""The sizes `engine reproduce --scale` runs the claims at.

smoke: seconds to minutes, for tests; too small and too few seeds for most verdicts.
small: every claim on a 2-core CPU in at most an hour, seeds enough to decide the strong effects.
paper: the papers' sizes (full MNIST-size splits, 10 epochs, 5 betas, 3 seeds, mlp and cnn);
       meant for a GPU or a Ray cluster.
`SECONDS_PER_RUN` is the mean wall time of one trained Bob run, used only for `--list`'s
estimates: measured on the 2-core CPU for smoke and small (small: 1,150 trained runs and 60
Alices in 3 min 17 s; bench/RESULTS.md); for paper a guess for one GPU, not yet measured.
"""
from __future__ import annotations

from engine.errors import EngineError
from engine.studies.claims.base import Scale

SCALES = {
    "smoke": Scale("smoke", seeds=2, n_train=1000, n_test=500, epochs=2, alice_epochs=2,
                   betas=(0.0, 1.0), archs=("mlp",), n_bobs=(100, None), max_samples=200,
                   minutes="a few minutes on a 2-core CPU"),
    "small": Scale("small", seeds=10, n_train=6000, n_test=2000, epochs=5, alice_epochs=5,
                   betas=(0.0, 0.5, 1.0), archs=("mlp",), n_bobs=(250, None), max_samples=500,
                   minutes="under an hour on a 2-core CPU"),
    "paper": Scale("paper", seeds=3, n_train=None, n_test=None, epochs=10, alice_epochs=10,
                   betas=(0.0, 0.25, 0.5, 0.75, 1.0), archs=("mlp", "cnn"), n_bobs=(1000, None),
                   max_samples=2000, minutes="hours on one GPU"),
}

SECONDS_PER_RUN = {"smoke": 0.1, "small": 0.17, "paper": 2.0}  # see the module docstring


def scale(name: str, seeds: int | None = None) -> Scale:
    """The named scale, with `seeds` repeats when given."""
    if name not in SCALES:
        raise EngineError(f"unknown scale {name!r}; choose one of: {', '.join(SCALES)}")
    s = SCALES[name]
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise EngineError(f"--seeds must be a positive integer, got {seeds!r}")
        s = s.with_seeds(seeds)
    return s
