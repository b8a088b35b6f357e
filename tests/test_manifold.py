import hashlib
import json
import math

import numpy as np
import pytest
import torch

from engine import paths
from engine.data.beton import read_beton
from engine.cli import main
from engine.errors import EngineError
from engine.data.manifold import (SPLITS, ManifoldSpec, build_manifold, draw_model, overlap, read_split,
                             sample, split_samples)
from engine.studies.manifold_sweep import bob_epochs, overlaps_for, run_manifold_sweep
from engine.train.models import build_model
from engine.store import ResultsStore
from engine.train.device import DeviceData

SMALL = dict(d_latent=6, n_input=24, n_classes=3, n_source=300, n_target=120, n_test=80)
PNG = b"\x89PNG\r\n\x1a\n"


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_zero_perturbation_gives_identical_tasks():
    spec = ManifoldSpec(**SMALL)
    model = draw_model(spec)
    assert np.array_equal(model.f_source, model.f_target)
    assert np.array_equal(model.w_source, model.w_target)
    src, tgt = sample(model, "source", 500, 7), sample(model, "target", 500, 7)
    assert _equal(src, tgt)
    assert np.array_equal(src.alice_label, src.bob_label)
    assert not np.array_equal(src.x, sample(model, "source", 500, 8).x)


def test_overlap_zero_gives_uncorrelated_features_and_teachers():
    spec = ManifoldSpec(d_latent=20, n_input=200, feature_overlap=0.0, teacher_overlap=0.0)
    model = draw_model(spec)
    assert abs(overlap(model.f_source, model.f_target)) < 4 / math.sqrt(20 * 200)
    assert abs(overlap(model.w_source, model.w_target)) < 4 / math.sqrt(20 * 10)
    # The labels of the two teachers agree at chance level on shared latents.
    s = sample(model, "source", 4000, 0)
    assert abs(np.mean(s.alice_label == s.bob_label) - 0.1) < 0.03


def test_intermediate_overlap_is_realised():
    model = draw_model(ManifoldSpec(d_latent=20, n_input=200, feature_overlap=0.5,
                                    teacher_overlap=0.9))
    assert overlap(model.f_source, model.f_target) == pytest.approx(0.5, abs=0.05)
    assert np.std(model.f_target) == pytest.approx(1.0, abs=0.05)  # entries stay N(0, 1)


def test_target_latent_changes_only_the_target():
    base = draw_model(ManifoldSpec(**SMALL))
    for d_t in (3, 10):
        model = draw_model(ManifoldSpec(**SMALL, target_latent=d_t))
        assert model.f_target.shape == (d_t, SMALL["n_input"])
        assert model.w_target.shape == (d_t, SMALL["n_classes"])
        assert np.array_equal(model.f_source, base.f_source)
        assert np.array_equal(model.w_source, base.w_source)
        assert _equal(sample(model, "source", 50, 1)[:2], sample(base, "source", 50, 1)[:2])
        # Overlaps 1: the shared latent directions keep the source's features.
        m = min(d_t, SMALL["d_latent"])
        assert np.array_equal(model.f_target[:m], base.f_source[:m])


def test_shapes_dtypes_and_nonlinearities():
    for f in ("tanh", "sign"):
        spec = ManifoldSpec(**SMALL, nonlinearity=f, feature_overlap=0.3)
        s = sample(draw_model(spec), "target", 40, 0)
        assert s.x.shape == (40, SMALL["n_input"]) and s.x.dtype == np.float32
        for y in (s.alice_label, s.bob_label):
            assert y.shape == (40,) and y.dtype == np.int64 and 0 <= y.min() and y.max() < 3
        if f == "sign":
            assert set(np.unique(s.x)) <= {-1.0, 1.0}
        else:
            assert np.abs(s.x).max() < 1


@pytest.mark.parametrize("bad", [dict(feature_overlap=1.5), dict(teacher_overlap=-0.1),
                                 dict(d_latent=0), dict(n_classes=1), dict(nonlinearity="relu"),
                                 dict(seed=-1), dict(target_latent=0)])
def test_spec_rejects_bad_values(bad):
    with pytest.raises(EngineError):
        ManifoldSpec(**{**SMALL, **bad})


