"""Reader for IDX files, the format of MNIST, Fashion-MNIST and EMNIST.

Layout (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08 = unsigned byte, the
only type these data sets use), a byte giving the number of dimensions, each dimension as a
big-endian uint32, then the data in row-major order.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from engine.datasets.source import corrupt

UBYTE = 0x08


def find(directory: Path, name: str) -> Path | None:
    """`directory/name` if present, else `directory/name.gz`, else None."""
    for path in (directory / name, directory / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise corrupt(path, str(e) or type(e).__name__) from None


def read(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array stored in the IDX file at `path` (gzipped or not), of `ndim` dimensions."""
    raw = _read_bytes(path)
    start = 4 + 4 * ndim
    if len(raw) < start or raw[:2] != b"\0\0" or raw[2] != UBYTE or raw[3] != ndim:
        raise corrupt(path, f"not an IDX file of unsigned bytes with {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = start + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise corrupt(path, f"header says {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)
