"""Devices and data on them: the memory format and autocast every trainer uses, and `DeviceData`,
a whole dataset uploaded once as uint8 and normalised per batch on the device (or float32 feature
vectors, used as they are).

Subsets are drawn on the CPU with a CPU generator and then moved, so a seed gives the same
samples on every device (a CUDA generator draws other permutations): a run ID means the same
samples everywhere.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine.errors import EngineError


def _is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def _memory_format(device: torch.device) -> torch.memory_format:
    # Channels-last on every device: cuDNN's and oneDNN's convolutions both prefer NHWC (on the
    # 2-core CPU machine the reference cnn's forward pass is 1.4x faster: 0.86 s vs 1.21 s per
    # 1024 samples).
    return torch.channels_last


def precision_used(precision: str | None, device: torch.device) -> str:
    """What a spec's `precision` means on `device`: None is the device's default (bf16 autocast
    on CUDA, fp32 elsewhere: engine.spec.PRECISIONS)."""
    if precision is not None:
        return precision
    return "bf16" if _is_cuda(device) else "fp32"


def bf16_pays(device: torch.device) -> bool:
    """Whether `--precision auto` picks bf16 on `device`: CUDA devices that support it, and
    CPUs with AMX-BF16 (there a 32->64 conv at 128x28x56 trained 1.64x faster in bf16, issue
    16). Not CPUs with AVX512-BF16 alone: on the 2-core AMD EPYC the default sweep mix ran 2.36x
    faster in bf16 for the mlp but 0.62x for the cnn (bench/RESULTS.md), and oneDNN emulates
    bf16 where neither is present."""
    if _is_cuda(device):
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split(":", 1)[1].split()
    except OSError:
        pass
    return False


def spec_precision(requested: str, device: torch.device) -> str | None:
    """The `precision` a run spec records for a request ("auto", "fp32" or "bf16") on `device`:
    auto is bf16 where it pays (`bf16_pays`), else fp32; the device's default is recorded as
    None, so runs that computed as before keep their IDs."""
    if requested not in ("auto", "fp32", "bf16"):
        raise EngineError(f"unknown precision {requested!r}; choose one of: auto, fp32, bf16")
    chosen = ("bf16" if bf16_pays(device) else "fp32") if requested == "auto" else requested
    return None if chosen == precision_used(None, device) else chosen


def _autocast(device: torch.device, precision: str | None = None):
    if precision_used(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def usable_memory(device: torch.device) -> int:
    """Bytes a trainer may still take on `device`. CUDA: the driver's free memory plus what
    torch's caching allocator holds reserved but unallocated (`mem_get_info` alone counts that
    as used, so after one group freed its tensors the next would be planned too small). Host:
    MemAvailable."""
    if _is_cuda(device):
        free = torch.cuda.mem_get_info(device)[0]
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class MemoryPlan:
    """One budget of the batched trainer split in three shares that do not overlap, in bytes:
    frozen-prefix outputs of one `train_group` call (FeatureCache), the groups training at once
    (weights, optimizer state, activations), and the prefix outputs kept across calls
    (PrefixStore). A tenth of what is usable is left for the allocator's fragmentation and
    evaluation passes."""
    features: int
    groups: int
    store: int

    SHARES = (0.45, 0.3, 0.15)  # of usable memory; the rest is headroom

    @classmethod
    def of(cls, device: torch.device, usable: int | None = None) -> MemoryPlan:
        usable = usable_memory(torch.device(device)) if usable is None else usable
        f, g, s = (int(usable * share) for share in cls.SHARES)
        return cls(f, g, s)


def draw_subset(n_total: int, n: int, seed: int) -> Tensor:
    """Sorted indices of `n` of `n_total` samples, drawn without replacement under `seed` (CPU)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_total, generator=g)[:n].sort().values


