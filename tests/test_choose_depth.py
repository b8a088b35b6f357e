"""Depth predictors (engine.analysis.depth): each on hand-made tasks whose answer is known, the
scoring on synthetic curves, the cost accounting, the one-line errors, and `engine analyze
choose-depth` + `engine choose-depth` end to end on a tiny real sweep (MNIST:Fashion-MNIST subsets,
mlp with L = 3, betas 0 and 1, one seed)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from engine import paths
from engine.analysis.depth import registry, scoring
from engine.analysis.depth.cost import layer_flops, run_flops, sweep_flops
from engine.analysis.depth.task import Budget, Task, choose, run_predictor
from engine.cli import main
from engine.errors import EngineError
from engine.store import read_analysis
from engine.train.device import DeviceData
from engine.train.models import build_model

D, N, C = 32, 400, 4


# Hand-made tasks ---------------------------------------------------------------------------------

def _xor_alice(offset: int):
    """An mlp (L = 3) whose layer-2 output makes a linear head perfect on the labels
    2 * [x_o x_(o+1) > 0] + [x_(o+2) x_(o+3) > 0] (o = offset), while its input and layer-1 output
    cannot (each bit is an XOR of signs): layer 1 = relu(+-x_i), layer 2 = relu(+-(x_i +- x_j)),
    and the head reads |x_i + x_j| - |x_i - x_j|, whose sign is that of x_i x_j."""
    model = build_model("mlp", (1, D, 1), C, depth=2, width=8)
    w1 = torch.zeros(8, D)
    for i in range(4):
        w1[2 * i, offset + i], w1[2 * i + 1, offset + i] = 1.0, -1.0
    w2 = torch.zeros(8, 8)
    for pair in range(2):
        a, b = 4 * pair, 4 * pair + 2   # columns of x_i (+, -) and x_j (+, -) in layer 1
        plus = torch.zeros(8)
        plus[a], plus[a + 1], plus[b], plus[b + 1] = 1, -1, 1, -1
        minus = plus.clone()
        minus[b], minus[b + 1] = -1, 1
        w2[4 * pair], w2[4 * pair + 1] = plus, -plus
        w2[4 * pair + 2], w2[4 * pair + 3] = minus, -minus
    head = torch.zeros(C, 8)
    for c in range(C):
        s1, s2 = (1.0 if c & 2 else -1.0), (1.0 if c & 1 else -1.0)
        head[c] = 5 * torch.tensor([s1, s1, -s1, -s1, s2, s2, -s2, -s2])
    with torch.no_grad():
        for layer, w in ((model.layers[0][1], w1), (model.layers[1][0], w2), (model.layers[2], head)):
            layer.weight.copy_(w)
            layer.bias.zero_()
    return model.eval()


def _xor_labels(x: np.ndarray, offset: int) -> np.ndarray:
    o = offset
    return (2 * (x[:, o] * x[:, o + 1] > 0) + (x[:, o + 2] * x[:, o + 3] > 0)).astype(np.int64)


def _task(kind: str) -> Task:
    """"perfect": Bob's labels are the XOR bits Alice's layer 2 exposes, so the head alone is
    perfect and the input is not linearly separable; "unrelated": Alice computes those bits of
    input coordinates 16..19 (noise for Bob), and Bob's label is the largest of x_0..x_3, which
    the input separates linearly."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    if kind == "perfect":
        alice, y = _xor_alice(0), _xor_labels(x, 0)
    else:
        alice, y = _xor_alice(16), np.argmax(x[:, :4], 1).astype(np.int64)
    data = DeviceData.from_features(x, {"bob_label": y, "alice_label": _xor_labels(x, 0 if kind == "perfect" else 16)}, "cpu")
    return Task(alice, data, C, Budget(epochs=30, optimizer="adam", lr=0.01, batch_size=64),
                seed=0, source=data)


@pytest.fixture(scope="module")
def tasks():
    return {kind: _task(kind) for kind in ("perfect", "unrelated")}


def test_hand_made_alices_are_what_they_claim(tasks):
    t = tasks["perfect"]
    logits = t.alice(t.data.inputs(slice(None)))
    assert (logits.argmax(1).numpy() == t.labels).mean() == 1.0
    u = tasks["unrelated"]
    acc = (u.alice(u.data.inputs(slice(None))).argmax(1).numpy() == u.labels).mean()
    assert acc < 0.4


def test_the_constant_baselines_pick_their_depth_for_free(tasks):
    for name, want in (("retrain-all", 1), ("head-only", 3)):
        for t in tasks.values():
            scores, cost = run_predictor(registry.PREDICTORS[name], t)
            assert choose(scores) == want and cost.flops == 0


