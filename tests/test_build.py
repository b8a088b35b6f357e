"""`engine build-data` end to end: content, manifest, determinism, reuse, the CLI and bad input."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import engine
from engine.data.digest import file_digest
from engine.locks import is_lock_file
from engine.data import beton, ffcv_io
from engine import datasets as sources
from engine.errors import EngineError

REAL = Path(os.environ.get("ENGINE_DATA_ROOT", "/nonexistent"))
needs_real = pytest.mark.skipif(not (REAL / "MNIST" / "raw").is_dir()
                                or not (REAL / "FashionMNIST" / "raw").is_dir(),
                                reason="real MNIST and Fashion-MNIST not under ENGINE_DATA_ROOT")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(*args, env=None):
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          env=full)


@needs_real
def test_real_mnist_fashion_dataset_content(tmp_path):
    d = engine.build_data("mnist:fashion", 0.75, seed=3, n_train=7000, n_test=1500, data_root=REAL,
                          out=tmp_path)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["image_shape"] == [28, 56, 1]
    assert manifest["spec"]["n_train"] == 7000 and manifest["spec"]["seed"] == 3
    for split, n in (("train", 7000), ("test", 1500)):
        info = manifest["splits"][split]
        path = d / f"{split}.beton"
        assert info["samples"] == n and info["digest"] == file_digest(path)
        assert info["bytes"] == path.stat().st_size
        assert abs(info["p_b_eq_pi_a"] - 0.775) < 0.05
        data = beton.read_beton(path)
        left = sources.load("mnist", split, root=REAL)
        right = sources.load("fashion", split, root=REAL)
        # Every half equals its source image at the recorded index, and labels are the sources'.
        np.testing.assert_array_equal(data["image"][:, :, :28], left.images[data["left_index"]])
        np.testing.assert_array_equal(data["image"][:, :, 28:], right.images[data["right_index"]])
        np.testing.assert_array_equal(data["alice_label"], left.labels[data["left_index"]])
        np.testing.assert_array_equal(data["bob_label"], right.labels[data["right_index"]])
        assert sum(info["alice_histogram"]) == n
    files = manifest["sources"]["left"]["files"]
    assert all(len(f["sha256"]) == 64 for f in files) and len(files) == 4


@needs_real
def test_defaults_take_the_left_split_sizes(tmp_path):
    d = engine.build_data("mnist:fashion", 0.0, data_root=REAL, out=tmp_path)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == 60_000
    assert manifest["splits"]["test"]["samples"] == 10_000
    assert manifest["splits"]["train"]["cramers_v_corrected"] < 0.02  # beta = 0: independent


@needs_real
def test_determinism_reuse_and_force(tmp_path):
    kw = dict(n_train=3000, n_test=500, data_root=REAL)
    a = engine.build_data("mnist:fashion", 0.5, seed=1, out=tmp_path / "a", **kw)
    b = engine.build_data("mnist:fashion", 0.5, seed=1, out=tmp_path / "b", **kw)
    c = engine.build_data("mnist:fashion", 0.5, seed=2, out=tmp_path / "c", **kw)
    assert a.name == b.name != c.name
    for split in ("train.beton", "test.beton"):
        assert _sha(a / split) == _sha(b / split)
        assert _sha(a / split) != _sha(c / split)
    before = (a / "train.beton").stat().st_mtime_ns
    assert engine.build_data("mnist:fashion", 0.5, seed=1, out=tmp_path / "a", **kw) == a
    assert (a / "train.beton").stat().st_mtime_ns == before  # reused, not rewritten
    engine.build_data("mnist:fashion", 0.5, seed=1, out=tmp_path / "a", force=True, **kw)
    assert (a / "train.beton").stat().st_mtime_ns != before
    assert _sha(a / "train.beton") == _sha(b / "train.beton")


@pytest.mark.skipif(not ffcv_io.available(), reason="FFCV is not installed")
@needs_real
def test_built_split_is_byte_identical_to_dataset_writer(tmp_path):
    d = engine.build_data("mnist:fashion", 0.25, n_train=6000, n_test=100, data_root=REAL, out=tmp_path)
    data = beton.read_beton(d / "train.beton")
    image = data.pop("image")
    ffcv_io.write_with_dataset_writer(tmp_path / "ref.beton", image, data, num_workers=1)
    assert _sha(tmp_path / "ref.beton") == _sha(d / "train.beton")


def _svhn_root(root: Path, n_train=60, n_test=30):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 10 means digit 0
        (root / "SVHN").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "SVHN" / f"{split}_32x32.mat", {"X": x, "y": y})


def test_mnist_svhn_pads_and_replicates(tmp_path, fake_data):
    _svhn_root(fake_data.root)
    d = engine.build_data("mnist:svhn", 1.0, data_root=fake_data.root, out=tmp_path)
    data = beton.read_beton(d / "train.beton")
    assert data["image"].shape == (12, 32, 64, 3)
    mnist = fake_data.arrays["mnist/train/images"]
    svhn = sources.load("svhn", "train", root=fake_data.root)
    for ch in range(3):
        np.testing.assert_array_equal(data["image"][:, 2:30, 2:30, ch], mnist[data["left_index"]])
    np.testing.assert_array_equal(data["image"][:, :, 32:], svhn.images[data["right_index"]])
    np.testing.assert_array_equal(data["bob_label"], data["alice_label"] % 10)  # beta = 1
    resized = engine.build_data("mnist:svhn", 1.0, data_root=fake_data.root, out=tmp_path, fit="resize")
    assert resized != d
    assert beton.read_beton(resized / "test.beton")["image"].shape == (6, 32, 64, 3)


def test_npz_sources_and_equal_class_counts(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "mine.npz"
    np.savez(path, train_images=rng.integers(0, 256, (300, 8, 8), dtype=np.uint8),
             train_labels=np.arange(300) % 5, test_images=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8),
             test_labels=np.arange(50) % 5)
    d = engine.build_data(f"npz:{path}:npz:{path}", 1.0, n_train=1000, data_root=tmp_path, out=tmp_path / "o")
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["splits"]["train"]["cramers_v"] == pytest.approx(1.0)
    assert manifest["image_shape"] == [8, 16, 1]


def test_failure_mid_write_leaves_nothing_behind(tmp_path, fake_data, monkeypatch):
    _svhn_root(fake_data.root)
    import engine.data.build as build

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(build, "fill_composed", broken)
    with pytest.raises(EngineError, match="disk full"):  # one line, not an OSError traceback
        engine.build_data("mnist:svhn", 0.5, data_root=fake_data.root, out=tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file() and not is_lock_file(p)] == []


@needs_real
def test_cli_build_and_inspect_on_real_data(tmp_path):
    env = {"ENGINE_DATA_ROOT": str(REAL)}
    out = _cli("build-data", "--pair", "mnist:fashion", "--beta", "0.75", "--n-train", "2000",
               "--n-test", "500", "--out", str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    dataset = Path(out.stdout.strip().splitlines()[-1])
    assert (dataset / "train.beton").is_file() and dataset.parent == tmp_path
    grid = tmp_path / "grid.png"
    shown = _cli("inspect", str(dataset), "--grid", str(grid))
    assert shown.returncode == 0, shown.stderr
    assert "P(b = pi(a))" in shown.stdout and "Cramer's V" in shown.stdout
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and grid.stat().st_size > 10_000


def _assert_one_line_error(result, *needles):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--pair", "mnist:nope", "--beta", "0.5"], ["unknown dataset 'nope'", "fashion", "npz:PATH"]),
    (["--pair", "mnist", "--beta", "0.5"], ["LEFT:RIGHT"]),
    (["--pair", "mnist:fashion:svhn", "--beta", "0.5"], ["LEFT:RIGHT"]),
    (["--pair", ":", "--beta", "0.5"], ["LEFT:RIGHT"]),
    (["--pair", "mnist:fashion", "--beta", "1.5"], ["[0, 1]"]),
    (["--pair", "mnist:fashion", "--beta", "-0.1"], ["[0, 1]"]),
    (["--pair", "mnist:fashion", "--beta", "nan"], ["[0, 1]"]),
    (["--pair", "mnist:fashion", "--beta", "high"], ["[0, 1]"]),
    (["--pair", "mnist:fashion", "--beta", "0.5", "--n-train", "0"], ["--n-train"]),
    (["--pair", "mnist:fashion"], ["--beta"]),
])
def test_bad_arguments_give_one_line_errors(tmp_path, args, needles):
    result = _cli("build-data", *args, "--out", str(tmp_path), env={"ENGINE_DATA_ROOT": str(tmp_path)})
    _assert_one_line_error(result, *needles)
    assert not list(tmp_path.rglob("*.beton"))


def test_missing_and_truncated_sources(tmp_path, fake_data):
    missing = _cli("build-data", "--pair", "mnist:svhn", "--beta", "0.5", "--data-root",
                   str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    _assert_one_line_error(missing, "train-images-idx3-ubyte", "MNIST")
    gz = fake_data.root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    truncated = _cli("build-data", "--pair", "mnist:fashion", "--beta", "0.5", "--data-root",
                     str(fake_data.root), "--out", str(tmp_path / "o"))
    _assert_one_line_error(truncated, "train-images-idx3-ubyte")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.beton"))


def test_unwritable_output(tmp_path, fake_data):
    _svhn_root(fake_data.root)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _cli("build-data", "--pair", "mnist:svhn", "--beta", "0.5", "--data-root",
                  str(fake_data.root), "--out", str(blocker / "sub"))
    _assert_one_line_error(result, "cannot write", "--out")
    with pytest.raises(EngineError, match="cannot write"):
        engine.build_data("mnist:svhn", 0.5, data_root=fake_data.root, out=blocker / "sub")


def test_right_class_without_images_is_an_error(tmp_path, fake_data):
    _svhn_root(fake_data.root, n_test=5)  # test split only has digits 1..5
    with pytest.raises(EngineError, match="no images of class"):
        engine.build_data("mnist:svhn", 0.5, data_root=fake_data.root, out=tmp_path)


def test_installed_package_does_not_shadow_pypi_names(tmp_path):
    code = ("import importlib.util as u, engine.kernels, engine.datasets, engine.cli\n"
            "print(u.find_spec('kernels') is None or 'engine' not in (u.find_spec('kernels').origin or ''),"
            " u.find_spec('datasets') is None or 'engine' not in (u.find_spec('datasets').origin or ''))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["True", "True"], out.stderr
