"""Shared fixtures: an isolated cache per test, and a small fake data root in the official formats.

`fake_data` writes, under a temporary directory, a few samples of every source in the layout and
file format that `engine.datasets` reads, and keeps the arrays it wrote so tests can compare:
- MNIST/raw, FashionMNIST/raw, EMNIST/raw: gzipped IDX files (EMNIST letters labels 1..26)
- SVHN/{train,test}_32x32.mat: MATLAB v5, X [32, 32, 3, N] uint8, y [N, 1] with 10 for digit 0
- cifar-10-batches-py/: pickled batches with bytes keys, as Python 2 wrote them, and batches.meta
- folders/flat/<class>/ and folders/split/{train,val}/<class>/: solid-colour PNG and JPEG files
- npz/two.npz (train_/test_ arrays, labels 3/7/9) and npz/one.npz (images, labels, classes)
Everything is generated from fixed seeds, so it is the same on every run.

`two_half_arrays` makes concatenated-image samples for trainer and analysis tests.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

# Folder fixtures: class -> RGB colour; each class has one image per size (width, height).
FOLDER_COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}
FOLDER_SIZES = ((40, 30), (30, 50), (32, 32), (64, 48))
SPLIT_COLOURS = {"a": (250, 250, 0), "b": (0, 250, 250), "c": (250, 0, 250)}


@dataclass
class FakeData:
    root: Path
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "mnist/train/images"

    @property
    def folder_flat(self) -> Path:
        return self.root / "folders" / "flat"

    @property
    def folder_split(self) -> Path:
        return self.root / "folders" / "split"

    @property
    def npz_one(self) -> Path:
        return self.root / "npz" / "one.npz"

    @property
    def npz_two(self) -> Path:
        return self.root / "npz" / "two.npz"


def write_idx(path: Path, array: np.ndarray) -> None:
    """uint8 `array` as a gzipped IDX file (magic 0x0000 08 <ndim>, big-endian uint32 dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _idx_source(fake: FakeData, name: str, subdir: str, prefixes: dict, labels: tuple) -> None:
    rng = np.random.default_rng(len(name))
    for split, count in (("train", 12), ("test", 6)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        y = rng.integers(labels[0], labels[1] + 1, count).astype(np.uint8)
        write_idx(fake.root / subdir / f"{prefixes[split]}-images-idx3-ubyte.gz", images)
        write_idx(fake.root / subdir / f"{prefixes[split]}-labels-idx1-ubyte.gz", y)
        fake.arrays[f"{name}/{split}/images"] = images
        fake.arrays[f"{name}/{split}/labels"] = y


def write_svhn(fake: FakeData) -> None:
    rng = np.random.default_rng(1)
    for split, count in (("train", 10), ("test", 5)):
        x = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
        y = (np.arange(count) % 10 + 1).astype(np.uint8).reshape(count, 1)  # 1..10, 10 = digit 0
        path = fake.root / "SVHN" / f"{split}_32x32.mat"
        path.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(path, {"X": x, "y": y}, format="5")
        fake.arrays[f"svhn/{split}/X"] = x
        fake.arrays[f"svhn/{split}/y"] = y


def write_cifar(fake: FakeData) -> None:
    rng = np.random.default_rng(2)
    directory = fake.root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 4)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
        fake.arrays[f"cifar10/{name}/data"] = data
        fake.arrays[f"cifar10/{name}/labels"] = np.array(labels)
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (directory / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def _solid(path: Path, colour: tuple, size: tuple) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_folders(fake: FakeData) -> None:
    for name, colour in FOLDER_COLOURS.items():
        for i, size in enumerate(FOLDER_SIZES):
            suffix = (".png", ".PNG", ".jpg", ".jpeg")[i]
            _solid(fake.folder_flat / name / f"{i}{suffix}", colour, size)
    (fake.folder_flat / "cat" / "notes.txt").write_text("not an image")
    for name, colour in SPLIT_COLOURS.items():
        for i in range(3):
            _solid(fake.folder_split / "train" / name / f"{i}.png", colour, (20 + i, 24))
        if name != "c":  # class c has no validation images
            for i in range(2):
                _solid(fake.folder_split / "val" / name / f"{i}.png", colour, (24, 20 + i))
    fake.arrays["folders/flat/colours"] = np.array(list(FOLDER_COLOURS.values()))  # by label
    fake.arrays["folders/split/colours"] = np.array(list(SPLIT_COLOURS.values()))


def write_npz(fake: FakeData) -> None:
    rng = np.random.default_rng(3)
    fake.npz_two.parent.mkdir(parents=True, exist_ok=True)
    two = {
        "train_images": rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
        "train_labels": rng.choice([3, 7, 9], 20),
        "test_images": rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
        "test_labels": rng.choice([3, 7, 9], 8),
    }
    np.savez(fake.npz_two, **two)
    one = {
        "images": rng.integers(0, 256, (25, 6, 5), dtype=np.uint8),
        "labels": np.arange(25) % 4,
        "classes": np.array(["w", "x", "y", "z", "unused"]),
    }
    np.savez_compressed(fake.npz_one, **one)
    fake.arrays.update({f"npz_two/{k}": v for k, v in two.items()})
    fake.arrays.update({f"npz_one/{k}": v for k, v in one.items()})


def make_fake_data(root: Path) -> FakeData:
    fake = FakeData(root)
    mnist_prefixes = {"train": "train", "test": "t10k"}
    _idx_source(fake, "mnist", "MNIST/raw", mnist_prefixes, (0, 9))
    _idx_source(fake, "fashion", "FashionMNIST/raw", mnist_prefixes, (0, 9))
    letters = {"train": "emnist-letters-train", "test": "emnist-letters-test"}
    _idx_source(fake, "emnist-letters", "EMNIST/raw", letters, (1, 26))
    write_svhn(fake)
    write_cifar(fake)
    write_folders(fake)
    write_npz(fake)
    return fake


@pytest.fixture
def fake_data(tmp_path: Path) -> FakeData:
    return make_fake_data(tmp_path / "data")


@pytest.fixture
def fake_root(fake_data: FakeData) -> Path:
    return fake_data.root


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """A fresh, empty dataset cache for each test, and no download attempts."""
    monkeypatch.setenv("ENGINE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("ENGINE_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _cpu_where_bf16_does_not_pay():
    """`--precision auto` depends on the CPU (bf16 where it pays: AMX): tests in this process,
    module fixtures included, see a CPU without it, whatever the machine, so their runs are fp32
    as before; tests of precision set it themselves."""
    import engine.train.device
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine.train.device, "bf16_pays", lambda device: device.type == "cuda")
        yield


TWO_HALF_SHAPE = (28, 56, 1)


def two_half_arrays(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Noise plus one bright patch per half: its position (of 10) is the label of that half.
    uint8 images [n, 28, 56, 1] and {"alice_label", "bob_label"}, as `DeviceData.from_arrays` takes."""
    rng = np.random.default_rng(seed)
    alice, bob = rng.integers(0, 10, n), rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, *TWO_HALF_SHAPE), dtype=np.uint8)
    for i in range(n):
        for left, label in ((0, alice[i]), (28, bob[i])):
            r, c = divmod(int(label), 5)
            images[i, 4 + 10 * r: 10 + 10 * r, left + 2 + 5 * c: left + 6 + 5 * c] = 255
    return images, {"alice_label": alice, "bob_label": bob}
