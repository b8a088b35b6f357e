"""Fetching missing source files with torchvision's downloaders, quietly.

torchvision writes into the same layout that the adapters read (`<root>/MNIST/raw/`, ...). Any
failure is returned as a short reason, never raised or printed: the caller then reports the
missing files in one line.
"""
from __future__ import annotations

import contextlib
import io
import os
import socket
from pathlib import Path

TIMEOUT_S = 10  # per socket operation, so an offline machine fails fast instead of hanging

SUPPORTED = ("mnist", "fashion", "emnist-letters", "svhn", "cifar10")


def offline() -> bool:
    return os.environ.get("ENGINE_OFFLINE", "") not in ("", "0")


def _construct(name: str, root: Path, split: str) -> None:
    import torchvision.datasets as tv  # imported here: slow, and only needed to download

    train = split == "train"
    if name == "mnist":
        tv.MNIST(str(root), train=train, download=True)
    elif name == "fashion":
        tv.FashionMNIST(str(root), train=train, download=True)
    elif name == "emnist-letters":
        tv.EMNIST(str(root), split="letters", train=train, download=True)
    elif name == "svhn":
        tv.SVHN(str(root / "SVHN"), split=split, download=True)
    elif name == "cifar10":
        tv.CIFAR10(str(root), train=train, download=True)
    else:
        raise ValueError(f"torchvision cannot download {name}")


def fetch(name: str, root: Path, split: str) -> str | None:
    """Try to download `name` into `root`; None on success, else why it failed."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT_S)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            _construct(name, root, split)
    # torchvision raises many types here (URLError, RuntimeError, OSError, checksum errors).
    except Exception as e:
        return " ".join(f"{type(e).__name__}: {e}".split())[:200]
    finally:
        socket.setdefaulttimeout(previous)
    return None
