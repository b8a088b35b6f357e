"""The case study's report: tables, figures and a `summary.md` whose findings are computed from the
stored runs, with the paper's claims beside them (holds / does not hold / inconclusive).

Reads `<out>/study.json` (written by engine.studies.case_study: which Alice ID is which task) and
the results store, keeps the study's run IDs, and writes to `<out>/report/`:
- `accuracy.csv`: Bob's test accuracy per (task, mode, n_bob, depth l): mean, std, seeds;
- `best_depth.csv`: per (task, mode, n_bob) the depth with the highest mean accuracy, its accuracy,
  and the best depths of the single seeds;
- `gain.csv`: per (task, n_bob) the gain over scratch, in points, at the task's best (l, mode)
  (chosen on the mean over seeds), mean and std over seeds of the per-seed differences;
- `acc_vs_depth_n<n>.png`, `best_depth.png`, `gain.png`, `summary.md`.

Verdicts: a difference counts as resolved when it lies outside its 95% Student-t interval over
seeds (n - 1 degrees of freedom: 12.7 standard errors with 2 seeds, 4.3 with 3); with one seed
nothing is resolved and the verdicts say inconclusive. The best (l, mode) is picked
on the same test photos that measure the gain, which biases gains upward by a little; the
comparison across tasks shares that bias.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from engine.atomic import atomic_path, write_bytes
from engine.errors import EngineError
from engine.store import ResultsStore

MODES = ("finetune", "reinit")
SCRATCH = "scratch"


# Loading -----------------------------------------------------------------------------------------

def load_study(out: Path) -> tuple[dict, pd.DataFrame]:
    """The study plan and its stored rows, with columns task, rank, noise added (scratch rows:
    task "scratch"). EngineError when the study has not been run."""
    out = Path(out)
    try:
        study = json.loads((out / "study.json").read_text())
    except FileNotFoundError:
        raise EngineError(f"{out} holds no case study (no study.json); run "
                          "`engine case-study cats-dogs --out DIR` first") from None
    except ValueError as exc:
        raise EngineError(f"{out / 'study.json'} is not valid JSON ({exc}); re-run the study") from None
    df = ResultsStore(out, read_only=True).table()
    if not df.empty:
        df = df[df["run_id"].isin(set(study["run_ids"]))].copy()
    if df.empty:
        raise EngineError(f"no results of the study in {out}; run `engine case-study` first")
    alices = study["alices"]
    df["task"] = [alices[a]["task"] if a else SCRATCH for a in df["alice_id"]]
    df["rank"] = [alices[a]["rank"] if a else None for a in df["alice_id"]]
    df["noise"] = [alices[a]["noise"] if a else math.nan for a in df["alice_id"]]
    return study, df


def task_order(study: dict) -> list[str]:
    """Graded tasks from the closest down, then the noise tasks by noise."""
    tasks = study["tasks"]
    graded = sorted((t for t in tasks if tasks[t]["rank"] is not None),
                    key=lambda t: -tasks[t]["rank"])
    noisy = sorted((t for t in tasks if tasks[t]["rank"] is None), key=lambda t: tasks[t]["noise"])
    return graded + noisy


# Aggregates --------------------------------------------------------------------------------------

def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(["task", "mode", "n_bob", "retrain_from"])["test_acc"]
    return g.agg(mean="mean", std="std", seeds="count").reset_index()


def best_depths(df: pd.DataFrame, acc: pd.DataFrame) -> pd.DataFrame:
    """Per (task, mode, n_bob) of the Alice-based runs: the depth of the highest mean accuracy."""
    rows = []
    alice = acc[acc["mode"].isin(MODES)]
    for (task, mode, n), block in alice.groupby(["task", "mode", "n_bob"]):
        best = block.loc[block["mean"].idxmax()]
        runs = df[(df["task"] == task) & (df["mode"] == mode) & (df["n_bob"] == n)]
        per_seed = [int(b.loc[b["test_acc"].idxmax(), "retrain_from"])
                    for _, b in runs.groupby("seed")]
        rows.append({"task": task, "mode": mode, "n_bob": int(n),
                     "best_depth": int(best["retrain_from"]), "acc": float(best["mean"]),
                     "acc_std": float(best["std"]) if pd.notna(best["std"]) else math.nan,
                     "depths": int(block["retrain_from"].nunique()),
                     "seed_best_depths": " ".join(map(str, per_seed))})
    return pd.DataFrame(rows)


def gains(df: pd.DataFrame, acc: pd.DataFrame) -> pd.DataFrame:
    """Per (task, n_bob): the gain over scratch in points at the task's best (l, mode) (by mean
    over seeds), mean and std over seeds of the per-seed differences; also the gain at l = L."""
    scratch = df[df["mode"] == SCRATCH].set_index(["n_bob", "seed"])["test_acc"]
    rows = []
    alice = acc[acc["mode"].isin(MODES)]
    for (task, n), block in alice.groupby(["task", "n_bob"]):
        best = block.loc[block["mean"].idxmax()]
        runs = df[(df["task"] == task) & (df["n_bob"] == n)]
        at_best = runs[(runs["mode"] == best["mode"])
                       & (runs["retrain_from"] == best["retrain_from"])]
        diffs = [100 * (r.test_acc - scratch[(n, r.seed)]) for r in at_best.itertuples()
                 if (n, r.seed) in scratch.index]
        L = int(runs["n_layers"].max())
        head = runs[(runs["retrain_from"] == L) & (runs["mode"] == "finetune")]
        head_diffs = [100 * (r.test_acc - scratch[(n, r.seed)]) for r in head.itertuples()
                      if (n, r.seed) in scratch.index]
        rows.append({"task": task, "n_bob": int(n), "best_mode": best["mode"],
                     "best_depth": int(best["retrain_from"]),
                     "gain": float(np.mean(diffs)) if diffs else math.nan,
                     "gain_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan,
                     "seeds": len(diffs),
                     "gain_head_only": float(np.mean(head_diffs)) if head_diffs else math.nan,
                     "scratch_acc": float(scratch.xs(n, level="n_bob").mean())
                     if n in scratch.index.get_level_values(0) else math.nan})
    return pd.DataFrame(rows)


# Claims ------------------------------------------------------------------------------------------

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


# Figures -----------------------------------------------------------------------------------------

def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _acc_vs_depth(acc: pd.DataFrame, order: list[str], n: int, chance: float, path: Path) -> Path:
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    scratch = acc[(acc["mode"] == SCRATCH) & (acc["n_bob"] == n)]
    for ax, mode in zip(axes, MODES):
        for t in order:
            b = acc[(acc["task"] == t) & (acc["mode"] == mode) & (acc["n_bob"] == n)]
            b = b.sort_values("retrain_from")
            if len(b):
                ax.errorbar(b["retrain_from"], 100 * b["mean"], yerr=100 * b["std"].fillna(0),
                            marker="o", capsize=3, label=t)
        if len(scratch):
            m, s = 100 * scratch["mean"].iloc[0], 100 * (scratch["std"].fillna(0).iloc[0])
            ax.axhline(m, color="k", linestyle="--", label="scratch")
            ax.axhspan(m - s, m + s, color="k", alpha=0.1)
        ax.axhline(100 * chance, color="grey", linestyle=":", label="chance")
        ax.set_title(f"{mode}, n_bob = {n}")
        ax.set_xticks(sorted(acc["retrain_from"].unique()))
        ax.set_xlabel("retrain from layer l (layers below are Alice's, frozen)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Bob's test accuracy (%)")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def _best_depth_fig(best: pd.DataFrame, order: list[str], path: Path) -> Path:
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, mode in zip(axes, MODES):
        for k, t in enumerate(order):
            b = best[(best["task"] == t) & (best["mode"] == mode)].sort_values("n_bob")
            if len(b):
                ax.plot(b["n_bob"], b["best_depth"] + 0.06 * (k - len(order) / 2), marker="o",
                        label=t)
        ax.set_xscale("log")
        ax.set_yticks(sorted(best["best_depth"].unique()))
        ax.set_title(f"best depth, {mode}")
        ax.set_xlabel("n_bob (Bob's training photos)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best l (offset slightly per task)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _gain_fig(gain: pd.DataFrame, order: list[str], path: Path) -> Path:
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for t in order:
        b = gain[gain["task"] == t].sort_values("n_bob")
        if len(b):
            ax.errorbar(b["n_bob"], b["gain"], yerr=b["gain_std"].fillna(0), marker="o",
                        capsize=3, label=t)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("n_bob (Bob's training photos)")
    ax.set_ylabel("gain over scratch at best depth (points)")
    ax.set_title("gain over scratch (error bars: std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# The report --------------------------------------------------------------------------------------

def _csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    return path


def _pm(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:+.1f} ± {std:.1f}" if math.isfinite(std) else f"{mean:+.1f}"


def summary_text(study: dict, df: pd.DataFrame, acc: pd.DataFrame, best: pd.DataFrame,
                 gain: pd.DataFrame, found: list[dict], figures: list[Path]) -> str:
    order = [t for t in task_order(study) if t in set(df["task"])]
    n_bobs = sorted(int(n) for n in df["n_bob"].unique())
    opts = study["options"]
    expected = len(study["run_ids"])
    lines = [f"# Case study {study['study']}: does Bob's {' vs '.join(study['bob']['classes'])} "
             "task profit from a semantically related Alice?", "",
             f"Bob: `{study['bob']['dataset']}` ({', '.join(study['bob']['classes'])}), evaluated "
             "on the validation photos. Architecture "
             f"`{opts['arch']}`, images {opts['image_size']}x{opts['image_size']}, seeds "
             f"{', '.join(map(str, opts['seeds']))}, n_bob {', '.join(map(str, n_bobs))}; "
             f"each Bob run sees about {opts['passes']} samples (at least {opts['min_epochs']} "
             f"epochs), Alice {opts['alice_epochs']} epochs ({opts['alice_optimizer']}). "
             f"{len(df)} of {expected} planned runs are in the store"
             + ("." if len(df) == expected else " (partial: re-run the study to complete it)."),
             "", "## Alice's tasks", "",
             "| task | relation to cat vs dog | classes | Alice's test accuracy |",
             "| --- | --- | --- | --- |"]
    for t in order:
        if t == SCRATCH:
            continue
        info = study["tasks"][t]
        a = df[df["task"] == t]["alice_test_acc"].groupby(df["seed"]).first()
        lines.append(f"| {t} | {info['relation']} | {', '.join(info['classes'])} | "
                     f"{100 * a.mean():.1f}% |")
    lines += ["", "## Gain over scratch (points, mean ± std over seeds, at the best depth)", "",
              "| task | " + " | ".join(f"n_bob {n}" for n in n_bobs) + " |",
              "| --- |" + " --- |" * len(n_bobs)]
    for t in order:
        if t == SCRATCH:
            continue
        cells = []
        for n in n_bobs:
            r = gain[(gain["task"] == t) & (gain["n_bob"] == n)]
            cells.append("–" if r.empty else
                         f"{_pm(r['gain'].iloc[0], r['gain_std'].iloc[0])} "
                         f"(l={r['best_depth'].iloc[0]} {r['best_mode'].iloc[0]})")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    sc = acc[acc["mode"] == SCRATCH]
    lines.append("| *scratch accuracy* | " + " | ".join(
        (f"{100 * sc[sc['n_bob'] == n]['mean'].iloc[0]:.1f}%" if (sc["n_bob"] == n).any() else "–")
        for n in n_bobs) + " |")
    lines += ["", "## Best depth l (highest mean accuracy; per-seed best depths in brackets)", "",
              "| task | mode | " + " | ".join(f"n_bob {n}" for n in n_bobs) + " |",
              "| --- | --- |" + " --- |" * len(n_bobs)]
    for t in order:
        for mode in MODES:
            b = best[(best["task"] == t) & (best["mode"] == mode)].set_index("n_bob")
            if b.empty:
                continue
            lines.append(f"| {t} | {mode} | " + " | ".join(
                (f"{b.loc[n, 'best_depth']} ({100 * b.loc[n, 'acc']:.1f}%) [{b.loc[n, 'seed_best_depths']}]"
                 if n in b.index else "–") for n in n_bobs) + " |")
    lines += ["", "## The paper's claims beside these data", "",
              "Mohamud & Brink (2025), in controlled real-world scenarios including a dog-vs-cat "
              "task: Bob reuses Alice's pre-trained network effectively when there are semantic "
              "correlations between his task and hers, and the best number of retrained layers "
              "follows that correlation. A difference counts as resolved when it exceeds its 95% "
              "Student-t interval over seeds (with 2 seeds, 12.7 standard errors; 3 seeds, 4.3), "
              "so at this scale many verdicts are inconclusive; more `--seeds` resolve more.", "",
              "| claim | here | verdict |", "| --- | --- | --- |"]
    for c in found:
        lines.append(f"| {c['claim']} | {c['evidence']} | **{c['verdict']}** |")
    lines += ["", "## Figures", ""] + [f"- `{p.name}`" for p in figures]
    lines += ["", "Tables: `accuracy.csv`, `best_depth.csv`, `gain.csv`. The best depth is chosen "
              "on the validation photos that also measure the gain, which favours every Alice a "
              "little (the same for all tasks).", ""]
    return "\n".join(lines)


def write_report(out) -> Path:
    """Write `<out>/report/` (see the module docstring); returns that directory."""
    out = Path(out)
    study, df = load_study(out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    acc = accuracy_table(df)
    best = best_depths(df, acc)
    gain = gains(df, acc)
    order = [t for t in task_order(study) if t in set(df["task"])]
    chance = float(df["chance"].mean())
    figures = [_acc_vs_depth(acc, order, int(n), chance, report / f"acc_vs_depth_n{int(n)}.png")
               for n in sorted(df["n_bob"].unique())]
    if not best.empty:
        figures.append(_best_depth_fig(best, order, report / "best_depth.png"))
    if not gain.empty:
        figures.append(_gain_fig(gain, order, report / "gain.png"))
    _csv(acc, report / "accuracy.csv")
    _csv(best, report / "best_depth.csv")
    _csv(gain, report / "gain.csv")
    found = claims(study, gain, best) if not gain.empty else []
    write_bytes(report / "summary.md",
                summary_text(study, df, acc, best, gain, found, figures).encode())
    return report