@pytest.mark.parametrize("name", [n for n in registry.PREDICTORS if n not in registry.BASELINES])
def test_predictor_on_known_answers(tasks, name):
    fn = registry.PREDICTORS[name]
    for kind, want in (("perfect", 3), ("unrelated", 1)):
        scores, cost = run_predictor(fn, tasks[kind])
        assert scores.shape == (3,)
        assert choose(scores) == want, (name, kind, scores)
        assert cost.wall_s > 0 and cost.flops > 0


# Scoring -----------------------------------------------------------------------------------------

def test_choose_takes_the_deepest_of_ties_and_skips_nan():
    assert choose([1.0, 1.0, 0.0]) == 2
    assert choose([np.nan, 0.5, np.nan]) == 2
    assert choose([np.nan] * 3) == 0


def test_group_metrics_on_synthetic_curves():
    curve = [0.5, 0.7, 0.6]
    m = scoring.group_metrics([0.0, 1.0, 0.5], curve)
    assert (m["chosen_depth"], m["best_depth"], m["hit"], m["within_one"]) == (2, 2, 1.0, 1.0)
    assert m["regret"] == 0 and m["spearman"] == pytest.approx(1.0)
    m = scoring.group_metrics([1.0, 0.0, 0.5], curve)
    assert (m["chosen_depth"], m["hit"], m["within_one"]) == (1, 0.0, 1.0)
    assert m["regret"] == pytest.approx(20.0) and m["spearman"] == pytest.approx(-1.0)
    m = scoring.group_metrics([0.0, 0.1, 0.2, 0.3], [0.9, 0.5, 0.5, 0.4])
    assert (m["within_one"], m["regret"]) == (0.0, pytest.approx(50.0))
    # ties in the truth: any best depth is a hit
    assert scoring.group_metrics([0, 0, 1], [0.6, 0.8, 0.8])["hit"] == 1.0


def test_summary_intervals_and_pooling():
    rng = np.random.default_rng(1)
    rows = [{"predictor": p, "arch": a, "spearman": rng.uniform(-1, 1), "hit": float(h),
             "within_one": 1.0, "regret": r, "cost_fraction": 0.05, "flops_fraction": 0.01}
            for p in ("a", "b") for a in ("mlp", "cnn")
            for h, r in zip(rng.integers(0, 2, 20), rng.exponential(2, 20))]
    s = scoring.summarize(pd.DataFrame(rows))
    assert set(s["arch"]) == {"mlp", "cnn", "pooled"} and len(s) == 6
    pooled = s[(s["predictor"] == "a") & (s["arch"] == "pooled")].iloc[0]
    assert pooled["groups"] == 40
    assert pooled["regret_lo"] <= pooled["regret"] <= pooled["regret_hi"]
    assert pooled["regret"] == pytest.approx(np.median([r["regret"] for r in rows
                                                        if r["predictor"] == "a"]))
    assert len(scoring.table(s)) == 6


def test_truth_curves_need_a_complete_curve():
    base = {"pair": "mnist:fashion", "beta": 0.0, "arch": "mlp", "alice_id": "a", "n_bob": 100,
            "seed": 0, "dataset": "d", "n_layers": 3, "mode": "finetune", "wall_s": 1.0,
            "epochs": 1, "spec_json": "{}"}
    runs = pd.DataFrame([{**base, "retrain_from": l, "test_acc": a}
                         for l, a in ((1, 0.5), (3, 0.7))])
    with pytest.raises(EngineError, match="no complete depth curve"):
        scoring.truth_curves(runs)
    full = pd.concat([runs, pd.DataFrame([{**base, "retrain_from": 2, "test_acc": 0.9}])])
    (g,) = scoring.truth_curves(full)
    assert list(g["curve"]) == [0.5, 0.9, 0.7] and g["wall_s"] == 3.0


# Cost accounting ---------------------------------------------------------------------------------

def test_layer_flops_and_run_flops():
    model = build_model("mlp", (1, D, 1), C, depth=2, width=8)
    fwd = layer_flops(model, (1, D, 1))
    assert fwd == [2.0 * D * 8, 2.0 * 8 * 8, 2.0 * 8 * C]
    # l = 2, 100 samples, 3 epochs, 50 test samples: layer 1 once, layers 2..3 3x per epoch
    assert run_flops(fwd, 2, 100, 3, 50) == 100 * fwd[0] + 3 * 3 * 100 * (fwd[1] + fwd[2]) \
        + 50 * sum(fwd)
    assert sweep_flops(fwd, 100, 3, 50) == sum(run_flops(fwd, l, 100, 3, 50) for l in (1, 2, 3))


def test_shared_features_are_charged_to_their_readers(tasks):
    t = tasks["perfect"]
    _, reads = run_predictor(registry.PREDICTORS["logme"], t)
    _, blind = run_predictor(lambda task: np.zeros(task.L), t)
    assert blind.flops == 0
    assert reads.flops >= t.feature_cost.flops == N * sum(t.fwd) > 0
    assert reads.wall_s >= t.feature_cost.wall_s


# End to end on a tiny real sweep -----------------------------------------------------------------

