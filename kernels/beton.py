"""Page kernels for `.beton` files: fill a data page with samples, and gather samples back out.

A `.beton` data page holds whole samples back to back from offset 0 (see `engine/data/beton.py`), so a
page of `count` samples of `sample_bytes` each is `count * sample_bytes` bytes followed by zeros.
Each kernel has a NumPy twin computing the same bytes. The kernel that composes image pairs straight
into a page lives in `compose.py`, beside the code it inlines (Numba's on-disk cache does not track
calls across files).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange



@njit(cache=True, nogil=True)
def _fill_rows(buf, first, count, rows):
    sample_bytes = rows.shape[1]
    for k in range(count):
        buf[k * sample_bytes:(k + 1) * sample_bytes] = rows[first + k]


def fill_rows(buf: np.ndarray, first: int, count: int, rows: np.ndarray) -> None:
    """Copy pre-made samples (uint8 [n, sample_bytes]) into the page buffer."""
    _fill_rows(buf, first, count, rows)


def fill_rows_numpy(buf, first, count, rows) -> None:
    """Reference twin of `fill_rows`."""
    block = rows[first:first + count]
    buf[:block.size] = block.reshape(-1)


@njit(cache=True, parallel=True)
def _gather(data, ptrs, out):
    size = out.shape[1]
    for i in prange(ptrs.shape[0]):
        p = ptrs[i]
        out[i] = data[p:p + size]


def gather(data: np.ndarray, ptrs: np.ndarray, size: int) -> np.ndarray:
    """Read `size` bytes at each file offset in `ptrs` from `data` (the whole file, uint8 [bytes])."""
    out = np.empty((len(ptrs), size), np.uint8)
    _gather(data, np.ascontiguousarray(ptrs, np.int64), out)
    return out


def gather_numpy(data: np.ndarray, ptrs: np.ndarray, size: int) -> np.ndarray:
    """Reference twin of `gather`."""
    out = np.empty((len(ptrs), size), np.uint8)
    for i, p in enumerate(np.asarray(ptrs, np.int64)):
        out[i] = data[p:p + size]
    return out
