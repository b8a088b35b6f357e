"""Gerace et al. 2024, "Probing transfer learning with a model of synthetic correlated datasets":
their claims on the shared mnist:fashion freeze-depth sweep (engine.studies.claims.sweeps.base).

Depth claims read Bob's `reinit` runs: Gerace et al.'s transfer keeps the transferred layers
frozen and learns the layers above them anew, which is `reinit` (layers l..L fresh on Alice's
frozen 1..l-1); in `finetune` the retrained layers start from Alice's weights, so retraining more
of them costs little and the depth trade-off the paper describes is blurred. The best depth of a
(seed, arch, beta, budget) cell is the retrain-from depth l of Bob's highest test accuracy (the
mean of the tied depths on a tie). Source selection lives in engine.studies.claims.gerace_select.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine import pages
from engine.errors import EngineError
from engine.studies.claims import sweeps
from engine.studies.claims.base import Claim, Context, Evidence, Scale

PAPER = "Gerace et al. 2024"
MODE = "reinit"


def _base_rows(ctx: Context) -> pd.DataFrame:
    df = ctx.rows(sweeps.base(ctx.scale))
    if df.empty:
        raise EngineError("the base sweep's runs are not stored; run engine reproduce without "
                          "--report-only first")
    return df


def best_depths(df: pd.DataFrame, mode: str = MODE) -> pd.DataFrame:
    """One row per (seed, arch, beta, n_bob) of `mode` runs: best_l (mean of the depths tied at
    the highest test accuracy), best_acc, n_layers."""
    df = df[df["mode"] == mode]
    rows = []
    for (seed, arch, beta, n), g in df.groupby(["seed", "arch", "beta", "n_bob"]):
        top = g["test_acc"].max()
        rows.append({"seed": int(seed), "arch": arch, "beta": float(beta), "n_bob": int(n),
                     "best_l": float(g.loc[g["test_acc"] == top, "retrain_from"].mean()),
                     "best_acc": float(top), "n_layers": int(g["n_layers"].max())})
    return pd.DataFrame(rows, columns=["seed", "arch", "beta", "n_bob", "best_l", "best_acc",
                                       "n_layers"])


def _by_seed(cells: pd.DataFrame, column: str, seeds) -> tuple[float, ...]:
    """The per-seed mean of `column` over the seed's cells, NaN for a seed without cells."""
    means = cells.groupby("seed")[column].mean() if len(cells) else pd.Series(dtype=float)
    return tuple(float(means.get(s, math.nan)) for s in seeds)


