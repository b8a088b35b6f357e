"""MNIST, Fashion-MNIST and EMNIST letters: IDX files in torchvision's layout under the data root.

EMNIST stores every image transposed (column-major) relative to MNIST. torchvision returns them as
stored; we transpose them back so that letters are upright, like MNIST digits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.datasets import idx
from engine.datasets.source import Located, corrupt, missing_files
from engine.datasets.split import Decoded

MNIST_CLASSES = tuple("0123456789")
# Order of the label values 0..9, from github.com/zalandoresearch/fashion-mnist.
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class IdxSource:
    name: str
    subdir: str  # relative to the data root
    prefixes: dict[str, str]  # split -> file name prefix
    classes: tuple[str, ...]
    uses_image_size: bool = False

    def _names(self, split: str) -> list[str]:
        prefix = self.prefixes[split]
        return [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]

    def _idx_files(self, root: Path, split: str) -> list[Path]:
        """[images, labels] of `split`, unpacked where present, else gzipped."""
        names = self._names(split)
        found = [idx.find(root / self.subdir, n) for n in names]
        missing = [f"{n}[.gz]" for n, path in zip(names, found) if path is None]
        if missing:
            raise missing_files(self.name, missing, root, self.subdir)
        return found

    def locate(self, arg: str | None, root: Path, split: str) -> Located:
        return Located(self._idx_files(root, split), one_split=False)

    def _read(self, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self._idx_files(root, split)
        images, labels = idx.read(image_path, 3), idx.read(label_path, 1)
        if len(images) != len(labels):
            raise corrupt(
                image_path, f"{len(images)} images but {len(labels)} labels in {label_path.name}"
            )
        return images, labels.astype(np.int64)

    def decode(self, arg: str | None, root: Path, part: str, image_size: int) -> Decoded:
        images, labels = self._read(root, part)
        return Decoded(images[..., None], labels, self.classes)


@dataclass(frozen=True)
class EmnistLetters(IdxSource):
    def _mapping(self, root: Path) -> Path:
        return root / self.subdir / "emnist-letters-mapping.txt"

    def locate(self, arg: str | None, root: Path, split: str) -> Located:
        located = super().locate(arg, root, split)
        mapping = self._mapping(root)
        return Located(located.files + [mapping], False) if mapping.is_file() else located

    def _classes(self, root: Path) -> tuple[str, ...]:
        """Names from the mapping file (lines "label upper lower", as character codes)."""
        path = self._mapping(root)
        if not path.is_file():
            return self.classes
        try:
            rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
            codes = {int(row[0]): int(row[-1]) for row in rows}
            names = tuple(chr(codes[label]) for label in range(1, len(codes) + 1))
        except (ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError):
            raise corrupt(path, "expected lines 'label upper lower' for labels 1..26") from None
        if len(names) != len(self.classes):
            raise corrupt(path, f"{len(names)} classes instead of {len(self.classes)}")
        return names

    def decode(self, arg: str | None, root: Path, part: str, image_size: int) -> Decoded:
        images, labels = self._read(root, part)
        label_path = self._idx_files(root, part)[1]
        if len(labels) and (labels.min() < 1 or labels.max() > len(self.classes)):
            raise corrupt(label_path, f"letters labels must lie in 1..{len(self.classes)}")
        upright = np.ascontiguousarray(images.transpose(0, 2, 1))
        return Decoded(upright[..., None], labels - 1, self._classes(root))


LECUN_PREFIXES = {"train": "train", "test": "t10k"}
MNIST = IdxSource("mnist", "MNIST/raw", LECUN_PREFIXES, MNIST_CLASSES)
FASHION = IdxSource("fashion", "FashionMNIST/raw", LECUN_PREFIXES, FASHION_CLASSES)
EMNIST_LETTERS = EmnistLetters(
    "emnist-letters",
    "EMNIST/raw",
    {"train": "emnist-letters-train", "test": "emnist-letters-test"},
    LETTERS,
)
