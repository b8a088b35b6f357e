"""Figures of `engine manifold-sweep`: the best transfer depth and accuracy against depth.

Depth here is the retrain-from layer l of a finetune run (layers 1..l-1 frozen from Alice, l..L
trained, L = the head), with scratch (nothing from Alice) drawn as l = 0. The best depth of a
setting (similarity s, target sample size n) is

    l*(s, n) = argmax over {0 (scratch), 1, ..., L} of the mean Bob test accuracy over seeds,

ties going to the smallest l. Accuracies are drawn in percent. Figures and the page are drawn
and written through engine.pages.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from engine import pages

CELL = ["beta", "n_bob", "mode", "retrain_from"]
# Best depths are small integers, so lines often coincide; these keep them distinguishable.
STYLES = [dict(marker=m, markersize=s, linestyle=ls, linewidth=w) for m, s, ls, w in
          (("o", 11, "-", 4), ("s", 8, "--", 2.5), ("^", 6, ":", 1.8), ("D", 4, "-", 1))]


def cells(table: pd.DataFrame) -> pd.DataFrame:
    """Per (s, n, mode, l): test accuracy mean, std over seeds (ddof 1; NaN for one seed), runs;
    `depth` is l for finetune and 0 for scratch."""
    g = table.groupby(CELL, sort=True)["test_acc"]
    c = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "runs": g.size()}).reset_index()
    c["depth"] = np.where(c["mode"] == "scratch", 0, c["retrain_from"])
    return c.sort_values(["beta", "n_bob", "depth"]).reset_index(drop=True)


def best_depths(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (overlap, n_target): best_l (0 = scratch), best_acc, scratch_acc, gain
    (best_acc - scratch_acc)."""
    c = cells(table)
    if c.empty:
        return pd.DataFrame(columns=["overlap", "n_target", "best_l", "best_acc", "scratch_acc",
                                     "gain"])
    best = c.loc[c.groupby(["beta", "n_bob"], sort=True)["mean"].idxmax()]
    scratch = c[c["mode"] == "scratch"].set_index(["beta", "n_bob"])["mean"]
    out = pd.DataFrame({
        "overlap": best["beta"].to_numpy(), "n_target": best["n_bob"].to_numpy(),
        "best_l": best["depth"].to_numpy(), "best_acc": best["mean"].to_numpy()})
    out["scratch_acc"] = [scratch.get((b, n), np.nan) for b, n in
                          zip(out["overlap"], out["n_target"])]
    out["gain"] = out["best_acc"] - out["scratch_acc"]
    return out.reset_index(drop=True)


def format_best(best: pd.DataFrame) -> str:
    """The best-depth table as text: rows overlap, columns n_target, entries l* (0 = scratch)."""
    if best.empty:
        return "no runs"
    grid = best.pivot(index="overlap", columns="n_target", values="best_l")
    grid = grid.sort_index(ascending=False)
    head = "best retrain-from layer l* (0 = scratch); rows overlap, columns n_target"
    lines = [head, "overlap " + " ".join(f"{n:>6}" for n in grid.columns)]
    for s, row in grid.iterrows():
        lines.append(f"{s:<7g} " + " ".join(f"{int(v):>6}" if v == v else f"{'-':>6}" for v in row))
    return "\n".join(lines)


_save = pages.save_png


def _depth_axis(ax, n_layers: int) -> None:
    ax.set_yticks(range(n_layers + 1))
    ax.set_yticklabels(["scratch"] + [f"{l}" + (" (head)" if l == n_layers else "")
                                      for l in range(1, n_layers + 1)])
    ax.set_ylim(-0.4, n_layers + 0.4)
    ax.grid(alpha=0.3)


def _best_vs(best: pd.DataFrame, x: str, line: str, n_layers: int, path: Path, *,
             xlabel: str, line_label: str, log_x: bool) -> Path:
    fig = Figure(layout="constrained", figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i, (value, d) in enumerate(best.groupby(line, sort=True)):
        d = d.sort_values(x)
        ax.plot(d[x], d["best_l"], label=f"{line_label} {value:g}", **STYLES[i % len(STYLES)])
    if log_x:
        ax.set_xscale("log")
    ax.set_xticks(sorted(best[x].unique()))
    ax.set_xticklabels([f"{v:g}" for v in sorted(best[x].unique())])
    _depth_axis(ax, n_layers)
    ax.set(xlabel=xlabel, ylabel="best retrain-from layer l*",
           title=f"Best transfer depth (layers 1..l*-1 frozen from Alice, L = {n_layers})")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _acc_vs_depth(c: pd.DataFrame, n_layers: int, chance: float, path: Path) -> Path:
    overlaps = sorted(c["beta"].unique(), reverse=True)
    cols = min(len(overlaps), 4)
    rows = -(-len(overlaps) // cols)
    fig = Figure(layout="constrained", figsize=(3.6 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    colours = {n: f"C{i}" for i, n in enumerate(sorted(c["n_bob"].unique()))}
    for ax, s in zip(axes.flat, overlaps):
        block = c[c["beta"] == s]
        for n, d in block.groupby("n_bob", sort=True):
            ft = d[d["mode"] == "finetune"]
            ax.errorbar(ft["depth"], 100 * ft["mean"], yerr=100 * ft["std"].fillna(0),
                        color=colours[n], marker="o", capsize=2, label=f"n={n}")
            for v in d.loc[d["mode"] == "scratch", "mean"]:
                ax.axhline(100 * v, color=colours[n], linestyle="--", linewidth=1)
            top = d.loc[d["mean"].idxmax()]
            ax.plot(top["depth"], 100 * top["mean"], marker="*", markersize=14,
                    color=colours[n], markeredgecolor="black", linestyle="none")
        ax.axhline(100 * chance, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(range(0, n_layers + 1))
        ax.set_xticklabels(["scr"] + [str(l) for l in range(1, n_layers + 1)])
        ax.set(title=f"overlap {s:g}", xlabel="retrain-from layer l")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("Bob test accuracy (%)")
    for ax in axes.flat[len(overlaps):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small", title="dashed: scratch; *: best")
    return _save(fig, path)


def write_figures(table: pd.DataFrame, directory: Path) -> list[Path]:
    """best_depth_vs_n_target.png, best_depth_vs_overlap.png, acc_vs_depth.png and report.html
    (engine.pages: the three figures and the best-depth table) for `table` (results rows of one
    manifold sweep) in `directory`; none when there are no rows."""
    if table.empty:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    c = cells(table)
    n_layers = int(table["n_layers"].max())
    best = best_depths(table)
    figures = [
        _best_vs(best, "n_target", "overlap", n_layers, directory / "best_depth_vs_n_target.png",
                 xlabel="target training samples n", line_label="overlap", log_x=True),
        _best_vs(best, "overlap", "n_target", n_layers, directory / "best_depth_vs_overlap.png",
                 xlabel="source-target overlap (similarity)", line_label="n =", log_x=False),
        _acc_vs_depth(c, n_layers, float(table["chance"].mean()), directory / "acc_vs_depth.png"),
    ]
    page = pages.write_page(directory / "report.html", "Correlated hidden-manifold sweep", [
        pages.Text("Best retrain-from layer l* (0 = scratch) per source-target overlap and target "
                   f"sample size n; L = {n_layers}; accuracies in %."),
        pages.Table(best.assign(best_acc=100 * best["best_acc"],
                                scratch_acc=100 * best["scratch_acc"], gain=100 * best["gain"]),
                    "best depth per (overlap, n_target)"),
        *[pages.Image(p, p.name) for p in figures]])
    return figures + [page]
