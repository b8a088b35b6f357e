"""Process settings for CPU work: torch's thread count and glibc's allocator."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from typing import Iterator

import torch

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_tuned = False


@contextlib.contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """Run torch single-threaded inside the block, then restore the previous count. For tiny
    models and d x d algebra, thread hand-offs cost more than they save, badly so on a busy CPU
    (seen here: 2 threads 10-100x slower than 1 for such work on the 2-core machine)."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel; returns
    whether the settings took (False off glibc). Idempotent; affects the whole process.

    By default glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh mmaps and
    trims the heap top back to the kernel, so a training step's activation tensors (25 MB for the
    reference cnn's first layer at batch 128) are page-faulted in anew at every step. Measured on
    the 2-core CPU machine, three 10k-sample 1-epoch fits of the cnn (l = 3, 1, 3) with evaluation:
    3.2M page faults by default, 0.34M with these settings; the l = 1 fit took 20.0 s, then 15.5 s.
    The cost: the process's resident memory stays at its peak.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 2**30) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _allocator_tuned = ok
    return ok
