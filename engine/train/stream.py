"""Training and evaluation streamed from a `.beton` through FFCV's Loader (`engine.data.ffcv_io.loader`),
for datasets too large to keep on the device (see `fits_on_device`).

The arithmetic is `engine.train.trainer`'s: the same step, optimizer, normalisation (exact per-channel
stats of the whole training split, computed here without FFCV) and ragged-end rule. What differs:
batches come from disk in FFCV's seeded order, and the frozen prefix runs on every step (there is
no feature cache).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.data import ffcv_io
from engine.data.beton import BetonFile, default_workers
from engine.train.freeze import set_train_mode
from engine.train.models import LayeredNet
from engine.train.device import DeviceData, _autocast, _memory_format, usable_memory
from engine.train.trainer import (OPTIMIZERS, Runner, make_optimizer, make_runner, run_epochs,
                                  train_step)

STATS_CHUNK = 8192  # images per read when computing channel statistics


def channel_stats(path: str | os.PathLike) -> tuple[list[float], list[float]]:
    """Exact per-channel (mean, std) in [0, 1] units of every image in a `.beton`, read in chunks;
    the same numbers `DeviceData.from_arrays` computes for the split held in memory."""
    f = BetonFile(path)
    channels = f.fields["image"].shape[-1]
    counts = np.zeros((channels, 256), np.int64)
    for start in range(0, len(f), STATS_CHUNK):
        images = f.read("image", np.arange(start, min(start + STATS_CHUNK, len(f))))
        for c in range(channels):
            counts[c] += np.bincount(images[..., c].reshape(-1), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    var = np.clip((counts * values ** 2).sum(1) / n - mean ** 2, 0, None)
    return mean.astype(np.float32).tolist(), np.sqrt(var).astype(np.float32).tolist()


class StreamData:
    """One split on disk: `path` (a `.beton`), optionally only the samples at `indices`."""

    def __init__(self, path: str | os.PathLike, *, stats=None, indices: np.ndarray | None = None,
                 num_workers: int | None = None):
        self.path = Path(path)
        f = BetonFile(self.path)
        self.fields = list(f.fields)
        self.image_shape = f.fields["image"].shape  # (H, W, C)
        self.indices = indices
        self.n = len(f) if indices is None else len(indices)
        self.stats = channel_stats(self.path) if stats is None else stats
        self.num_workers = num_workers or default_workers()
        self._loaders: dict[tuple, object] = {}

    def __len__(self) -> int:
        return self.n

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.image_shape)

    def subset(self, n: int | None, seed: int) -> StreamData:
        """The samples `DeviceData.subset(n, seed)` picks on the CPU; stats are the parent's."""
        if n is None:
            return self
        if self.indices is not None:
            raise ValueError("subset of a subset is not supported")
        g = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(self.n, generator=g)[:n].sort().values.numpy()
        return StreamData(self.path, stats=self.stats, indices=idx, num_workers=self.num_workers)

    def loader(self, batch_size: int, *, shuffle: bool, seed: int = 0):
        """An FFCV Loader (made once per setting; each pass over it is one epoch, and a shuffled
        loader draws a new order per epoch from `seed`). With n <= batch_size an epoch is one batch
        of all n, otherwise the ragged end is dropped when shuffling, as in `train.epoch_batches`."""
        size = min(batch_size, self.n)
        key = (size, shuffle, seed)
        if key not in self._loaders:
            self._loaders[key] = ffcv_io.loader(self.path, batch_size=size, num_workers=self.num_workers,
                                                shuffle=shuffle, seed=seed, drop_last=shuffle,
                                                indices=self.indices)
        return self._loaders[key]

    def batches(self, loader, label: str, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over `loader`: (normalised float images NCHW, int64 labels) on `device`."""
        device = torch.device(device)
        mean, std = (torch.tensor(s, dtype=torch.float32, device=device) for s in self.stats)
        col = self.fields.index(label)
        image_col = self.fields.index("image")
        for batch in loader:
            # FFCV reuses its batch buffers: copy before the next batch is decoded.
            x = torch.from_numpy(batch[image_col]).to(device, copy=True).permute(0, 3, 1, 2)
            x = x.contiguous(memory_format=_memory_format(device))
            y = torch.from_numpy(batch[col]).reshape(-1).to(device, copy=True)
            yield DeviceData(x, {}, mean, std).inputs(slice(None)), y


def fit_stream(model: LayeredNet, params: list[nn.Parameter], data: StreamData, label: str, *,
               epochs: int, lr: float | None = None, optimizer: str = "sgd", batch_size: int = 128,
               seed: int, frozen_upto: int = 0, device: str | torch.device = "cpu",
               runner: Runner | None = None) -> dict:
    """`engine.train.trainer.fit` over a streamed split; returns the same metrics."""
    lr = OPTIMIZERS[optimizer] if lr is None else lr
    device = torch.device(device)
    if runner is None:
        model.to(device, memory_format=_memory_format(device))
        runner = make_runner(model, frozen_upto)
    start = time.perf_counter()
    set_train_mode(model, frozen_upto)
    opt = make_optimizer(params, optimizer, lr, device)
    loader = data.loader(batch_size, shuffle=True, seed=seed)
    last = run_epochs(epochs, lambda: data.batches(loader, label, device),
                      lambda x, y: train_step(runner, opt, x, y, frozen_input=False, device=device))
    wall = time.perf_counter() - start
    loss_sum, correct, seen, steps = last["loss_sum"], last["correct"], last["seen"], last["steps"]
    return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
            "epochs": epochs, "steps": steps, "samples_per_epoch": seen, "wall_s": wall,
            "samples_per_s": epochs * seen / wall, "feature_cache": False, "optimizer": optimizer,
            "lr": lr, "batch_size": batch_size}


def evaluate_stream(model: LayeredNet, data: StreamData, label: str, batch_size: int = 1024, *,
                    device: str | torch.device = "cpu",
                    runner: Runner | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over every sample of `data`, in eval mode."""
    device = torch.device(device)
    runner = make_runner(model, 0) if runner is None else runner
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    with torch.no_grad(), _autocast(device, runner.precision):
        for x, y in data.batches(data.loader(batch_size, shuffle=False), label, device):
            logits = model(x)  # eager, as engine.train.trainer.evaluate
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
    return correct.item() / n, loss_sum.item() / n


def dataset_bytes(dataset_dir: str | os.PathLike) -> int:
    """Bytes the dataset's train and test images take on the device (uint8)."""
    total = 0
    for split in ("train", "test"):
        f = BetonFile(Path(dataset_dir) / f"{split}.beton")
        total += len(f) * f.fields["image"].nbytes
    return total


def fits_on_device(dataset_dir: str | os.PathLike, device: torch.device,
                   budget_gb: float | None = None) -> bool:
    """Whether the dataset's images fit `budget_gb` (default: half the device's free memory)."""
    budget = usable_memory(device) * 0.5 if budget_gb is None else budget_gb * 2**30
    return dataset_bytes(dataset_dir) <= budget
