"""The naive reference for the training benchmark: Bob's fine-tunes written the plain way.

Everything the engine's trainer (engine.train.trainer) avoids on purpose is here on purpose:
- eager fp32, one fine-tune at a time, no compilation, no autocast, glibc's default allocator;
- a `torch.utils.data.DataLoader` (num_workers=0) over a `Dataset` whose `__getitem__` converts one
  sample at a time: uint8 HWC numpy -> float32 CHW tensor / 255 -> per-channel normalisation with
  the training split's mean and std;
- a full forward through every layer at every step (no frozen-feature caching); the frozen layers
  have requires_grad=False and their BatchNorm is in eval mode, so backward stops at layer l;
- every run of a sweep trained, also runs that compute the same thing as another;
- evaluation on the test split through the same kind of DataLoader (batch 1024).

The network is the same `engine.train.models.build_model` architecture, its starting weights set by
`engine.train.freeze.prepare_bob` for the run's (l, mode, seed), trained with SGD lr 0.01 momentum 0.9,
so the work per step is identical to the engine's; only the way it is fed and run differs.

Run as a script (what `bench/test_train_bench.py` does), it times a list of runs in a process of
its own, so the engine's process-wide settings (engine.threads) cannot speed it up:

    python bench/naive_baseline.py DATASET_DIR ALICE.safetensors 1:finetune,2:reinit,1:scratch \
        --epochs 1 --seed 0 [--n N] [--warmup-n 256] [--device cpu|cuda]

It prints one JSON object per run: {"l", "mode", "seconds", "test_acc"}.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from engine import paths
from engine.data.beton import read_beton
from engine.train.checkpoint import load_checkpoint
from engine.train.freeze import frozen_prefix, prepare_bob
from engine.train.models import build_model


class ImageDataset(Dataset):
    """uint8 [N, H, W, C] images and int labels; one normalised float32 CHW sample per index."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std):
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.array(self.images[i], dtype=np.float32)).permute(2, 0, 1) / 255
        x = (x - self.mean) / self.std
        return x, int(self.labels[i])


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 NHWC images, in [0, 1] units."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255
    return x.mean(0).tolist(), x.std(0).tolist()


def finetune(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
             test_labels: np.ndarray, alice_state: dict | None, *, retrain_from: int,
             n_classes: int, mode: str = "finetune", arch: str = "cnn", epochs: int = 1,
             batch_size: int = 128, lr: float = 0.01, momentum: float = 0.9, seed: int = 0,
             device: str = "cpu", stats: tuple[list[float], list[float]] | None = None) -> float:
    """One of Bob's runs at depth `retrain_from` (= l, 1-based) in `mode`: returns test accuracy."""
    device = torch.device(device)
    torch.manual_seed(seed)
    mean, std = stats if stats is not None else channel_stats(train_images)

    model = build_model(arch, train_images.shape[1:], n_classes)
    params = prepare_bob(model, alice_state, retrain_from=retrain_from, mode=mode, seed=seed)
    model.to(device)
    frozen = model.layers[:frozen_prefix(model.n_layers, retrain_from, mode)]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)

    # drop_last: the engine drops the ragged end of each epoch too, so both take the same steps
    # (a last small batch is also a noisy final SGD step: up to -5 points of test accuracy).
    train = DataLoader(ImageDataset(train_images, train_labels, mean, std), batch_size=batch_size,
                       shuffle=True, num_workers=0, drop_last=True)
    for _ in range(epochs):
        model.train()
        frozen.eval()  # frozen BatchNorm keeps its running statistics
        for x, y in train:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    test = DataLoader(ImageDataset(test_images, test_labels, mean, std), batch_size=1024,
                      shuffle=False, num_workers=0)
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test:
            x, y = x.to(device), y.to(device)
            correct += (model(x).argmax(1) == y).sum().item()
    return correct / len(test_labels)


def parse_runs(text: str) -> list[tuple[int, str]]:
    """"1:finetune,2:reinit" -> [(1, "finetune"), (2, "reinit")]."""
    runs = []
    for item in text.split(","):
        l, mode = item.split(":")
        runs.append((int(l), mode))
    return runs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path, help="a dataset built by `engine build-data`")
    p.add_argument("alice", type=Path, help="Alice's model.safetensors")
    p.add_argument("runs", type=parse_runs, help="l:mode,l:mode,...")
    p.add_argument("--arch", default="cnn")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=None, help="training samples used (default: all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--warmup-n", type=int, default=256,
                   help="samples of an untimed first run (first-call costs); 0 for none")
    args = p.parse_args(argv)

    fields = ["image", "bob_label"]
    tr = read_beton(paths.split_file(args.dataset, "train"), fields)
    te = read_beton(paths.split_file(args.dataset, "test"), fields)
    images, labels = tr["image"][:args.n], tr["bob_label"][:args.n]
    stats = channel_stats(images)
    alice_state = load_checkpoint(args.alice)[0]
    n_classes = int(tr["bob_label"].max()) + 1
    common = dict(n_classes=n_classes, arch=args.arch, epochs=args.epochs,
                  batch_size=args.batch_size, seed=args.seed, stats=stats, device=args.device)
    if args.warmup_n:
        finetune(images[:args.warmup_n], labels[:args.warmup_n], te["image"][:args.warmup_n],
                 te["bob_label"][:args.warmup_n], alice_state, retrain_from=1, **common)
    for l, mode in args.runs:
        t0 = time.perf_counter()
        acc = finetune(images, labels, te["image"], te["bob_label"],
                       alice_state if mode in ("finetune", "reinit") else None,
                       retrain_from=l, mode=mode, **common)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        print(json.dumps({"l": l, "mode": mode, "seconds": time.perf_counter() - t0,
                          "test_acc": acc}), flush=True)


if __name__ == "__main__":
    main()
