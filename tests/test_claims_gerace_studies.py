"""Gerace et al.'s claims and Mohamud & Brink's study claims (engine.studies.claims.gerace,
gerace_select, mb_studies) and the study runners (engine.studies.claims.studies): the per-seed
effects on hand-made tables whose answer is known, and every claim end to end on a tiny real
sweep and tiny studies through the runner, its effects recomputed from what is stored."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.studies.claims import gerace, gerace_select, mb_studies, runner, select, stats, sweeps
from engine.studies.claims.base import Scale
from engine.studies.claims.studies import TOY_COLUMNS, angle, toy_file

PNG = b"\x89PNG\r\n\x1a\n"
DATA = Path(os.environ.get("ENGINE_DATA_ROOT", "/work/shared/data"))
IDS = ("mb-toy-rotation", "mb-semantic-photos", "gerace-depth-vs-data",
       "gerace-depth-vs-similarity", "gerace-source-selection")


# Effects on hand-made tables ---------------------------------------------------------------------

def _runs(best: dict, mode: str = "reinit", L: int = 5) -> pd.DataFrame:
    """Rows with the highest accuracy at best[(seed, beta, n_bob)] (a depth or a tuple of tied
    depths) and lower accuracies elsewhere."""
    rows = []
    for (seed, beta, n), top in best.items():
        top = top if isinstance(top, tuple) else (top,)
        for l in range(1, L + 1):
            rows.append({"seed": seed, "arch": "mlp", "beta": beta, "n_bob": n, "mode": mode,
                         "retrain_from": l, "n_layers": L,
                         "test_acc": 0.9 if l in top else 0.5 + 0.01 * l})
    return pd.DataFrame(rows)


def test_best_depth_moves_with_the_budget_and_the_similarity():
    best = {(0, 0.0, 100): 5, (0, 0.0, 400): 3, (0, 1.0, 100): 5, (0, 1.0, 400): 4,
            (1, 0.0, 100): (2, 4), (1, 0.0, 400): 3, (1, 1.0, 100): 4, (1, 1.0, 400): 4}
    df = pd.concat([_runs(best), _runs(best, "finetune").assign(test_acc=0.1)])
    b = gerace.best_depths(df)
    assert len(b) == 8 and b.set_index(["seed", "beta", "n_bob"]).loc[(1, 0.0, 100), "best_l"] == 3
    cells = gerace.data_cells(b)
    # seed 0: moves 5 - 3 = 2 and 5 - 4 = 1; seed 1: 3 - 3 = 0 (tie 2, 4 -> 3) and 0.
    assert gerace._by_seed(cells, "move", (0, 1, 2))[:2] == (1.5, 0.0)
    assert math.isnan(gerace._by_seed(cells, "move", (0, 1, 2))[2])
    sim = gerace.similarity_cells(b).set_index(["seed", "n_bob"])
    assert sim.loc[(0, 100), "slope"] == 0 and sim.loc[(0, 400), "slope"] == pytest.approx(1)
    assert sim.loc[(1, 100), "slope"] == pytest.approx(1)
    assert sim.loc[(0, 100), "shallow_share"] == 1 and sim.loc[(0, 400), "shallow_share"] == 0.5


def test_selection_cells_rank_the_candidates():
    t = pd.DataFrame({"seed": 0, "arch": "mlp", "target_beta": [0.0] * 3 + [1.0] * 3,
                      "alice_beta": [0.0, 0.5, 1.0] * 2,
                      "cka_diag": [0.9, 0.5, 0.1, 0.1, 0.5, 0.9],
                      "actual_acc": [0.8, 0.6, 0.5, 0.8, 0.6, 0.5]})
    cells = gerace_select.selection_cells(t).set_index("target_beta")
    assert cells.loc[0.0, "rho"] == pytest.approx(1) and cells.loc[1.0, "rho"] == pytest.approx(-1)
    assert cells.loc[0.0, "best_by_score"] == cells.loc[0.0, "best_measured"] == 0.0
    assert cells.loc[1.0, "best_by_score"] == 1.0


def _toy_table(angles: dict, acc_gap: float = 0.0, n: int = 20000, seed: int = 0) -> pd.DataFrame:
    rows = []
    for a, (analytic, simulated) in angles.items():
        rows.append({"seed": seed, "alpha": a, "n": n, "analytic_angle": analytic,
                     "simulated_angle": simulated, "analytic_as_is": 0.5, "simulated_as_is": 0.5,
                     "analytic_retrained": 0.7, "simulated_retrained": 0.7 + acc_gap})
    return pd.DataFrame(rows)


def test_rotation_effect_is_the_simulated_turn_less_the_disagreement():
    ideal = {-1.0: (-45, -45), 0.0: (0, 0), 1.0: (45, 45)}
    assert mb_studies.rotation_effect(_toy_table(ideal))["effect"] == pytest.approx(45)
    off = {-1.0: (-45, -44), 0.0: (0, 1), 1.0: (45, 42)}  # rotation (42 + 44) / 2 - 1, gap 3
    r = mb_studies.rotation_effect(_toy_table(off))
    assert (r["rotation_simulated"], r["angle_gap"], r["effect"]) == \
        pytest.approx((42, 3, 39))
    tol = mb_studies.accuracy_tolerance(20000)
    assert tol == pytest.approx(4 * 0.5 / math.sqrt(20000))
    bad = mb_studies.rotation_effect(_toy_table(ideal, acc_gap=2 * tol))
    assert bad["effect"] == pytest.approx(45 - mb_studies.MISMATCH_PENALTY) and bad["effect"] < 0
    no_turn = {-1.0: (-45, 0), 0.0: (0, 0), 1.0: (45, 0)}
    assert mb_studies.rotation_effect(_toy_table(no_turn))["effect"] == pytest.approx(-45)
    assert angle(1, 1) == pytest.approx(45) and angle(1, 0) == 0


def test_semantic_effect_is_the_closest_minus_the_farthest_alice():
    ranks = {"near": 3, "mid": 2, "far": 1}
    rows = []
    for seed, accs in ((0, {"near": 0.7, "mid": 0.65, "far": 0.6}),
                       (1, {"near": 0.6, "mid": 0.62, "far": 0.64})):
        for task, acc in accs.items():
            rows += [{"seed": seed, "n_bob": 100, "task": task, "mode": m, "retrain_from": l,
                      "test_acc": acc - 0.01 * (l != 3)} for m in ("finetune", "reinit")
                     for l in (1, 2, 3)]
        rows.append({"seed": seed, "n_bob": 100, "task": "scratch", "mode": "scratch",
                     "retrain_from": 1, "test_acc": 0.55})
    cells = mb_studies.semantic_effects(pd.DataFrame(rows), ranks).set_index("seed")
    assert cells.loc[0, "gap"] == pytest.approx(10) and cells.loc[1, "gap"] == pytest.approx(-4)
    assert cells.loc[0, "rho"] == pytest.approx(1) and cells.loc[1, "rho"] == pytest.approx(-1)
    assert cells.loc[0, "scratch_acc"] == 0.55


def test_the_claims_are_registered_with_their_rules():
    claims = {c.id: c for c in select(list(IDS))}
    assert set(claims) == set(IDS)
    for c in claims.values():
        assert c.margin > 0 and c.rule and c.effect
    small = runner.scales_mod.scale("small")
    assert claims["gerace-depth-vs-data"].needs(small) == (sweeps.base(small),)
    assert claims["gerace-source-selection"].needs(small) == (sweeps.base(small),)
    kinds = [n.kind for c in ("mb-toy-rotation", "mb-semantic-photos")
             for n in claims[c].needs(small)]
    assert kinds == ["toy", "case-study"]


# End to end on a tiny real sweep and tiny studies ------------------------------------------------

TINY = Scale("smoke", seeds=2, n_train=200, n_test=100, epochs=1, alice_epochs=1,
             betas=(0.0, 1.0), archs=("mlp",), n_bobs=(50, None), max_samples=100, minutes="")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    if not (DATA / "MNIST").is_dir() or not (DATA / "cats_and_dogs_filtered").is_dir():
        pytest.skip(f"real data not under {DATA} (set ENGINE_DATA_ROOT)")
    out = tmp_path_factory.mktemp("reproduce")
    claims = select(list(IDS))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENGINE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("ENGINE_OFFLINE", "1")
        mp.setenv("ENGINE_DATA_ROOT", str(DATA))
        mp.setitem(mb_studies.CASE_STUDY, "smoke", dict(
            cifar_images=200, photos=10, n_bobs=(None,), alice_epochs=1, passes=20, min_epochs=1,
            alice_tasks=mb_studies.PAIR, modes=("finetune",)))
        sweep_needs, study_needs = runner.needs(claims, TINY)
        runner.train_sweeps(out / "runs", sweep_needs.values(), executor="batched", device="cpu",
                            log=lambda m: None)
        runner.run_studies(out, study_needs, device="cpu", log=lambda m: None)
        evidence = runner.evaluate(out, claims, TINY, log=lambda m: None, reuse=False)
        again = runner.evaluate(out, [c for c in claims if c.id == "gerace-source-selection"],
                                TINY, log=lambda m: None, reuse=False)
        yield out, evidence, again


def _rows(out: Path) -> pd.DataFrame:
    return runner._Rows(out / "runs")(sweeps.base(TINY))


def test_every_claim_gives_one_effect_per_seed_a_png_and_a_verdict(done):
    out, evidence, _ = done
    for cid in IDS:
        ev = evidence[cid]
        assert len(ev.effects) == TINY.seeds, cid
        assert ev.figure and Path(ev.figure).read_bytes()[:8] == PNG, cid
        assert ev.summary and not ev.summary.startswith("not evaluated"), cid
    v = stats.judge({c: evidence[c].effects for c in IDS},
                    {c.id: c.margin for c in select(list(IDS))})
    assert {x.verdict for x in v.values()} <= set(stats.VERDICTS)


def test_depth_effects_equal_the_best_depths_of_the_stored_runs(done):
    out, evidence, _ = done
    df = _rows(out)
    r = df[df["mode"] == "reinit"]
    assert set(r["retrain_from"]) == {1, 2, 3, 4, 5}

    def best(seed, beta, n):
        g = r[(r["seed"] == seed) & (r["beta"] == beta) & (r["n_bob"] == n)]
        return g.loc[g["test_acc"] == g["test_acc"].max(), "retrain_from"].mean()

    small, large = sorted(r["n_bob"].unique())
    for seed in TINY.seed_list:
        move = np.mean([best(seed, b, small) - best(seed, b, large) for b in TINY.betas])
        assert evidence["gerace-depth-vs-data"].effects[seed] == pytest.approx(move)
        slope = np.mean([best(seed, 1.0, n) - best(seed, 0.0, n) for n in (small, large)])
        assert evidence["gerace-depth-vs-similarity"].effects[seed] == pytest.approx(slope)


def test_source_selection_ranks_every_alice_on_every_target_with_extra_runs(done):
    out, evidence, again = done
    ev = evidence["gerace-source-selection"]
    assert again["gerace-source-selection"].effects == pytest.approx(ev.effects, nan_ok=True)
    cells = pd.DataFrame(ev.numbers)
    assert len(cells) == TINY.seeds * len(TINY.betas) and (cells["candidates"] == 2).all()
    for seed in TINY.seed_list:
        rho = cells[cells["seed"] == seed]["rho"].mean()
        assert ev.effects[seed] == pytest.approx(rho, nan_ok=True)
    from engine.store import ResultsStore
    work = out / "claims" / "gerace-source-selection" / "runs"
    extra = ResultsStore(work, read_only=True).table()
    # Per seed each Alice finetuned at every depth on the other beta's dataset, at n_bob 50.
    assert len(extra) == TINY.seeds * 2 * 5 and set(extra["n_bob"]) == {50}
    base = _rows(out)
    assert not set(extra["run_id"]) & set(base["run_id"])
    for a, g in extra.groupby("alice_id"):
        own = base.loc[base["alice_id"] == a, "dataset"].iloc[0]
        assert (g["dataset"] != own).all()


def test_toy_effect_follows_the_stored_tables(done):
    out, evidence, _ = done
    d = next((out / "studies").glob("toy-*"))
    for seed in TINY.seed_list:
        t = pd.read_csv(toy_file(d, seed))
        assert tuple(t.columns) == TOY_COLUMNS and list(t["alpha"]) == list(mb_studies.TOY_ALPHAS)
        assert t.loc[t["alpha"] == 1.0, "analytic_angle"].item() == pytest.approx(45)
        assert evidence["mb-toy-rotation"].effects[seed] == pytest.approx(
            mb_studies.rotation_effect(t)["effect"])
        assert evidence["mb-toy-rotation"].effects[seed] > 30  # the closed form holds at n = 2000


def test_photos_effect_is_the_gap_in_the_case_study_store(done):
    out, evidence, _ = done
    from engine.studies.case_study_report import load_study
    d = next((out / "studies").glob("case-study-*"))
    study, df = load_study(d)
    assert study["options"]["seeds"] == list(TINY.seed_list) and study["options"]["noise"] == []
    assert set(study["tasks"]) == set(mb_studies.PAIR) and set(df["mode"]) == {"finetune", "scratch"}
    assert (d / "sources" / "cats-dogs-10" / "train" / "cats").is_dir()
    for seed in TINY.seed_list:
        s = df[(df["seed"] == seed) & df["mode"].isin(("finetune", "reinit"))]
        gap = 100 * (s[s["task"] == "cifar-cat-dog"]["test_acc"].max()
                     - s[s["task"] == "cifar-vehicles"]["test_acc"].max())
        assert evidence["mb-semantic-photos"].effects[seed] == pytest.approx(gap)


# The case study's verdicts under the reproduce rule ----------------------------------------------

def test_units_from_moments_reproduce_the_interval_of_the_moments():
    from engine.studies.case_study_claims import units_from_moments
    u = units_from_moments(2.0, 1.5, 4)
    assert np.mean(u) == pytest.approx(2.0) and np.std(u, ddof=1) == pytest.approx(1.5)
    mean, low, high, n = stats.interval(u)
    from scipy.stats import t
    assert (high - low) / 2 == pytest.approx(t.ppf(0.975, 3) * 1.5 / 2) and n == 4
    assert units_from_moments(2.0, math.nan, 3) == (2.0,) and units_from_moments(math.nan, 1, 3) == ()


def test_case_study_verdicts_pair_the_seeds_when_the_tables_have_them():
    from engine.studies.case_study_claims import claims, format_seeds, parse_seeds
    assert parse_seeds(format_seeds({1: 2.5, 0: -1})) == {0: -1.0, 1: 2.5}
    assert parse_seeds("3 4") == {} and parse_seeds(float("nan")) == {}
    study = {"tasks": {"near": {"rank": 2, "noise": 0.0}, "far": {"rank": 1, "noise": 0.0}}}
    near, far = {0: 10.0, 1: 12.0, 2: 14.0}, {0: 8.0, 1: 10.0, 2: 12.0}  # paired: +2 each
    gain = pd.DataFrame([{"task": t, "n_bob": 100, "gain": np.mean(list(v.values())),
                          "gain_std": np.std(list(v.values()), ddof=1), "seeds": 3,
                          "seed_gains": format_seeds(v)} for t, v in (("near", near), ("far", far))])
    best = pd.DataFrame([{"task": t, "mode": m, "n_bob": 100, "best_depth": d,
                          "seed_best_depths": format_seeds({0: d, 1: d, 2: d})}
                         for t, d in (("near", 4), ("far", 2)) for m in ("finetune", "reinit")])
    found = claims(study, gain, best)
    assert [c["verdict"] for c in found[:2]] == ["supported", "supported"]
    assert "+2.00 [+2.00, +2.00], 3 seeds, supported" in found[1]["evidence"]
    # The same means and spreads without per-seed columns cannot be paired: the gap of 2 points
    # has a spread of sqrt(2) x 2 and is not resolved.
    unpaired = claims(study, gain.drop(columns="seed_gains"), best)
    assert unpaired[0]["verdict"] == "supported" and unpaired[1]["verdict"] == "inconclusive"
    assert "seeds would decide it" in unpaired[1]["evidence"]
