"""Neyshabur et al. 2020's and Mehra et al. 2023's claims (engine.studies.claims.neyshabur,
.neyshabur_nets, .mehra): per-seed effects on hand-made tables whose answer is known, then every
claim end to end through the runner at a tiny smoke scale on real MNIST:Fashion-MNIST runs,
checking that each effect is the one the stored rows and the evidence table give."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from engine import paths
from engine.studies.claims import mehra, neyshabur as ney, registry
from engine.studies.claims.effects import per_seed, rank_correlation, records
from engine.studies.claims.neyshabur_nets import paired_effects
from engine.studies.claims.base import Scale
from engine.studies.claims.scales import scale

PNG = b"\x89PNG\r\n\x1a\n"
IDS = tuple(i for i in registry() if i.startswith(("neyshabur-", "mehra-")))


# Hand-made tables --------------------------------------------------------------------------------

def _row(seed, mode, acc, block=0, l=1, arch="mlp"):
    return {"seed": seed, "arch": arch, "mode": mode, "retrain_from": l, "block_shuffle": block,
            "test_acc": acc}


def test_gain_is_finetune_minus_scratch_per_seed_and_block():
    rows = pd.DataFrame([_row(0, "finetune", 0.9), _row(0, "scratch", 0.7),
                         _row(0, "finetune", 0.6, block=1), _row(0, "scratch", 0.55, block=1),
                         _row(0, "finetune", 0.5, l=3)])  # another depth: not l = 1
    g = ney.gains(rows).set_index("block_shuffle")
    assert g.loc[0, "gain"] == pytest.approx(0.2) and g.loc[1, "gain"] == pytest.approx(0.05)


def test_shuffle_effect_is_the_unshuffled_gain_minus_the_smallest_blocks():
    g = pd.DataFrame({"seed": [0, 0, 0, 1, 1], "arch": "mlp", "block_shuffle": [4, 0, 1, 1, 0],
                      "gain": [0.1, 0.2, 0.05, 0.3, 0.1]})
    eff = ney.shuffle_effects(g).set_index("seed")["effect"]
    assert eff[0] == pytest.approx(0.15) and eff[1] == pytest.approx(-0.2)  # shrinks / grows
    assert math.isnan(ney.shuffle_effects(g[g["block_shuffle"] != 0])["effect"].iloc[0])


def test_early_effect_keeps_a_fraction_of_the_gain_and_drops_seeds_without_one():
    early = pd.DataFrame({"seed": [0, 1], "arch": "mlp", "gain": [0.08, 0.02]})
    full = pd.DataFrame({"seed": [0, 1], "arch": "mlp", "gain": [0.1, -0.01]})
    t = ney.early_effects(early, full).set_index("seed")
    assert t.loc[0, "effect"] == pytest.approx(0.08 - ney.EARLY_FRACTION * 0.1)
    assert math.isnan(t.loc[1, "effect"])


def test_per_seed_averages_archs_and_gives_nan_for_a_missing_seed():
    t = pd.DataFrame({"seed": [0, 0, 1], "arch": ["mlp", "cnn", "mlp"],
                      "effect": [1.0, 3.0, math.nan]})
    e = per_seed(t, "effect", (0, 1, 2))
    assert e[0] == 2.0 and math.isnan(e[1]) and math.isnan(e[2])


def test_rank_correlation_orders_infinity_last_and_gives_zero_for_no_order():
    assert rank_correlation([1, 2, 3, 4], [0, 0.5, 2, math.inf]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3], [math.inf, 1, 0]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 3], [0, 0, 0]) == 0.0
    assert math.isnan(rank_correlation([1, 1, 1], [0, 1, 2]))
    assert math.isnan(rank_correlation([1], [1]))


def test_paired_effect_is_scratch_minus_finetune_averaged_over_layers():
    t = pd.DataFrame({"seed": 0, "arch": "mlp", "mode": ["finetune", "finetune", "scratch"],
                      "v": [0.1, 0.3, 1.0]})
    assert paired_effects(t, "v")["effect"].iloc[0] == pytest.approx(0.8)


def test_records_are_plain_json_values():
    df = pd.DataFrame({"a": [np.int64(1)], "b": [np.float32(0.5)], "c": [math.inf]})
    r = records(df)
    assert r == ({"a": 1, "b": 0.5, "c": "inf"},)
    json.dumps(r, allow_nan=False)


def _bounds(**cols):
    return pd.DataFrame({"seed": 0, "arch": "mlp", **cols})


def test_mehra_effects_on_known_tables():
    t = _bounds(beta=[0.0, 0.5, 1.0], bound=[3.0, 2.0, 1.0], test_target_loss=[2.5, 1.9, 1.2],
                bob_test_loss=[2.0, 1.0, 0.5])
    assert mehra.valid_effects(t)["effect"].iloc[0] == pytest.approx(-0.2)  # beta 1 violates
    assert mehra.rank_effects(t)["effect"].iloc[0] == pytest.approx(1.0)
    flat = t.assign(bob_test_loss=1.0)
    assert math.isnan(mehra.rank_effects(flat)["effect"].iloc[0])
    both = _bounds(beta=[0.0, 0.0, 1.0, 1.0], mode=["fixed-all", "learned-all"] * 2,
                   bound=[4.0, 3.0, 2.0, 2.0])
    assert mehra.tighten_effects(both)["effect"].iloc[0] == pytest.approx((0.25 + 0.0) / 2)


def test_transferred_loss_with_identity_transforms_is_the_heads_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(4, 3).double()
    z, y = torch.randn(20, 4, generator=gen, dtype=torch.float64), torch.arange(20) % 3
    result = {"A": np.eye(4), "b": np.zeros(4), "label_map": np.eye(3)}
    want = float(torch.nn.functional.cross_entropy(head(z), y).detach())
    assert mehra.transferred_loss(result, head, z.numpy(), y.numpy()) == pytest.approx(want)
    # a feature map undone by A: the same loss on moved features
    a, b = 2 * np.eye(4), np.ones(4)
    moved = z.numpy() @ a.T + b
    assert mehra.transferred_loss({**result, "A": a, "b": b}, head, moved, y.numpy()) == \
        pytest.approx(want)


def test_claims_are_registered_with_their_rules_and_plannable_sweeps():
    for cid in IDS:
        c = registry()[cid]
        assert c.margin > 0 and c.rule and c.effect
    assert len(IDS) == 9
    for name in ("smoke", "small", "paper"):
        spec = ney.shuffle_sweep(scale(name))
        assert spec.block_shuffles[0] == 1 and spec.block_shuffles[-1] is None
        assert all(28 % b == 0 for b in spec.block_shuffles if b)  # divide the 28x56 image
        assert ney.early_sweep(scale(name)).alice.epochs == 1
        assert ney.speed_sweep(scale(name)).bob.epochs == 1


# End to end at smoke -----------------------------------------------------------------------------

# The smoke scale's branches (two block sizes, few bound steps), at the size of a unit test; Alice
# trains one epoch, so the early-checkpoint sweep is the full one.
TINY = Scale("smoke", seeds=2, n_train=200, n_test=100, epochs=1, alice_epochs=1,
             betas=(0.0, 1.0), archs=("mlp",), n_bobs=(None,), max_samples=100, minutes="")


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    root = paths.data_root()
    if not ((root / "MNIST" / "raw").is_dir() and (root / "FashionMNIST" / "raw").is_dir()):
        pytest.skip("MNIST and Fashion-MNIST are not under $ENGINE_DATA_ROOT")
    from engine.studies.claims import runner, select, stats
    out = tmp_path_factory.mktemp("reproduce")
    claims = select(list(IDS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        sweep_needs, _ = runner.needs(claims, TINY)
        runner.train_sweeps(out / "runs", sweep_needs.values(), executor="batched", device="cpu",
                            log=lambda m: None)
        evidence = runner.evaluate(out, claims, TINY, log=lambda m: None, reuse=False)
        again = runner.evaluate(out, claims, TINY, log=lambda m: None, reuse=False)
    verdicts = stats.judge({c: e.effects for c, e in evidence.items()},
                           {c.id: c.margin for c in claims})
    return out, {c: e.to_dict() for c, e in evidence.items()}, again, verdicts


def _evidence(done, cid) -> dict:
    return done[1][cid]


def _rows(done, spec):
    from engine.studies.claims.runner import _Rows
    return _Rows(paths.claims_runs(done[0]))(spec)


def test_every_claim_has_one_effect_per_seed_a_png_and_a_verdict_and_evaluates_again(reproduced):
    _, evidence, again, verdicts = reproduced
    for cid in IDS:
        ev = evidence[cid]
        assert len(ev["effects"]) == TINY.seeds, cid
        assert ev["figure"] and open(ev["figure"], "rb").read(8) == PNG, cid
        assert ev["numbers"] and ev["summary"] and "not evaluated" not in ev["summary"], cid
        assert verdicts[cid].verdict in ("supported", "contradicted", "inconclusive")
        # a second evaluation on the same root (cached bounds and networks) gives the same
        assert again[cid].effects == pytest.approx(ev["effects"], nan_ok=True), cid


def test_shuffle_and_early_effects_are_the_stored_rows(reproduced):
    sc = TINY
    rows = _rows(reproduced, ney.shuffle_sweep(sc))
    assert set(rows["block_shuffle"]) == {0, 1} and set(rows["beta"]) == {ney.BETA}
    for s in sc.seed_list:
        def acc(mode, blk, s=s):
            pick = (rows["seed"] == s) & (rows["mode"] == mode) & (rows["block_shuffle"] == blk)
            return float(rows.loc[pick, "test_acc"].iloc[0])
        want = (acc("finetune", 0) - acc("scratch", 0)) - (acc("finetune", 1) - acc("scratch", 1))
        assert _evidence(reproduced, "neyshabur-shuffle-gain")["effects"][s] == pytest.approx(want)
    speed = ney.gains(_rows(reproduced, ney.speed_sweep(sc)))
    assert set(_rows(reproduced, ney.speed_sweep(sc))["epochs"]) == {1}
    got = _evidence(reproduced, "neyshabur-shuffle-speed")["effects"]
    assert got == pytest.approx(list(speed.loc[speed["block_shuffle"] == 1, "gain"]))
    early = _evidence(reproduced, "neyshabur-early-checkpoints")
    for r in early["numbers"]:  # smoke: Alice's 1 epoch is her whole training, so equal gains
        assert r["gain_early"] == pytest.approx(r["gain_full"])


def test_network_effects_are_their_tables(reproduced):
    ev = _evidence(reproduced, "neyshabur-one-basin")
    t = pd.DataFrame(ev["numbers"])
    assert set(t["mode"]) == {"finetune", "scratch"} and (t["loss_barrier"] >= 0).all()
    for s, e in enumerate(ev["effects"]):
        b = t[t["seed"] == s].set_index("mode")["loss_barrier"]
        assert e == pytest.approx(b["scratch"] - b["finetune"])
    ev = _evidence(reproduced, "neyshabur-feature-similarity")
    t = pd.DataFrame(ev["numbers"])
    assert set(t["layer"]) == {1, 2, 3, 4, 5} and t["cka"].between(-1e-6, 1 + 1e-6).all()
    for s, e in enumerate(ev["effects"]):
        m = t[t["seed"] == s].groupby("mode")["cka"].mean()
        assert e == pytest.approx(m["finetune"] - m["scratch"])
    ev = _evidence(reproduced, "neyshabur-criticality")
    t = pd.DataFrame(ev["numbers"])
    for s, e in enumerate(ev["effects"]):
        g = t[t["seed"] == s]
        mu = [math.inf if v == "inf" else float(v) for v in g["criticality"]]
        assert e == pytest.approx(rank_correlation(g["layer"], mu))


def test_bob_networks_are_the_trained_ones_whatever_their_precision(reproduced):
    """artifacts.bob_model returns the network run_bob trained, also for a spec that records a
    precision (the runner's on CPUs where bf16 pays): its test accuracy is the recorded one."""
    from engine.analysis import artifacts as art
    from engine.train.trainer import evaluate
    root = paths.claims_runs(reproduced[0])
    rows = _rows(reproduced, ney.whole(TINY))
    row = rows[rows["mode"] == "finetune"].iloc[0]
    spec = dataclasses.replace(art.run_spec(row), precision="fp32")
    model, metrics = art.bob_model(root, spec=spec)
    test = art.dataset(root, spec.dataset)[1]
    assert evaluate(model, test, "bob_label", precision="fp32")[0] == \
        pytest.approx(metrics["test_acc"])


def test_mehra_effects_are_their_tables(reproduced):
    ev = _evidence(reproduced, "mehra-bound-valid")
    t = pd.DataFrame(ev["numbers"])
    assert set(t["beta"]) == set(TINY.betas)
    assert (t["bound"] >= t["target_loss"] - 1e-9).all()  # on its own samples, by construction
    for s, e in enumerate(ev["effects"]):
        g = t[t["seed"] == s]
        assert e == pytest.approx((g["bound"] - g["test_target_loss"]).min())
    ev = _evidence(reproduced, "mehra-bound-ranks")
    t = pd.DataFrame(ev["numbers"])
    for s, e in enumerate(ev["effects"]):
        g = t[t["seed"] == s]
        assert e == pytest.approx(rank_correlation(g["bob_test_loss"], g["bound"]), nan_ok=True)
    heads = _rows(reproduced, mehra.needs(TINY)[0])
    heads = heads[(heads["retrain_from"] == heads["n_layers"]) & (heads["mode"] == "finetune")
                  & (heads["n_bob"] == heads["n_bob"].max())]
    assert sorted(t["bob_test_loss"]) == pytest.approx(sorted(heads["test_loss"]))
    ev = _evidence(reproduced, "mehra-transforms-tighten")
    t = pd.DataFrame(ev["numbers"])
    assert (t["learned-all"] <= t["fixed-all"] + 1e-9).all()  # identity is a candidate
    for s, e in enumerate(ev["effects"]):
        g = t[t["seed"] == s]
        assert e == pytest.approx(((g["fixed-all"] - g["learned-all"]) / g["fixed-all"]).mean())


def test_claims_without_stored_runs_say_so_in_one_line(tmp_path):
    """A claim evaluated before its runs exist raises EngineError, which the runner reports as
    'not evaluated' (and retries next time) instead of failing the whole command."""
    from engine.errors import EngineError
    from engine.studies.claims.base import Context
    empty = pd.DataFrame(columns=["run_id", "seed", "arch", "mode", "retrain_from", "block_shuffle",
                                  "test_acc", "n_layers", "n_bob", "alice_id"])
    ctx = Context(out=tmp_path, root=tmp_path / "runs", scale=TINY, claim_id="x",
                  log=lambda m: None, rows=lambda spec: empty, study=lambda s: tmp_path)
    for cid in IDS:
        with pytest.raises(EngineError, match="no stored runs"):
            registry()[cid].evaluate(ctx)
