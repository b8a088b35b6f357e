"""The case study's claims (Mohamud & Brink 2025), each with the evidence computed from the
stored runs and a verdict: holds, does not hold, or inconclusive.

A difference counts as resolved when it lies outside its 95% Student-t interval over seeds
(n - 1 degrees of freedom: 12.7 standard errors with 2 seeds, 4.3 with 3); with one seed nothing
is resolved and the verdicts say inconclusive. engine.studies.case_study_report computes the
tables these read and writes them into `summary.md`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

MODES = ("finetune", "reinit")


def task_order(study: dict) -> list[str]:
    """Graded tasks from the closest down, then the noise tasks by noise."""
    tasks = study["tasks"]
    graded = sorted((t for t in tasks if tasks[t]["rank"] is not None),
                    key=lambda t: -tasks[t]["rank"])
    noisy = sorted((t for t in tasks if tasks[t]["rank"] is None), key=lambda t: tasks[t]["noise"])
    return graded + noisy


# Statistics --------------------------------------------------------------------------------------

def _se(std: float, n: int) -> float:
    return std / math.sqrt(n) if n > 1 and math.isfinite(std) else math.nan


def _t(n: int) -> float:
    """The two-sided 95% Student t quantile for n seeds (n - 1 degrees of freedom); NaN below 2."""
    from scipy.stats import t
    return float(t.ppf(0.975, n - 1)) if n > 1 else math.nan


def _resolved(mean: float, se: float, n: int) -> int:
    """+1 / -1 when mean lies above / below zero by more than its 95% t-interval over n seeds,
    else 0 (also with one seed)."""
    half = _t(n) * se
    if not (math.isfinite(mean) and math.isfinite(half)):
        return 0
    return 1 if mean > half else -1 if mean < -half else 0


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(spearmanr(x[ok], y[ok]).statistic)


# Claims ------------------------------------------------------------------------------------------

def claims(study: dict, gain: pd.DataFrame, best: pd.DataFrame) -> list[dict]:
    """The paper's claims, each with the evidence computed here and a verdict."""
    tasks = study["tasks"]
    graded = [t for t in task_order(study) if tasks[t]["rank"] is not None]
    noisy = [t for t in task_order(study) if tasks[t]["rank"] is None]
    closest = graded[0] if graded else None
    n_bobs = sorted(gain["n_bob"].unique())
    out = []

    def g(task, n):
        row = gain[(gain["task"] == task) & (gain["n_bob"] == n)]
        return row.iloc[0] if len(row) else None

    # 1. Reuse is effective when the tasks are semantically correlated.
    ev, signs = [], []
    for n in n_bobs:
        r = g(closest, n)
        if r is None:
            continue
        se = _se(r["gain_std"], r["seeds"])
        signs.append(_resolved(r["gain"], se, r["seeds"]))
        half = _t(r["seeds"]) * se
        ev.append(f"n_bob {n}: {r['gain']:+.1f} ± {half:.1f} points" if math.isfinite(half)
                  else f"n_bob {n}: {r['gain']:+.1f} points (one seed)")
    means = [g(closest, n)["gain"] for n in n_bobs if g(closest, n) is not None]
    if signs and (signs[0] == 1 or (1 in signs and -1 not in signs)):
        verdict = "holds"
    elif signs and ((-1 in signs and 1 not in signs)
                    or (all(m <= 0 for m in means) and any(math.isfinite(
                        _se(g(closest, n)["gain_std"], g(closest, n)["seeds"])) for n in n_bobs))):
        verdict = "does not hold"
    else:
        verdict = "inconclusive"
    out.append({"claim": "Bob reuses Alice's network effectively when their tasks are semantically "
                         f"correlated: the closest Alice ({closest}) beats training from scratch",
                "evidence": f"gain over scratch at the best depth (± 95% t-interval): {'; '.join(ev)}",
                "verdict": verdict})

    # 2. The benefit follows the semantic correlation.
    ev, rhos, gaps = [], [], []
    for n in n_bobs:
        ranks = [tasks[t]["rank"] for t in graded if g(t, n) is not None]
        vals = [g(t, n)["gain"] for t in graded if g(t, n) is not None]
        rho = _spearman(ranks, vals)
        rhos.append(rho)
        first, last = g(graded[0], n), g(graded[-1], n)
        if first is not None and last is not None:
            se = math.hypot(_se(first["gain_std"], first["seeds"]), _se(last["gain_std"], last["seeds"]))
            gaps.append(_resolved(first["gain"] - last["gain"], se,
                                  min(first["seeds"], last["seeds"])))
        ev.append(f"n_bob {n}: Spearman rho {rho:+.2f} over "
                  + ", ".join(f"{t} {v:+.1f}" for t, v in zip(graded, vals)))
    finite = [r for r in rhos if math.isfinite(r)]
    mean_rho = float(np.mean(finite)) if finite else math.nan
    if not finite:
        verdict = "inconclusive"
    elif mean_rho >= 0.6 and 1 in gaps and -1 not in gaps:
        verdict = "holds"
    elif mean_rho <= 0 or (gaps and all(s == -1 for s in gaps)):
        verdict = "does not hold"
    else:
        verdict = "inconclusive"
    out.append({"claim": "The benefit follows the semantic relation (cat/dog > all ten > other "
                         "animals > vehicles)",
                "evidence": f"mean rho {mean_rho:+.2f}; closest vs least related resolved at "
                            f"{sum(s == 1 for s in gaps)} of {len(gaps)} n_bob values. "
                            + "; ".join(ev),
                "verdict": verdict})

    # 3. Label noise on the closest task (the dial) lowers the benefit.
    if noisy and closest:
        ev, signs = [], []
        for n in n_bobs:
            chain = [closest] + noisy
            rows = [g(t, n) for t in chain]
            if any(r is None for r in rows):
                continue
            for a, b, ta, tb in zip(rows, rows[1:], chain, chain[1:]):
                se = math.hypot(_se(a["gain_std"], a["seeds"]), _se(b["gain_std"], b["seeds"]))
                signs.append(_resolved(a["gain"] - b["gain"], se, min(a["seeds"], b["seeds"])))
            ev.append(f"n_bob {n}: " + ", ".join(f"{t} {r['gain']:+.1f}" for t, r in zip(chain, rows)))
        verdict = ("holds" if signs and 1 in signs and -1 not in signs else
                   "does not hold" if signs and -1 in signs and 1 not in signs else "inconclusive")
        out.append({"claim": "Label noise on Alice's closest task, a dial on the semantic "
                             "correlation, lowers Bob's gain",
                    "evidence": f"gain over scratch (points); drops resolved {sum(s == 1 for s in signs)}"
                                f" of {len(signs)}, rises resolved {sum(s == -1 for s in signs)}. "
                                + "; ".join(ev),
                    "verdict": verdict})

    # 4. The best number of retrained layers follows the correlation: closer tasks -> deeper l.
    ev, rhos = [], []
    for mode in MODES:
        for n in n_bobs:
            b = best[(best["mode"] == mode) & (best["n_bob"] == n)].set_index("task")
            ts = [t for t in graded if t in b.index]
            rho = _spearman([tasks[t]["rank"] for t in ts], [b.loc[t, "best_depth"] for t in ts])
            rhos.append(rho)
            ev.append(f"{mode} n_bob {n}: " + " ".join(f"{t}={b.loc[t, 'best_depth']}" for t in ts)
                      + f" (rho {rho:+.2f})")
    finite = [r for r in rhos if math.isfinite(r)]
    mean_rho = float(np.mean(finite)) if finite else math.nan
    # Best depths are noisy: when the seeds disagree on them in most cells, no verdict.
    seed_depths = [str(x).split() for x in best.get("seed_best_depths", pd.Series(dtype=str))]
    split = [d for d in seed_depths if len(d) > 1]
    disagree = sum(len(set(d)) > 1 for d in split)
    stable = not split or disagree <= len(split) / 2
    agreement = (f"the seeds disagree on the best depth in {disagree} of {len(split)} cells"
                 if split else "one seed per cell")
    verdict = ("inconclusive" if not finite or len(finite) < len(rhos) / 2 or not stable else
               "holds" if mean_rho >= 0.6 else "does not hold" if mean_rho <= 0 else "inconclusive")
    out.append({"claim": "The best number of retrained layers follows the correlation: the closer "
                         "Alice's task, the more of her layers Bob keeps (larger best l)",
                "evidence": f"{agreement}; mean Spearman rho(rank, best l) {mean_rho:+.2f} over "
                            f"{len(finite)} of {len(rhos)} (mode, n_bob) cells with a defined rho; "
                            + "; ".join(ev),
                "verdict": verdict})

    # 5. Gerace et al. (2024): with more data Bob retrains more layers (best l falls with n_bob).
    if len(n_bobs) > 1:
        moves = []
        for (task, mode), b in best.groupby(["task", "mode"]):
            b = b.sort_values("n_bob")
            moves.append(int(np.sign(b["best_depth"].iloc[0] - b["best_depth"].iloc[-1])))
        down, up = moves.count(1), moves.count(-1)
        verdict = ("inconclusive" if not stable else
                   "holds" if down > up and down >= len(moves) / 2 else
                   "does not hold" if up > down and up >= len(moves) / 2 else "inconclusive")
        out.append({"claim": "(Gerace et al. 2024) with more data Bob retrains more layers: the "
                             "best l falls as n_bob grows",
                    "evidence": f"{agreement}; from n_bob {n_bobs[0]} to {n_bobs[-1]} the best "
                                f"l fell in {down}, "
                                f"rose in {up}, stayed in {moves.count(0)} of {len(moves)} "
                                "(task, mode) pairs",
                    "verdict": verdict})
    return out
