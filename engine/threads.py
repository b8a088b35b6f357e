"""Torch thread count for small models and small matrices."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


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
