"""CIFAR-10, python version: `cifar-10-batches-py/` under the data root.

Each batch is a pickle (https://www.cs.toronto.edu/~kriz/cifar.html) written by Python 2, read
with encoding="bytes": b"data" is uint8 [N, 3072], each row a 3x32x32 image (channel, row,
column), and b"labels" holds N labels 0..9. `batches.meta` names the classes in b"label_names".
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.datasets.source import Located, corrupt, missing_files
from engine.datasets.split import Decoded

SUBDIR = "cifar-10-batches-py"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
META = "batches.meta"
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    # A damaged pickle can fail with almost any exception type.
    except Exception:
        batch = None
    if not isinstance(batch, dict):
        raise corrupt(path, "not a CIFAR-10 pickle")
    return batch


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    try:
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"data is {data.dtype} {list(data.shape)}, expected uint8 [N, 3072]")
        if labels.shape != (len(data),):
            raise ValueError(f"{len(data)} images but {labels.size} labels")
    except (KeyError, TypeError, ValueError) as e:
        raise corrupt(path, str(e)) from None
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


@dataclass(frozen=True)
class CifarSource:
    name: str = "cifar10"
    uses_image_size: bool = False

    def locate(self, arg: str | None, root: Path, split: str) -> Located:
        directory = root / SUBDIR
        paths = [directory / name for name in BATCHES[split]]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise missing_files(self.name, missing, root, SUBDIR)
        meta = directory / META
        return Located(paths + [meta] if meta.is_file() else paths, one_split=False)

    def _classes(self, root: Path) -> tuple[str, ...]:
        path = root / SUBDIR / META
        if not path.is_file():
            return CLASSES
        names = _unpickle(path).get(b"label_names")
        if not isinstance(names, list) or len(names) != len(CLASSES):
            raise corrupt(path, f"expected {len(CLASSES)} label_names")
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)

    def decode(self, arg: str | None, root: Path, part: str, image_size: int) -> Decoded:
        batches = [_read_batch(root / SUBDIR / name) for name in BATCHES[part]]
        images = np.ascontiguousarray(np.concatenate([b[0] for b in batches]))
        labels = np.concatenate([b[1] for b in batches])
        return Decoded(images, labels, self._classes(root))


CIFAR10 = CifarSource()
