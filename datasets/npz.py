"""`npz:PATH`: images and labels saved with numpy.savez[_compressed].

Keys: `train_images`, `train_labels`, `test_images`, `test_labels` (two splits), or `images`,
`labels` (one split; the registry holds out a seeded part as the test split). Images are uint8
[N, H, W] or [N, H, W, C] with C = 1 or 3. Labels are integers: with an optional `classes` array of
names they must index it; without one they are mapped to 0..K-1 in sorted order of their distinct
values (over both splits), and the class names are those values as text.
"""
from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.datasets.source import Located
from engine.datasets.split import Decoded
from engine.errors import EngineError

TWO_SPLITS = ("train_images", "train_labels", "test_images", "test_labels")
ONE_SPLIT = ("images", "labels")


def _read(path: Path, keys: tuple[str, ...]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The names of all arrays in the file, and those arrays among `keys` that it has."""
    if not path.is_file():
        raise EngineError(f"npz:{path}: no such file; give the path of a .npz file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not a .npz archive")
        with z:
            return list(z.files), {k: z[k] for k in keys if k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise EngineError(
            f"npz:{path}: cannot read it as a .npz of plain arrays ({e}); save it again with "
            f"numpy.savez and without object arrays"
        ) from None


def _one_split(path: Path) -> bool:
    names, _ = _read(path, ())
    if all(k in names for k in TWO_SPLITS):
        return False
    if all(k in names for k in ONE_SPLIT):
        return True
    raise EngineError(
        f"npz:{path}: has arrays {sorted(names)}; it needs {', '.join(TWO_SPLITS)}, "
        f"or {', '.join(ONE_SPLIT)}"
    )


def _images(path: Path, key: str, images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8:
        raise EngineError(
            f"npz:{path}: {key} is {images.dtype}; convert it to uint8 (0..255) and save again"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise EngineError(
            f"npz:{path}: {key} has shape {list(images.shape)}; it must be [N, H, W] or "
            f"[N, H, W, C] with C = 1 or 3"
        )
    return np.ascontiguousarray(images)


def _check_labels(path: Path, key: str, labels: np.ndarray, count: int) -> None:
    if not np.issubdtype(labels.dtype, np.integer):
        raise EngineError(f"npz:{path}: {key} is {labels.dtype}; convert it to integers")
    if labels.shape != (count,):
        raise EngineError(
            f"npz:{path}: {key} has shape {list(labels.shape)}; it must be [{count}], "
            f"one label per image"
        )


def _classes(
    path: Path, arrays: dict[str, np.ndarray], label_keys: tuple[str, ...]
) -> tuple[tuple[str, ...], np.ndarray | None]:
    """(classes, mapping from label value to 0..K-1, or None when labels are used as they are)."""
    if "classes" in arrays:
        classes = tuple(str(c) for c in arrays["classes"].reshape(-1))
        for key in label_keys:
            labels = arrays[key]
            if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
                raise EngineError(
                    f"npz:{path}: {key} must lie in 0..{len(classes) - 1} to index its "
                    f"{len(classes)} classes; fix the labels or the classes array"
                )
        return classes, None
    values = np.unique(np.concatenate([arrays[k].astype(np.int64) for k in label_keys]))
    return tuple(str(v) for v in values), values


@dataclass(frozen=True)
class NpzSource:
    name: str = "npz"
    uses_image_size: bool = False

    def locate(self, arg: str | None, root: Path, split: str) -> Located:
        path = Path(arg)
        return Located([path], one_split=_one_split(path))

    def decode(self, arg: str | None, root: Path, part: str, image_size: int) -> Decoded:
        path = Path(arg)
        prefix = "" if part == "all" else f"{part}_"
        label_keys = ONE_SPLIT[1:] if part == "all" else (TWO_SPLITS[1], TWO_SPLITS[3])
        wanted = (f"{prefix}images", f"{prefix}labels", *label_keys, "classes")
        _, arrays = _read(path, tuple(dict.fromkeys(wanted)))
        images = _images(path, f"{prefix}images", arrays[f"{prefix}images"])
        for key in label_keys:
            count = len(images) if key == f"{prefix}labels" else len(arrays[key])
            _check_labels(path, key, arrays[key], count)
        classes, values = _classes(path, arrays, label_keys)
        labels = arrays[f"{prefix}labels"].astype(np.int64)
        if values is not None:
            labels = np.searchsorted(values, labels).astype(np.int64)
        return Decoded(images, labels, classes)


NPZ = NpzSource()
