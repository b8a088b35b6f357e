"""Composing: bring a left and a right image to a common height and channel count and put them side
by side (HWC uint8).

`plan_layout` decides the geometry once per dataset (NumPy); `compose_one` applies it to one sample
(Numba); `compose` runs it over a batch; `compose_numpy` is the reference twin. `fill_composed`,
the `.beton` page kernel, runs a kernel specialised to the layout's geometry (`_page_kernel`);
`fill_composed_numpy` is its twin, and `_fill_composed` (the general kernel, geometry read at run
time) is the baseline `bench/test_data_bench.py` measures it against.

fit="pad" (default): the common height H is the larger one; the smaller image is zero-padded by the
same border on every side (so a square stays square: 28x28 in a 32-high row becomes 32x32) and
centred. No interpolation, so every half equals its source exactly.
fit="resize": the smaller image is resized to height H keeping its aspect ratio, bilinear with
half-pixel centres, in 8-bit fixed point so that kernel and twin agree bit for bit.
Grey is replicated to RGB when the other side is RGB.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from engine.kernels.prefetch import prefetch
from engine.kernels.unaligned import load8, store8

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
LITTLE_ENDIAN = sys.byteorder == "little"  # the two-pixel store lays its bytes out little-endian
_PAGE_KERNELS: dict = {}
_PAGE_LOCK = threading.Lock()  # the page writers' threads ask for the kernel at once


@njit(nogil=True, inline="always")
def _move(dst, d, src, s, n):
    """dst[d:d + n] = src[s:s + n] in 8-byte moves (the last one overlapping) when n >= 8."""
    if n < 8:
        for k in range(n):
            dst[d + k] = src[s + k]
        return
    for k in range(0, n - 8, 8):
        store8(dst, d + k, load8(src, s + k))
    store8(dst, d + n - 8, load8(src, s + n - 8))


@njit(nogil=True, inline="always")
def _zero(dst, d, n):
    """dst[d:d + n] = 0, as `_move`."""
    if n < 8:
        for k in range(n):
            dst[d + k] = 0
        return
    for k in range(0, n - 8, 8):
        store8(dst, d + k, np.uint64(0))
    store8(dst, d + n - 8, np.uint64(0))


@njit(nogil=True, inline="always")
def _pad_half(buf, base, src, s0, height, pitch, channels, col0, out_w, top, left, src_h, src_w,
              src_c):
    """One unresized half of a sample: source image at src[s0:] (flat uint8) into buf at `base`,
    its zero border around it. Called by `_page_kernel` with every argument after `s0` a
    compile-time constant, so the fixed-length moves unroll."""
    side = base + col0 * channels
    row_bytes = out_w * channels
    if out_w != src_w or height != src_h:
        for y in range(top):
            _zero(buf, side + y * pitch, row_bytes)
        for y in range(top + src_h, height):
            _zero(buf, side + y * pitch, row_bytes)
        for y in range(top, top + src_h):
            _zero(buf, side + y * pitch, left * channels)
            _zero(buf, side + y * pitch + (left + src_w) * channels,
                  (out_w - left - src_w) * channels)
    first = side + top * pitch + left * channels
    if src_c == channels:
        n = src_w * channels
        for y in range(src_h):
            _move(buf, first + y * pitch, src, s0 + y * n, n)
    elif channels == 3 and LITTLE_ENDIAN:  # grey to RGB, two pixels per 8-byte store (store8)
        pairs = (src_w - 1) // 2  # the last store of a row writes at most its last byte
        for y in range(src_h):
            d, s = first + y * pitch, s0 + y * src_w
            for p in range(pairs):
                a, b = np.uint64(src[s + 2 * p]), np.uint64(src[s + 2 * p + 1])
                store8(buf, d + 6 * p, (a | b << np.uint64(24)) * np.uint64(0x010101))
            for x in range(2 * pairs, src_w):
                v = src[s + x]
                buf[d + 3 * x] = v
                buf[d + 3 * x + 1] = v
                buf[d + 3 * x + 2] = v
    else:  # grey replicated to `channels`
        for y in range(src_h):
            for x in range(src_w):
                v = src[s0 + y * src_w + x]
                for ch in range(channels):
                    buf[first + y * pitch + x * channels + ch] = v


@njit(nogil=True, inline="always")
def _resize_half(buf, base, src, s0, height, pitch, channels, col0, out_w, src_w, src_c, rows,
                 cols):
    """One resized half of a sample, bilinear in 8-bit fixed point as `_compose_side` computes it
    (bit for bit), a grey value computed once and replicated; the geometry and the `rows`/`cols`
    tables are `_page_kernel`'s constants."""
    side = base + col0 * channels
    stride = src_w * src_c  # bytes per source row
    for y in range(height):
        d = side + y * pitch
        r0, r1, wy = s0 + rows[0, y] * stride, s0 + rows[1, y] * stride, rows[2, y]
        for x in range(out_w):
            x0, x1, wx = cols[0, x] * src_c, cols[1, x] * src_c, cols[2, x]
            if src_c == channels:
                for ch in range(channels):
                    upper = (np.int32(src[r0 + x0 + ch]) * (FRAC - wx)
                             + np.int32(src[r0 + x1 + ch]) * wx)
                    lower = (np.int32(src[r1 + x0 + ch]) * (FRAC - wx)
                             + np.int32(src[r1 + x1 + ch]) * wx)
                    buf[d + x * channels + ch] = (
                        (upper * (FRAC - wy) + lower * wy + FRAC * FRAC // 2) // (FRAC * FRAC))
            else:  # grey replicated
                upper = np.int32(src[r0 + x0]) * (FRAC - wx) + np.int32(src[r0 + x1]) * wx
                lower = np.int32(src[r1 + x0]) * (FRAC - wx) + np.int32(src[r1 + x1]) * wx
                v = (upper * (FRAC - wy) + lower * wy + FRAC * FRAC // 2) // (FRAC * FRAC)
                for ch in range(channels):
                    buf[d + x * channels + ch] = v


@njit(nogil=True, inline="always")
def _half(buf, base, src, s0, height, pitch, channels, src_h, src_w, src_c, out_w, col0, resize,
          top, left, rows, cols):
    """One half of a sample, its geometry (a `SidePlan.geo` spelled out) `_page_kernel`'s
    constants: resized or padded; the branch not taken compiles away."""
    if resize:
        _resize_half(buf, base, src, s0, height, pitch, channels, col0, out_w, src_w, src_c, rows,
                     cols)
    else:
        _pad_half(buf, base, src, s0, height, pitch, channels, col0, out_w, top, left, src_h,
                  src_w, src_c)


def _page_kernel(layout: Layout):
    """The `.beton` page kernel specialised to one layout: the closure's constants give every row
    move a fixed length, so LLVM emits straight-line 8-byte moves (`_move`), and resized sides
    read their interpolation tables as constants; Numba caches each closure on disk under its
    own geometry. The general kernel reads the geometry from arrays at run time and moved bytes
    one at a time. On one core of the 2-core machine, 60k random pairs (bench/test_data_bench.py):
    28x28 grey beside 32x32 RGB (mnist:svhn's geometry) 404-412 -> 46-52 ms, the same with the
    grey side resized (fit="resize") 1,357-1,374 -> 245-248 ms; mnist:fashion pages took 22-23 ms
    with the earlier word-copy kernel for plain halves, 10-11 ms with this one (timed by a
    script). The source images of the sample `AHEAD` places ahead are prefetched:
    pairs index both sources at random, so without it the kernel waits on memory (an MNIST page
    took 3.3x as long as with the same indices in order; with the prefetch, 1.5x)."""
    lgeo, rgeo = (tuple(int(v) for v in p.geo) for p in (layout.left, layout.right))
    key = (layout.shape, lgeo, rgeo)
    with _PAGE_LOCK:
        if key in _PAGE_KERNELS:
            return _PAGE_KERNELS[key]
        height, channels = layout.height, layout.channels
        pitch = layout.width * channels
        size = height * pitch
        lh, lw, lc, low, lcol0, lresize, ltop, lleft = lgeo
        rh, rw, rc, row_, rcol0, rresize, rtop, rleft = rgeo
        lsize, rsize = lh * lw * lc, rh * rw * rc
        lrows, lcols, rrows, rcols = (layout.left.rows, layout.left.cols, layout.right.rows,
                                      layout.right.cols)

        @njit(cache=True, nogil=True)
        def kernel(buf, first, count, left, right, left_idx, right_idx):
            end = first + count
            for k in range(count):
                i = first + k
                if i + AHEAD < end:
                    a_next, b_next = left_idx[i + AHEAD] * lsize, right_idx[i + AHEAD] * rsize
                    for w in range(0, lsize, 64):
                        prefetch(left, a_next + w)
                    for w in range(0, rsize, 64):
                        prefetch(right, b_next + w)
                base = k * size
                _half(buf, base, left, left_idx[i] * lsize, height, pitch, channels, lh, lw, lc,
                      low, lcol0, lresize, ltop, lleft, lrows, lcols)
                _half(buf, base, right, right_idx[i] * rsize, height, pitch, channels, rh, rw, rc,
                      row_, rcol0, rresize, rtop, rleft, rrows, rcols)

        _PAGE_KERNELS[key] = kernel
        return kernel


@njit(cache=True, nogil=True)
def _fill_composed(buf, first, count, height, width, channels, left_images, right_images, left_idx,
                   right_idx, lgeo, lrows, lcols, rgeo, rrows, rcols):
    sample_bytes = height * width * channels
    for k in range(count):
        i = first + k
        compose_one(buf, k * sample_bytes, height, width, channels, left_images[left_idx[i]],
                    right_images[right_idx[i]], lgeo, lrows, lcols, rgeo, rrows, rcols)


def _flat(images: np.ndarray) -> np.ndarray:
    """All images as one flat uint8 array (a view when the images are contiguous)."""
    return np.ascontiguousarray(images).reshape(-1)


def fill_composed(buf: np.ndarray, first: int, count: int, left_images: np.ndarray,
                  right_images: np.ndarray, left_idx: np.ndarray, right_idx: np.ndarray,
                  layout: Layout) -> None:
    """The `.beton` page kernel: compose samples first..first+count-1 back to back into the page
    buffer `buf` (uint8 [page_size]). Serial and GIL-free: the writer runs one per core on
    different pages (a parallel kernel beside an I/O thread oversubscribes the cores)."""
    _page_kernel(layout)(buf, first, count, _flat(left_images), _flat(right_images), left_idx,
                         right_idx)


def fill_composed_numpy(buf, first, count, left_images, right_images, left_idx, right_idx,
                        layout: Layout) -> None:
    """Reference twin of `fill_composed`."""
    sl = slice(first, first + count)
    samples = compose_numpy(left_images, right_images, left_idx[sl], right_idx[sl], layout)
    buf[:samples.nbytes] = samples.reshape(-1)
