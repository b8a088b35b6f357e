"""Data engine throughput: the engine's build path against FFCV's DatasetWriter, same samples, same
machine. Run with `make bench` (needs real MNIST and Fashion-MNIST under ENGINE_DATA_ROOT).

- engine_write_split: pair + compose + write a 60k-sample mnist:fashion train split into a .beton
  (page cache; sources already cached). This is the hot path the 1M samples/s target is about.
- engine_build_data: the whole `build_data` (train 60k + test 10k), including the digest of each
  output (XXH3-128 per page, hashed by the page writers), the label statistics, the lock and the
  resource check, and the manifest.
- engine_verify_dataset: `verify_dataset` of that dataset (both splits re-hashed from the page
  cache, labels range-checked), what a sweep or `pretrain` pays before training on it.
- ffcv_dataset_writer: FFCV's DatasetWriter(num_workers=2) writing the same 60k composed samples
  from in-memory arrays (composing is not even charged to it).
- page_kernel_padded[general|specialised-pad|resize]: the page kernel alone, one thread,
  composing 60k random pairs of MNIST (28x28 grey, padded, or resized with fit="resize", to
  32x32 and replicated to RGB) beside 32x32 RGB images, mnist:svhn's geometry (SVHN is not among the shared data: the right images are random
  bytes in SVHN's train shape, which a copy does not care about), into 8 MiB pages: the general
  kernel (geometry read at run time) against the kernel specialised to the geometry.
- engine_build_data_svhn / ffcv_dataset_writer_svhn: the whole `build_data` of the headline pair
  mnist:svhn (60k + 10k samples of 32x64x3, 430 MB), against DatasetWriter writing the same 60k
  train samples. SVHN is not among the shared data, so its files are generated in SVHN's own
  format (`SVHN/{train,test}_32x32.mat`, 73,257 + 26,032 random images) beside links to the real
  MNIST files; the sources are decoded and cached before timing.
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.data import beton, ffcv_io
from engine import datasets as sources
from engine.data.build import write_split
from engine.kernels import compose
from engine.kernels.compose import plan_layout
from engine.spec import DataSpec

ROOT = Path(os.environ.get("ENGINE_DATA_ROOT", "data"))
if not (ROOT / "MNIST" / "raw").is_dir() or not (ROOT / "FashionMNIST" / "raw").is_dir():
    pytest.skip("real MNIST and Fashion-MNIST needed under ENGINE_DATA_ROOT", allow_module_level=True)

N = 60_000
SAMPLE_BYTES = 28 * 56


@pytest.fixture(scope="module")
def splits():
    left = sources.load("mnist", "train", root=ROOT)
    right = sources.load("fashion", "train", root=ROOT)
    return left, right


def _report(benchmark, samples, nbytes):
    seconds = benchmark.stats.stats.min
    benchmark.extra_info.update({"samples": samples, "samples_per_s": samples / seconds,
                                 "GB_per_s": nbytes / seconds / 1e9, "cpus": os.cpu_count()})


def test_engine_write_split(benchmark, splits, tmp_path):
    left, right = splits
    layout = plan_layout(left.images.shape[1:], right.images.shape[1:])
    spec = DataSpec("mnist", "fashion", 0.75, 0, N, 10_000)
    path = tmp_path / "train.beton"
    write_split(path, "train", left, right, layout, spec, N)  # compile and warm the kernels

    def fresh():  # a new file each round, as in a real build (no truncation of a cached file)
        path.unlink(missing_ok=True)

    benchmark.pedantic(lambda: write_split(path, "train", left, right, layout, spec, N),
                       setup=fresh, rounds=15, iterations=1)
    _report(benchmark, N, path.stat().st_size)


def _bench_build(benchmark, pair: str, root: Path, out: Path, rounds: int) -> None:
    """The whole `build_data` of `pair` at beta 0.75, timed from an empty output directory."""
    engine.build_data(pair, 0.75, data_root=root, out=out)  # decode, cache, compile

    def fresh():
        shutil.rmtree(out, ignore_errors=True)

    result = benchmark.pedantic(lambda: engine.build_data(pair, 0.75, data_root=root, out=out),
                                setup=fresh, rounds=rounds, iterations=1)
    nbytes = sum(f.stat().st_size for f in result.glob("*.beton"))
    _report(benchmark, N + 10_000, nbytes)


def test_engine_build_data(benchmark, tmp_path):
    _bench_build(benchmark, "mnist:fashion", ROOT, tmp_path, rounds=15)


def test_engine_verify_dataset(benchmark, tmp_path):
    from engine.data.manifest import _VERIFIED, verify_dataset
    d = engine.build_data("mnist:fashion", 0.75, data_root=ROOT, out=tmp_path)
    verify_dataset(d)  # warm the page cache and the reader

    benchmark.pedantic(lambda: verify_dataset(d), setup=_VERIFIED.clear, rounds=10, iterations=1)
    nbytes = sum(f.stat().st_size for f in d.glob("*.beton"))
    _report(benchmark, N + 10_000, nbytes)


def _bench_dataset_writer(benchmark, left, right, right_name: str, tmp_path: Path) -> None:
    """FFCV's DatasetWriter(num_workers=2) writing the N composed train samples of
    mnist:`right_name`, held in memory (composing is not charged to it)."""
    layout = plan_layout(left.images.shape[1:], right.images.shape[1:])
    spec = DataSpec("mnist", right_name, 0.75, 0, N, 10_000)
    ref = tmp_path / "ref.beton"
    _, scalars = write_split(ref, "train", left, right, layout, spec, N)
    images = beton.read_beton(ref, ["image"])["image"]  # the same composed samples, in memory
    path = tmp_path / "ffcv.beton"

    def fresh():
        path.unlink(missing_ok=True)

    benchmark.pedantic(lambda: ffcv_io.write_with_dataset_writer(path, images, scalars, num_workers=2),
                       setup=fresh, rounds=3, iterations=1)
    assert path.read_bytes() != b""
    _report(benchmark, N, path.stat().st_size)


@pytest.mark.skipif(not ffcv_io.available(), reason="FFCV is not installed")
def test_ffcv_dataset_writer(benchmark, splits, tmp_path):
    _bench_dataset_writer(benchmark, *splits, "fashion", tmp_path)


@pytest.mark.parametrize("fit", ["pad", "resize"])
@pytest.mark.parametrize("kernel", ["general", "specialised"])
def test_page_kernel_padded(benchmark, splits, kernel, fit):
    left = splits[0].images
    right = np.random.default_rng(0).integers(0, 256, (73_257, 32, 32, 3), dtype=np.uint8)
    layout = plan_layout(left.shape[1:], right.shape[1:], fit)
    rng = np.random.default_rng(1)
    li, ri = rng.integers(0, len(left), N), rng.integers(0, len(right), N)
    sample = int(np.prod(layout.shape))
    per_page = (8 << 20) // sample
    buf = np.empty(per_page * sample, np.uint8)
    lp, rp = layout.left, layout.right

    def general(first, count):
        compose._fill_composed(buf, first, count, *layout.shape, left, right, li, ri, lp.geo,
                               lp.rows, lp.cols, rp.geo, rp.rows, rp.cols)

    def specialised(first, count):
        compose.fill_composed(buf, first, count, left, right, li, ri, layout)

    fill = general if kernel == "general" else specialised

    def pages():
        for first in range(0, N, per_page):
            fill(first, min(per_page, N - first))

    pages()  # compile
    benchmark.pedantic(pages, rounds=7, iterations=1)
    _report(benchmark, N, N * sample)


@pytest.fixture(scope="module")
def svhn_root(tmp_path_factory):
    """A data root with the real MNIST and generated SVHN files (SVHN's .mat format)."""
    import scipy.io
    root = tmp_path_factory.mktemp("svhn-root")
    (root / "MNIST").symlink_to((ROOT / "MNIST").resolve())
    (root / "SVHN").mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 73_257), ("test", 26_032)):
        scipy.io.savemat(root / "SVHN" / f"{split}_32x32.mat",
                         {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                          "y": rng.integers(1, 11, (n, 1), dtype=np.uint8)})
    return root


def test_engine_build_data_svhn(benchmark, svhn_root, tmp_path):
    _bench_build(benchmark, "mnist:svhn", svhn_root, tmp_path / "out", rounds=7)


@pytest.mark.skipif(not ffcv_io.available(), reason="FFCV is not installed")
def test_ffcv_dataset_writer_svhn(benchmark, svhn_root, tmp_path):
    _bench_dataset_writer(benchmark, sources.load("mnist", "train", root=svhn_root),
                          sources.load("svhn", "train", root=svhn_root), "svhn", tmp_path)
