"""The seeded train/test division of a source that comes as a single split (folder, npz).

TEST_FRACTION of the samples, rounded to the nearest integer, go to test: the first ones of
`np.random.default_rng(seed).permutation(n)`. Both splits keep the original order, so the result
depends only on (n, seed) and is the same on every machine and numpy version that keeps
default_rng's stream (numpy guarantees that for PCG64).
"""
from __future__ import annotations

import numpy as np

from engine.errors import EngineError

TEST_FRACTION = 0.2


def indices(n: int, seed: int, split: str, what: str) -> np.ndarray:
    """Ascending indices into the n samples that form `split` ("train" or "test")."""
    n_test = int(round(n * TEST_FRACTION))
    if n_test == 0 or n_test == n:
        raise EngineError(
            f"{what}: {n} images are too few to hold out {TEST_FRACTION:.0%} as a test split; "
            f"add images or provide a separate test split"
        )
    in_test = np.zeros(n, dtype=bool)
    in_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return np.flatnonzero(in_test if split == "test" else ~in_test)
