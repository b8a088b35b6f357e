"""Block shuffling (Neyshabur, Sedghi & Zhang 2020, "What is being transferred in transfer
learning?", Sec. 3.1): cut each HWC image into non-overlapping B x B blocks and rearrange the blocks
with one fixed permutation, the same for every image. B = 1 shuffles pixels; B = image size is the
identity. Small B destroys the visual features and keeps only low-level statistics.

Convention: blocks are numbered row-major, (H/B) rows of (W/B) blocks; output block j is input
block perm[j]. `unshuffle` applies the inverse permutation.

`shuffle_blocks` (parallel over samples) and `shuffle_page` (serial, GIL-free, in place on a
`.beton` page buffer) share the per-sample `_shuffle_one`; `shuffle_blocks_numpy` is the twin.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


def valid_blocks(height: int, width: int) -> list[int]:
    """Block sizes that divide both sides: the divisors of gcd(height, width)."""
    g = int(np.gcd(int(height), int(width)))
    return [b for b in range(1, g + 1) if g % b == 0]


def check_block(height: int, width: int, block) -> int:
    """`block` as an int; ValueError unless it is >= 1 and divides both sides."""
    valid = valid_blocks(height, width)
    is_int = isinstance(block, (int, np.integer)) and not isinstance(block, (bool, np.bool_))
    if not is_int or block not in valid:
        raise ValueError(f"block size {block} must divide the {height}x{width} image; "
                         f"valid block sizes: {', '.join(map(str, valid))}")
    return int(block)


def block_permutation_draws(height: int, width: int, block: int, seed: int) -> tuple[np.ndarray, int]:
    """(permutation, draws): the fixed permutation (int64 [(H/B) * (W/B)]) of the blocks, drawn
    from `np.random.default_rng(seed)`, and how many draws it took. A draw that leaves every block
    in place (likely for few blocks: 1 in 2 for two) would silently shuffle nothing, so it is
    redrawn from the same generator until one moves a block: deterministic per seed, and any
    non-identity first draw is kept as it was. ValueError for a grid of one block."""
    block = check_block(height, width, block)
    n_blocks = (height // block) * (width // block)
    if n_blocks < 2:
        smaller = [b for b in valid_blocks(height, width) if (height // b) * (width // b) >= 2]
        raise ValueError(f"block size {block} makes one block of the {height}x{width} image: "
                         f"nothing to shuffle; choose a smaller block size: "
                         f"{', '.join(map(str, smaller))}")
    rng = np.random.default_rng(seed)
    identity = np.arange(n_blocks)
    perm, draws = rng.permutation(n_blocks), 1
    while np.array_equal(perm, identity):
        perm, draws = rng.permutation(n_blocks), draws + 1
    return perm.astype(np.int64), draws


def block_permutation(height: int, width: int, block: int, seed: int) -> np.ndarray:
    """The permutation of `block_permutation_draws`, never the identity."""
    return block_permutation_draws(height, width, block, seed)[0]


def block_index(shape: tuple[int, int, int], block: int, perm: np.ndarray) -> np.ndarray:
    """The shuffle as a byte gather (uint32 [H * W * C]): output byte k of a flat HWC sample is
    input byte index[k]. A gather measured 2.4x (B = 28) to 12x (B = 1) faster than copying block
    rows (60k 28x56 samples), as short rows do not vectorise; an unsigned index spares Numba's
    negative-index check (0.39 instead of 0.56 ns per byte)."""
    height, width, channels = shape
    cols = width // block  # blocks per block row
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels), indexing="ij")
    src = np.asarray(perm, np.int64)[(y // block) * cols + x // block]
    sy = (src // cols) * block + y % block
    sx = (src % cols) * block + x % block
    return ((sy * width + sx) * channels + c).astype(np.uint32).reshape(-1)


# Inlined into both cached entry kernels, not cached itself: a cached callee shared by a serial and
# a parallel kernel breaks Numba's cache on a cold start (see engine.kernels.compose).
@njit(nogil=True, inline="always")
def _shuffle_one(dst, offset, src, index):
    """Write the shuffled sample at dst[offset:offset + index.size] (flat uint8) from `src`, one
    flat sample; every byte of the sample is written."""
    for k in range(index.shape[0]):
        dst[offset + k] = src[index[k]]


@njit(cache=True, parallel=True)
def _shuffle_batch(out, images, index):
    size = index.shape[0]
    src = images.reshape(images.shape[0], size)
    dst = out.reshape(-1)
    for i in prange(images.shape[0]):
        _shuffle_one(dst, i * size, src[i], index)


@njit(cache=True, nogil=True)
def _shuffle_page(buf, count, index):
    size = index.shape[0]
    scratch = np.empty(size, np.uint8)
    for i in range(count):
        for k in range(size):
            scratch[k] = buf[i * size + k]
        _shuffle_one(buf, i * size, scratch, index)


def _checked(images: np.ndarray, block: int, perm: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    _, height, width, _ = images.shape
    block = check_block(height, width, block)
    perm = np.asarray(perm, np.int64)
    n_blocks = (height // block) * (width // block)
    if perm.shape != (n_blocks,) or not np.array_equal(np.sort(perm), np.arange(n_blocks)):
        raise ValueError(f"perm must be a permutation of the {n_blocks} blocks of size {block}")
    return np.ascontiguousarray(images), block, perm


def _rearrange(images: np.ndarray, block: int, perm: np.ndarray) -> np.ndarray:
    n, height, width, channels = images.shape
    rows, cols = height // block, width // block
    # [N, rows, B, cols, B, C] -> blocks [N, rows * cols, B, B, C] in row-major block order
    blocks = images.reshape(n, rows, block, cols, block, channels).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, rows * cols, block, block, channels)[:, perm]
    out = blocks.reshape(n, rows, cols, block, block, channels).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(out.reshape(n, height, width, channels))


def shuffle_blocks(images: np.ndarray, block: int, perm: np.ndarray) -> np.ndarray:
    """Numba kernel: a new uint8 [N, H, W, C] with each image's blocks rearranged by `perm`."""
    images, block, perm = _checked(images, block, perm)
    out = np.empty_like(images)
    _shuffle_batch(out, images, block_index(images.shape[1:], block, perm))
    return out


def shuffle_blocks_numpy(images: np.ndarray, block: int, perm: np.ndarray) -> np.ndarray:
    """Reference twin of `shuffle_blocks`."""
    return _rearrange(*_checked(images, block, perm))


def unshuffle(images: np.ndarray, block: int, perm: np.ndarray) -> np.ndarray:
    """The inverse of `shuffle_blocks` with the same block size and permutation."""
    return shuffle_blocks(images, block, np.argsort(np.asarray(perm, np.int64)))


def shuffle_page(buf: np.ndarray, count: int, index: np.ndarray) -> None:
    """Shuffle, in place, the `count` samples that lie back to back at the start of the `.beton`
    page buffer `buf` (uint8 [page_size]); `index` from `block_index`. Serial and GIL-free, like
    the page fill it follows."""
    _shuffle_page(buf, count, index)
