"""Composing: bring a left and a right image to a common height and channel count and put them side
by side (HWC uint8).

`plan_layout` decides the geometry once per dataset (NumPy); `compose_one` applies it to one sample
(Numba, called from the `.beton` page kernel as well); `compose` runs it over a batch; `compose_numpy`
is the reference twin.

fit="pad" (default): the common height H is the larger one; the smaller image is zero-padded by the
same border on every side (so a square stays square: 28x28 in a 32-high row becomes 32x32) and
centred. No interpolation, so every half equals its source exactly.
fit="resize": the smaller image is resized to height H keeping its aspect ratio, bilinear with
half-pixel centres, in 8-bit fixed point so that kernel and twin agree bit for bit.
Grey is replicated to RGB when the other side is RGB.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from engine.kernels.prefetch import prefetch

FRAC = 256  # fixed-point weight scale for bilinear resizing: weights are integers in [0, 256]


@dataclass(frozen=True)
class SidePlan:
    geo: np.ndarray  # int64 [8]: src_h, src_w, src_c, out_w, col0, resize(0/1), top, left
    rows: np.ndarray  # int32 [3, H]: y0, y1, wy (resize only)
    cols: np.ndarray  # int32 [3, out_w]: x0, x1, wx (resize only)


@dataclass(frozen=True)
class Layout:
    height: int
    width: int
    channels: int
    left: SidePlan
    right: SidePlan

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


def _axis_table(src: int, out: int) -> np.ndarray:
    pos = (np.arange(out) + 0.5) * (src / out) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    i0 = np.floor(pos).astype(np.int32)
    i1 = np.minimum(i0 + 1, src - 1).astype(np.int32)
    w = np.rint((pos - i0) * FRAC).astype(np.int32)
    return np.stack([i0, i1, w])


def _side(shape: tuple[int, int, int], height: int, col0: int, fit: str) -> SidePlan:
    h, w, c = shape
    if fit == "resize" and h != height:
        out_w = max(1, int(round(w * height / h)))
        geo = np.array([h, w, c, out_w, col0, 1, 0, 0], np.int64)
        return SidePlan(geo, _axis_table(h, height), _axis_table(w, out_w))
    border = height - h
    out_w = w + border
    geo = np.array([h, w, c, out_w, col0, 0, border // 2, border // 2], np.int64)
    return SidePlan(geo, np.zeros((3, 0), np.int32), np.zeros((3, 0), np.int32))


def plan_layout(left_shape: tuple[int, int, int], right_shape: tuple[int, int, int],
                fit: str = "pad") -> Layout:
    if fit not in ("pad", "resize"):
        raise ValueError(f"fit must be 'pad' or 'resize', not {fit!r}")
    height = max(left_shape[0], right_shape[0])
    channels = max(left_shape[2], right_shape[2])
    left = _side(tuple(left_shape), height, 0, fit)
    right = _side(tuple(right_shape), height, int(left.geo[3]), fit)
    return Layout(height, int(left.geo[3] + right.geo[3]), channels, left, right)


# The per-sample helpers are inlined into the cached entry kernels rather than cached themselves:
# a separately cached callee shared by a serial and a parallel kernel with other array signatures
# makes Numba's cache fail on a cold start (KeyError in the dispatcher).
@njit(nogil=True, inline="always")
def _compose_side(dst, offset, height, width, channels, src, geo, rows, cols):
    """Write one half of a sample at dst[offset:offset + height * width * channels] (flat uint8; a
    base offset rather than a slice keeps the buffer contiguous for LLVM's vectoriser);
    src: one source image [h, w, c]."""
    src_h, src_w, src_c, out_w, col0, resize, top, left = (
        geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7])
    flat = src.reshape(-1)
    pitch = width * channels  # bytes per output row
    if resize:
        for y in range(height):
            base = offset + y * pitch + col0 * channels
            y0, y1, wy = rows[0, y], rows[1, y], rows[2, y]
            for x in range(out_w):
                x0, x1, wx = cols[0, x], cols[1, x], cols[2, x]
                for ch in range(channels):
                    sc = ch if src_c > 1 else 0
                    upper = np.int32(src[y0, x0, sc]) * (FRAC - wx) + np.int32(src[y0, x1, sc]) * wx
                    lower = np.int32(src[y1, x0, sc]) * (FRAC - wx) + np.int32(src[y1, x1, sc]) * wx
                    dst[base + x * channels + ch] = (
                        (upper * (FRAC - wy) + lower * wy + FRAC * FRAC // 2) // (FRAC * FRAC))
        return
    if out_w != src_w or height != src_h:  # zero the border only when there is one
        for y in range(height):
            base = offset + y * pitch + col0 * channels
            for k in range(out_w * channels):
                dst[base + k] = 0
    first = offset + top * pitch + (col0 + left) * channels
    if src_c == channels:  # the common case: one contiguous copy per row
        row_bytes = src_w * channels
        for y in range(src_h):
            d = first + y * pitch
            s = y * row_bytes
            for k in range(row_bytes):
                dst[d + k] = flat[s + k]
    else:  # grey replicated to RGB
        for y in range(src_h):
            d = first + y * pitch
            for x in range(src_w):
                v = flat[y * src_w + x]
                for ch in range(channels):
                    dst[d + x * channels + ch] = v


@njit(nogil=True, inline="always")
def compose_one(dst, offset, height, width, channels, left_img, right_img, lgeo, lrows, lcols,
                rgeo, rrows, rcols):
    """Write one composed sample at dst[offset:offset + H * W * C] (flat uint8); every byte of it
    is written."""
    _compose_side(dst, offset, height, width, channels, left_img, lgeo, lrows, lcols)
    _compose_side(dst, offset, height, width, channels, right_img, rgeo, rrows, rcols)


@njit(cache=True, parallel=True)
def _compose_batch(out, left_images, right_images, left_idx, right_idx,
                   lgeo, lrows, lcols, rgeo, rrows, rcols):
    height, width, channels = out.shape[1], out.shape[2], out.shape[3]
    flat = out.reshape(-1)
    size = height * width * channels
    for i in prange(out.shape[0]):
        compose_one(flat, i * size, height, width, channels, left_images[left_idx[i]],
                    right_images[right_idx[i]], lgeo, lrows, lcols, rgeo, rrows, rcols)


def compose(left_images: np.ndarray, right_images: np.ndarray, left_idx: np.ndarray,
            right_idx: np.ndarray, layout: Layout) -> np.ndarray:
    """Numba kernel over a batch: uint8 [n, H, W, C]."""
    out = np.empty((len(left_idx),) + layout.shape, np.uint8)
    lp, rp = layout.left, layout.right
    _compose_batch(out, left_images, right_images, np.asarray(left_idx, np.int64),
                   np.asarray(right_idx, np.int64), lp.geo, lp.rows, lp.cols, rp.geo, rp.rows, rp.cols)
    return out


def _side_numpy(images: np.ndarray, plan: SidePlan, height: int, channels: int) -> np.ndarray:
    src_h, src_w, src_c, out_w, _, resize, top, left = (int(v) for v in plan.geo)
    if src_c == 1 and channels > 1:
        images = np.repeat(images, channels, axis=3)
    if resize:
        wy = plan.rows[2][None, :, None, None].astype(np.int64)
        wx = plan.cols[2][None, None, :, None].astype(np.int64)
        img = images.astype(np.int64)
        rows0, rows1 = img[:, plan.rows[0]], img[:, plan.rows[1]]
        upper = rows0[:, :, plan.cols[0]] * (FRAC - wx) + rows0[:, :, plan.cols[1]] * wx
        lower = rows1[:, :, plan.cols[0]] * (FRAC - wx) + rows1[:, :, plan.cols[1]] * wx
        return ((upper * (FRAC - wy) + lower * wy + FRAC * FRAC // 2) // (FRAC * FRAC)).astype(np.uint8)
    out = np.zeros((images.shape[0], height, out_w, channels), np.uint8)
    out[:, top:top + src_h, left:left + src_w, :] = images
    return out


def compose_numpy(left_images, right_images, left_idx, right_idx, layout: Layout) -> np.ndarray:
    """Reference twin of `compose`."""
    left = _side_numpy(np.asarray(left_images)[left_idx], layout.left, layout.height, layout.channels)
    right = _side_numpy(np.asarray(right_images)[right_idx], layout.right, layout.height, layout.channels)
    return np.concatenate([left, right], axis=2)


AHEAD = 16  # samples prefetched ahead; 8-48 measured within 10% of each other
_TWIN_KERNELS: dict = {}
_TWIN_LOCK = threading.Lock()  # the page writers' threads ask for the kernel at once


def _twin_kernel(height: int, row: int, word: int):
    """The page kernel for two unpadded halves of equal row width (e.g. mnist:fashion), specialised
    to one geometry: `row` words of `word` bytes per half-row, `height` rows. With the trip counts
    known LLVM emits straight-line word copies (a 28-byte MNIST row is 7 uint32 moves); with runtime
    trip counts every row went through the vectoriser's scalar remainder loop (2.6x slower). Numba
    caches each closure on disk under its own geometry. The source images of the sample `AHEAD`
    places ahead are prefetched: pairs index both sources at random, so without it the kernel
    waits on memory (an MNIST page took 3.3x as long as with the same indices in order; with the
    prefetch, 1.5x)."""
    key = (height, row, word)
    with _TWIN_LOCK:
        if key in _TWIN_KERNELS:
            return _TWIN_KERNELS[key]
        pitch, size, half = 2 * row, 2 * row * height, row * height
        line = 64 // word  # prefetch stride: one 64-byte cache line, in words of `word` bytes

        @njit(cache=True, nogil=True)
        def kernel(buf, first, count, left, right, left_idx, right_idx):
            end = first + count
            for k in range(count):
                i = first + k
                if i + AHEAD < end:
                    a_next, b_next = left_idx[i + AHEAD] * half, right_idx[i + AHEAD] * half
                    for w in range(0, half, line):
                        prefetch(left, a_next + w)
                        prefetch(right, b_next + w)
                a, b = left_idx[i] * half, right_idx[i] * half
                base = k * size
                for y in range(height):
                    for j in range(row):
                        buf[base + y * pitch + j] = left[a + y * row + j]
                    for j in range(row):
                        buf[base + y * pitch + row + j] = right[b + y * row + j]

        _TWIN_KERNELS[key] = kernel
        return kernel


@njit(cache=True, nogil=True)
def _fill_composed(buf, first, count, height, width, channels, left_images, right_images, left_idx,
                   right_idx, lgeo, lrows, lcols, rgeo, rrows, rcols):
    sample_bytes = height * width * channels
    for k in range(count):
        i = first + k
        compose_one(buf, k * sample_bytes, height, width, channels, left_images[left_idx[i]],
                    right_images[right_idx[i]], lgeo, lrows, lcols, rgeo, rrows, rcols)


def _words(images: np.ndarray, word: np.dtype) -> np.ndarray:
    """All images as one flat array of `word`s (a view when the images are contiguous)."""
    return np.ascontiguousarray(images).reshape(-1).view(word)


def _twin_halves(layout: Layout) -> bool:
    """Both halves copied as they are (no border, no resize, no channel change), same width."""
    def plain(geo):
        src_h, src_w, src_c, out_w, _, resize, _, _ = (int(v) for v in geo)
        return not resize and src_h == layout.height and out_w == src_w and src_c == layout.channels
    return plain(layout.left.geo) and plain(layout.right.geo) and layout.left.geo[1] == layout.right.geo[1]


def fill_composed(buf: np.ndarray, first: int, count: int, left_images: np.ndarray,
                  right_images: np.ndarray, left_idx: np.ndarray, right_idx: np.ndarray,
                  layout: Layout) -> None:
    """The `.beton` page kernel: compose samples first..first+count-1 back to back into the page
    buffer `buf` (uint8 [page_size]). Serial and GIL-free: the writer runs one per core on
    different pages (a parallel kernel beside an I/O thread oversubscribes the cores)."""
    if _twin_halves(layout):
        row = layout.width // 2 * layout.channels  # bytes per half-row
        word = next(np.dtype(w) for w in (np.uint64, np.uint32, np.uint16, np.uint8)
                    if row % np.dtype(w).itemsize == 0)
        sample = layout.height * 2 * row
        _twin_kernel(layout.height, row // word.itemsize, word.itemsize)(
            buf[:count * sample].view(word), first, count, _words(left_images, word),
            _words(right_images, word), left_idx, right_idx)
        return
    lp, rp = layout.left, layout.right
    _fill_composed(buf, first, count, layout.height, layout.width, layout.channels, left_images,
                   right_images, left_idx, right_idx, lp.geo, lp.rows, lp.cols, rp.geo, rp.rows, rp.cols)


def fill_composed_numpy(buf, first, count, left_images, right_images, left_idx, right_idx,
                        layout: Layout) -> None:
    """Reference twin of `fill_composed`."""
    sl = slice(first, first + count)
    samples = compose_numpy(left_images, right_images, left_idx[sl], right_idx[sl], layout)
    buf[:samples.nbytes] = samples.reshape(-1)
