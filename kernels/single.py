"""Single images: bring one source image to a square `size x size x channels` (HWC uint8) and write
it straight into a `.beton` page, for task datasets (engine.data.tasks), where a sample is one
image rather than a side-by-side pair.

`plan_single` decides the geometry once per dataset (NumPy): per output row and column, the source
row/column pair to blend and the 8-bit blending weight, as in engine.kernels.compose. A source row
or column of -1 marks a zero border. `fill_single` is the page kernel (Numba, serial, GIL-free: the
`.beton` writer runs one per core on different pages); `fill_single_numpy` is its reference twin,
and `transform`/`transform_numpy` apply the same to a batch.

fit="resize" (default for tasks): centre-crop the source to a square (side = its shorter edge),
then resize to `size` bilinearly with half-pixel centres, in 8-bit fixed point, so kernel and twin
agree bit for bit (as datasets/folder.py does with Pillow for JPEG folders, whose images arrive
square already). fit="pad": no interpolation; each axis is centred in `size`, zero-padded when the
source is smaller and centre-cropped when it is larger. Grey is replicated to RGB when
`channels` is 3. A source already `size x size x channels` is copied as is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

FRAC = 256  # fixed-point weight scale: weights are integers in [0, 256] (as kernels/compose.py)
FITS = ("resize", "pad")


@dataclass(frozen=True)
class SinglePlan:
    src_shape: tuple[int, int, int]
    size: int
    channels: int
    rows: np.ndarray  # int32 [3, size]: y0, y1, wy; y0 = -1 marks a zero row
    cols: np.ndarray  # int32 [3, size]: x0, x1, wx; x0 = -1 marks a zero column
    copy: bool        # the source is already size x size x channels: copy the bytes

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)


def _resize_table(src: int, out: int, offset: int) -> np.ndarray:
    pos = (np.arange(out) + 0.5) * (src / out) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    i0 = np.floor(pos).astype(np.int32)
    i1 = np.minimum(i0 + 1, src - 1).astype(np.int32)
    w = np.rint((pos - i0) * FRAC).astype(np.int32)
    return np.stack([i0 + offset, i1 + offset, w]).astype(np.int32)


def _pad_table(src: int, out: int) -> np.ndarray:
    first = (out - src) // 2  # negative: the source is cropped
    i = np.arange(out) - first
    i = np.where((i >= 0) & (i < src), i, -1).astype(np.int32)
    return np.stack([i, i, np.zeros(out, np.int32)]).astype(np.int32)


def plan_single(src_shape, size: int, channels: int = 3, fit: str = "resize") -> SinglePlan:
    """The geometry taking `src_shape` (H, W, C with C = 1 or 3) images to size x size x channels.
    ValueError for an unsupported combination (the caller words it for the user)."""
    h, w, c = (int(s) for s in src_shape)
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
    if c not in (1, 3) or channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, not {c} -> {channels}")
    if c == 3 and channels == 1:
        raise ValueError("RGB images cannot be made grey; ask for 3 channels")
    if size < 1 or h < 1 or w < 1:
        raise ValueError(f"sizes must be positive, got {src_shape} -> {size}")
    copy = (h, w, c) == (size, size, channels)
    if fit == "resize":
        side = min(h, w)
        rows = _resize_table(side, size, (h - side) // 2)
        cols = _resize_table(side, size, (w - side) // 2)
    else:
        rows, cols = _pad_table(h, size), _pad_table(w, size)
    return SinglePlan((h, w, c), int(size), int(channels), rows, cols, copy)


# The per-sample body is inlined into the cached entry kernels (see kernels/compose.py on why
# cached callees shared across kernels are avoided).
@njit(nogil=True, inline="always")
def _one(dst, offset, size, channels, src, rows, cols, copy):
    """Write one sample at dst[offset:offset + size * size * channels] (flat uint8); every byte of
    it is written. src: one source image [h, w, c]."""
    if copy:
        flat = src.reshape(-1)
        for k in range(flat.shape[0]):
            dst[offset + k] = flat[k]
        return
    src_c = src.shape[2]
    pitch = size * channels
    for y in range(size):
        y0, y1, wy = rows[0, y], rows[1, y], rows[2, y]
        base = offset + y * pitch
        for x in range(size):
            x0, x1, wx = cols[0, x], cols[1, x], cols[2, x]
            for ch in range(channels):
                if y0 < 0 or x0 < 0:
                    dst[base + x * channels + ch] = 0
                    continue
                sc = ch if src_c > 1 else 0
                upper = np.int32(src[y0, x0, sc]) * (FRAC - wx) + np.int32(src[y0, x1, sc]) * wx
                lower = np.int32(src[y1, x0, sc]) * (FRAC - wx) + np.int32(src[y1, x1, sc]) * wx
                dst[base + x * channels + ch] = (
                    (upper * (FRAC - wy) + lower * wy + FRAC * FRAC // 2) // (FRAC * FRAC))


@njit(cache=True, nogil=True)
def _fill_single(buf, first, count, size, channels, images, index, rows, cols, copy):
    sample_bytes = size * size * channels
    for k in range(count):
        _one(buf, k * sample_bytes, size, channels, images[index[first + k]], rows, cols, copy)


def fill_single(buf: np.ndarray, first: int, count: int, images: np.ndarray, index: np.ndarray,
                plan: SinglePlan) -> None:
    """The `.beton` page kernel: samples first..first+count-1 (source images `images[index[i]]`)
    back to back into the page buffer `buf` (uint8 [page_size])."""
    _fill_single(buf, first, count, plan.size, plan.channels, images,
                 np.asarray(index, np.int64), plan.rows, plan.cols, plan.copy)


def transform_numpy(images: np.ndarray, index: np.ndarray, plan: SinglePlan) -> np.ndarray:
    """Reference twin: uint8 [n, size, size, channels] for the source images `images[index]`."""
    img = np.asarray(images)[np.asarray(index, np.int64)]
    if plan.copy:
        return img.copy()
    if img.shape[3] == 1 and plan.channels == 3:
        img = np.repeat(img, 3, axis=3)
    img = img.astype(np.int64)
    rows, cols = plan.rows.astype(np.int64), plan.cols.astype(np.int64)
    y0, y1 = np.maximum(rows[0], 0), np.maximum(rows[1], 0)
    x0, x1 = np.maximum(cols[0], 0), np.maximum(cols[1], 0)
    wy, wx = rows[2][None, :, None, None], cols[2][None, None, :, None]
    r0, r1 = img[:, y0], img[:, y1]
    upper = r0[:, :, x0] * (FRAC - wx) + r0[:, :, x1] * wx
    lower = r1[:, :, x0] * (FRAC - wx) + r1[:, :, x1] * wx
    out = (upper * (FRAC - wy) + lower * wy + FRAC * FRAC // 2) // (FRAC * FRAC)
    out[:, rows[0] < 0] = 0
    out[:, :, cols[0] < 0] = 0
    return out.astype(np.uint8)


def transform(images: np.ndarray, index: np.ndarray, plan: SinglePlan) -> np.ndarray:
    """The Numba kernel over a batch: uint8 [n, size, size, channels]."""
    index = np.asarray(index, np.int64)
    out = np.empty((len(index),) + plan.shape, np.uint8)
    _fill_single(out.reshape(-1), 0, len(index), plan.size, plan.channels, images, index,
                 plan.rows, plan.cols, plan.copy)
    return out


def fill_single_numpy(buf, first, count, images, index, plan: SinglePlan) -> None:
    """Reference twin of `fill_single`."""
    samples = transform_numpy(images, np.asarray(index)[first:first + count], plan)
    buf[:samples.nbytes] = samples.reshape(-1)
