"""The engine's .beton writer and reader against FFCV's own DatasetWriter and Loader."""
import subprocess
import sys

import numpy as np
import pytest

from engine.data import beton, ffcv_io
from engine.errors import EngineError
from engine.kernels.compose import fill_composed, plan_layout

needs_ffcv = pytest.mark.skipif(not ffcv_io.available(), reason="FFCV is not installed")
SCALARS = ("alice_label", "bob_label", "left_index", "right_index")


def _samples(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    scalars = {name: rng.integers(-3, 70_000, n) for name in SCALARS}
    return images, scalars


def _fields(shape):
    return {"image": beton.ndarray_field(np.uint8, shape), **{k: beton.int_field() for k in SCALARS}}


@needs_ffcv
@pytest.mark.parametrize("n,shape", [(1, (28, 56, 1)), (5349, (28, 56, 1)), (5350, (28, 56, 1)),
                                     (9000, (28, 56, 1)), (2500, (32, 64, 3))])
def test_writer_is_byte_identical_to_ffcv_dataset_writer(tmp_path, n, shape):
    images, scalars = _samples(n, shape)
    ffcv_io.write_with_dataset_writer(tmp_path / "ffcv.beton", images, scalars, num_workers=1)
    beton.write(tmp_path / "engine.beton", _fields(shape), scalars, n, beton.rows_fill(images))
    assert (tmp_path / "engine.beton").read_bytes() == (tmp_path / "ffcv.beton").read_bytes()


@needs_ffcv
def test_composing_page_kernel_writes_the_same_bytes_as_ffcv(tmp_path):
    rng = np.random.default_rng(1)
    left = rng.integers(0, 256, (300, 28, 28, 1), dtype=np.uint8)
    right = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    li, ri = rng.integers(0, 300, 7000), rng.integers(0, 200, 7000)
    layout = plan_layout((28, 28, 1), (32, 32, 3))
    scalars = {"alice_label": li % 10, "bob_label": ri % 10, "left_index": li, "right_index": ri}
    beton.write(tmp_path / "engine.beton", _fields(layout.shape), scalars, 7000,
                lambda buf, first, count: fill_composed(buf, first, count, left, right, li, ri, layout))
    composed = beton.read_beton(tmp_path / "engine.beton")["image"]
    ffcv_io.write_with_dataset_writer(tmp_path / "ffcv.beton", composed, scalars, num_workers=1)
    assert (tmp_path / "engine.beton").read_bytes() == (tmp_path / "ffcv.beton").read_bytes()


@needs_ffcv
def test_ffcv_loader_reads_engine_files(tmp_path):
    images, scalars = _samples(3000, (32, 64, 3), seed=2)
    path = tmp_path / "d.beton"
    beton.write(path, _fields((32, 64, 3)), scalars, 3000, beton.rows_fill(images))
    got = {k: [] for k in ("image",) + SCALARS}
    for batch in ffcv_io.loader(path, batch_size=512):
        for name, value in zip(got, batch):
            got[name].append(np.array(value, copy=True))  # the Loader reuses its batch buffers
    np.testing.assert_array_equal(np.concatenate(got["image"]), images)
    for name in SCALARS:
        np.testing.assert_array_equal(np.concatenate(got[name]).ravel(), scalars[name])


def test_reader_round_trip_and_subsets(tmp_path):
    images, scalars = _samples(6000, (28, 56, 1), seed=3)
    path = tmp_path / "d.beton"
    facts = beton.write(path, _fields((28, 56, 1)), scalars, 6000, beton.rows_fill(images))
    assert facts["pages"] == 2 and path.stat().st_size == facts["bytes"]
    data = beton.read_beton(path)
    np.testing.assert_array_equal(data["image"], images)
    for name in SCALARS:
        np.testing.assert_array_equal(data[name], scalars[name])
        assert data[name].dtype == np.int64
    f = beton.BetonFile(path)
    picks = np.array([5999, 0, 5348, 5349])
    np.testing.assert_array_equal(f.read("image", picks), images[picks])
    assert f.fields["image"].shape == (28, 56, 1) and len(f) == 6000


def test_float_and_float32_array_fields_round_trip(tmp_path):
    x = np.random.default_rng(4).standard_normal((1000, 40)).astype(np.float32)
    y = np.linspace(-1, 1, 1000)
    fields = {"x": beton.ndarray_field(np.float32, (40,)), "y": beton.float_field()}
    beton.write(tmp_path / "f.beton", fields, {"y": y}, 1000, beton.rows_fill(x))
    data = beton.read_beton(tmp_path / "f.beton")
    np.testing.assert_array_equal(data["x"], x)
    np.testing.assert_array_equal(data["y"], y)


def test_reader_rejects_truncated_and_foreign_files(tmp_path):
    images, scalars = _samples(100, (28, 56, 1))
    path = tmp_path / "d.beton"
    beton.write(path, _fields((28, 56, 1)), scalars, 100, beton.rows_fill(images))
    cut = tmp_path / "cut.beton"
    cut.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(EngineError, match="truncated"):
        beton.read_beton(cut)
    other = tmp_path / "other.beton"
    other.write_bytes(b"\x07\x00" + bytes(100))
    with pytest.raises(EngineError, match="version"):
        beton.BetonFile(other)
    with pytest.raises(EngineError, match="no field"):
        beton.BetonFile(path).read("nope")


def test_reader_works_without_ffcv(tmp_path):
    images, scalars = _samples(50, (28, 56, 1))
    path = tmp_path / "d.beton"
    beton.write(path, _fields((28, 56, 1)), scalars, 50, beton.rows_fill(images))
    code = ("import sys; sys.modules['ffcv'] = None\n"  # any `import ffcv` now raises ImportError
            "from engine.data.beton import read_beton\n"
            f"d = read_beton({str(path)!r}); print(d['image'].shape, int(d['bob_label'].sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["(50,", "28,", "56,", "1)", str(int(scalars["bob_label"].sum()))]


def test_writer_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="at most one"):
        beton.write(tmp_path / "x", {"a": beton.ndarray_field(np.uint8, (2,)),
                                     "b": beton.ndarray_field(np.uint8, (2,))}, {}, 1)
    with pytest.raises(ValueError, match="16"):
        beton.write(tmp_path / "x", {"a_very_long_field_name": beton.int_field()}, {}, 1)
    with pytest.raises(ValueError, match="power of 2"):
        beton.write(tmp_path / "x", {"a": beton.int_field()}, {"a": np.zeros(1)}, 1, page_size=3 << 20)
