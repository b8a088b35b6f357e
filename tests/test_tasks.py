"""Tasks as data (engine.data.tasks): class selection, relabelling, label noise, single-image
`.beton` files (engine.kernels.single against its NumPy twin, and against FFCV's writer)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from engine.data import ffcv_io
from engine.data.beton import read_beton
from engine.data.tasks import (build_task, check_same_shape, check_task, make_task, noisy_labels)
from engine.errors import EngineError
from engine.kernels.single import (fill_single, fill_single_numpy, plan_single, transform,
                                   transform_numpy)

needs_ffcv = pytest.mark.skipif(not ffcv_io.available(), reason="FFCV is not installed")
NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FIELDS = ("image", "alice_label", "bob_label", "left_index", "right_index")


def write_npz(path, n=400, size=32, classes=10, seed=0, grey=False):
    """A one-split npz (like CIFAR10/cifar10_test.npz): random images, labels cycling 0..classes-1."""
    rng = np.random.default_rng(seed)
    shape = (n, size, size) if grey else (n, size, size, 3)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = np.arange(n) % classes
    np.savez(path, images=images, labels=labels)
    return images, labels


def write_jpeg_folder(root, counts={"train": 6, "validation": 4}, classes=("cats", "dogs"),
                      grey_every=3):
    """root/{train,validation}/<class>/*.jpg of varying sizes (some grey)."""
    rng = np.random.default_rng(5)
    for split, n in counts.items():
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = int(rng.integers(20, 90)), int(rng.integers(20, 90))
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                img = Image.fromarray(arr)
                if i % grey_every == 0:
                    img = img.convert("L")
                img.save(d / f"{c}.{i}.jpg", quality=90)
    return root


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "cifar_like.npz"
    images, labels = write_npz(path)
    return path, images, labels


# Kernel against its twin -------------------------------------------------------------------------

@pytest.mark.parametrize("src,size,channels,fit", [
    ((32, 32, 3), 32, 3, "resize"),   # copy
    ((32, 32, 3), 64, 3, "resize"),   # upsample
    ((50, 37, 3), 32, 3, "resize"),   # centre crop + downsample
    ((28, 28, 1), 32, 3, "resize"),   # grey to RGB
    ((28, 28, 1), 32, 1, "pad"),      # pad, grey kept
    ((28, 40, 1), 32, 3, "pad"),      # pad rows, crop columns, grey to RGB
    ((40, 40, 3), 32, 3, "pad"),      # centre crop without interpolation
])
def test_single_image_kernel_matches_numpy_twin(src, size, channels, fit):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30,) + src, dtype=np.uint8)
    index = rng.integers(0, 30, 75)
    plan = plan_single(src, size, channels, fit)
    want = transform_numpy(images, index, plan)
    np.testing.assert_array_equal(transform(images, index, plan), want)
    assert want.shape == (75, size, size, channels)
    sample = size * size * channels
    buf, twin = np.full(sample * 40, 7, np.uint8), np.full(sample * 40, 7, np.uint8)
    fill_single(buf, 20, 40, images, index, plan)
    fill_single_numpy(twin, 20, 40, images, index, plan)
    np.testing.assert_array_equal(buf, twin)
    np.testing.assert_array_equal(buf.reshape(40, size, size, channels), want[20:60])


def test_single_image_geometry():
    img = np.arange(28 * 28, dtype=np.uint8).reshape(1, 28, 28, 1)
    padded = transform(img, [0], plan_single((28, 28, 1), 32, 3, "pad"))[0]
    np.testing.assert_array_equal(padded[2:30, 2:30, 1], img[0, :, :, 0])
    assert padded[:2].max() == 0 and padded[:, 30:].max() == 0
    same = transform(img, [0], plan_single((28, 28, 1), 28, 1, "resize"))[0]
    np.testing.assert_array_equal(same, img[0])
    wide = np.zeros((1, 10, 30, 3), np.uint8)
    wide[:, :, 10:20] = 200  # the centre square of a wide image is kept
    np.testing.assert_array_equal(transform(wide, [0], plan_single((10, 30, 3), 5, 3))[0], 200)
    with pytest.raises(ValueError, match="grey"):
        plan_single((8, 8, 3), 8, 1)


# Selection, relabelling, noise -------------------------------------------------------------------

def test_class_selection_and_relabelling(npz, tmp_path):
    path, images, labels = npz
    spec = make_task(f"npz:{path}", ["dog", "cat"], source_classes=NAMES, name="cat-dog")
    d = build_task(spec, out=tmp_path / "ds")
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["classes"] == ["dog", "cat"] and manifest["pair"] == "cat-dog"
    assert manifest["sources"]["left"]["classes"] == manifest["sources"]["right"]["classes"] == ["dog", "cat"]
    assert manifest["spec"]["beta"] == 1.0 and manifest["key"] == d.name == spec.key
    from engine.datasets import holdout
    total = 0
    for split in ("train", "test"):
        data = read_beton(d / f"{split}.beton")
        part = holdout.indices(len(labels), 0, split, "x")  # the 80/20 hold-out of the npz
        src_labels, src_images = labels[part], images[part]
        keep = np.flatnonzero(np.isin(src_labels, [3, 5]))
        np.testing.assert_array_equal(data["left_index"], keep)
        np.testing.assert_array_equal(data["right_index"], keep)
        np.testing.assert_array_equal(data["alice_label"], (src_labels[keep] == 3).astype(int))
        np.testing.assert_array_equal(data["bob_label"], data["alice_label"])
        np.testing.assert_array_equal(data["image"], src_images[keep])
        assert manifest["splits"][split]["samples"] == len(keep)
        assert manifest["splits"][split]["label_histogram"] == np.bincount(
            data["alice_label"], minlength=2).tolist()
        total += len(keep)
    assert total == 80 and manifest["spec"]["n_train"] + manifest["spec"]["n_test"] == 80

    grouped = make_task(f"npz:{path}", groups=[["bird", "cat", "deer", "dog", "frog", "horse"],
                                               ["airplane", "automobile", "ship", "truck"]],
                        labels=["animal", "vehicle"], source_classes=NAMES)
    data = read_beton(build_task(grouped, out=tmp_path / "ds") / "train.beton")
    part = holdout.indices(len(labels), 0, "train", "x")
    want = np.isin(labels[part], [0, 1, 8, 9]).astype(int)
    np.testing.assert_array_equal(data["alice_label"], want)
    assert len(data["alice_label"]) == len(part)  # every class selected


@pytest.mark.parametrize("noise,k", [(0.2, 2), (0.5, 4), (1.0, 10)])
def test_label_noise_fraction_within_binomial_error(noise, k):
    n = 40_000
    clean = np.arange(n) % k
    labels, replaced = noisy_labels(clean, k, noise, seed=3, split="train")
    p = noise
    assert abs(replaced.mean() - p) <= 5 * np.sqrt(p * (1 - p) / n + 1e-12)
    changed = noise * (k - 1) / k
    assert abs(np.mean(labels != clean) - changed) <= 5 * np.sqrt(changed * (1 - changed) / n)
    np.testing.assert_array_equal(labels[~replaced], clean[~replaced])
    counts = np.bincount(labels[replaced], minlength=k)  # redrawn labels are uniform
    assert abs(counts / replaced.sum() - 1 / k).max() < 5 * np.sqrt(1 / k / replaced.sum())
    # The draws do not depend on the noise level: the replaced set grows with it.
    lower, rep_lower = noisy_labels(clean, k, noise / 2, seed=3, split="train")
    assert not (rep_lower & ~replaced).any()
    other, _ = noisy_labels(clean, k, noise, seed=3, split="test")
    assert (other != labels).any()


def test_noisy_task_manifest_records_realised_noise(tmp_path):
    path = tmp_path / "big.npz"
    write_npz(path, n=5000, size=4, classes=2)
    spec = make_task(f"npz:{path}", ["0", "1"], noise=0.3, seed=1, image_size=4)
    assert spec.name.endswith("noise0.3")
    m = json.loads((build_task(spec, out=tmp_path / "ds") / "manifest.json").read_text())
    for split, s in m["splits"].items():
        n = s["samples"]
        assert abs(s["noise"]["replaced_fraction"] - 0.3) <= 5 * np.sqrt(0.21 / n)
        assert abs(s["noise"]["changed_fraction"] - 0.15) <= 5 * np.sqrt(0.15 * 0.85 / n)
        assert s["noise"]["expected_changed_fraction"] == pytest.approx(0.15)
        assert s["clean_histogram"] != s["label_histogram"]
    clean = make_task(f"npz:{path}", ["0", "1"], image_size=4)
    c = read_beton(build_task(clean, out=tmp_path / "ds") / "train.beton")
    noisy = read_beton(tmp_path / "ds" / spec.key / "train.beton")
    np.testing.assert_array_equal(c["image"], noisy["image"])  # same samples, other labels
    assert 0.1 < np.mean(c["alice_label"] != noisy["alice_label"]) < 0.2


# Files -------------------------------------------------------------------------------------------

@needs_ffcv
def test_task_beton_is_byte_identical_to_ffcv_and_readable_by_its_loader(tmp_path):
    root = write_jpeg_folder(tmp_path / "photos", counts={"train": 700, "validation": 2})
    spec = make_task(f"folder:{root}", groups=[["cats"], ["dogs"]], labels=["cat", "dog"],
                     noise=0.25)
    d = build_task(spec, out=tmp_path / "ds")
    ours = d / "train.beton"
    data = read_beton(ours)
    assert data["image"].shape == (1400, 32, 32, 3)
    ref = tmp_path / "ffcv.beton"
    ffcv_io.write_with_dataset_writer(ref, data["image"], {k: data[k] for k in FIELDS[1:]},
                                      num_workers=1)
    assert ours.read_bytes() == ref.read_bytes()
    got = {k: [] for k in FIELDS}
    for batch in ffcv_io.loader(ours, batch_size=256):
        for name, value in zip(got, batch):
            got[name].append(np.array(value, copy=True))
    np.testing.assert_array_equal(np.concatenate(got["image"]), data["image"])
    for name in FIELDS[1:]:
        np.testing.assert_array_equal(np.concatenate(got[name]).ravel(), data[name])


@needs_ffcv
def test_multi_page_task_file_is_byte_identical_to_ffcv(tmp_path):
    path = tmp_path / "many.npz"
    write_npz(path, n=6000, size=40, classes=3, grey=True)  # 3200 train samples: 2 pages
    d = build_task(make_task(f"npz:{path}", ["0", "2"]), out=tmp_path / "ds")
    data = read_beton(d / "train.beton")
    assert data["image"].shape[1:] == (32, 32, 3)
    assert (data["image"][..., 0] == data["image"][..., 2]).all()  # grey replicated
    ref = tmp_path / "ffcv.beton"
    ffcv_io.write_with_dataset_writer(ref, data["image"], {k: data[k] for k in FIELDS[1:]})
    assert (d / "train.beton").read_bytes() == ref.read_bytes()


def test_folder_task_images_and_reuse(tmp_path):
    root = write_jpeg_folder(tmp_path / "photos")
    spec = make_task(f"folder:{root}", groups=[["cats"], ["dogs"]], labels=["cat", "dog"],
                     name="cats-dogs")
    d = build_task(spec, out=tmp_path / "ds")
    m = json.loads((d / "manifest.json").read_text())
    assert m["splits"]["train"]["samples"] == 12 and m["splits"]["test"]["samples"] == 8
    assert m["image_shape"] == [32, 32, 3] and m["task"] == spec.to_dict()
    assert all(len(f["sha256"]) == 64 for f in m["sources"]["left"]["files"])
    from engine.datasets.folder import load_image
    data = read_beton(d / "test.beton")
    first = sorted((root / "validation" / "cats").iterdir())[0]
    np.testing.assert_array_equal(data["image"][0], load_image(first, 32))
    stamp = os.stat(d / "train.beton").st_mtime_ns
    assert build_task(spec, out=tmp_path / "ds") == d  # reused, not rewritten
    assert os.stat(d / "train.beton").st_mtime_ns == stamp
    big = make_task(f"folder:{root}", groups=[["cats"], ["dogs"]], labels=["cat", "dog"],
                    name="cats-dogs", image_size=64)
    d64 = build_task(big, out=tmp_path / "ds")
    assert d64 != d and read_beton(d64 / "test.beton")["image"].shape == (8, 64, 64, 3)
    with pytest.raises(EngineError, match="32x32x3 images but .* 64x64x3"):
        check_same_shape(d, d64)
    assert check_same_shape(d, d) == (32, 32, 3)


def test_inspect_reads_task_manifests(tmp_path):
    from engine.data.inspect import inspect
    root = write_jpeg_folder(tmp_path / "photos")
    d = build_task(make_task(f"folder:{root}", ["cats", "dogs"]), out=tmp_path / "ds")
    text = inspect(d, tmp_path / "grid.png", count=4)
    assert "2 classes" in text and (tmp_path / "grid.png").is_file()


# Errors ------------------------------------------------------------------------------------------

def one_line(exc):
    return "\n" not in str(exc.value)


def test_bad_tasks_get_one_line_errors(npz, tmp_path):
    path = npz[0]
    with pytest.raises(EngineError, match="unknown class 'kitten'.*airplane, automobile") as e:
        check_task(make_task(f"npz:{path}", ["cat", "kitten"], source_classes=NAMES))
    assert one_line(e)
    with pytest.raises(EngineError, match="unknown class") as e:
        build_task(make_task(f"npz:{path}", ["cat", "kitten"], source_classes=NAMES),
                   out=tmp_path / "ds")
    with pytest.raises(EngineError, match="at least two classes") as e:
        make_task(f"npz:{path}", ["cat"])
    assert one_line(e)
    with pytest.raises(EngineError, match="at least two classes"):
        make_task(f"npz:{path}", groups=[["cat", "dog"]])
    with pytest.raises(EngineError, match="more than once"):
        make_task(f"npz:{path}", groups=[["cat", "dog"], ["dog"]])
    with pytest.raises(EngineError, match="noise"):
        make_task(f"npz:{path}", ["cat", "dog"], noise=1.5)
    with pytest.raises(EngineError, match="10 classes but the task names 3"):
        check_task(make_task(f"npz:{path}", ["a", "b"], source_classes=["a", "b", "c"]))
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    with pytest.raises(EngineError, match="no .* images") as e:
        build_task(make_task(f"folder:{empty}", ["cats", "dogs"]), out=tmp_path / "ds")
    assert one_line(e)
    (tmp_path / "bare").mkdir()
    with pytest.raises(EngineError) as e:
        build_task(make_task(f"folder:{tmp_path / 'bare'}", ["cats", "dogs"]), out=tmp_path / "ds")
    assert one_line(e)
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())