def _channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Exact per-channel mean and std (population) of uint8 NCHW images, in [0, 1] units."""
    values = torch.arange(256, dtype=torch.float64, device=images.device) / 255
    mean, std = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        n = counts.sum()
        m = (counts * values).sum() / n
        var = ((counts * values.square()).sum() / n - m.square()).clamp_min(0)
        mean.append(m)
        std.append(var.sqrt())
    return torch.stack(mean).float(), torch.stack(std).float()


class DeviceData:
    """A dataset living on one device: uint8 images [N, C, H, W] and int64 label vectors.

    `mean`/`std` (float32 [C], [0, 1] pixel units) define the normalisation
    x = (pixel / 255 - mean) / std applied per batch; a test split takes its train split's stats.
    Float32 `images` (from `from_features`) are model inputs already and are not normalised.
    """

    def __init__(self, images: Tensor, labels: dict[str, Tensor], mean: Tensor, std: Tensor):
        self.images = images
        self.labels = labels
        self.mean = mean
        self.std = std
        safe_std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel maps to 0
        self._scale = (1 / (255 * safe_std)).view(1, -1, 1, 1)
        self._shift = (-mean / safe_std).view(1, -1, 1, 1)

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: dict[str, np.ndarray],
                    device: str | torch.device, *,
                    stats: tuple[Tensor | list[float], Tensor | list[float]] | None = None,
                    ) -> DeviceData:
        """Upload uint8 NHWC `images` and their labels; compute (mean, std) unless `stats` given."""
        device = torch.device(device)
        host = _host_tensor(images, np.uint8, 4, "images", "[N, H, W, C]", "images")
        n = len(host)
        # NHWC memory viewed as NCHW is channels-last; make it plain NCHW where that is faster.
        x = host.to(device, copy=True).permute(0, 3, 1, 2)
        x = x.contiguous(memory_format=_memory_format(device))
        ys = _upload_labels(labels, n, device)
        if stats is None:
            mean, std = _channel_stats(x)
        else:
            mean, std = (torch.as_tensor(s, dtype=torch.float32).to(device) for s in stats)
            if mean.shape != (x.shape[1],) or std.shape != (x.shape[1],):
                raise EngineError(f"stats must give {x.shape[1]} means and stds, got "
                                  f"{tuple(mean.shape)} and {tuple(std.shape)}")
        return cls(x, ys, mean, std)

    @classmethod
    def from_features(cls, features: np.ndarray, labels: dict[str, np.ndarray],
                      device: str | torch.device) -> DeviceData:
        """Upload float32 feature vectors [N, D] as they are, held as [N, 1, 1, D] (so
        `input_shape` is (1, D, 1), which the mlp flattens back to D), with mean 0 and std 1."""
        device = torch.device(device)
        host = _host_tensor(features, np.float32, 2, "features", "[N, D]", "samples")
        n = len(host)
        x = host.to(device, copy=True).view(n, 1, 1, -1)
        ones = torch.ones(1, device=device)
        return cls(x, _upload_labels(labels, n, device), ones - 1, ones)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        _, c, h, w = self.images.shape
        return (h, w, c)

    @property
    def stats(self) -> tuple[list[float], list[float]]:
        """(mean, std) as plain floats, for checkpoints and for the test split."""
        return self.mean.tolist(), self.std.tolist()

    def subset(self, n: int | None, seed: int) -> DeviceData:
        """`n` samples drawn without replacement under `seed` (all of them if n is None).

        With one seed, smaller subsets are contained in larger ones (prefixes of one permutation).
        The draw is the same on every device (`draw_subset`). Normalisation stats are the parent's.
        """
        if n is None:
            return self
        if not 1 <= n <= len(self):
            raise EngineError(f"subset size must be in 1..{len(self)}, got {n}")
        idx = draw_subset(len(self), n, seed).to(self.device)
        images = self.images[idx].contiguous(memory_format=_memory_format(self.device))
        return DeviceData(images, {k: v[idx] for k, v in self.labels.items()}, self.mean, self.std)

    def inputs(self, idx: Tensor | slice) -> Tensor:
        """Normalised float32 images at `idx`, NCHW (channels-last strides on CUDA)."""
        if self.images.is_floating_point():  # features: inputs as they are
            return self.images[idx]
        x = self.images[idx].float().mul_(self._scale).add_(self._shift)
        return x.contiguous(memory_format=_memory_format(self.device))


def _host_tensor(array, dtype, ndim: int, name: str, shape: str, items: str) -> Tensor:
    """`array` checked (a non-empty `dtype` ndarray of `ndim` dimensions) as a CPU tensor."""
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != ndim:
        got = f"{getattr(array, 'dtype', type(array))} {getattr(array, 'shape', '')}"
        raise EngineError(f"{name} must be a {np.dtype(dtype).name} array shaped {shape}, "
                          f"got {got}")
    if len(array) == 0:
        raise EngineError(f"the dataset has no {items}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memmaps: we copy, never write
        return torch.from_numpy(np.ascontiguousarray(array))


def _upload_labels(labels: dict[str, np.ndarray], n: int, device: torch.device) -> dict[str, Tensor]:
    ys = {}
    for name, y in labels.items():
        y = np.asarray(y)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise EngineError(f"label {name!r} must be {n} integers, got {y.dtype} {y.shape}")
        ys[name] = torch.from_numpy(y.astype(np.int64)).to(device)
    return ys
