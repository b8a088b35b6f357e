"""`engine analyze`: every analysis on one tiny real sweep (MNIST:Fashion-MNIST subsets, mlp with
L = 3, betas 0 and 1, one seed, one epoch), plus Bob re-creation and the activation cache."""
from __future__ import annotations

import json

import pytest

from engine import paths
from engine.analysis import artifacts as art
from engine.cli import main
from engine.train.models import LayeredNet
from engine.store import read_analysis

PNG = b"\x89PNG\r\n\x1a\n"
FAST = ["--max-samples", "200"]
EXTRA = {"bound": ["--bound-mode", "learned-all", "--steps", "20"],
         "criticality": ["--alphas", "0,0.5,1", "--sigmas", "0,0.1"],
         "attribution": ["--method", "grad_x_input"],
         "barrier": ["--points", "5"],
         "select-source": ["--n", "200", "--epochs", "1"]}
KINDS = ("cka", "transferability", "bound", "barrier", "criticality", "attribution",
         "select-source")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = paths.data_root()
    if not ((root / "MNIST" / "raw").is_dir() and (root / "FashionMNIST" / "raw").is_dir()):
        pytest.skip("MNIST and Fashion-MNIST are not under $ENGINE_DATA_ROOT")
    out = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        assert main(["sweep", "--pair", "mnist:fashion", "--betas", "0,1", "--seeds", "0",
                     "--arch", "mlp", "--depth", "2", "--width", "32", "--epochs", "1",
                     "--alice-epochs", "1", "--n-train", "1000", "--n-test", "300",
                     "--device", "cpu", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_analysis_command(sweep, kind, capsys):
    assert main(["analyze", kind, str(sweep), *FAST, *EXTRA.get(kind, [])]) == 0
    printed = capsys.readouterr().out.split()
    png = paths.analysis_dir(sweep) / f"{kind}.png"
    assert str(png) in printed
    assert png.read_bytes()[:8] == PNG
    rows = read_analysis(sweep, kind)
    assert len(rows) > 0
    assert set(rows["beta"]) == {0.0, 1.0}


def test_analysis_filters(sweep, capsys):
    assert main(["analyze", "cka", str(sweep), "--beta", "1", *FAST]) == 0
    assert main(["analyze", "cka", str(sweep), "--beta", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no runs match" in err


def test_bob_model_recreates_and_reloads(sweep, monkeypatch):
    runs = art.sweep_runs(sweep)
    row = runs[(runs["mode"] == "finetune") & (runs["retrain_from"] == 2)].iloc[0]
    path = paths.bob_checkpoint(sweep, row["run_id"])
    path.unlink(missing_ok=True)
    _, metrics = art.bob_model(sweep, row["run_id"])
    assert abs(metrics["test_acc"] - row["test_acc"]) <= 1e-6
    assert path.is_file()
    import engine.sweep.executors
    monkeypatch.setattr(engine.sweep.executors, "run_bob", lambda *a, **k: pytest.fail("retrained"))
    model, again = art.bob_model(sweep, row["run_id"])
    assert again["test_acc"] == metrics["test_acc"]
    _, spec, _ = art.load_checkpoint(path)
    assert spec["bob"] == json.loads(row["spec_json"])


def test_feature_cache_is_used(sweep, monkeypatch):
    argv = ["analyze", "transferability", str(sweep), "--max-samples", "150"]
    assert main(argv) == 0
    monkeypatch.setattr(LayeredNet, "activations", lambda *a: pytest.fail("forward pass"))
    monkeypatch.setattr(LayeredNet, "forward", lambda *a: pytest.fail("forward pass"))
    assert main(argv) == 0
    assert list((paths.analysis_dir(sweep) / "cache").glob("*-l*.npy"))


def test_bad_dir(tmp_path, capsys):
    assert main(["analyze", "cka", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a sweep directory" in err


# Facts every analysis must reproduce on the real trained networks (issue 12) ------------------

def _rows(part) -> "pd.DataFrame":
    import pyarrow.parquet as pq
    return pq.read_table(part).to_pandas()


def test_barrier_end_points_are_the_stored_networks(sweep):
    """On the whole test split (300 samples) a path's end points give the stored test accuracies:
    Alice -> Bob ends at Bob's; Bob seed s <-> s + 1 starts at Bob's and ends at the other seed's
    (re-created by the sweep's code path). The old aliasing made the first path flat at Bob's
    start."""
    from engine.analysis.analyze import Options, barrier
    runs = art.sweep_runs(sweep)
    o = Options(max_samples=300, points=3, modes=["finetune"])
    rows = _rows(barrier(sweep, o, log=lambda m: None)[1])
    for run_id, got in rows.groupby("run_id"):
        stored = runs.set_index("run_id").loc[run_id]
        spec = art.run_spec(stored)
        line = got[got["path"] == "Alice -> Bob"].sort_values("t")
        assert abs(line["acc"].iloc[-1] - stored["test_acc"]) <= 1e-6
        seeds = got[got["path"].str.contains("<->")].sort_values("t")
        assert abs(seeds["acc"].iloc[0] - stored["test_acc"]) <= 1e-6
        import dataclasses
        _, other = art.bob_model(sweep, spec=dataclasses.replace(spec, seed=spec.seed + 1))
        assert abs(seeds["acc"].iloc[-1] - other["test_acc"]) <= 1e-6
        assert line["acc"].iloc[0] != line["acc"].iloc[-1]  # not the flat, aliased path


def test_criticality_without_rewinding_is_the_trained_network(sweep):
    """alpha = 0, sigma = 0 rewinds nothing: every layer's error there is the trained network's
    training error (the threshold minus the tolerance)."""
    from engine.analysis.analyze import Options, criticality
    from engine.train.trainer import evaluate
    o = Options(max_samples=200, alphas=(0.0, 1.0), sigmas=(0.0,), tolerance=0.05,
                modes=["finetune"])
    rows = _rows(criticality(sweep, o, log=lambda m: None)[1])
    runs = art.sweep_runs(sweep).set_index("run_id")
    for run_id, got in rows.groupby("run_id"):
        spec = art.run_spec(runs.loc[run_id])
        bob, _ = art.bob_model(sweep, spec=spec)
        train = art.first(art.dataset(sweep, spec.dataset)[0], 200)
        error = 1 - evaluate(bob, train, "bob_label")[0]
        zero = got[(got["alpha"] == 0) & (got["sigma"] == 0)]
        assert len(zero) == bob.n_layers
        assert (abs(zero["error"] - error) <= 1e-9).all()
        assert (abs(zero["threshold"] - min(1.0, error + 0.05)) <= 1e-9).all()


def test_corrupt_feature_cache_is_recomputed(sweep, capsys):
    argv = ["analyze", "transferability", str(sweep), "--max-samples", "120"]
    assert main(argv) == 0
    files = sorted((paths.analysis_dir(sweep) / "cache").glob("*.npy"))
    for cached in files:
        data = bytearray(cached.read_bytes())
        data[-3] ^= 0xFF
        cached.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(argv) == 0
    assert "recomputing" in capsys.readouterr().err
    assert any(art.load_cached(f, log=lambda m: None) is not None for f in files)  # rewritten
