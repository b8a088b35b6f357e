"""Data engine throughput: the engine's build path against FFCV's DatasetWriter, same samples, same
machine. Run with `make bench` (needs real MNIST and Fashion-MNIST under ENGINE_DATA_ROOT).

- engine_write_split: pair + compose + write a 60k-sample mnist:fashion train split into a .beton
  (page cache; sources already cached). This is the hot path the 1M samples/s target is about.
- engine_build_data: the whole `build_data` (train 60k + test 10k), including the digest of each
  output (XXH3-128 per page, hashed by the page writers), the label statistics, the lock and the
  resource check, and the manifest. Three DatasetWriter rounds (as ffcv_dataset_writer) run
  between its rounds, untimed by the benchmark, for its tracked ratio: samples/s of the whole
  build over samples/s of DatasetWriter (the quick bench's build ratio).
- engine_verify_dataset: `verify_dataset` of that dataset (both splits re-hashed from the page
  cache, labels range-checked), what a sweep or `pretrain` pays before training on it.
- ffcv_dataset_writer: FFCV's DatasetWriter(num_workers=2) writing the same 60k composed samples
  from in-memory arrays (composing is not even charged to it).
- page_kernel_padded[general|specialised-pad|resize]: the page kernel alone, one thread,
  composing 60k random pairs of MNIST (28x28 grey, padded, or resized with fit="resize", to
  32x32 and replicated to RGB) beside 32x32 RGB images, mnist:svhn's geometry (SVHN is not among the shared data: the right images are random
  bytes in SVHN's train shape, which a copy does not care about), into 8 MiB pages: the general
  kernel (geometry read at run time) against the kernel specialised to the geometry.
  page_kernel_ratio[pad|resize] times both, rounds interleaved, and tracks their ratio: the page
  kernel is what every build of that pair runs, and the whole build's ratio to DatasetWriter
  (page-cache writes, two threads) barely moves when only the kernel slows down.
- engine_build_data_svhn / ffcv_dataset_writer_svhn: the whole `build_data` of the headline pair
  mnist:svhn (60k + 10k samples of 32x64x3, 430 MB), against DatasetWriter writing the same 60k
  train samples. SVHN is not among the shared data, so its files are generated in SVHN's own
  format (`SVHN/{train,test}_32x32.mat`, 73,257 + 26,032 random images) beside links to the real
  MNIST files; the sources are decoded and cached before timing. The build tracks its ratio to
  DatasetWriter the same way as engine_build_data.
"""
import itertools
import math
import os
import shutil
import time
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
WRITER_ROUNDS = 3  # DatasetWriter rounds interleaved with a build's rounds (0.7-1.0 s each)


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


def _bench_build(benchmark, track, pair: str, root: Path, out: Path, rounds: int, writer,
                 floor: float, ci_floor: float | None = None,
                 spread: float | None = None) -> None:
    """The whole `build_data` of `pair` at beta 0.75, timed from an empty output directory.
    `writer()` (DatasetWriter on the same N train samples, or None without FFCV) runs
    WRITER_ROUNDS times between the build's rounds; its fastest round gives the tracked ratio."""
    engine.build_data(pair, 0.75, data_root=root, out=out)  # decode, cache, compile
    writer_s, every = [], math.ceil(rounds / WRITER_ROUNDS)
    setups = itertools.count()

    def fresh():
        shutil.rmtree(out, ignore_errors=True)
        if writer is not None and next(setups) % every == 0:
            t0 = time.perf_counter()
            writer()
            writer_s.append(time.perf_counter() - t0)

    result = benchmark.pedantic(lambda: engine.build_data(pair, 0.75, data_root=root, out=out),
                                setup=fresh, rounds=rounds, iterations=1)
    nbytes = sum(f.stat().st_size for f in result.glob("*.beton"))
    _report(benchmark, N + 10_000, nbytes)
    if writer_s:
        writer_rate = N / min(writer_s)
        benchmark.extra_info.update({"dataset_writer_s": writer_s,
                                     "dataset_writer_samples_per_s": writer_rate})
        track(f"whole build {pair} vs DatasetWriter", benchmark.extra_info["samples_per_s"]
              / writer_rate, floor=floor, ci_floor=ci_floor, spread=spread)


@pytest.mark.quick
def test_engine_build_data(benchmark, track, splits, tmp_path):
    writer = _dataset_writer(*splits, "fashion", tmp_path / "ffcv") if ffcv_io.available() else None
    # floor: issue 12's target (>= 15x). CI floor and spread: 14 quick runs gave 18.9-27.3x
    # (13.4x seen on a machine loaded 5 deep); 12x still catches the first pass's 9.6x.
    _bench_build(benchmark, track, "mnist:fashion", ROOT, tmp_path / "out", rounds=15,
                 writer=writer, floor=15, ci_floor=12, spread=0.4)


def test_engine_verify_dataset(benchmark, tmp_path):
    from engine.data.manifest import _VERIFIED, verify_dataset
    d = engine.build_data("mnist:fashion", 0.75, data_root=ROOT, out=tmp_path)
    verify_dataset(d)  # warm the page cache and the reader

    benchmark.pedantic(lambda: verify_dataset(d), setup=_VERIFIED.clear, rounds=10, iterations=1)
    nbytes = sum(f.stat().st_size for f in d.glob("*.beton"))
    _report(benchmark, N + 10_000, nbytes)