SWEEP = ["--pair", "mnist:fashion", "--betas", "0,1", "--seeds", "0", "--arch", "mlp",
         "--depth", "2", "--width", "32", "--epochs", "2", "--alice-epochs", "1",
         "--n-train", "1000", "--n-test", "300", "--n-bob", "200", "--modes", "finetune",
         "--baselines", "none", "--device", "cpu"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = paths.data_root()
    if not ((root / "MNIST" / "raw").is_dir() and (root / "FashionMNIST" / "raw").is_dir()):
        pytest.skip("MNIST and Fashion-MNIST are not under $ENGINE_DATA_ROOT")
    out = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        assert main(["sweep", *SWEEP, "--out", str(out)]) == 0
    return out


def _stored_curves(out) -> dict:
    from engine.analysis.artifacts import sweep_runs
    runs = sweep_runs(out)
    return {(a, n): g.set_index("retrain_from")["test_acc"].sort_index().to_numpy()
            for (a, n), g in runs.groupby(["alice_id", "n_bob"])}


def test_analyze_choose_depth_on_a_real_sweep(sweep, monkeypatch, capsys):
    curves = _stored_curves(sweep)
    # an oracle that reads the measured curve must score perfectly: regret 0, every pick a hit
    oracle = lambda task: curves[(task.alice_id, task.n)]  # noqa: E731
    monkeypatch.setitem(registry.PREDICTORS, "oracle", oracle)
    assert main(["analyze", "choose-depth", str(sweep), "--predictor",
                 "oracle,probe,correlation,logme"]) == 0
    printed = capsys.readouterr().out.split()
    png = paths.analysis_dir(sweep) / "choose-depth.png"
    assert str(png) in printed and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = read_analysis(sweep, "choose-depth")
    groups = df[df["level"] == "group"]
    assert len(groups) == 4 * len(curves)
    for _, r in groups.iterrows():
        truth = curves[(r["alice_id"], r["n_bob"])]
        assert json.loads(r["truth"]) == pytest.approx(list(truth), abs=1e-6)
        assert r["best_depth"] == np.flatnonzero(truth == truth.max())[-1] + 1
        assert 0 < r["cost_fraction"] and (r["predictor"] == "oracle" or 0 < r["flops_fraction"])
        assert {"pair", "beta", "arch", "alice_id", "n_bob", "chosen_depth", "regret"} <= set(r.index)
    o = groups[groups["predictor"] == "oracle"]
    assert (o["regret"] == 0).all() and (o["hit"] == 1).all()
    summary = df[df["level"] == "summary"]
    assert {"predictor", "arch", "groups", "spearman", "hit_rate", "within_one", "regret",
            "cost_fraction"} <= set(summary.columns)
    assert set(summary["arch"]) == {"mlp", "pooled"}
    assert summary.set_index(["predictor", "arch"]).loc[("oracle", "pooled"), "regret"] == 0


def test_choose_depth_command(sweep, capsys):
    from engine.analysis.artifacts import sweep_runs
    runs = sweep_runs(sweep)
    r = runs.iloc[0]
    data = paths.dataset_dir(paths.sweep_datasets(sweep), r["dataset"])
    alice = paths.alice_dir(sweep, r["alice_id"])
    argv = ["choose-depth", "--data", str(data), "--alice", str(alice), "--n-bob", "100"]
    assert main([*argv, "--predictor", "correlation", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert 1 <= answer["depth"] <= 3 and len(answer["scores"]) == 3
    assert answer["depth"] == choose(answer["scores"])
    assert main([*argv, "--predictor", "probe", "--evaluations", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "recommended retrain-from depth" in out and "track record" in out


@pytest.mark.parametrize("extra, message", [
    (["--n-bob", "5000"], "is larger than the training split"),
    (["--arch", "cnn"], "is a mlp, not a cnn"),
    (["--predictor", "nope"], "unknown predictor"),
])
def test_choose_depth_errors_are_one_line(sweep, capsys, extra, message):
    runs = __import__("engine.analysis.artifacts", fromlist=["x"]).sweep_runs(sweep)
    r = runs.iloc[0]
    data = paths.dataset_dir(paths.sweep_datasets(sweep), r["dataset"])
    argv = ["choose-depth", "--data", str(data), "--alice",
            str(paths.alice_checkpoint(sweep, r["alice_id"])), "--n-bob", "100"]
    argv = argv[:-2] + extra if extra[0] == "--n-bob" else argv + extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_no_complete_curve_is_one_line(sweep, tmp_path, capsys):
    partial = tmp_path / "partial"
    args = [a for a in SWEEP]
    args[args.index("0,1")] = "1"
    assert main(["sweep", *args, "--layers", "1,3", "--out", str(partial)]) == 0
    capsys.readouterr()
    assert main(["analyze", "choose-depth", str(partial)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no complete depth curve" in err
