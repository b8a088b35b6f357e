"""Resource checks before any work: will the disk and the memory hold what a command is about to
write and keep? Estimates are computed from the sizes alone (nothing is allocated), and a command
that cannot fit is refused in one line that gives the estimate and what is free."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.atomic import free_bytes
from engine.errors import EngineError

# Memory a build keeps per sample of its larger split beyond the images themselves: pairing draws,
# label and index columns, the .beton metadata and allocation table, and their temporaries.
BUILD_BYTES_PER_SAMPLE = 256
DISK_RESERVE = 16 << 20    # left free on the disk after the estimate
MEMORY_RESERVE = 256 << 20


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**28 else f"{n / 2**20:,.1f} MiB"


@dataclass(frozen=True)
class Estimate:
    """What a piece of work will write to disk and hold in memory at its peak, in bytes."""
    disk: int = 0
    memory: int = 0

    def __add__(self, other: "Estimate") -> "Estimate":
        return Estimate(self.disk + other.disk, max(self.memory, other.memory))


def require(estimate: Estimate, where: str | os.PathLike, what: str, hint: str = "") -> None:
    """EngineError (one line) when the disk holding `where` or the available memory cannot hold
    `estimate`; says the estimate and what is free."""
    hint = f"; {hint}" if hint else ""
    free = free_bytes(Path(where))
    if free is not None and estimate.disk + DISK_RESERVE > free:
        raise EngineError(f"{what} would write ~{_gib(estimate.disk)} under {where} and leave "
                          f"{_gib(DISK_RESERVE)} free as a reserve, ~{_gib(estimate.disk + DISK_RESERVE)}"
                          f" in all, but only {_gib(free)} is free there{hint}")
    mem = available_memory()
    if mem is not None and estimate.memory + MEMORY_RESERVE > mem:
        raise EngineError(f"{what} would need ~{_gib(estimate.memory)} of memory and keep "
                          f"{_gib(MEMORY_RESERVE)} in reserve, ~{_gib(estimate.memory + MEMORY_RESERVE)}"
                          f" in all, but only {_gib(mem)} is available{hint}")


def dataset_estimate(image_shape, n_train: int, n_test: int, *, workers: int | None = None) -> Estimate:
    """Disk (both `.beton` files and the manifest) and peak memory of building one dataset."""
    from engine.data import beton
    sample_bytes = 1
    for s in image_shape:
        sample_bytes *= int(s)
    disk = sum(beton.estimate_bytes(sample_bytes, 5, n) for n in (n_train, n_test)) + (1 << 16)
    workers = workers or beton.default_workers()
    memory = max(n_train, n_test) * BUILD_BYTES_PER_SAMPLE + (workers + 2) * beton.DEFAULT_PAGE_SIZE
    return Estimate(disk, memory)


def training_memory(image_shape, n_train: int, n_test: int) -> int:
    """Bytes a sweep holds to train on one dataset in memory (uint8 images of both splits plus
    labels; engine.train.device.DeviceData)."""
    sample_bytes = 1
    for s in image_shape:
        sample_bytes *= int(s)
    return (n_train + n_test) * (sample_bytes + 32)
