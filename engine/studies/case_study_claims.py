"""The case study's claims (Mohamud & Brink 2025; one of Gerace et al. 2024), each with the
evidence computed from the stored runs and a verdict in `engine reproduce`'s words: supported,
contradicted or inconclusive.

Verdicts follow `engine reproduce`'s one rule (engine.studies.claims.stats): each judgement is a set
of per-seed effects, oriented so that positive is what the paper claims, with a margin (the
smallest effect that counts as the claim holding); `stats.judge` decides every judgement of the
report together (Holm's correction over all of them): *supported* when "mean <= 0" is rejected,
*contradicted* when "mean >= margin" is rejected, else inconclusive, and always inconclusive with
one seed.
- Claims 1-3 are judged per Bob budget (n_bob): the claim is *supported* when some budget is
  supported and none contradicted, *contradicted* when some is contradicted and none supported.
- Claims 4-5 are one judgement each over per-seed effects averaged over their cells.
Per-seed values come from the report's tables (`seed_gains`, `seed_best_depths`: "seed:value"
pairs). Tables that hold only a mean, a standard deviation and a count per cell (no per-seed
column) are judged from those: the tests and the interval depend on the effects only through
the three (`units_from_moments`); claims 4-5 then take the cells as their units.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine.studies.claims import stats

MODES = ("finetune", "reinit")
MARGINS = {"gain": 1.0, "order": 1.0, "noise": 1.0, "depth_rho": 0.5, "depth_move": 0.5}
# points of accuracy (gain, order, noise); Spearman's rho (depth_rho); layers (depth_move)


def task_order(study: dict) -> list[str]:
    """Graded tasks from the closest down, then the noise tasks by noise."""
    tasks = study["tasks"]
    graded = sorted((t for t in tasks if tasks[t]["rank"] is not None),
                    key=lambda t: -tasks[t]["rank"])
    noisy = sorted((t for t in tasks if tasks[t]["rank"] is None), key=lambda t: tasks[t]["noise"])
    return graded + noisy


# Per-seed values ---------------------------------------------------------------------------------

def format_seeds(values: dict) -> str:
    """{seed: value} -> "0:1.5 1:2" (the report's per-seed columns)."""
    return " ".join(f"{int(s)}:{v:.6g}" for s, v in sorted(values.items()))


def parse_seeds(text) -> dict[int, float]:
    """"0:1.5 1:2" -> {0: 1.5, 1: 2.0}; {} for anything else (a missing or old-style column)."""
    out = {}
    for part in str(text).split() if isinstance(text, str) else ():
        seed, sep, value = part.partition(":")
        if not sep:
            return {}
        out[int(seed)] = float(value)
    return out


def units_from_moments(mean: float, std: float, n: int) -> tuple[float, ...]:
    """n values with exactly this mean and sample standard deviation: the t-interval and the
    one-sided t-tests of engine.studies.claims.stats depend on a set of effects only through the
    three. One value when the spread is unknown (n < 2 or std NaN): no verdict."""
    if not (isinstance(n, (int, np.integer)) and n >= 1 and math.isfinite(mean)):
        return ()
    if n < 2 or not math.isfinite(std):
        return (float(mean),)
    z = np.arange(n) - (n - 1) / 2
    z = z / z.std(ddof=1)
    return tuple(float(v) for v in mean + std * z)


def _gain_units(row) -> dict[int, float]:
    """{seed: gain} of a gain-table row: its per-seed column, else units from its moments."""
    per_seed = parse_seeds(row.get("seed_gains"))
    if per_seed:
        return per_seed
    return dict(enumerate(units_from_moments(row["gain"], row["gain_std"], int(row["seeds"]))))


def _difference(a, b) -> tuple[float, ...]:
    """Per-seed a - b of two gain rows: paired by seed when both have per-seed values, else from
    the moments (mean difference, std sqrt(sa^2 + sb^2), the smaller count)."""
    pa, pb = parse_seeds(a.get("seed_gains")), parse_seeds(b.get("seed_gains"))
    if pa and pb:
        return tuple(pa[s] - pb[s] for s in sorted(pa.keys() & pb.keys()))
    return units_from_moments(a["gain"] - b["gain"], math.hypot(a["gain_std"], b["gain_std"]),
                              int(min(a["seeds"], b["seeds"])))


def _spearman(x, y) -> float:
    from scipy.stats import spearmanr
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return math.nan
    return float(spearmanr(x[ok], y[ok]).statistic)


def _describe(v: stats.Verdict) -> str:
    if v.seeds == 0:
        return "no data"
    if v.seeds < 2:
        return f"{v.effect:+.2f} (one seed: inconclusive)"
    text = f"{v.effect:+.2f} [{v.ci_low:+.2f}, {v.ci_high:+.2f}], {v.seeds} seeds, {v.verdict}"
    if v.verdict == "inconclusive":
        text += (f" ({v.seeds_needed} seeds would decide it at this mean and spread)"
                 if v.seeds_needed else " (no seed count up to 1000 would decide it)")
    return text


def _combine(verdicts: list[str]) -> str:
    """Cells judged apart -> the claim's verdict (module docstring)."""
    if "supported" in verdicts and "contradicted" not in verdicts:
        return "supported"
    if "contradicted" in verdicts and "supported" not in verdicts:
        return "contradicted"
    return "inconclusive"


# Claims ------------------------------------------------------------------------------------------

def claims(study: dict, gain: pd.DataFrame, best: pd.DataFrame) -> list[dict]:
    """The paper's claims, each with the evidence computed here and a verdict."""
    tasks = study["tasks"]
    graded = [t for t in task_order(study) if tasks[t]["rank"] is not None]
    noisy = [t for t in task_order(study) if tasks[t]["rank"] is None]
    closest = graded[0] if graded else None
    n_bobs = sorted(gain["n_bob"].unique())

    def g(task, n):
        row = gain[(gain["task"] == task) & (gain["n_bob"] == n)]
        return row.iloc[0] if len(row) else None

    effects, margins, cells = {}, {}, {}  # judgement key -> effects / margin; claim -> its keys

    def add(claim: int, key: str, units, margin: float) -> None:
        effects[key], margins[key] = tuple(units), margin
        cells.setdefault(claim, []).append(key)

    # 1. Reuse is effective when the tasks are semantically correlated: closest Alice - scratch.
    for n in n_bobs:
        if closest and g(closest, n) is not None:
            add(1, f"1:n_bob {n}", _gain_units(g(closest, n)).values(), MARGINS["gain"])
    # 2. The benefit follows the semantic relation: closest - least related, paired by seed.
    rhos = {}
    for n in n_bobs:
        if len(graded) > 1 and g(graded[0], n) is not None and g(graded[-1], n) is not None:
            add(2, f"2:n_bob {n}", _difference(g(graded[0], n), g(graded[-1], n)),
                MARGINS["order"])
        vals = [(tasks[t]["rank"], g(t, n)["gain"]) for t in graded if g(t, n) is not None]
        rhos[n] = _spearman(*zip(*vals)) if vals else math.nan
    # 3. Label noise on the closest task lowers the gain: each step of the chain.
    chain = [closest] + noisy if closest else []
    for n in n_bobs:
        rows = [g(t, n) for t in chain]
        if len(chain) > 1 and all(r is not None for r in rows):
            for a, b, tb in zip(rows, rows[1:], chain[1:]):
                add(3, f"3:n_bob {n} {tb}", _difference(a, b), MARGINS["noise"])
    # 4. The closer Alice's task, the more of her layers Bob keeps: Spearman(rank, best l).
    per_seed, cell_rhos, split, disagree = {}, [], 0, 0
    for mode in MODES:
        for n in n_bobs:
            b = best[(best["mode"] == mode) & (best["n_bob"] == n)].set_index("task")
            ts = [t for t in graded if t in b.index]
            cell_rhos.append(_spearman([tasks[t]["rank"] for t in ts],
                                       [b.loc[t, "best_depth"] for t in ts]))
            seeds = {t: parse_seeds(b.loc[t].get("seed_best_depths")) for t in ts}
            for t in ts:
                split += len(seeds[t]) > 1
                disagree += len(set(seeds[t].values())) > 1
            common = set.intersection(*(set(s) for s in seeds.values())) if seeds else set()
            for s in common:
                per_seed.setdefault(s, []).append(_spearman(
                    [tasks[t]["rank"] for t in ts], [seeds[t][s] for t in ts]))
    if per_seed:
        add(4, "4:all cells", [np.nanmean(v) if np.isfinite(v).any() else math.nan
                     for _, v in sorted(per_seed.items())], MARGINS["depth_rho"])
    else:
        add(4, "4:all cells", cell_rhos, MARGINS["depth_rho"])
    # 5. Gerace et al. 2024: with more data Bob retrains more layers (best l falls with n_bob).
    moves, seed_moves = [], {}
    if len(n_bobs) > 1:
        for (task, mode), b in best.groupby(["task", "mode"]):
            b = b.sort_values("n_bob")
            first, last = b.iloc[0], b.iloc[-1]
            moves.append(float(first["best_depth"] - last["best_depth"]))
            f, l = parse_seeds(first.get("seed_best_depths")), parse_seeds(last.get("seed_best_depths"))
            for s in f.keys() & l.keys():
                seed_moves.setdefault(s, []).append(f[s] - l[s])
        add(5, "5:all pairs", [np.mean(v) for _, v in sorted(seed_moves.items())] if seed_moves else moves,
            MARGINS["depth_move"])

    v = stats.judge(effects, margins) if effects else {}

    def verdict(claim: int) -> str:
        keys = cells.get(claim, [])
        if claim in (4, 5):
            return v[keys[0]].verdict if keys else "inconclusive"
        return _combine([v[k].verdict for k in keys])

    def ev(claim: int) -> str:
        return "; ".join(f"{k.split(':', 1)[-1]}: {_describe(v[k])}"
                         for k in cells.get(claim, [])) or "no data"

    out = [{"claim": "Bob reuses Alice's network effectively when their tasks are semantically "
                     f"correlated: the closest Alice ({closest}) beats training from scratch",
            "evidence": f"gain over scratch at the best depth, points (mean [95% t-interval]; "
                        f"margin {MARGINS['gain']:g}): {ev(1)}",
            "verdict": verdict(1)},
           {"claim": "The benefit follows the semantic relation (cat/dog > all ten > other "
                     "animals > vehicles)",
            "evidence": f"gain of {closest} minus gain of "
                        f"{graded[-1] if graded else '-'}, points, paired by seed "
                        f"(margin {MARGINS['order']:g}): {ev(2)}. Spearman rho(rank, mean gain): "
                        + ", ".join(f"n_bob {n} {r:+.2f}" for n, r in rhos.items()),
            "verdict": verdict(2)}]
    if noisy and closest:
        out.append({"claim": "Label noise on Alice's closest task, a dial on the semantic "
                             "correlation, lowers Bob's gain",
                    "evidence": f"gain drop from each task of {' > '.join(chain)} to the next, "
                                f"points (margin {MARGINS['noise']:g}): {ev(3)}",
                    "verdict": verdict(3)})
    agreement = (f"the seeds disagree on the best depth in {disagree} of {split} cells; "
                 if split else "")
    out.append({"claim": "The best number of retrained layers follows the correlation: the closer "
                         "Alice's task, the more of her layers Bob keeps (larger best l)",
                "evidence": f"{agreement}Spearman rho(rank, best l) "
                            + ("per seed, mean over (mode, n_bob) cells" if per_seed else
                               "per (mode, n_bob) cell of the mean best depths")
                            + f" (margin {MARGINS['depth_rho']:g}): {ev(4)}",
                "verdict": verdict(4)})
    if len(n_bobs) > 1:
        down, up = sum(m > 0 for m in moves), sum(m < 0 for m in moves)
        out.append({"claim": "(Gerace et al. 2024) with more data Bob retrains more layers: the "
                             "best l falls as n_bob grows",
                    "evidence": f"from n_bob {n_bobs[0]} to {n_bobs[-1]} the best l fell in {down}, "
                                f"rose in {up}, stayed in {len(moves) - down - up} of {len(moves)} "
                                "(task, mode) pairs; best l(first) - best l(last), layers, "
                                + ("per seed, mean over the pairs" if seed_moves else "per pair")
                                + f" (margin {MARGINS['depth_move']:g}): {ev(5)}",
                    "verdict": verdict(5)})
    return out
