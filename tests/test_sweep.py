import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from engine import paths
from engine.train.alice import pretrain
from engine.train.checkpoint import load_checkpoint
from engine.cli import main
from engine.errors import EngineError
from engine.spec import AliceSpec, BobSpec, Training
from engine.sweep.expand import expand_sweep
from engine.store import ResultsStore

TINY = {"depth": 2, "width": 16}  # mlp with L = 3


def write_source(path: Path, seed: int) -> None:
    """An npz source of 8x8 images: noise plus a bright pixel pair whose position is the label."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 600), ("test", 300)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 8, 8), dtype=np.uint8)
        r, c = np.divmod(y, 5)
        x[np.arange(n), 1 + 3 * r, c] = 255
        x[np.arange(n), 2 + 3 * r, c] = 255
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("sources")
    write_source(d / "a.npz", 0)
    write_source(d / "b.npz", 1)
    return f"npz:{d / 'a.npz'}:npz:{d / 'b.npz'}"


def sweep_argv(pair, out, *extra):
    """A tiny mlp sweep. `--precision fp32`: the same run IDs in a subprocess as in this one,
    whatever the CPU (auto picks bf16 where it pays, on AMX; conftest pins that for this process
    only)."""
    return ["sweep", "--pair", pair, "--betas", "0,1", "--seeds", "0", "--arch", "mlp",
            "--depth", "2", "--width", "16", "--epochs", "1", "--alice-epochs", "1",
            "--n-train", "512", "--n-test", "256", "--device", "cpu", "--precision", "fp32",
            "--out", str(out), *extra]


# Expansion ---------------------------------------------------------------------------------------

def key(s):
    return (s.dataset, s.arch, s.seed, s.retrain_from, s.mode, s.n_bob)


def test_expand_default_counts():
    # L = 5 for the default cnn and mlp: 5 l x 2 modes + 1 scratch + 4 random-frozen = 15 per group
    specs = expand_sweep([0, 1], ["cnn", "mlp"], [0, 1])
    assert len(specs) == 2 * 2 * 2 * 15
    # resnet18 has L = 6: 12 + 1 + 5
    assert len(expand_sweep([0.5], ["resnet18"], [0])) == 18
    assert len(expand_sweep([0.5], ["mlp"], [0], **{"layers": [1, 3]}, n_bobs=[10, None])) == \
        2 * 2 * 2 + 2 + 1 * 2  # transfer + scratch per n_bob + random-frozen at l=3 per n_bob


@pytest.mark.parametrize("kwargs, per_group", [
    (dict(layers=[2, 5], modes=["finetune"], baselines=[], n_bobs=[100, None]), 4),
    (dict(layers=[1], baselines=["scratch"]), 3),
    (dict(layers=[1], baselines=["random-frozen"]), 2),  # no random-frozen at l = 1
    (dict(layers="all", modes=["reinit"], baselines=["random-frozen"]), 5 + 4),
    (dict(layers=[3], modes=[], baselines=["scratch"], n_bobs=[10, 20, None]), 3),
])
def test_expand_counts(kwargs, per_group):
    specs = expand_sweep([0, 0.5, 1], ["cnn"], [0, 1], **kwargs)
    assert len(specs) == 3 * 2 * per_group


def test_expand_order():
    specs = expand_sweep([1, 0], ["mlp", "cnn"], [3, 1], layers=[1, 2], n_bobs=[5, None], **{})
    groups = list(dict.fromkeys((s.dataset, s.arch, s.seed) for s in specs))
    assert groups == [(d, a, s) for d in ("beta-1", "beta-0") for a in ("mlp", "cnn") for s in (3, 1)]
    first = [(s.retrain_from, s.mode, s.n_bob) for s in specs if (s.dataset, s.arch, s.seed) == groups[0]]
    assert first == [(1, "finetune", 5), (1, "finetune", None), (1, "reinit", 5), (1, "reinit", None),
                     (2, "finetune", 5), (2, "finetune", None), (2, "reinit", 5), (2, "reinit", None),
                     (1, "scratch", 5), (1, "scratch", None),
                     (2, "random-frozen", 5), (2, "random-frozen", None)]
    assert [key(s) for s in specs] == [key(s) for s in expand_sweep([1, 0], ["mlp", "cnn"], [3, 1],
                                                                    layers=[1, 2], n_bobs=[5, None])]


def test_expand_duplicates_collapse():
    assert expand_sweep([0, 0.0], ["mlp", "mlp"], [0, 0], layers=[2, 2]) == \
        expand_sweep([0], ["mlp"], [0], layers=[2])


def test_run_ids_stable_and_distinct():
    specs = expand_sweep([0, 1], ["cnn", "mlp"], [0, 1], n_bobs=[100, None])
    ids = [s.run_id for s in specs]
    assert len(set(ids)) == len(ids)
    assert ids == [s.run_id for s in expand_sweep([0, 1], ["cnn", "mlp"], [0, 1], n_bobs=[100, None])]
    other = expand_sweep([0, 1], ["cnn", "mlp"], [0, 1], n_bobs=[100, None], bob=Training(epochs=3))
    assert not set(ids) & {s.run_id for s in other}
    # Pinned: an ID must not change between versions, machines or Python versions.
    spec = BobSpec(alice_id="a" * 12, dataset="mnist-svhn-b0.5-s0-0123456789ab", arch="cnn",
                   retrain_from=3, mode="finetune", n_bob=100, seed=1)
    assert spec.run_id == BobSpec(**spec.to_dict()).run_id == "1223bee9e541"
    assert spec.lr == 0.01 and BobSpec(**{**spec.to_dict(), "lr": 0.01}).run_id == spec.run_id


def test_computation_ids_equal_exactly_for_runs_that_compute_the_same():
    common = dict(dataset="d", arch="mlp", seed=0, **TINY)  # L = 3

    def cid(l, mode, alice="A", **kw):
        alice = alice if mode in ("finetune", "reinit") else ""
        return BobSpec(alice_id=alice, retrain_from=l, mode=mode, **{**common, **kw}).computation_id

    assert cid(1, "reinit") == cid(1, "scratch")  # every layer fresh and trained
    assert cid(1, "reinit", alice="B") == cid(1, "scratch")  # no layer comes from Alice
    assert cid(3, "finetune") == cid(3, "reinit")  # Alice's frozen 1..L-1, a fresh head
    distinct = [cid(1, "finetune"), cid(1, "reinit"), cid(2, "finetune"), cid(2, "reinit"),
                cid(2, "random-frozen"), cid(3, "finetune"), cid(3, "random-frozen"),
                cid(3, "finetune", alice="B"), cid(1, "reinit", seed=1), cid(1, "reinit", n_bob=9),
                cid(1, "reinit", epochs=2)]
    assert len(set(distinct)) == len(distinct)


def test_alice_ids():
    specs = expand_sweep([0, 1], ["mlp"], [0, 1], layers=[1, 2])
    for s in specs:
        assert (s.alice_id == "") == (s.mode in ("scratch", "random-frozen"))
    alice_ids = {(s.dataset, s.seed): s.alice_id for s in specs if s.alice_id}
    assert len(set(alice_ids.values())) == 4
    assert AliceSpec("beta-0", "mlp", seed=1).id == alice_ids["beta-0", 1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(betas=[1.5]), "beta"),
    (dict(archs=["vgg"]), "unknown architecture"),
    (dict(modes=["scratch"]), "unknown mode"),
    (dict(baselines=["reinit"]), "unknown baseline"),
    (dict(layers=[6]), "out of range"),
    (dict(layers=[0]), "positive"),
    (dict(n_bobs=[0]), "n-bob"),
    (dict(seeds=[-1]), "seed"),
    (dict(modes=[], baselines=[]), "nothing to run"),
])
def test_expand_rejects(kwargs, message):
    args = {"betas": [0], "archs": ["cnn"], "seeds": [0], **kwargs}
    with pytest.raises(EngineError, match=message):
        expand_sweep(**args)


# CLI ---------------------------------------------------------------------------------------------

def test_dry_run_prints_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(["sweep", "--pair", "mnist:svhn", "--betas", "0,0.25,0.5,0.75,1", "--layers", "all",
               "--seeds", "0,1,2", "--arch", "cnn,mlp", "--n-bob", "100,all", "--out", str(out),
               "--dry-run"])
    stdout = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert stdout[0] == f"{5 * 2 * 3 * 15 * 2} runs"
    assert "cnn seed=0 l=1 finetune n_bob=100" in stdout[1]
    assert stdout[-1].strip().startswith("... and")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("flags", [
    ["--betas", "0,1.5"], ["--betas", "0,x"], ["--betas", "0,,1"], ["--arch", "vgg"],
    ["--modes", "finetune,scratch"], ["--baselines", "foo"], ["--layers", "9"],
    ["--layers", "0"], ["--n-bob", "0"], ["--n-bob", "ten"], ["--seeds", "-1"],
    ["--device-budget-gb", "-1"], ["--pair", "mnist"], ["--pair", "mnist:nope"],
    ["--epochs", "0"], ["--lr", "-1"], ["--depth", "0"],
])
def test_bad_flags_one_line(flags, tmp_path, capsys):
    argv = ["sweep", "--pair", "mnist:svhn", "--betas", "0", "--arch", "mlp",
            "--out", str(tmp_path / "o"), "--dry-run"]
    for i in range(0, len(flags), 2):  # replace a flag given above, else append it
        if flags[i] in argv:
            argv[argv.index(flags[i]) + 1] = flags[i + 1]
        else:
            argv += flags[i:i + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("engine sweep: error: ") and err.count("\n") == 1, err


def test_argparse_errors_one_line(capsys):
    assert main(["sweep", "--pair", "mnist:svhn", "--betas", "0", "--epochs", "abc"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_bad_n_bob_for_dataset(tiny_pair, tmp_path, capsys):
    assert main(sweep_argv(tiny_pair, tmp_path / "o", "--n-bob", "100,513")) == 2
    assert "exceeds the 512 training samples" in capsys.readouterr().err


# Pre-training ------------------------------------------------------------------------------------

def test_pretrain_saves_epochs_and_reuses(tiny_pair, tmp_path, capsys):
    data = engine.build_data(tiny_pair, 1.0, n_train=256, n_test=128, out=tmp_path / "datasets")
    out = tmp_path / "sweep"
    argv = ["pretrain", "--data", str(data), "--arch", "mlp", "--depth", "2", "--width", "16",
            "--epochs", "2", "--save-epochs", "0,2", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    path = Path(capsys.readouterr().out.splitlines()[-1])
    spec = AliceSpec(dataset=data.name, arch="mlp", epochs=2, **TINY)
    assert path == paths.alice_checkpoint(out, spec.id)
    state, saved, metrics = load_checkpoint(path)
    assert saved["alice"] == spec.to_dict() and metrics["saved_epochs"] == [0, 2]
    assert 0 <= metrics["test_acc"] <= 1
    e0, _, m0 = load_checkpoint(paths.alice_epoch_checkpoint(out, spec.id, 0))
    e2, _, _ = load_checkpoint(paths.alice_epoch_checkpoint(out, spec.id, 2))
    assert m0["epoch"] == 0 and not torch.equal(e0["layers.0.1.weight"], state["layers.0.1.weight"])
    assert all(torch.equal(e2[k], state[k]) for k in state)
    stamp = path.stat().st_mtime_ns
    assert pretrain(data, spec, out, save_epochs=[2], device="cpu") == path
    assert path.stat().st_mtime_ns == stamp  # reused, not retrained
    assert main(argv[:-6] + ["--save-epochs", "3", "--out", str(out)]) == 2  # beyond --epochs
    assert "save-epochs" in capsys.readouterr().err


# Sweeps ------------------------------------------------------------------------------------------

def stored(out):
    return ResultsStore(out, read_only=True).table()


def test_interrupted_sweep_resumes_without_duplicates(tiny_pair, tmp_path, monkeypatch, capsys):
    import engine.sweep.executors as sweep
    out = tmp_path / "sweep"
    real_fit, calls = sweep.fit, []

    def flaky_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(sweep, "fit", flaky_fit)
    serial = ("--executor", "serial")
    assert main(sweep_argv(tiny_pair, out, *serial)) == 130
    # Four trainings finished: l = 1 finetune, l = 1 reinit (and scratch, which copies it),
    # l = 2 finetune, l = 2 reinit.
    assert len(stored(out)) == 5
    resumed = []
    monkeypatch.setattr(sweep, "fit", lambda *a, **k: resumed.append(1) or real_fit(*a, **k))
    capsys.readouterr()
    assert main(sweep_argv(tiny_pair, out, *serial)) == 0
    err = capsys.readouterr().err
    assert "18 runs: 5 already done, 13 to run" in err and "reusing Alice" in err
    df = stored(out)
    datasets = sorted(df["dataset"].unique())
    keys = {float(b): d for b, d in zip(sorted(df["beta"].unique()), datasets)}
    expected = expand_sweep([0, 1], ["mlp"], [0], datasets=keys, bob=Training(epochs=1),
                            alice=Training(epochs=1), **TINY)
    assert len(df) == 18 and df["run_id"].is_unique
    assert set(df["run_id"]) == {s.run_id for s in expected}
    assert (df["n_bob"] == 512).all() and (df["chance"] == 0.1).all() and (df["n_layers"] == 3).all()
    assert df.loc[df["alice_id"] == "", "alice_test_acc"].isna().all()
    assert df.loc[df["alice_id"] != "", "alice_test_acc"].between(0, 1).all()
    assert main(sweep_argv(tiny_pair, out, *serial)) == 0  # nothing left: no new rows
    assert len(stored(out)) == 18

    # Per beta, reinit at l = 1 and scratch, and finetune and reinit at l = L, trained once, also
    # across the resume (beta 0's reinit at l = 1 and its scratch copy were stored before).
    assert len(resumed) == 2 * 7 - 4  # 9 runs per beta, 7 trained; 4 stored before the kill
    reused = df[df["computed_by"] != ""]
    assert sorted(zip(reused["mode"], reused["retrain_from"])) == [("reinit", 3)] * 2 + \
        [("scratch", 1)] * 2
    metrics = ["test_acc", "test_loss", "train_acc", "train_loss", "wall_s"]
    by_id = df.set_index("run_id")
    for _, row in reused.iterrows():
        assert row[metrics].tolist() == by_id.loc[row["computed_by"], metrics].tolist()
    # A scratch run trained by itself gives the metrics its reused row recorded.
    alone = tmp_path / "alone"
    assert main(sweep_argv(tiny_pair, alone, "--modes", "finetune", "--layers", "1",
                           "--baselines", "scratch", *serial)) == 0
    trained = stored(alone).set_index("run_id")
    for run_id, row in reused[reused["mode"] == "scratch"].set_index("run_id").iterrows():
        assert trained.loc[run_id, "computed_by"] == ""
        assert trained.loc[run_id, metrics[:4]].tolist() == row[metrics[:4]].tolist()


ffcv_missing = not __import__("engine.data.ffcv_io").data.ffcv_io.available()


@pytest.mark.skipif(ffcv_missing, reason="FFCV is not importable")
def test_streaming_matches_device_data_and_runs_a_sweep(tiny_pair, tmp_path, capsys):
    from engine.train.alice import load_data
    from engine.train.stream import StreamData, channel_stats
    data = engine.build_data(tiny_pair, 0.5, n_train=300, n_test=100, out=tmp_path / "datasets")
    train, _ = load_data(data, torch.device("cpu"))
    stats = channel_stats(data / "train.beton")
    assert np.allclose(stats, train.stats, atol=1e-6)
    streamed = StreamData(data / "train.beton", stats=stats).subset(50, seed=3)
    labels = engine.data.beton.read_beton(data / "train.beton", ["bob_label"])["bob_label"]
    assert np.array_equal(labels[streamed.indices], train.subset(50, 3).labels["bob_label"].numpy())

    out = tmp_path / "sweep"
    argv = sweep_argv(tiny_pair, out, "--layers", "3", "--modes", "finetune", "--baselines",
                      "scratch", "--n-bob", "100,all", "--device-budget-gb", "1e-9")
    argv[argv.index("--betas") + 1] = "1"
    assert main(argv) == 0
    assert "streaming from disk with FFCV" in capsys.readouterr().err
    df = stored(out)
    assert len(df) == 4 and sorted(df["n_bob"]) == [100, 100, 512, 512]
    assert df["test_acc"].between(0, 1).all() and np.isfinite(df["train_loss"]).all()


def real_data_root() -> Path | None:
    root = Path(os.environ.get("ENGINE_DATA_ROOT", "data"))
    ok = all((root / d / "raw" / f"{s}-images-idx3-ubyte.gz").is_file()
             for d in ("MNIST", "FashionMNIST") for s in ("train", "t10k"))
    return root if ok else None


@pytest.mark.slow
@pytest.mark.skipif(real_data_root() is None, reason="MNIST/FashionMNIST not under ENGINE_DATA_ROOT")
def test_end_to_end_mnist_fashion_transfer_grows_with_beta(tmp_path, capsys):
    """Output-layer-only retraining (l = L) on Alice's frozen features: at beta = 1 Bob's label is
    a function of Alice's digit, at beta = 0 it is independent of it."""
    out = tmp_path / "sweep"
    argv = ["sweep", "--pair", "mnist:fashion", "--betas", "0,1", "--layers", "3",
            "--modes", "finetune", "--baselines", "none", "--arch", "mlp", "--depth", "2",
            "--width", "128", "--optimizer", "adam", "--epochs", "3", "--alice-epochs", "3",
            "--n-train", "3000", "--n-test", "1000", "--device", "cpu", "--out", str(out),
            "--data-root", str(real_data_root())]
    assert main(argv) == 0
    df = stored(out).set_index("beta")
    assert len(df) == 2 and (df["retrain_from"] == df["n_layers"]).all()
    assert (df["alice_test_acc"] > 0.8).all()
    acc = df["test_acc"]
    assert acc[1.0] > 0.8 and acc[1.0] - acc[0.0] > 0.2, acc.to_dict()
    capsys.readouterr()
    assert main(["results", str(out)]) == 0
    assert capsys.readouterr().out.strip()


