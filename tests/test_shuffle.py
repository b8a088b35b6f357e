"""Block shuffling (Neyshabur et al. 2020): kernels vs NumPy twin, build-data --block-shuffle, the
results column and a sweep over block sizes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine.data import beton
from engine.cli import main
from engine.errors import EngineError
from engine.kernels.shuffle import (block_index, block_permutation, block_permutation_draws,
                                    shuffle_blocks,
                                    shuffle_blocks_numpy, shuffle_page, unshuffle, valid_blocks)
from engine.store import COLUMNS, SCHEMA, ResultsStore

REAL = Path(os.environ.get("ENGINE_DATA_ROOT", "/nonexistent"))
HAS_REAL = (REAL / "MNIST" / "raw").is_dir() and (REAL / "FashionMNIST" / "raw").is_dir()
SHAPES = [(28, 56, 1), (32, 64, 3), (8, 8, 3), (6, 10, 1), (12, 18, 3)]


def _images(shape, n=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


# Kernels ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_match_numpy_twin_and_invert(shape):
    x = _images(shape)
    for block in valid_blocks(shape[0], shape[1]):
        if (shape[0] // block) * (shape[1] // block) < 2:
            continue  # one block: nothing to shuffle (refused by block_permutation)
        perm = block_permutation(shape[0], shape[1], block, seed=5)
        got = shuffle_blocks(x, block, perm)
        np.testing.assert_array_equal(got, shuffle_blocks_numpy(x, block, perm))
        # a permutation of each image's pixels: sorted pixels unchanged
        np.testing.assert_array_equal(np.sort(got.reshape(len(x), -1, shape[2]), axis=1),
                                      np.sort(x.reshape(len(x), -1, shape[2]), axis=1))
        np.testing.assert_array_equal(unshuffle(got, block, perm), x)
        # the page kernel, in place on samples back to back; bytes after them are untouched
        buf = np.concatenate([x.reshape(-1), np.full(13, 0xAB, np.uint8)])
        shuffle_page(buf, len(x), block_index(shape, block, perm))
        np.testing.assert_array_equal(buf[:x.size].reshape(x.shape), got)
        assert (buf[x.size:] == 0xAB).all()


def test_blocks_move_whole():
    x = _images((8, 12, 3), n=2)
    perm = block_permutation(8, 12, 4, seed=1)  # a 2 x 3 grid of 4x4 blocks
    got = shuffle_blocks(x, 4, perm)
    for j, p in enumerate(perm):  # output block j is input block perm[j]
        dst = got[:, 4 * (j // 3):4 * (j // 3) + 4, 4 * (j % 3):4 * (j % 3) + 4]
        src = x[:, 4 * (p // 3):4 * (p // 3) + 4, 4 * (p % 3):4 * (p % 3) + 4]
        np.testing.assert_array_equal(dst, src)


def test_identity_cases_and_permutation_draws():
    x = _images((8, 8, 3))
    with pytest.raises(ValueError, match="one block"):  # nothing to shuffle: refused
        block_permutation(8, 8, 8, seed=3)
    np.testing.assert_array_equal(shuffle_blocks(x, 8, np.arange(1)), x)
    # two blocks: seed 0's first draw is the identity; it is redrawn into the swap
    assert np.random.default_rng(0).permutation(2).tolist() == [0, 1]
    assert block_permutation(28, 56, 28, seed=0).tolist() == [1, 0]
    for seed in range(20):  # never the identity, and a first draw that moves blocks is kept
        perm, draws = block_permutation_draws(28, 56, 28, seed)
        assert perm.tolist() == [1, 0]
        first = np.random.default_rng(seed).permutation(2).tolist()
        assert (draws == 1) == (first == [1, 0])
    np.testing.assert_array_equal(shuffle_blocks(x, 2, np.arange(16)), x)
    pixel = block_permutation(28, 56, 1, seed=0)
    assert sorted(pixel) == list(range(28 * 56))
    assert pixel.tolist() == np.random.default_rng(0).permutation(28 * 56).tolist()
    assert (block_permutation(28, 56, 1, seed=1) != pixel).any()
    assert not np.array_equal(shuffle_blocks(_images((28, 56, 1)), 1, pixel), _images((28, 56, 1)))


@pytest.mark.parametrize("block", [3, 5, 0, -2, 57, 2.0])
def test_block_not_dividing_is_an_error(block):
    with pytest.raises(ValueError, match="valid block sizes: 1, 2, 4, 7, 14, 28"):
        block_permutation(28, 56, block, seed=0)
    with pytest.raises(ValueError, match="valid block sizes"):
        shuffle_blocks(_images((28, 56, 1)), block, np.arange(2))


# build-data --------------------------------------------------------------------------------------

def _npz(path: Path, side: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 300), ("test", 100)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(n) % 10
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def npz_pair(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("shuffle_sources")
    return f"npz:{_npz(d / 'a.npz', 8, 0)}:npz:{_npz(d / 'b.npz', 8, 1)}"


def _sources(kind, npz_pair):
    if kind == "real":
        if not HAS_REAL:
            pytest.skip("real MNIST and Fashion-MNIST not under ENGINE_DATA_ROOT")
        return "mnist:fashion", dict(n_train=3000, n_test=500, data_root=REAL), 4
    return npz_pair, dict(n_train=500, n_test=200), 2


@pytest.mark.parametrize("kind", ["real", "npz"])
def test_build_shuffles_every_image_with_one_recorded_permutation(kind, npz_pair, tmp_path, capsys):
    pair, kw, block = _sources(kind, npz_pair)
    plain = engine.build_data(pair, 0.5, seed=4, out=tmp_path, **kw)
    shuffled = engine.build_data(pair, 0.5, seed=4, out=tmp_path, block_shuffle=block, **kw)
    assert shuffled != plain and f"-blk{block}-" in shuffled.name
    manifest = json.loads((shuffled / "manifest.json").read_text())
    info = manifest["block_shuffle"]
    h, w, _ = manifest["image_shape"]
    assert info["block"] == block and info["seed"] == 4 and manifest["spec"]["block_shuffle"] == block
    assert info["permutation"] == block_permutation(h, w, block, 4).tolist()
    plain_manifest = json.loads((plain / "manifest.json").read_text())
    assert plain_manifest["block_shuffle"] is None and "block_shuffle" not in plain_manifest["spec"]
    perm = np.array(info["permutation"])
    for split in ("train", "test"):
        a, b = (beton.read_beton(d / f"{split}.beton") for d in (plain, shuffled))
        np.testing.assert_array_equal(b.pop("image"), shuffle_blocks(a.pop("image"), block, perm))
        for name in a:  # pairing and labels do not depend on the shuffle
            np.testing.assert_array_equal(a[name], b[name])
    # reused when asked again; --pixel-shuffle is block size 1
    assert engine.build_data(pair, 0.5, seed=4, out=tmp_path, block_shuffle=block, **kw) == shuffled
    if kind == "npz":
        pixel = engine.build_data(pair, 0.5, seed=4, out=tmp_path, block_shuffle=1, **kw)
        args = ["build-data", "--pair", pair, "--beta", "0.5", "--seed", "4", "--n-train", "500",
                "--n-test", "200", "--out", str(tmp_path), "--pixel-shuffle"]
        capsys.readouterr()
        assert main(args) == 0
        assert capsys.readouterr().out.strip() == str(pixel) and "-blk1-" in pixel.name


def test_unshuffled_key_is_unchanged_by_the_new_field():
    from engine.spec import DataSpec
    spec = DataSpec("mnist", "fashion", 0.5, 0, 100, 10)
    assert spec.key == "mnist-fashion-b0.5-s0-a5c34fe2e556"  # the key before block_shuffle existed
    assert DataSpec("mnist", "fashion", 0.5, 0, 100, 10, block_shuffle=1).key != spec.key


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True)


@pytest.mark.parametrize("flags,needles", [
    (["--block-shuffle", "3"], ["block size 3", "valid block sizes: 1, 2, 4, 8"]),
    (["--block-shuffle", "0"], ["--block-shuffle", "positive"]),
    (["--block-shuffle", "x"], ["--block-shuffle"]),
    (["--block-shuffle", "2", "--pixel-shuffle"], ["not allowed"]),
])
def test_cli_bad_block_one_line_error(npz_pair, tmp_path, flags, needles):
    result = _cli("build-data", "--pair", npz_pair, "--beta", "0.5", "--out", str(tmp_path / "o"),
                  *flags)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# Results store -----------------------------------------------------------------------------------

def _row(i, **extra):
    return {"run_id": f"r{i}", "dataset": "d", "pair": "a:b", "beta": 0.5, "arch": "mlp",
            "seed": 0, "retrain_from": 1, "n_layers": 3, "mode": "scratch", "n_bob": 10,
            "epochs": 1, "optimizer": "sgd", "lr": 0.1, "batch_size": 8, "test_acc": 0.5,
            "test_loss": 1.0, "train_acc": 0.5, "train_loss": 1.0, "chance": 0.1, "wall_s": 1.0,
            "samples_per_s": 1.0, "device": "cpu", "spec_json": "{}", **extra}


def test_store_reads_parts_and_log_lines_from_before_the_column(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    old = pa.schema([f for f in SCHEMA if f.name != "block_shuffle"])
    from engine.store import validate
    rows = [{k: v for k, v in validate(_row(0)).items() if k != "block_shuffle"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=old), results / "part-old.parquet")
    (results / "_runs.jsonl").write_text(json.dumps(rows[0] | {"run_id": "r1"}) + "\n")
    with ResultsStore(tmp_path) as store:
        store.record(_row(2, block_shuffle=4))
        df = store.table()
    assert list(df.columns) == list(COLUMNS) and df["block_shuffle"].dtype == "int64"
    assert dict(zip(df["run_id"], df["block_shuffle"])) == {"r0": 0, "r1": 0, "r2": 4}
    assert len(pd.read_parquet(results)) == 3  # old part, recovered log line, new row


# Sweep -------------------------------------------------------------------------------------------

def _sweep_argv(pair, out, *extra):
    return ["sweep", "--pair", pair, "--betas", "1", "--seeds", "0", "--arch", "mlp", "--depth",
            "2", "--width", "16", "--layers", "3", "--modes", "finetune", "--baselines", "scratch",
            "--epochs", "1", "--alice-epochs", "1", "--n-train", "256", "--n-test", "128",
            "--device", "cpu", "--out", str(out), *extra]


def test_sweep_over_block_sizes(npz_pair, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(_sweep_argv(npz_pair, out, "--block-shuffle", "2,none", "--dry-run")) == 0
    assert capsys.readouterr().out.startswith("4 runs")
    assert main(_sweep_argv(npz_pair, out, "--block-shuffle", "3,none")) == 2
    assert "valid block sizes: 1, 2, 4, 8" in capsys.readouterr().err
    assert not out.exists()  # rejected before anything was built
    assert main(_sweep_argv(npz_pair, out, "--block-shuffle", "2,none")) == 0
    df = ResultsStore(out, read_only=True).table()
    assert sorted(zip(df["block_shuffle"], df["mode"])) == [
        (0, "finetune"), (0, "scratch"), (2, "finetune"), (2, "scratch")]
    assert df.loc[df["block_shuffle"] == 2, "dataset"].str.contains("-blk2-").all()
    assert df["alice_id"].replace("", None).dropna().nunique() == 1  # Alice: the unshuffled data
    capsys.readouterr()
    assert main(["results", str(out)]) == 0
    table = capsys.readouterr().out
    assert "block shuffle none  mode finetune" in table and "block shuffle 2x2  mode scratch" in table
    assert main(["report", str(out)]) == 0
    written = capsys.readouterr().out
    assert "acc_vs_block_" in written and "_blk2" in written and "_blknone" in written
    summary = (out / "report" / "summary.md").read_text()
    assert "block shuffle: none, 2x2" in summary and "best Alice-based minus scratch" in summary


def test_parse_block_shuffles():
    from engine.sweep.parse import parse_block_shuffles
    assert parse_block_shuffles("1,2,4,7,14,28,none") == [1, 2, 4, 7, 14, 28, None]
    assert parse_block_shuffles("none,NONE,4,4") == [None, 4]
    for bad in ("0", "x", "2,,4", "-1"):
        with pytest.raises(EngineError, match="block-shuffle"):
            parse_block_shuffles(bad)