def _records(frame: pd.DataFrame) -> tuple[dict, ...]:
    return tuple({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                 for r in frame.to_dict("records"))


# gerace-depth-vs-data -----------------------------------------------------------------------------

def data_cells(best: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, arch, beta): best l at the smallest budget, at the largest, and the move
    l_small - l_large (layers; positive = with more data Bob retrains more layers)."""
    rows = []
    for (seed, arch, beta), g in best.groupby(["seed", "arch", "beta"]):
        if g["n_bob"].nunique() < 2:
            continue
        small, large = g.loc[g["n_bob"].idxmin()], g.loc[g["n_bob"].idxmax()]
        rows.append({"seed": int(seed), "arch": arch, "beta": float(beta),
                     "n_small": int(small["n_bob"]), "n_large": int(large["n_bob"]),
                     "l_small": float(small["best_l"]), "l_large": float(large["best_l"]),
                     "move": float(small["best_l"] - large["best_l"])})
    return pd.DataFrame(rows, columns=["seed", "arch", "beta", "n_small", "n_large", "l_small",
                                       "l_large", "move"])


def _depth_vs_data(ctx: Context) -> Evidence:
    cells = data_cells(best_depths(_base_rows(ctx)))
    effects = _by_seed(cells, "move", ctx.scale.seed_list)
    fig = pages.figure(6.5, 4)
    ax = fig.subplots()
    for beta, g in cells.groupby("beta"):
        m = g[["l_small", "l_large"]].mean()
        ax.plot([0, 1], m.values, marker="o", label=f"beta {beta:g}")
    if len(cells):
        ax.set_xticks([0, 1], [f"n_bob {cells['n_small'].iloc[0]}",
                               f"n_bob {cells['n_large'].iloc[0]}"])
    ax.set(ylabel="best retrain-from depth l (reinit, mean over seeds)",
           title="Best depth vs Bob's budget (smaller l = more layers retrained)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure = str(pages.save_png(fig, ctx.figure_path()))
    finite = [e for e in effects if math.isfinite(e)]
    summary = (f"best l moves by {np.mean(finite):+.2f} layers (mean over seeds) from the smaller "
               f"to the larger budget (positive: more layers retrained with more data), "
               f"reinit, {cells['beta'].nunique()} betas" if finite else "no budgets to compare")
    return Evidence(effects=effects, summary=summary, numbers=_records(cells), figure=figure)


# gerace-depth-vs-similarity -----------------------------------------------------------------------

def similarity_cells(best: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, arch, n_bob): the least-squares slope of best l on beta (layers per unit beta;
    positive = the more similar the tasks, the more of Alice's layers Bob keeps), and the share
    of betas whose best l is within one layer of the head (l >= L - 1: Bob retrains few layers)."""
    rows = []
    for (seed, arch, n), g in best.groupby(["seed", "arch", "n_bob"]):
        if g["beta"].nunique() < 2:
            continue
        slope = round(float(np.polyfit(g["beta"].to_numpy(float), g["best_l"].to_numpy(float),
                                         1)[0]), 9)  # no -1e-16 for a flat line
        rows.append({"seed": int(seed), "arch": arch, "n_bob": int(n), "slope": slope,
                     "best_l_by_beta": " ".join(f"{b:g}:{l:g}" for b, l in
                                                zip(g["beta"], g["best_l"])),
                     "shallow_share": float((g["best_l"] >= g["n_layers"] - 1).mean())})
    return pd.DataFrame(rows, columns=["seed", "arch", "n_bob", "slope", "best_l_by_beta",
                                       "shallow_share"])


def _depth_vs_similarity(ctx: Context) -> Evidence:
    best = best_depths(_base_rows(ctx))
    cells = similarity_cells(best)
    effects = _by_seed(cells, "slope", ctx.scale.seed_list)
    fig = pages.figure(6.5, 4)
    ax = fig.subplots()
    for n, g in best.groupby("n_bob"):
        m = g.groupby("beta")["best_l"].agg(["mean", "std"]).reset_index()
        ax.errorbar(m["beta"], m["mean"], yerr=m["std"].fillna(0), marker="o", capsize=3,
                    label=f"n_bob {n}")
    ax.set(xlabel="beta (source-target similarity)",
           ylabel="best retrain-from depth l (reinit)",
           title="Best depth vs similarity (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure = str(pages.save_png(fig, ctx.figure_path()))
    finite = [e for e in effects if math.isfinite(e)]
    shallow = float(cells["shallow_share"].mean()) if len(cells) else math.nan
    summary = (f"best l rises by {np.mean(finite):+.2f} layers per unit beta (mean over seeds); "
               f"in {shallow:.0%} of (seed, beta, budget) cells Bob's best is to retrain only the "
               f"top one or two layers" if finite else "fewer than two betas: no slope")
    return Evidence(effects=effects, summary=summary, numbers=_records(cells), figure=figure)


def _base_only(scale: Scale):
    return (sweeps.base(scale),)


def _source_selection(ctx: Context) -> Evidence:
    from engine.studies.claims.gerace_select import evaluate
    return evaluate(ctx)


def _source_needs(scale: Scale):
    from engine.studies.claims.gerace_select import needs
    return needs(scale)


CLAIMS = (
    Claim(
        id="gerace-depth-vs-data", paper=PAPER,
        sentence="The best retrain-from depth moves with Bob's data budget: with more data, "
                 "retraining more layers (smaller l) becomes better.",
        effect="best l at the smaller budget minus best l at the larger budget (layers; reinit; "
               "mean over archs and betas of one seed)",
        margin=0.5,
        rule="Per seed, arch, beta and budget (the base sweep's n_bobs, smallest and largest) the "
             "best depth is the retrain-from l of Bob's highest test accuracy among his reinit runs "
             "(the mean l on ties); the seed's effect is the mean over archs and betas of "
             "l_best(small budget) - l_best(large budget). Positive: more data, more layers "
             "retrained. Margin 0.5 layers: the best depth moving by at least half a layer on "
             "average counts as the claim holding.",
        needs=_base_only, evaluate=_depth_vs_data),
    Claim(
        id="gerace-depth-vs-similarity", paper=PAPER,
        sentence="The best retrain-from depth moves with source-target similarity: the more "
                 "similar Alice's task, the more of her layers Bob keeps (larger best l); the "
                 "best is often to retrain only the top layers.",
        effect="slope of the best l on beta (layers per unit beta; reinit; mean over archs and "
               "budgets of one seed)",
        margin=0.5,
        rule="Per seed, arch and budget, the best depth (as in gerace-depth-vs-data) at each of the "
             "base sweep's betas (beta = the similarity of Bob's task to Alice's); the cell's "
             "effect is the least-squares slope of best l on beta, the seed's the mean over cells. "
             "Positive: more similar, more layers kept. Margin 0.5 layers per unit beta. "
             "'Often shallow' is reported (share of cells with best l >= L - 1), not judged.",
        needs=_base_only, evaluate=_depth_vs_similarity),
    Claim(
        id="gerace-source-selection", paper=PAPER,
        sentence="Layer-wise similarity (CKA) of a candidate source network to a small network "
                 "trained from scratch on Bob's few samples ranks the candidate sources by how "
                 "well they transfer.",
        effect="Spearman's rho between the candidates' CKA score and their measured transfer "
               "accuracy (mean over target tasks of one seed)",
        margin=0.5,
        rule="Per seed, each base-sweep dataset (one beta) is in turn the target; the candidates "
             "are that seed's Alices of every beta. Each candidate is fine-tuned on the target "
             "with Bob's smallest budget at every depth (the base sweep's own runs where the "
             "candidate is the target's Alice, extra runs otherwise); its measured transfer is "
             "the best of those test accuracies. engine.analysis.select.select_source trains a "
             "scratch network on that budget and scores each candidate by cka_diag (mean CKA of "
             "equal-depth layers on the target's test inputs); the seed's effect is the mean over "
             "targets of Spearman(cka_diag, measured transfer). Margin rho 0.5.",
        needs=_source_needs, evaluate=_source_selection),
)
