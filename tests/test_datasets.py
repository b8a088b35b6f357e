"""engine.datasets on small generated files (conftest.py) and, when present, on the real data."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.datasets import NAMES, Split, load, parse_source, source_files
from engine.datasets import download, folder, holdout, idx
from engine.errors import EngineError


def check_split(split: Split, n_classes: int) -> None:
    assert isinstance(split.images, np.memmap) and isinstance(split.labels, np.memmap)
    assert split.images.dtype == np.uint8 and split.images.ndim == 4
    assert split.images.flags.c_contiguous and not split.images.flags.writeable
    assert split.labels.dtype == np.int64 and len(split.labels) == len(split.images)
    assert len(split.classes) == n_classes
    assert 0 <= split.labels.min() and split.labels.max() < n_classes
    assert all(os.path.isabs(f) for f in split.files)


# --- names -------------------------------------------------------------------------------------


def test_parse_source():
    assert parse_source("mnist") == ("mnist", None)
    assert parse_source("npz:/a/b.npz") == ("npz", "/a/b.npz")
    assert parse_source("folder:rel/dir") == ("folder", "rel/dir")


@pytest.mark.parametrize("text", ["imagenet", "folder:", "mnist:x", ""])
def test_parse_source_rejects(text):
    with pytest.raises(EngineError) as e:
        parse_source(text)
    assert "\n" not in str(e.value)
    if text == "imagenet":
        assert all(name in str(e.value) for name in NAMES)


def test_bad_options(fake_root):
    with pytest.raises(EngineError, match="split"):
        load("mnist", "val", root=fake_root)
    with pytest.raises(EngineError, match="image size"):
        load("folder:x", "train", root=fake_root, image_size=0)


# --- IDX sources -------------------------------------------------------------------------------


@pytest.mark.parametrize("split, prefix", [("train", "train"), ("test", "t10k")])
def test_mnist(fake_data, split, prefix):
    s = load("mnist", split, root=fake_data.root)
    check_split(s, 10)
    assert s.classes == tuple("0123456789")
    np.testing.assert_array_equal(s.images[..., 0], fake_data.arrays[f"mnist/{split}/images"])
    np.testing.assert_array_equal(s.labels, fake_data.arrays[f"mnist/{split}/labels"])
    assert [Path(f).name for f in s.files] == [
        f"{prefix}-images-idx3-ubyte.gz",
        f"{prefix}-labels-idx1-ubyte.gz",
    ]


def test_fashion(fake_data):
    s = load("fashion", "test", root=fake_data.root)
    check_split(s, 10)
    assert s.images.shape == (6, 28, 28, 1)
    assert s.classes[0] == "T-shirt/top" and s.classes[9] == "Ankle boot"


def test_emnist_letters_transposed_and_shifted(fake_data):
    s = load("emnist-letters", "train", root=fake_data.root)
    check_split(s, 26)
    assert s.classes == tuple("abcdefghijklmnopqrstuvwxyz")
    raw = fake_data.arrays["emnist-letters/train/images"]
    np.testing.assert_array_equal(s.images[..., 0], raw.transpose(0, 2, 1))
    np.testing.assert_array_equal(s.labels, fake_data.arrays["emnist-letters/train/labels"] - 1)


def test_emnist_mapping_file(fake_data):
    raw = fake_data.root / "EMNIST/raw"
    (raw / "emnist-letters-mapping.txt").write_text(
        "".join(f"{i} {64 + i} {96 + i}\n" for i in range(1, 27))
    )
    s = load("emnist-letters", "test", root=fake_data.root)
    assert s.classes[0] == "a" and s.classes[25] == "z"
    assert s.files[-1].endswith("emnist-letters-mapping.txt")


def test_unpacked_file_preferred(fake_data):
    raw = fake_data.root / "MNIST/raw"
    packed = raw / "t10k-labels-idx1-ubyte.gz"
    (raw / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(packed.read_bytes()))
    s = load("mnist", "test", root=fake_data.root)
    assert s.files[1] == str(raw / "t10k-labels-idx1-ubyte")


def test_truncated_gz(fake_data):
    path = fake_data.root / "MNIST/raw/train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(EngineError, match="truncated or corrupt") as e:
        load("mnist", "train", root=fake_data.root)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_bad_idx_header_and_size(fake_data):
    path = fake_data.root / "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + data[4:]))  # type 0x0d = float
    with pytest.raises(EngineError, match="t10k-labels-idx1-ubyte.gz"):
        load("fashion", "test", root=fake_data.root)
    path.write_bytes(gzip.compress(data + b"\x00"))
    with pytest.raises(EngineError, match="header says"):
        load("fashion", "test", root=fake_data.root)


def test_missing_files_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "fetch", lambda *a: pytest.fail("download attempted offline"))
    with pytest.raises(EngineError) as e:
        load("mnist", "train", root=tmp_path)
    message = str(e.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path / "MNIST/raw") in message
    assert "ENGINE_DATA_ROOT" in message and "--data-root" in message and "\n" not in message


def test_missing_files_download_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("ENGINE_OFFLINE")
    monkeypatch.setattr(download, "fetch", lambda *a: "URLError: no network")
    with pytest.raises(EngineError, match="test_32x32.mat.*no network"):
        load("svhn", "test", root=tmp_path)
    with pytest.raises(EngineError, match="test_32x32.mat") as e:
        load("svhn", "test", root=tmp_path, download=False)
    assert "no network" not in str(e.value)


# --- SVHN, CIFAR-10 ----------------------------------------------------------------------------


def test_svhn(fake_data):
    s = load("svhn", "train", root=fake_data.root)
    check_split(s, 10)
    x, y = fake_data.arrays["svhn/train/X"], fake_data.arrays["svhn/train/y"][:, 0]
    assert s.images.shape == (10, 32, 32, 3)
    for i in range(len(y)):
        np.testing.assert_array_equal(s.images[i], x[:, :, :, i])
    assert 10 in y
    np.testing.assert_array_equal(s.labels, np.where(y == 10, 0, y))


def test_cifar(fake_data):
    s = load("cifar10", "train", root=fake_data.root)
    check_split(s, 10)
    assert s.images.shape == (20, 32, 32, 3)
    assert s.classes == tuple(f"class{i}" for i in range(10))
    first = fake_data.arrays["cifar10/data_batch_1/data"][0]
    chw = first.reshape(3, 32, 32)
    np.testing.assert_array_equal(s.images[0], chw.transpose(1, 2, 0))
    assert s.images[0, 0, 1, 0] == first[1] and s.images[0, 0, 0, 2] == first[2 * 1024]
    last = fake_data.arrays["cifar10/data_batch_5/labels"][-1]
    assert s.labels[-1] == last


def test_cifar_without_meta(fake_data):
    (fake_data.root / "cifar-10-batches-py/batches.meta").unlink()
    s = load("cifar10", "test", root=fake_data.root)
    assert s.images.shape == (4, 32, 32, 3) and s.classes[0] == "airplane"


# --- folder ------------------------------------------------------------------------------------


def test_folder_split_layout(fake_data):
    train = load(f"folder:{fake_data.folder_split}", "train", root=Path("/nonexistent"))
    test = load(f"folder:{fake_data.folder_split}", "test", root=Path("/nonexistent"))
    check_split(train, 3)
    check_split(test, 3)
    assert train.classes == test.classes == ("a", "b", "c")
    assert train.images.shape == (9, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    assert list(test.labels) == [0, 0, 1, 1]
    for s in (train, test):
        colours = fake_data.arrays["folders/split/colours"][s.labels]
        np.testing.assert_array_equal(s.images[:, 16, 16], colours)
    assert all("/val/" in f for f in test.files)


def test_folder_flat_holdout_and_size(fake_data, monkeypatch):
    monkeypatch.chdir(fake_data.root)
    train = load("folder:folders/flat", "train", root=Path("/nonexistent"), image_size=16)
    test = load("folder:folders/flat", "test", root=Path("/nonexistent"), image_size=16)
    assert train.classes == ("cat", "dog", "emu")
    assert train.images.shape == (10, 16, 16, 3) and test.images.shape == (2, 16, 16, 3)
    assert len(train.files) == 12 and not any(f.endswith(".txt") for f in train.files)
    assert str(fake_data.folder_flat) in train.files[0]  # resolved against the cwd
    colours = fake_data.arrays["folders/flat/colours"]
    for s in (train, test):
        diff = np.abs(s.images[:, 8, 8].astype(int) - colours[s.labels])
        assert diff.max() <= 8  # JPEG is lossy


def test_folder_unreadable_image(fake_data):
    bad = fake_data.folder_flat / "dog" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(EngineError, match="broken.png"):
        load(f"folder:{fake_data.folder_flat}", "train", root=fake_data.root)


def test_folder_errors(fake_data, tmp_path):
    with pytest.raises(EngineError, match="no such directory"):
        load(f"folder:{tmp_path / 'nope'}", "train", root=tmp_path)
    (tmp_path / "only" / "train" / "x").mkdir(parents=True)
    with pytest.raises(EngineError, match="validation/"):
        load(f"folder:{tmp_path / 'only'}", "train", root=tmp_path)


# --- npz ---------------------------------------------------------------------------------------


def test_npz_two_splits_remapped(fake_data):
    a = fake_data.arrays
    train = load(f"npz:{fake_data.npz_two}", "train", root=fake_data.root)
    test = load(f"npz:{fake_data.npz_two}", "test", root=fake_data.root)
    check_split(train, 3)
    assert train.classes == test.classes == ("3", "7", "9")
    np.testing.assert_array_equal(train.images, a["npz_two/train_images"])
    lookup = {3: 0, 7: 1, 9: 2}
    assert list(test.labels) == [lookup[v] for v in a["npz_two/test_labels"]]
    assert train.files == (str(fake_data.npz_two),)


def test_npz_one_split_holdout(fake_data):
    source = f"npz:{fake_data.npz_one}"
    train = load(source, "train", root=fake_data.root)
    test = load(source, "test", root=fake_data.root)
    check_split(train, 5)
    assert train.classes == ("w", "x", "y", "z", "unused")
    assert train.images.shape == (20, 6, 5, 1) and test.images.shape == (5, 6, 5, 1)
    keep = holdout.indices(25, 0, "test", "t")
    images = fake_data.arrays["npz_one/images"][..., None]
    np.testing.assert_array_equal(test.images, images[keep])
    np.testing.assert_array_equal(test.labels, fake_data.arrays["npz_one/labels"][keep])
    other = load(source, "test", root=fake_data.root, holdout_seed=1)
    assert not np.array_equal(other.labels, test.labels) or not np.array_equal(
        other.images, test.images
    )


def test_holdout_indices():
    for seed in (0, 5):
        train, test = (holdout.indices(103, seed, s, "t") for s in ("train", "test"))
        assert len(test) == 21 and len(train) == 82
        assert np.intersect1d(train, test).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(103))
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
        np.testing.assert_array_equal(test, holdout.indices(103, seed, "test", "t"))
    seeds = [holdout.indices(103, seed, "test", "t") for seed in (0, 1)]
    assert not np.array_equal(*seeds)
    with pytest.raises(EngineError, match="too few"):
        holdout.indices(2, 0, "test", "t")


def test_npz_rejects_bad_arrays(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, images=np.zeros((5, 4, 4), np.float32), labels=np.arange(5))
    with pytest.raises(EngineError, match="uint8"):
        load(f"npz:{path}", "train", root=tmp_path)
    np.savez(path, images=np.zeros((5, 4, 4), np.uint8), labels=np.linspace(0, 1, 5))
    with pytest.raises(EngineError, match="integers"):
        load(f"npz:{path}", "train", root=tmp_path)
    np.savez(path, pictures=np.zeros((5, 4, 4), np.uint8))
    with pytest.raises(EngineError, match="train_images"):
        load(f"npz:{path}", "train", root=tmp_path)
    with pytest.raises(EngineError, match="no such file"):
        load(f"npz:{tmp_path / 'nope.npz'}", "train", root=tmp_path)


# --- cache -------------------------------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise AssertionError("decoded again instead of using the cache")


def test_cache_reused_without_decoding(fake_data, monkeypatch):
    first = load("mnist", "train", root=fake_data.root)
    folder_test = load(f"folder:{fake_data.folder_flat}", "test", root=fake_data.root)
    monkeypatch.setattr(idx, "read", _refuse)
    monkeypatch.setattr(folder, "load_image", _refuse)
    again = load("mnist", "train", root=fake_data.root)
    np.testing.assert_array_equal(first.images, again.images)
    assert again.classes == first.classes and again.files == first.files
    # Both halves of a one-split source are cached by the first load.
    load(f"folder:{fake_data.folder_flat}", "train", root=fake_data.root)
    load(f"folder:{fake_data.folder_flat}", "test", root=fake_data.root)
    assert folder_test.images.shape[0] == 2
    with pytest.raises(AssertionError):  # a different image size is a different entry
        load(f"folder:{fake_data.folder_flat}", "test", root=fake_data.root, image_size=8)


def test_cache_invalidated_by_source_change(fake_data):
    assert len(load("mnist", "test", root=fake_data.root).labels) == 6
    raw = fake_data.root / "MNIST/raw"
    for kind in ("images-idx3", "labels-idx1"):
        shutil.copy(raw / f"train-{kind}-ubyte.gz", raw / f"t10k-{kind}-ubyte.gz")
    s = load("mnist", "test", root=fake_data.root)
    np.testing.assert_array_equal(s.labels, fake_data.arrays["mnist/train/labels"])


def test_corrupt_cache_rebuilt(fake_data):
    first = load("cifar10", "test", root=fake_data.root)
    cached = Path(first.images.filename)
    expected = np.array(first.images)
    del first
    cached.write_bytes(cached.read_bytes()[:100])
    again = load("cifar10", "test", root=fake_data.root)
    np.testing.assert_array_equal(again.images, expected)
    (cached.parent / "meta.json").unlink()
    np.testing.assert_array_equal(load("cifar10", "test", root=fake_data.root).images, expected)


def test_source_files(fake_data):
    files = source_files("cifar10", root=fake_data.root)
    assert [f.name for f in files] == [f"data_batch_{i}" for i in range(1, 6)] + [
        "batches.meta",
        "test_batch",
    ]
    assert len(source_files(f"folder:{fake_data.folder_split}", root=fake_data.root)) == 13
    with pytest.raises(EngineError, match="train-images-idx3-ubyte"):
        source_files("mnist", root=fake_data.root / "empty")


# --- real data (ENGINE_DATA_ROOT) --------------------------------------------------------------

REAL_ROOT = Path(os.environ.get("ENGINE_DATA_ROOT", "/nonexistent"))


def real(*parts: str):
    return pytest.mark.skipif(
        not (REAL_ROOT / Path(*parts)).exists(), reason=f"{Path(*parts)} not under ENGINE_DATA_ROOT"
    )


@real("MNIST/raw")
def test_real_mnist_train():
    s = load("mnist", "train", root=REAL_ROOT, download=False)
    check_split(s, 10)
    assert s.images.shape == (60000, 28, 28, 1)
    counts = np.bincount(s.labels, minlength=10)
    assert counts.sum() == 60000 and counts.min() > 5000 and counts.max() < 7000
    assert list(s.labels[:5]) == [5, 0, 4, 1, 9]


@real("FashionMNIST/raw")
def test_real_fashion_test():
    s = load("fashion", "test", root=REAL_ROOT, download=False)
    check_split(s, 10)
    assert s.images.shape == (10000, 28, 28, 1)
    assert np.all(np.bincount(s.labels, minlength=10) == 1000)


@real("EMNIST/raw")
def test_real_emnist_letters_train():
    s = load("emnist-letters", "train", root=REAL_ROOT, download=False)
    check_split(s, 26)
    assert s.images.shape == (124800, 28, 28, 1)
    assert np.all(np.bincount(s.labels, minlength=26) == 4800)
    # Upright "l": its ink spreads further vertically (over rows) than horizontally.
    mean = s.images[s.labels == s.classes.index("l"), :, :, 0].mean(axis=0)
    grid = np.arange(28)

    def spread(profile):
        p = profile / profile.sum()
        return np.sqrt((p * (grid - (p * grid).sum()) ** 2).sum())

    assert spread(mean.sum(axis=1)) > 1.5 * spread(mean.sum(axis=0))


@real("CIFAR10/cifar10_test.npz")
def test_real_cifar10_npz_holdout():
    source = f"npz:{REAL_ROOT / 'CIFAR10/cifar10_test.npz'}"
    train = load(source, "train", root=REAL_ROOT)
    test = load(source, "test", root=REAL_ROOT)
    check_split(train, 10)
    assert train.images.shape == (8000, 32, 32, 3) and test.images.shape == (2000, 32, 32, 3)
    assert train.classes == tuple(str(i) for i in range(10))
    assert np.all(np.bincount(np.concatenate([train.labels, test.labels])) == 1000)
