"""The case study's report: tables, figures and a `summary.md` whose findings are computed from the
stored runs, with the paper's claims beside them (supported / contradicted / inconclusive, the
words and rule of `engine reproduce`).

Reads `<out>/study.json` (written by engine.studies.case_study: which Alice ID is which task) and
the results store, keeps the study's run IDs, and writes to `<out>/report/`:
- `accuracy.csv`: Bob's test accuracy per (task, mode, n_bob, depth l): mean, std, seeds;
- `best_depth.csv`: per (task, mode, n_bob) the depth with the highest mean accuracy, its accuracy,
  and the best depths of the single seeds (`seed_best_depths`, "seed:depth" pairs);
- `gain.csv`: per (task, n_bob) the gain over scratch, in points, at the task's best (l, mode)
  (chosen on the mean over seeds), mean and std over seeds of the per-seed differences, and
  those differences (`seed_gains`, "seed:points" pairs);
- `acc_vs_depth_n<n>.png`, `best_depth.png`, `gain.png`, `summary.md`, and `report.html` (engine.pages:
  the same tables and verdicts, the figures embedded, the study's options).

Verdicts come from engine.studies.case_study_claims. The best (l, mode) is picked on the same test
photos that measure the gain, which biases gains upward by a little; the comparison across tasks
shares that bias.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from engine import pages
from engine.atomic import atomic_path, write_bytes
from engine.errors import EngineError
from engine.store import ResultsStore
from engine.studies.case_study_claims import MODES, claims, format_seeds, task_order

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
        per_seed = {int(seed): int(b.loc[b["test_acc"].idxmax(), "retrain_from"])
                    for seed, b in runs.groupby("seed")}
        rows.append({"task": task, "mode": mode, "n_bob": int(n),
                     "best_depth": int(best["retrain_from"]), "acc": float(best["mean"]),
                     "acc_std": float(best["std"]) if pd.notna(best["std"]) else math.nan,
                     "depths": int(block["retrain_from"].nunique()),
                     "seed_best_depths": format_seeds(per_seed)})
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
        by_seed = {int(r.seed): 100 * (r.test_acc - scratch[(n, r.seed)])
                   for r in at_best.itertuples() if (n, r.seed) in scratch.index}
        diffs = list(by_seed.values())
        L = int(runs["n_layers"].max())
        head = runs[(runs["retrain_from"] == L) & (runs["mode"] == "finetune")]
        head_diffs = [100 * (r.test_acc - scratch[(n, r.seed)]) for r in head.itertuples()
                      if (n, r.seed) in scratch.index]
        rows.append({"task": task, "n_bob": int(n), "best_mode": best["mode"],
                     "best_depth": int(best["retrain_from"]),
                     "gain": float(np.mean(diffs)) if diffs else math.nan,
                     "gain_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan,
                     "seeds": len(diffs), "seed_gains": format_seeds(by_seed),
                     "gain_head_only": float(np.mean(head_diffs)) if head_diffs else math.nan,
                     "scratch_acc": float(scratch.xs(n, level="n_bob").mean())
                     if n in scratch.index.get_level_values(0) else math.nan})
    return pd.DataFrame(rows)


# Figures -----------------------------------------------------------------------------------------

_save = pages.save_png


def _modes(frame: pd.DataFrame) -> list[str]:
    """The transfer modes the study ran (one panel each)."""
    return [m for m in MODES if (frame["mode"] == m).any()] or list(MODES)


def _acc_vs_depth(acc: pd.DataFrame, order: list[str], n: int, chance: float, path: Path) -> Path:
    modes = _modes(acc)
    fig = Figure(figsize=(5.5 * len(modes), 4.2))
    axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    scratch = acc[(acc["mode"] == SCRATCH) & (acc["n_bob"] == n)]
    for ax, mode in zip(axes, modes):
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
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def _best_depth_fig(best: pd.DataFrame, order: list[str], path: Path) -> Path:
    modes = _modes(best)
    fig = Figure(figsize=(5.5 * len(modes), 4))
    axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    for ax, mode in zip(axes, modes):
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
    axes[-1].legend(fontsize=7)
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
              "follows that correlation. Verdicts follow `engine reproduce`'s rule "
              "(engine.studies.claims.stats): per-seed effects with their 95% t-interval, a claim "
              "supported when its one-sided t-test of 'mean <= 0' rejects at 5% and contradicted "
              "when that of 'mean >= margin' does, Holm-corrected over all the judgements here; "
              "one seed decides nothing, and with two the interval is 12.7 standard errors wide, "
              "so at this scale many verdicts are inconclusive; more `--seeds` resolve more.", "",
              "| claim | here | verdict |", "| --- | --- | --- |"]
    for c in found:
        lines.append(f"| {c['claim']} | {c['evidence']} | **{c['verdict']}** |")
    lines += ["", "## Figures", ""] + [f"- `{p.name}`" for p in figures]
    lines += ["", "Tables: `accuracy.csv`, `best_depth.csv`, `gain.csv`. The best depth is chosen "
              "on the validation photos that also measure the gain, which favours every Alice a "
              "little (the same for all tasks).", ""]
    return "\n".join(lines)


def _page(study: dict, df: pd.DataFrame, best: pd.DataFrame, gain: pd.DataFrame,
          found: list[dict], figures: list[Path], path: Path) -> Path:
    tasks = pd.DataFrame([{"task": t, "relation": info["relation"],
                           "classes": ", ".join(info["classes"]),
                           "Alice's test accuracy (%)": 100 * df.loc[df["task"] == t,
                                                                       "alice_test_acc"].mean()}
                          for t, info in study["tasks"].items() if t in set(df["task"])])
    gain_view = gain.assign(gain=gain["gain"].round(2), gain_std=gain["gain_std"].round(2),
                            scratch_acc=(100 * gain["scratch_acc"]).round(1))
    sections = [
        pages.Text(f"Bob: {study['bob']['dataset']} ({', '.join(study['bob']['classes'])}); "
                   f"{len(df)} of {len(study['run_ids'])} planned runs are in the store."),
        pages.Heading("The paper's claims beside these data"),
        pages.Table(pd.DataFrame(found, columns=["claim", "evidence", "verdict"])
                    if found else pd.DataFrame({"claim": ["(no gains to judge yet)"]})),
        pages.Heading("Alice's tasks"), pages.Table(tasks),
        pages.Heading("Gain over scratch (points) at the best depth"),
        pages.Table(gain_view, "gain and gain_std: points; scratch_acc: %"),
        pages.Heading("Best depth per task, mode and n_bob"), pages.Table(best),
        pages.Heading("Figures"), *[pages.Image(p, p.name) for p in figures],
        pages.Heading("Options (study.json)"),
        pages.Pre(json.dumps(study["options"], indent=2))]
    return pages.write_page(path, f"Case study {study['study']}", sections)


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
    _page(study, df, best, gain, found, figures, report / "report.html")
    return report