def test_sweep_without_pair_sweeps_the_built_datasets(tiny_pair, tmp_path, monkeypatch, capsys):
    """`engine build-data ...` then `engine sweep --layers all`, as the project's usage line."""
    built = tmp_path / "built"
    monkeypatch.setenv("ENGINE_OUT", str(built))
    out = tmp_path / "sweep"
    argv = ["sweep", "--layers", "3", "--arch", "mlp", "--depth", "2", "--width", "16",
            "--epochs", "1", "--alice-epochs", "1", "--modes", "finetune", "--baselines", "none",
            "--device", "cpu", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "engine build-data" in err and "no built datasets" in err
    for beta in ("0", "0.5"):
        assert main(["build-data", "--pair", tiny_pair, "--beta", beta, "--n-train", "512",
                     "--n-test", "256"]) == 0
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"sweeping the datasets built under {built}" in err and "at beta 0, 0.5" in err
    df = stored(out)
    assert sorted(df["beta"]) == [0.0, 0.5] and set(df["dataset"]) == {d.name for d in built.iterdir() if d.is_dir()}
    assert not (out / "datasets").exists()  # reused where build-data wrote them
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["betas"] == [0.0, 0.5] and spec["n_train"] == 512


def test_batched_executor_records_what_the_serial_one_does(tiny_pair, tmp_path):
    """Same run IDs, same metrics within floating-point reassociation (one test sample of 256),
    copies and `computed_by` alike; the rows name their executor."""
    frames = {}
    for executor in ("serial", "batched"):
        out = tmp_path / executor
        assert main(sweep_argv(tiny_pair, out, "--seeds", "0,1", "--executor", executor)) == 0
        frames[executor] = stored(out).set_index("run_id").sort_index()
    serial, batched = frames["serial"], frames["batched"]
    assert list(serial.index) == list(batched.index) and len(serial) == 36
    assert (serial["executor"] == "serial").all() and (batched["executor"] == "batched").all()
    assert (serial["computed_by"] == batched["computed_by"]).all()
    assert np.allclose(serial["test_acc"], batched["test_acc"], atol=1 / 256 + 1e-9)
    assert np.allclose(serial["train_loss"], batched["train_loss"], rtol=1e-3, atol=1e-4)


def test_rows_name_the_device_a_run_trained_on(tiny_pair, tmp_path, monkeypatch):
    """An executor that trains elsewhere (Ray workers) reports each run's device; the row records
    it, not the driver's, and so do the copies of that run."""
    from engine.sweep import executors
    real = executors.EXECUTORS["serial"]

    class Remote(real):
        def map(self, units, ctx):
            for spec, metrics in super().map(units, ctx):
                yield spec, {**metrics, "device": "cuda:Remote GPU"}

    monkeypatch.setitem(executors.EXECUTORS, "serial", Remote)
    out = tmp_path / "sweep"
    assert main(sweep_argv(tiny_pair, out, "--executor", "serial")) == 0
    df = stored(out)
    assert len(df) == 18 and (df["computed_by"] != "").any()
    assert (df["device"] == "cuda:Remote GPU").all()


def test_up_front_check_counts_only_the_datasets_still_to_build(tiny_pair, tmp_path, monkeypatch,
                                                                capsys):
    """Datasets already built (however their sources were spelled) need no space; a dataset of
    another size is not built even if its pair and beta are."""
    from engine.data import resources
    out = tmp_path / "sweep"
    assert main(sweep_argv(tiny_pair, out, "--layers", "1", "--modes", "finetune",
                           "--baselines", "none")) == 0
    monkeypatch.setattr(resources, "free_bytes", lambda where: 0)  # a full disk
    monkeypatch.chdir(Path(tiny_pair.split(":")[1]).parent)
    relative = "npz:a.npz:npz:b.npz"
    capsys.readouterr()
    assert main(sweep_argv(relative, out, "--layers", "1,2", "--modes", "finetune",
                           "--baselines", "none")) == 0
    assert main(sweep_argv(relative, out, "--n-train", "500")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: sweep (2 datasets to build) would write" in err[-1] and \
        err[-1].endswith("free space"), err
