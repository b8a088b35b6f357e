"""engine reproduce's verdict rule (engine.studies.claims.stats), its registry, and Mohamud &
Brink's per-seed effects on hand-made results tables whose answer is known."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from engine.errors import EngineError
from engine.studies.claims import mohamud_brink as mb
from engine.studies.claims import registry, select, stats
from engine.studies.claims.scales import scale

ISSUE_IDS = (
    "mb-monotone-beta", "mb-above-chance", "mb-chance-from-architecture",
    "mb-shallow-when-uncorrelated", "mb-depth-indicates-correlation", "mb-feature-correlation",
    "mb-toy-rotation", "mb-attribution", "mb-semantic-photos", "gerace-depth-vs-data",
    "gerace-depth-vs-similarity", "gerace-source-selection", "mehra-bound-valid",
    "mehra-bound-ranks", "mehra-transforms-tighten", "neyshabur-shuffle-gain",
    "neyshabur-shuffle-speed", "neyshabur-one-basin", "neyshabur-feature-similarity",
    "neyshabur-criticality", "neyshabur-early-checkpoints")


# The verdict rule --------------------------------------------------------------------------------

def _draws(mean: float, sd: float, n: int, seed: int = 0) -> list[float]:
    return list(mean + sd * np.random.default_rng(seed).standard_normal(n))


def test_a_real_effect_is_supported_its_reverse_contradicted_noise_inconclusive():
    v = stats.judge({"real": _draws(3.0, 1.0, 6), "reverse": _draws(-3.0, 1.0, 6, 1),
                     "noise": _draws(0.0, 5.0, 6, 2)}, {"real": 1.0, "reverse": 1.0, "noise": 1.0})
    assert v["real"].verdict == "supported"
    assert v["reverse"].verdict == "contradicted"
    assert v["noise"].verdict == "inconclusive"
    assert v["real"].ci_low > 0 and v["reverse"].ci_high < 0
    assert v["noise"].ci_low < 0 < v["noise"].ci_high


def test_one_seed_never_decides_even_a_huge_effect():
    v = stats.judge({"a": [50.0]}, {"a": 1.0})["a"]
    assert v.verdict == "inconclusive" and v.seeds == 1 and v.seeds_needed is None
    assert math.isnan(v.ci_low) and v.effect == 50.0


def test_contradicted_needs_the_interval_below_the_margin_not_just_zero_inside_it():
    # Mean ~0.1 with a tight spread: below the margin 1 -> contradicted; with a wide spread the
    # interval reaches the margin -> inconclusive, though it contains zero in both cases.
    tight = stats.judge({"a": _draws(0.1, 0.2, 8)}, {"a": 1.0})["a"]
    wide = stats.judge({"a": _draws(0.1, 3.0, 8)}, {"a": 1.0})["a"]
    assert tight.verdict == "contradicted" and tight.ci_high < 1.0
    assert wide.verdict == "inconclusive" and wide.ci_high > 1.0


def test_holm_corrects_over_the_claims_judged_together():
    effects = [1.0, 1.5, 2.0, 2.5, 1.2]
    alone = stats.judge({"a": effects}, {"a": 1.0})["a"]
    crowd = stats.judge({"a": effects, **{f"n{i}": _draws(0, 1, 5, 10 + i) for i in range(40)}},
                        {"a": 1.0, **{f"n{i}": 10.0 for i in range(40)}})["a"]
    assert crowd.p_support >= alone.p_support
    assert alone.verdict == "supported" and crowd.verdict == "inconclusive"


def test_holm_adjusted_p_values():
    adj = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adj == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})


def test_nan_effects_are_dropped_and_the_interval_is_students():
    mean, low, high, n = stats.interval([1.0, 2.0, 3.0, math.nan])
    assert n == 3 and mean == 2.0
    assert high - mean == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)


def test_seeds_needed_shrinks_with_the_effect_and_grows_with_the_spread():
    # Effects above the margin can only become 'supported': the distance is to zero.
    small = stats.seeds_needed(0.5, 1.0, 0.1)
    large = stats.seeds_needed(2.0, 1.0, 0.1)
    noisy = stats.seeds_needed(2.0, 4.0, 0.1)
    assert 2 <= large < small and noisy > large
    assert stats.seeds_needed(0.0, 1.0, 1e-9) is None or stats.seeds_needed(0.0, 1.0, 1e-9) > 100
    assert stats.seeds_needed(1.0, math.nan, 2.0) is None
    assert stats.seeds_needed(1.0, 1e-16, 0.5) == 2 == stats.seeds_needed(1.0, 0.0, 0.5)
    # At the computed count the power is reached; one fewer it is not (d = 1 sd from zero; the
    # margin is below the mean, so only 'supported' is in reach).
    n = stats.seeds_needed(1.0, 1.0, 0.5, n_claims=5)
    assert stats._power(n, 1.0, 0.01) >= 0.8 > stats._power(n - 1, 1.0, 0.01)
    # Below the margin the nearer decision is 'contradicted', 9 sd away: two or three seeds.
    assert stats.seeds_needed(1.0, 1.0, 10.0) <= 3


def test_a_margin_must_be_positive():
    with pytest.raises(ValueError, match="margin"):
        stats.judge({"a": [1.0, 2.0]}, {"a": 0.0})


# The registry ------------------------------------------------------------------------------------

def test_every_claim_of_the_issue_is_registered_once_with_its_rule():
    claims = registry()
    assert set(ISSUE_IDS) <= set(claims)
    for c in claims.values():
        assert c.margin > 0 and c.rule and c.sentence and c.effect and c.paper
        assert c.id.split("-")[0] in ("mb", "gerace", "mehra", "neyshabur")


def test_unknown_claim_and_scale_and_seeds_are_one_line_errors():
    with pytest.raises(EngineError, match="unknown claim 'nope'"):
        select(["nope"])
    with pytest.raises(EngineError, match="unknown scale"):
        scale("huge")
    with pytest.raises(EngineError, match="--seeds must be a positive integer"):
        scale("smoke", 0)


def test_every_claims_needs_are_plannable_at_every_scale():
    from engine.studies.claims.runner import needs
    for name in ("smoke", "small", "paper"):
        sweeps, studies = needs(registry().values(), scale(name))
        assert sweeps  # the sweeps validated themselves (SweepSpec.__post_init__)
        for s in sweeps.values():
            assert s.seeds == tuple(range(scale(name).seeds))


# Mohamud & Brink's effects on hand-made tables ---------------------------------------------------

def _table(acc, *, pairs=("mnist:fashion",), betas=(0.0, 0.5, 1.0), seeds=(0, 1), L=3,
           modes=("finetune", "reinit", "scratch", "random-frozen"), n_bob=100) -> pd.DataFrame:
    """Rows of a sweep with test_acc = acc(pair, beta, seed, mode, l)."""
    rows = []
    for pair in pairs:
        for beta in betas:
            for seed in seeds:
                for mode in modes:
                    ls = [1] if mode == "scratch" else range(1 if mode != "random-frozen" else 2, L + 1)
                    for l in ls:
                        rows.append({"run_id": f"{pair}{beta}{seed}{mode}{l}", "pair": pair,
                                     "dataset": f"{pair}-{beta}", "beta": beta, "seed": seed,
                                     "arch": "mlp", "mode": mode, "retrain_from": l,
                                     "n_layers": L, "n_bob": n_bob, "chance": 0.1,
                                     "test_acc": acc(pair, beta, seed, mode, l)})
    return pd.DataFrame(rows)


def test_monotone_effect_is_one_when_accuracy_rises_with_beta_and_minus_one_when_it_falls():
    up = _table(lambda p, b, s, m, l: 0.2 + 0.5 * b + 0.01 * l)
    down = _table(lambda p, b, s, m, l: 0.9 - 0.5 * b)
    assert mb.monotone_effects(up)[0] == {0: 1.0, 1: 1.0}
    assert mb.monotone_effects(down)[0] == {0: -1.0, 1: -1.0}


def test_monotone_effect_reads_only_the_whole_budget():
    t = pd.concat([_table(lambda p, b, s, m, l: 0.2 + 0.5 * b, n_bob=1000),
                   _table(lambda p, b, s, m, l: 0.9 - 0.5 * b, n_bob=100)])
    assert mb.monotone_effects(t)[0] == {0: 1.0, 1: 1.0}


def test_above_chance_is_the_head_only_run_at_beta_zero_in_points():
    t = _table(lambda p, b, s, m, l: 0.25 if (b == 0 and l == 3) else 0.9)
    assert mb.above_chance_effects(t, "finetune") == {0: pytest.approx(15.0), 1: pytest.approx(15.0)}
    t2 = _table(lambda p, b, s, m, l: 0.1 + 0.05 * s if m == "random-frozen" else 0.5)
    assert mb.above_chance_effects(t2, "random-frozen") == {0: pytest.approx(0.0),
                                                            1: pytest.approx(5.0)}


def test_best_depth_rises_with_beta_gives_a_positive_shallow_effect():
    # reinit: at beta 0 the shallowest l is best, at beta 1 the deepest.
    t = _table(lambda p, b, s, m, l: 0.5 + (b - 0.5) * l / 10)
    b = mb.best_depths(t)
    assert list(b[b["seed"] == 0].sort_values("beta")["best_l"]) == [1, 3, 3]  # tie -> deeper
    assert mb.shallow_effects(t) == {0: 2.0, 1: 2.0}


def test_ranking_effect_orders_cells_by_beta_then_by_the_right_sources_closeness():
    pairs = ("mnist:mnist", "mnist:emnist-letters", "mnist:fashion")
    best = {"mnist:mnist": 3, "mnist:emnist-letters": 2, "mnist:fashion": 1}
    t = _table(lambda p, b, s, m, l: 0.9 if l == best[p] else 0.5, pairs=pairs, betas=(0.5,))
    assert mb.ranking_effects(mb.best_depths(t)) == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}


def test_feature_effect_is_positive_when_closer_sources_gain_more():
    pairs = ("mnist:mnist", "mnist:emnist-letters", "mnist:fashion")
    gain = {"mnist:mnist": 0.3, "mnist:emnist-letters": 0.2, "mnist:fashion": 0.1}
    t = _table(lambda p, b, s, m, l: 0.5 + (0 if m == "scratch" else gain[p]), pairs=pairs,
               betas=(0.5,))
    g = mb.gain_by_pair(t)
    assert g.set_index("pair").loc["mnist:mnist", "gain"].iloc[0] == pytest.approx(30.0)
    assert mb.feature_effects(g) == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}


def test_attribution_effect_rises_when_retraining_more_moves_attribution_right():
    t = pd.DataFrame([{"seed": s, "l": l, "L": 5, "right": 0.1 * (6 - l)}
                      for s in (0, 1) for l in range(1, 6)])
    assert mb.attribution_effects(t) == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}


# From a results table to a verdict -------------------------------------------------------------

def _verdict(claim_id: str, effects: dict) -> str:
    margin = registry()[claim_id].margin
    return stats.judge({claim_id: [effects[s] for s in sorted(effects)]}, {claim_id: margin})[
        claim_id].verdict


@pytest.mark.parametrize("truth,want", [("real", "supported"), ("reverse", "contradicted"),
                                         ("noise", "inconclusive"), ("one seed", "inconclusive")])
def test_tables_with_a_known_truth_get_the_right_verdict(truth, want):
    """Six seeds of a sweep whose head-only accuracy at beta 0 is 10 points above chance (real),
    10 below (reverse) or chance plus seed noise of +-8 points (noise); one seed of the real
    effect decides nothing. Accuracy vs beta follows the same truth for mb-monotone-beta."""
    rng = np.random.default_rng(7)
    noise = {s: rng.normal(0, 0.08) for s in range(6)}
    shift = {"real": 0.1, "reverse": -0.1, "noise": 0.0, "one seed": 0.1}[truth]
    slope = {"real": 0.4, "reverse": -0.4, "noise": 0.0, "one seed": 0.4}[truth]
    seeds = (0,) if truth == "one seed" else tuple(range(6))

    def acc(p, b, s, m, l):
        wobble = noise[s] * (1 + b + l) if truth == "noise" else 0.0  # no trend in beta
        return 0.1 + shift + slope * b + 0.001 * l + wobble

    t = _table(acc, seeds=seeds, betas=(0.0, 0.3, 0.6, 1.0))
    assert _verdict("mb-above-chance", mb.above_chance_effects(t, "finetune")) == want
    if truth != "noise":  # a noisy table has no monotone truth to decide
        assert _verdict("mb-monotone-beta", mb.monotone_effects(t)[0]) == want