def _dataset_writer(left, right, right_name: str, tmp_path: Path):
    """A function writing the N composed train samples of mnist:`right_name` with FFCV's
    DatasetWriter(num_workers=2), from memory (composing is not charged to it)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    layout = plan_layout(left.images.shape[1:], right.images.shape[1:])
    spec = DataSpec("mnist", right_name, 0.75, 0, N, 10_000)
    ref = tmp_path / "ref.beton"
    _, scalars = write_split(ref, "train", left, right, layout, spec, N)
    images = beton.read_beton(ref, ["image"])["image"]  # the same composed samples, in memory
    path = tmp_path / "ffcv.beton"

    def write():
        path.unlink(missing_ok=True)  # a new file each time
        ffcv_io.write_with_dataset_writer(path, images, scalars, num_workers=2)
        assert path.stat().st_size > 0
    return write


def _bench_dataset_writer(benchmark, left, right, right_name: str, tmp_path: Path) -> None:
    """FFCV's DatasetWriter alone (see `_dataset_writer`), 3 rounds."""
    write = _dataset_writer(left, right, right_name, tmp_path)
    benchmark.pedantic(write, rounds=3, iterations=1)
    _report(benchmark, N, (tmp_path / "ffcv.beton").stat().st_size)


@pytest.mark.skipif(not ffcv_io.available(), reason="FFCV is not installed")
def test_ffcv_dataset_writer(benchmark, splits, tmp_path):
    _bench_dataset_writer(benchmark, *splits, "fashion", tmp_path)


def _page_filler(left: np.ndarray, kernel: str, fit: str):
    """(compose N random mnist:svhn-geometry pairs into 8 MiB pages with `kernel`, sample bytes)."""
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
    return pages, sample


@pytest.mark.parametrize("fit", ["pad", "resize"])
@pytest.mark.parametrize("kernel", ["general", "specialised"])
def test_page_kernel_padded(benchmark, splits, kernel, fit):
    pages, sample = _page_filler(splits[0].images, kernel, fit)
    benchmark.pedantic(pages, rounds=7, iterations=1)
    _report(benchmark, N, N * sample)


# (floor, CI floor, spread). Floors: half the ratio measured when the specialised kernel landed
# (8.2-8.6x pad, 5.5-5.6x resize), i.e. a 2x slowdown of the kernel every build runs. CI floor and
# spread (pad): quick runs gave 7.5-8.6x, a planted 2x slower kernel 3.4-3.8x (bench/RESULTS.md).
PAGE_FLOORS = {"pad": (4.0, 5.0, 0.2), "resize": (2.75, None, None)}


@pytest.mark.parametrize("fit", [pytest.param("pad", marks=pytest.mark.quick), "resize"])
def test_page_kernel_ratio(benchmark, track, splits, fit):
    """The specialised kernel (benchmarked, 21 rounds) against the general one (3 rounds in
    pedantic's untimed setup, one per 7 of the other's), so both see the same machine. The
    specialised kernel waits on memory (random gathers) and varies with other processes' memory
    traffic (52-109 ms over 12 quick runs at 7 rounds), the general one computes (406-481 ms)."""
    fast, sample = _page_filler(splits[0].images, "specialised", fit)
    slow, _ = _page_filler(splits[0].images, "general", fit)
    general_s, setups = [], itertools.count()

    def time_general():
        if next(setups) % 7 == 0:
            t0 = time.perf_counter()
            slow()
            general_s.append(time.perf_counter() - t0)

    benchmark.pedantic(fast, setup=time_general, rounds=21, iterations=1)
    _report(benchmark, N, N * sample)
    benchmark.extra_info["general_s"] = general_s
    floor, ci_floor, spread = PAGE_FLOORS[fit]
    track(f"page kernel mnist:svhn {fit}: specialised vs general",
          min(general_s) / benchmark.stats.stats.min, floor=floor, ci_floor=ci_floor,
          spread=spread)


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


def test_engine_build_data_svhn(benchmark, track, svhn_root, tmp_path):
    writer = (_dataset_writer(sources.load("mnist", "train", root=svhn_root),
                              sources.load("svhn", "train", root=svhn_root), "svhn",
                              tmp_path / "ffcv") if ffcv_io.available() else None)
    # floor: 7.8-9.8x measured; 3.4x with the general page kernel, which a floor of 6x catches
    _bench_build(benchmark, track, "mnist:svhn", svhn_root, tmp_path / "out", rounds=7,
                 writer=writer, floor=6)


@pytest.mark.skipif(not ffcv_io.available(), reason="FFCV is not installed")
def test_ffcv_dataset_writer_svhn(benchmark, svhn_root, tmp_path):
    _bench_dataset_writer(benchmark, sources.load("mnist", "train", root=svhn_root),
                          sources.load("svhn", "train", root=svhn_root), "svhn", tmp_path)
