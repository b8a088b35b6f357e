"""Scoring depth predictors against measured sweeps.

The truth of one group (pair, beta, arch, alice_id, n_bob) is the measured test accuracy of that
Alice's Bob runs per depth l = 1..L in one mode (an Alice has one seed; runs repeated under one
key are averaged). Per group and predictor: Spearman's rho between scores and that curve, whether
the picked depth is a best one (hit) or within one layer of one, the regret (best accuracy minus
the accuracy at the picked depth, in points) and the cost as a fraction of the group's sweep
(wall time and FLOPs). Summaries per predictor and arch, and pooled, carry 95% intervals from a
bootstrap over groups (percentile; BOOT resamples, seeded).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine.analysis.depth.task import choose
from engine.analysis.select import spearman
from engine.errors import EngineError

GROUP_KEYS = ("pair", "beta", "arch", "alice_id", "n_bob")
BOOT = 2000
CI = (2.5, 97.5)


def truth_curves(runs: pd.DataFrame, mode: str = "finetune") -> list[dict]:
    """One dict per group with every depth 1..L measured in `mode`: its keys, `seed`, `dataset`,
    `curve` (accuracy per depth, fraction), `wall_s` (the group's runs, summed) and `n_epochs`.
    EngineError when no group has a complete curve."""
    rows = runs[(runs["mode"] == mode) & (runs["alice_id"] != "")]
    groups = []
    for key, g in rows.groupby(list(GROUP_KEYS), sort=True):
        L = int(g["n_layers"].iloc[0])
        by_depth = g.groupby("retrain_from")
        if set(by_depth.groups) != set(range(1, L + 1)):
            continue
        acc = by_depth["test_acc"].mean().sort_index()
        groups.append({**dict(zip(GROUP_KEYS, key)), "seed": int(g["seed"].iloc[0]),
                       "dataset": str(g["dataset"].iloc[0]), "n_layers": L,
                       "curve": acc.to_numpy(dtype=float),
                       "wall_s": float(by_depth["wall_s"].mean().sum()),
                       "epochs": int(g["epochs"].iloc[0]), "spec_json": g["spec_json"].iloc[0]})
    if not groups:
        raise EngineError(f"no complete depth curve in {mode} mode: every group (pair, beta, "
                          "arch, Alice, n_bob) needs a run at each depth l = 1..L; run the sweep "
                          "with --layers all")
    return groups


def best_depths(curve) -> np.ndarray:
    c = np.asarray(curve, dtype=float)
    return np.flatnonzero(c == np.nanmax(c)) + 1


def group_metrics(scores, curve) -> dict:
    """How the score curve `scores` [L] does against the measured `curve` [L] (fractions)."""
    curve = np.asarray(curve, dtype=float)
    chosen = choose(scores)
    best = best_depths(curve)
    top = float(np.nanmax(curve))
    if chosen == 0:
        return {"chosen_depth": 0, "best_depth": int(best[-1]), "spearman": math.nan,
                "hit": math.nan, "within_one": math.nan, "regret": math.nan}
    return {"chosen_depth": chosen, "best_depth": int(best[-1]),
            "spearman": spearman(scores, curve),
            "hit": float(chosen in best),
            "within_one": float(np.min(np.abs(best - chosen)) <= 1),
            "regret": 100.0 * (top - curve[chosen - 1])}


def _interval(values: np.ndarray, stat, rng) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return math.nan, math.nan
    draws = [stat(v[rng.integers(0, len(v), len(v))]) for _ in range(BOOT)]
    lo, hi = np.percentile(draws, CI)
    return float(lo), float(hi)


def _stat(v: np.ndarray, stat) -> float:
    v = v[np.isfinite(v)]
    return float(stat(v)) if len(v) else math.nan


def summarize(per_group: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Rows per (predictor, arch) and per (predictor, "pooled"): groups, mean spearman, hit_rate,
    within_one, median regret (points), median cost_fraction and flops_fraction, each with
    `_lo`/`_hi` bounds of its 95% interval."""
    stats = {"spearman": np.mean, "hit_rate": np.mean, "within_one": np.mean,
             "regret": np.median, "cost_fraction": np.median, "flops_fraction": np.median}
    source = {"hit_rate": "hit"}
    rows = []
    for predictor, gp in per_group.groupby("predictor", sort=False):
        for arch, g in [*gp.groupby("arch", sort=True), ("pooled", gp)]:
            rng = np.random.default_rng(seed)
            row = {"predictor": predictor, "arch": arch,
                   "groups": int(g["regret"].notna().sum())}
            for name, stat in stats.items():
                v = g[source.get(name, name)].to_numpy(dtype=float)
                row[name] = _stat(v, stat)
                row[f"{name}_lo"], row[f"{name}_hi"] = _interval(v, stat, rng)
            rows.append(row)
    return pd.DataFrame(rows)


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """The predictors x metrics table for reports: values with their intervals, as text."""
    def cell(r, name, fmt):
        v, lo, hi = r[name], r[f"{name}_lo"], r[f"{name}_hi"]
        if not np.isfinite(v):
            return "n/a"
        return fmt.format(v) + (f" [{fmt.format(lo)}, {fmt.format(hi)}]" if np.isfinite(lo) else "")
    out = []
    for _, r in summary.iterrows():
        out.append({"predictor": r["predictor"], "arch": r["arch"], "groups": r["groups"],
                    "spearman": cell(r, "spearman", "{:.2f}"),
                    "hit rate": cell(r, "hit_rate", "{:.2f}"),
                    "within one": cell(r, "within_one", "{:.2f}"),
                    "median regret (points)": cell(r, "regret", "{:.1f}"),
                    "cost (wall, fraction of sweep)": cell(r, "cost_fraction", "{:.3f}"),
                    "cost (FLOPs, fraction)": cell(r, "flops_fraction", "{:.3f}")})
    return pd.DataFrame(out)
