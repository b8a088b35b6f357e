"""The decoded form of one split of a source, and the checks every split passes before use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from engine.errors import EngineError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, H, W, C], C = 1 or 3; read-only memmap from the cache
    labels: np.ndarray  # int64 [N], 0..len(classes)-1; read-only memmap from the cache
    classes: tuple[str, ...]  # one name per class, including classes with no samples
    files: tuple[str, ...]  # absolute paths of the source files this split was decoded from


class Decoded(NamedTuple):
    """What a source adapter returns: in-memory arrays, before caching."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]


def validate(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], what: str) -> None:
    """Raise EngineError unless the arrays form a well-formed, non-empty split."""
    hint = "check that the source files are intact"
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise EngineError(
            f"{what}: images must be uint8 [N, H, W, 1 or 3], got {images.dtype} "
            f"{list(images.shape)}; {hint}"
        )
    if labels.dtype != np.int64 or labels.ndim != 1:
        raise EngineError(
            f"{what}: labels must be int64 [N], got {labels.dtype} {list(labels.shape)}; {hint}"
        )
    if len(images) != len(labels):
        raise EngineError(f"{what}: {len(images)} images but {len(labels)} labels; {hint}")
    if len(images) == 0:
        raise EngineError(f"{what}: the split has no images; {hint}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= len(classes):
        raise EngineError(
            f"{what}: labels must lie in 0..{len(classes) - 1} ({len(classes)} classes) "
            f"but range over {low}..{high}; {hint}"
        )
