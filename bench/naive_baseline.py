"""The naive reference for the training benchmark: one of Bob's fine-tunes written the plain way.

Everything the engine's trainer (engine.train) avoids on purpose is here on purpose:
- eager fp32, one fine-tune at a time, no compilation, no autocast;
- a `torch.utils.data.DataLoader` (num_workers=0) over a `Dataset` whose `__getitem__` converts one
  sample at a time: uint8 HWC numpy -> float32 CHW tensor / 255 -> per-channel normalisation with
  the training split's mean and std;
- a full forward through every layer at every step (no frozen-feature caching); the frozen layers
  have requires_grad=False and their BatchNorm is in eval mode, so backward stops at layer l;
- evaluation on the test split through the same kind of DataLoader (batch 1024).

The network is the same `engine.models.build_model` architecture with Alice's layers 1..L-1 loaded
and the head re-initialised (mode "finetune"), trained with SGD lr 0.01 momentum 0.9, so the work
per step is identical to the engine's; only the way it is fed and run differs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from engine.models import build_model


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
             test_labels: np.ndarray, alice_state: dict, *, retrain_from: int, n_classes: int,
             arch: str = "cnn", epochs: int = 1, batch_size: int = 128, lr: float = 0.01,
             momentum: float = 0.9, seed: int = 0, device: str = "cpu",
             stats: tuple[list[float], list[float]] | None = None) -> float:
    """One fine-tune at depth `retrain_from` (= l, 1-based): returns test accuracy on `test_*`."""
    device = torch.device(device)
    torch.manual_seed(seed)
    mean, std = stats if stats is not None else channel_stats(train_images)

    # Bob's network: Alice's layers 1..L-1, a fresh head, layers below l frozen.
    model = build_model(arch, train_images.shape[1:], n_classes)
    own = model.state_dict()
    for key, value in alice_state.items():
        if not key.startswith(f"layers.{model.n_layers - 1}."):  # Alice's head is not reused
            own[key] = value
    model.load_state_dict(own)
    model.head.reset_parameters()
    model.to(device)
    for layer in model.layers[:retrain_from - 1]:
        for p in layer.parameters():
            p.requires_grad = False
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)

    # drop_last: the engine drops the ragged end of each epoch too, so both take the same steps
    # (a last small batch is also a noisy final SGD step: up to -5 points of test accuracy).
    train = DataLoader(ImageDataset(train_images, train_labels, mean, std), batch_size=batch_size,
                       shuffle=True, num_workers=0, drop_last=True)
    for _ in range(epochs):
        model.train()
        for layer in model.layers[:retrain_from - 1]:
            layer.eval()  # frozen BatchNorm keeps Alice's running statistics
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
