"""Source names, and `load`: locate files, download if allowed, decode once, cache, hold out."""
from __future__ import annotations

from numbers import Integral
from pathlib import Path

from engine.datasets import cache, holdout
from engine.datasets import download as tv_download
from engine.datasets.cifar import CIFAR10
from engine.datasets.folder import FOLDER
from engine.datasets.mnist import EMNIST_LETTERS, FASHION, MNIST
from engine.datasets.npz import NPZ
from engine.datasets.source import Located, MissingFiles, Source
from engine.datasets.split import SPLITS, Decoded, Split, validate
from engine.datasets.svhn import SVHN
from engine.errors import EngineError

NAMES = ("mnist", "fashion", "emnist-letters", "svhn", "cifar10", "folder:PATH", "npz:PATH")

SOURCES: dict[str, Source] = {
    "mnist": MNIST,
    "fashion": FASHION,
    "emnist-letters": EMNIST_LETTERS,
    "svhn": SVHN,
    "cifar10": CIFAR10,
    "folder": FOLDER,
    "npz": NPZ,
}
WITH_PATH = ("folder", "npz")


def parse_source(text: str) -> tuple[str, str | None]:
    """"mnist" -> ("mnist", None); "npz:/a/b.npz" -> ("npz", "/a/b.npz")."""
    name, sep, arg = text.strip().partition(":")
    name = name.strip().lower()
    valid = ", ".join(NAMES)
    if name not in SOURCES:
        raise EngineError(f"unknown dataset {text!r}; valid names: {valid}")
    if name in WITH_PATH and not arg:
        raise EngineError(f"dataset {text!r} needs a path: {name}:PATH")
    if name not in WITH_PATH and sep:
        raise EngineError(f"dataset {name} takes no ':' argument; valid names: {valid}")
    return name, arg if name in WITH_PATH else None


def _resolve(source: str, root: Path) -> tuple[str, str | None, Path]:
    """Name, argument and data root, with paths made absolute (a PATH argument is cwd-relative)."""
    name, arg = parse_source(source)
    if arg is not None:
        arg = str(Path(arg).expanduser().resolve())
    return name, arg, Path(root).expanduser().resolve()


def _check_options(split: str, image_size: int, holdout_seed: int) -> None:
    if split not in SPLITS:
        raise EngineError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not isinstance(image_size, Integral) or image_size < 1:
        raise EngineError(f"image size must be a positive integer, got {image_size!r}")
    if not isinstance(holdout_seed, Integral) or holdout_seed < 0:
        raise EngineError(f"hold-out seed must be a non-negative integer, got {holdout_seed!r}")


def _locate(name: str, arg: str | None, root: Path, split: str, allow_download: bool) -> Located:
    source = SOURCES[name]
    try:
        return source.locate(arg, root, split)
    except MissingFiles:
        if not allow_download or tv_download.offline() or name not in tv_download.SUPPORTED:
            raise
    reason = tv_download.fetch(name, root, split)
    try:
        return source.locate(arg, root, split)
    except MissingFiles as e:
        raise EngineError(f"{e} (automatic download failed: {reason})") from None


def load(
    source: str,
    split: str,
    *,
    root: Path,
    image_size: int = 32,
    holdout_seed: int = 0,
    download: bool = True,
) -> Split:
    """One split of a source, decoded once and then memory-mapped from the cache."""
    name, arg, root = _resolve(source, root)
    _check_options(split, image_size, holdout_seed)
    image_size, holdout_seed = int(image_size), int(holdout_seed)
    located = _locate(name, arg, root, split, download)
    params: dict = {"source": name, "arg": arg, "split": split}
    if SOURCES[name].uses_image_size:
        params["image_size"] = image_size
    if located.one_split:
        params["holdout_seed"] = holdout_seed
    key = cache.key(params, located.files)
    hit = cache.read(key, source)
    if hit is not None:
        return hit
    if not located.one_split:
        decoded = SOURCES[name].decode(arg, root, split, image_size)
        validate(*decoded, source)
        return cache.write(key, decoded, located.files, source)
    # Decode once and store both halves, so that loading the other split later is a cache hit.
    whole = SOURCES[name].decode(arg, root, "all", image_size)
    validate(*whole, source)
    result = {}
    for part in SPLITS:
        keep = holdout.indices(len(whole.labels), holdout_seed, part, source)
        half = Decoded(whole.images[keep], whole.labels[keep], whole.classes)
        part_key = cache.key({**params, "split": part}, located.files)
        result[part] = cache.write(part_key, half, located.files, f"{source} ({part})")
    return result[split]


def source_files(source: str, *, root: Path) -> list[Path]:
    """Every file that `load` reads for either split (never downloads)."""
    name, arg, root = _resolve(source, root)
    files: dict[Path, None] = {}
    for split in SPLITS:
        files.update(dict.fromkeys(SOURCES[name].locate(arg, root, split).files))
    return list(files)
