"""Decoded splits on disk, so each source split is decoded once and then memory-mapped.

An entry is a directory `paths.source_cache(key)` with images.npy, labels.npy and meta.json.
meta.json is written last and removed first, so an entry without it is incomplete; an entry that
is incomplete or fails validation is rebuilt. The key hashes everything the decoded arrays depend
on, including each source file's path, size and mtime, so editing a source file makes a new entry.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from engine import atomic, paths
from engine.datasets.split import Decoded, Split, validate
from engine.errors import EngineError

# Bump when decoding changes, so that entries written by older code are not reused.
FORMAT = 1


def key(params: dict, files: list[Path]) -> str:
    """`<source>-<split>-<hash>`; `params` holds source, split and all other decoding options."""
    stats = [(str(p), *_stat(p)) for p in files]
    blob = json.dumps({"format": FORMAT, "params": params, "files": stats}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:20]
    return f"{params['source']}-{params['split']}-{digest}"


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def read(key: str, what: str) -> Split | None:
    """The cached split, or None when the entry is missing, incomplete or corrupt."""
    directory = paths.source_cache(key)
    try:
        meta = json.loads((directory / "meta.json").read_text())
        images = np.load(directory / "images.npy", mmap_mode="r")
        labels = np.load(directory / "labels.npy", mmap_mode="r")
        classes = tuple(str(c) for c in meta["classes"])
        files = tuple(str(f) for f in meta["files"])
        if images.shape != (meta["count"], *meta["image_shape"]):
            return None
        validate(images, labels, classes, what)
    except (OSError, ValueError, KeyError, TypeError, EngineError):
        return None
    return Split(images, labels, classes, files)


def _save(path: Path, array: np.ndarray) -> None:
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))
            f.flush()
            os.fsync(f.fileno())


def write(key: str, decoded: Decoded, files: list[Path], what: str) -> Split:
    """Store a validated split under `key` and return it memory-mapped from there."""
    directory = paths.source_cache(key)
    meta = {
        "classes": list(decoded.classes),
        "files": [str(p) for p in files],
        "count": len(decoded.images),
        "image_shape": list(decoded.images.shape[1:]),
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "meta.json").unlink(missing_ok=True)
        _save(directory / "images.npy", decoded.images)
        _save(directory / "labels.npy", decoded.labels)
        atomic.write_json(directory / "meta.json", meta)
    except OSError as e:
        raise EngineError(
            f"cannot write the dataset cache in {directory} ({e.strerror or e}); "
            f"free some space or set ENGINE_CACHE_DIR to a writable directory"
        ) from None
    split = read(key, what)
    if split is None:
        raise EngineError(
            f"the dataset cache in {directory} did not read back; "
            f"check the disk or set ENGINE_CACHE_DIR to another directory"
        )
    return split