def test_beton_round_trip_and_manifest(tmp_path):
    spec = ManifoldSpec(**SMALL, feature_overlap=0.5, teacher_overlap=0.7, target_latent=8)
    d = build_manifold(spec, tmp_path)
    assert d == tmp_path / spec.key
    manifest = json.loads(paths.manifest_file(d).read_text())
    assert manifest["spec"] == spec.to_dict() and manifest["key"] == spec.key
    model = draw_model(spec)
    for split in SPLITS:
        expected = split_samples(spec, model, split)
        raw = read_beton(paths.split_file(d, split))
        assert raw["x"].dtype == np.float32 and raw["x"].shape == expected.x.shape
        assert _equal(read_split(d, split), expected)
        info = manifest["splits"][split]
        assert info["samples"] == len(expected.x)
        assert sum(info["alice_histogram"]) == sum(info["bob_histogram"]) == len(expected.x)
        assert info["alice_histogram"] == np.bincount(expected.alice_label, minlength=3).tolist()
    assert manifest["splits"]["source-train"]["samples"] == SMALL["n_source"]
    assert manifest["splits"]["target-train"]["samples"] == SMALL["n_target"]
    assert manifest["realised_overlaps"]["features"] == pytest.approx(0.5, abs=0.15)
    # Source and target splits draw independent latents.
    assert not np.array_equal(read_split(d, "source-train").x[:10], read_split(d, "target-train").x[:10])


def test_same_seed_same_bytes_and_reuse(tmp_path):
    spec = ManifoldSpec(**SMALL, feature_overlap=0.9)
    a, b = build_manifold(spec, tmp_path / "a"), build_manifold(spec, tmp_path / "b")
    for split in SPLITS:
        digest = [hashlib.sha256(paths.split_file(d, split).read_bytes()).hexdigest() for d in (a, b)]
        assert digest[0] == digest[1]
    stamp = paths.manifest_file(a).stat().st_mtime_ns
    messages = []
    assert build_manifold(spec, tmp_path / "a", log=messages.append) == a
    assert paths.manifest_file(a).stat().st_mtime_ns == stamp and "reusing" in messages[0]
    other = build_manifold(ManifoldSpec(**{**SMALL, "seed": 1}, feature_overlap=0.9), tmp_path / "a")
    assert other != a
    assert read_split(other, "source-test").x.tobytes() != read_split(a, "source-test").x.tobytes()


def test_device_data_from_features_feeds_the_mlp():
    x = np.random.default_rng(0).standard_normal((10, 7)).astype(np.float32)
    data = DeviceData.from_features(x, {"bob_label": np.arange(10) % 2}, "cpu")
    assert data.input_shape == (1, 7, 1) and len(data) == 10
    assert torch.equal(data.inputs(slice(None)).reshape(10, 7), torch.from_numpy(x))
    assert torch.equal(data.inputs(torch.tensor([3, 1])).reshape(2, 7), torch.from_numpy(x[[3, 1]]))
    assert data.subset(4, seed=0).inputs(slice(None)).shape == (4, 1, 1, 7)
    model = build_model("mlp", data.input_shape, 2, depth=2, width=8)
    assert model(data.inputs(slice(None))).shape == (10, 2)
    with pytest.raises(EngineError):
        DeviceData.from_features(x.astype(np.float64), {}, "cpu")


def test_sweep_helpers():
    assert overlaps_for("both", 0.5) == {"feature_overlap": 0.5, "teacher_overlap": 0.5}
    assert overlaps_for("teacher", 0.5) == {"feature_overlap": 1.0, "teacher_overlap": 0.5}
    assert bob_epochs(100, 128, 20, 200) == 200    # one batch per epoch
    assert bob_epochs(3000, 128, 20, 200) == 20    # 23 batches per epoch
    with pytest.raises(EngineError):
        overlaps_for("inputs", 0.5)
    with pytest.raises(EngineError):
        run_manifold_sweep([0.5], [10], batch_size=0)


def test_tiny_sweep_end_to_end(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["manifold-sweep", "--overlaps", "1,0", "--n-target", "20,60", "--seeds", "0",
            "--d-latent", "5", "--n-input", "20", "--classes", "3", "--n-source", "300",
            "--n-test", "100", "--epochs", "2", "--min-steps", "5", "--alice-epochs", "2",
            "--depth", "2", "--width", "16", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best retrain-from layer" in printed
    figures = sorted((out / "manifold").glob("*.png"))
    assert [f.name for f in figures] == ["acc_vs_depth.png", "best_depth_vs_n_target.png",
                                         "best_depth_vs_overlap.png"]
    for f in figures:
        assert f.read_bytes()[:8] == PNG
    table = ResultsStore(out, read_only=True).table()
    # 2 overlaps x 2 sizes x (finetune l = 1..3 + scratch)
    assert len(table) == 16
    assert set(table["pair"]) == {"manifold:both"} and set(table["beta"]) == {0.0, 1.0}
    assert set(table["n_bob"]) == {20, 60} and set(table["mode"]) == {"finetune", "scratch"}
    assert table["test_acc"].between(0, 1).all() and (table["chance"] == 1 / 3).all()
    assert table.loc[table["mode"] == "finetune", "alice_test_acc"].notna().all()
    assert len(list((out / "datasets").iterdir())) == 2

    assert main(argv) == 0  # resumed: nothing left to run
    assert "16 runs: 16 already done, 0 to run" in capsys.readouterr().err
    assert len(ResultsStore(out, read_only=True).table()) == 16
