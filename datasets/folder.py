"""`folder:PATH`: JPEG/PNG images in one sub-folder per class.

Two layouts:
- PATH/train/<class>/* plus PATH/<test>/<class>/*, where <test> is the first of test/, val/,
  validation/ that exists: two splits. Classes are the union of both splits' sub-folders.
- PATH/<class>/*: one split; the registry holds out a seeded part of it as the test split.

Classes are the sorted sub-folder names (hidden ones skipped); within a class, images are taken in
file-name order, so the result does not depend on the file system. Only files directly inside a
class folder with extension .jpg, .jpeg or .png (any case) count. Each image is converted to RGB,
centre-cropped to a square (side = its shorter edge) and resized to image_size x image_size with
Pillow's BILINEAR filter.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.datasets.source import Located
from engine.datasets.split import Decoded
from engine.errors import EngineError

EXTENSIONS = (".jpg", ".jpeg", ".png")
TEST_DIRS = ("test", "val", "validation")


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _parts(path: Path) -> dict[str, Path]:
    """{"train": dir, "test": dir} for the split layout, {"all": path} for the class layout."""
    if not path.is_dir():
        raise EngineError(f"folder:{path}: no such directory; give a folder of class sub-folders")
    if not (path / "train").is_dir():
        return {"all": path}
    for name in TEST_DIRS:
        if (path / name).is_dir():
            return {"train": path / "train", "test": path / name}
    raise EngineError(
        f"folder:{path}: has train/ but none of {', '.join(d + '/' for d in TEST_DIRS)}; "
        f"add a test split folder, or point at a folder of class sub-folders"
    )


def _classes(parts: dict[str, Path]) -> list[str]:
    return sorted({d.name for part in parts.values() for d in _subdirs(part)})


def _images(part: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, label) for every image of one split, by class then by file name."""
    found = []
    for label, name in enumerate(classes):
        directory = part / name
        if not directory.is_dir():
            continue
        files = sorted(
            p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS
        )
        found += [(p, label) for p in files]
    if not found:
        raise EngineError(
            f"folder:{part}: no {'/'.join(EXTENSIONS)} images in class sub-folders; "
            f"put each class's images in its own sub-folder"
        )
    return found


def load_image(path: Path, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: RGB, centre-cropped to a square, resized with BILINEAR."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            box = (left, top, left + side, top + side)
            return np.asarray(im.resize((size, size), Image.BILINEAR, box=box), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise EngineError(
            f"cannot read image {path} ({e}); replace or delete the file"
        ) from None


@dataclass(frozen=True)
class FolderSource:
    name: str = "folder"
    uses_image_size: bool = True

    def locate(self, arg: str | None, root: Path, split: str) -> Located:
        parts = _parts(Path(arg))
        classes = _classes(parts)
        if "all" in parts:
            return Located([p for p, _ in _images(parts["all"], classes)], one_split=True)
        return Located([p for p, _ in _images(parts[split], classes)], one_split=False)

    def decode(self, arg: str | None, root: Path, part: str, image_size: int) -> Decoded:
        parts = _parts(Path(arg))
        classes = _classes(parts)
        items = _images(parts[part], classes)
        images = np.empty((len(items), image_size, image_size, 3), dtype=np.uint8)
        for i, (path, _) in enumerate(items):
            images[i] = load_image(path, image_size)
        labels = np.array([label for _, label in items], dtype=np.int64)
        return Decoded(images, labels, tuple(classes))


FOLDER = FolderSource()
