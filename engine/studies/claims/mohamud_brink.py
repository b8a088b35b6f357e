"""Mohamud & Brink 2025's claims on the freeze-depth sweep (the toy model and the photos case
study are in engine.studies.claims.mb_studies).

Accuracies are Bob's test accuracy; effects in accuracy are in percentage points. Each effect
is computed per seed from runs of that seed only (one Alice per (pair, beta, arch, seed)), so
the claims' repeats are the seeds. The per-seed functions (`*_effects`) take a results table
and are tested on hand-made tables.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine import pages
from engine.studies.claims import sweeps
from engine.studies.claims.base import Claim, Context, Evidence, Scale
from engine.studies.claims.effects import rank_correlation

PAPER = "Mohamud & Brink 2025"
TRANSFER = ("finetune", "reinit")


def _spearman(x, y) -> float:
    """Spearman's rho; 0 where y is constant (no rise, no ranking), NaN where x is
    (engine.studies.claims.effects.rank_correlation, shared by every claim)."""
    return rank_correlation(x, y)


def _whole(df: pd.DataFrame) -> pd.DataFrame:
    """Runs on Bob's largest budget per dataset (the base sweep's 'all')."""
    return df[df["n_bob"] == df.groupby("dataset")["n_bob"].transform("max")]


def _per_seed(values: dict) -> tuple[float, ...]:
    return tuple(float(values[s]) for s in sorted(values))


def _save(fig, ctx: Context) -> str:
    return str(pages.save_png(fig, ctx.figure_path()))


# mb-monotone-beta ---------------------------------------------------------------------------------

def monotone_effects(df: pd.DataFrame) -> tuple[dict, list[dict]]:
    """Per seed: the mean over (arch, mode, l) cells of Spearman's rho between beta and Bob's
    accuracy (finetune and reinit, whole budget)."""
    df = _whole(df[df["mode"].isin(TRANSFER)])
    cells = []
    for (arch, mode, l, seed), g in df.groupby(["arch", "mode", "retrain_from", "seed"]):
        cells.append({"arch": arch, "mode": mode, "l": int(l), "seed": int(seed),
                      "rho": _spearman(g["beta"], g["test_acc"])})
    t = pd.DataFrame(cells)
    return ({int(s): float(g["rho"].mean()) for s, g in t.groupby("seed")} if len(t) else {}), cells


def _monotone(ctx: Context) -> Evidence:
    df = ctx.rows(sweeps.base(ctx.scale))
    effects, cells = monotone_effects(df)
    w = _whole(df[df["mode"].isin(TRANSFER)])
    fig = pages.figure(7, 4.5)
    ax = fig.add_subplot()
    for (mode, l), g in w.groupby(["mode", "retrain_from"]):
        m = g.groupby("beta")["test_acc"].mean() * 100
        ax.plot(m.index, m.values, marker="o", linestyle="-" if mode == "finetune" else "--",
                label=f"{mode} l={l}")
    ax.set(xlabel="beta", ylabel="Bob test accuracy (%)", title="Bob's accuracy vs beta")
    ax.legend(fontsize="x-small", ncol=2)
    rhos = [c["rho"] for c in cells if math.isfinite(c["rho"])]
    return Evidence(_per_seed(effects), f"mean Spearman rho(beta, accuracy) over cells per seed; "
                    f"{sum(r > 0 for r in rhos)} of {len(rhos)} cells rise", tuple(cells),
                    _save(fig, ctx))


# mb-above-chance and mb-chance-from-architecture -------------------------------------------------

def head_only_at_zero(df: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Runs at beta = 0, l = L, whole budget, in `mode`: accuracy above chance in points."""
    d = _whole(df[(df["beta"] == 0) & (df["mode"] == mode) & (df["retrain_from"] == df["n_layers"])])
    return d.assign(above=100 * (d["test_acc"] - d["chance"]))


def above_chance_effects(df: pd.DataFrame, mode: str = "finetune") -> dict:
    """Per seed: Bob's accuracy above chance (points) at beta = 0 with only the output layer
    retrained on Alice's (or, mode random-frozen, random) frozen network, mean over archs."""
    d = head_only_at_zero(df, mode)
    return {int(s): float(g["above"].mean()) for s, g in d.groupby("seed")}


def _bars(ctx: Context, df: pd.DataFrame, title: str) -> str:
    fig = pages.figure(6, 4)
    ax = fig.add_subplot()
    for i, mode in enumerate(("finetune", "random-frozen")):
        d = head_only_at_zero(df, mode)
        ax.scatter(np.full(len(d), i) + np.linspace(-0.1, 0.1, max(1, len(d)))[:len(d)],
                   d["above"], label=mode)
    ax.axhline(0, color="grey", linestyle="--", label="chance")
    ax.set_xticks([0, 1], ["Alice's layers (finetune)", "random layers"])
    ax.set(ylabel="accuracy above chance (points)", title=title)
    ax.legend(fontsize="small")
    return _save(fig, ctx)


def _rows_at_zero(df: pd.DataFrame) -> tuple[dict, ...]:
    d = pd.concat([head_only_at_zero(df, m) for m in ("finetune", "random-frozen")])
    return tuple(d[["arch", "mode", "seed", "retrain_from", "test_acc", "chance", "above"]]
                 .to_dict("records"))


def _above_chance(ctx: Context) -> Evidence:
    df = ctx.rows(sweeps.base(ctx.scale))
    e = above_chance_effects(df, "finetune")
    return Evidence(_per_seed(e), "points above chance at beta = 0, head only on Alice's frozen "
                    "layers (l = L)", _rows_at_zero(df), _bars(ctx, df, "beta = 0, l = L"))


def _from_architecture(ctx: Context) -> Evidence:
    df = ctx.rows(sweeps.base(ctx.scale))
    rf = above_chance_effects(df, "random-frozen")
    alice = above_chance_effects(df, "finetune")
    gap = [alice[s] - rf[s] for s in sorted(set(rf) & set(alice))]
    return Evidence(_per_seed(rf), "points above chance at beta = 0, head only on randomly "
                    f"initialised frozen layers; Alice's layers minus random ones: "
                    f"{np.mean(gap) if gap else math.nan:+.2f} points (mean over seeds)",
                    _rows_at_zero(df), _bars(ctx, df, "beta = 0, l = L: Alice vs random layers"))


# mb-shallow-when-uncorrelated and mb-depth-indicates-correlation ---------------------------------

def best_depths(df: pd.DataFrame, mode: str = "reinit") -> pd.DataFrame:
    """The best retrain-from depth l* per (pair, arch, beta, seed) in `mode`, whole budget; ties
    go to the deepest (the cheapest retraining)."""
    d = _whole(df[df["mode"] == mode])
    rows = []
    for (pair, arch, beta, seed), g in d.groupby(["pair", "arch", "beta", "seed"]):
        top = g[g["test_acc"] == g["test_acc"].max()]
        rows.append({"pair": pair, "arch": arch, "beta": float(beta), "seed": int(seed),
                     "best_l": int(top["retrain_from"].max()),
                     "best_acc": float(top["test_acc"].max()), "L": int(g["n_layers"].iloc[0])})
    return pd.DataFrame(rows)


def shallow_effects(df: pd.DataFrame, mode: str = "reinit") -> dict:
    """Per seed: l*(highest beta) - l*(lowest beta), layers, mean over archs."""
    b = best_depths(df, mode)
    out = {}
    for seed, g in b.groupby("seed"):
        per_arch = [float(a.loc[a["beta"].idxmax(), "best_l"] - a.loc[a["beta"].idxmin(), "best_l"])
                    for _, a in g.groupby("arch") if a["beta"].nunique() > 1]
        if per_arch:
            out[int(seed)] = float(np.mean(per_arch))
    return out


def _best_depth_figure(ctx: Context, b: pd.DataFrame, x: str, title: str) -> str:
    fig = pages.figure(6, 4)
    ax = fig.add_subplot()
    for (pair, arch), g in b.groupby(["pair", "arch"]):
        m = g.groupby(x)["best_l"].mean()
        ax.plot(m.index, m.values, marker="o", label=f"{pair} {arch}")
        ax.scatter(g[x], g["best_l"], alpha=0.3, s=12)
    ax.set(xlabel=x, ylabel="best retrain-from depth l*", title=title)
    ax.legend(fontsize="small")
    return _save(fig, ctx)


def _shallow(ctx: Context) -> Evidence:
    df = ctx.rows(sweeps.base(ctx.scale))
    b = best_depths(df)
    e = shallow_effects(df)
    low = b[b["beta"] == b["beta"].min()]["best_l"] if len(b) else pd.Series(dtype=float)
    return Evidence(_per_seed(e), f"l*(highest beta) - l*(lowest beta) in layers (reinit); at "
                    f"the lowest beta l* averages {low.mean():.2f} of L = "
                    f"{int(b['L'].max()) if len(b) else 0}", tuple(b.to_dict("records")),
                    _best_depth_figure(ctx, b, "beta", "best depth vs beta (reinit)"))


def correlation_rank(b: pd.DataFrame) -> pd.Series:
    """Rank of the task correlation of each (pair, beta) cell: beta first, then, at equal beta,
    how close the right-hand source is to the left one (sweeps.RIGHT_BY_SIMILARITY)."""
    order = {r: len(sweeps.RIGHT_BY_SIMILARITY) - i for i, r in enumerate(sweeps.RIGHT_BY_SIMILARITY)}
    similarity = b["pair"].map(lambda p: order.get(p.split(":")[1], 0))
    return b["beta"] * 100 + similarity


def ranking_effects(b: pd.DataFrame) -> dict:
    """Per seed: Spearman's rho between l* and the task correlation's rank over the cells."""
    b = b.assign(rank=correlation_rank(b))
    return {int(s): _spearman(g["rank"], g["best_l"]) for s, g in b.groupby("seed")}


def _pair_sweeps(scale: Scale) -> tuple:
    beta = scale.betas[len(scale.betas) // 2]
    return tuple(sweeps.pair_sweep(scale, right, beta) for right in sweeps.RIGHT_BY_SIMILARITY)


def _ranks(ctx: Context) -> Evidence:
    frames = [ctx.rows(s) for s in (sweeps.base(ctx.scale),) + _pair_sweeps(ctx.scale)]
    b = best_depths(pd.concat(frames).drop_duplicates("run_id"))
    b = b.assign(correlation_rank=correlation_rank(b))
    return Evidence(_per_seed(ranking_effects(b)), "Spearman rho between l* (reinit) and the "
                    "rank of the task correlation over (pair, beta) cells",
                    tuple(b.to_dict("records")),
                    _best_depth_figure(ctx, b, "correlation_rank",
                                       "best depth vs task correlation rank"))


# mb-feature-correlation --------------------------------------------------------------------------

def gain_by_pair(df: pd.DataFrame) -> pd.DataFrame:
    """Per (pair, arch, seed): the best Alice-based accuracy (finetune or reinit, any l, whole
    budget) minus scratch's, in points."""
    d = _whole(df)
    rows = []
    for (pair, arch, seed), g in d.groupby(["pair", "arch", "seed"]):
        alice = g[g["mode"].isin(TRANSFER)]["test_acc"]
        scratch = g[g["mode"] == "scratch"]["test_acc"]
        if len(alice) and len(scratch):
            rows.append({"pair": pair, "arch": arch, "seed": int(seed),
                         "gain": 100 * float(alice.max() - scratch.mean())})
    return pd.DataFrame(rows)


def feature_effects(g: pd.DataFrame) -> dict:
    """Per seed: Spearman's rho between the right source's closeness to MNIST and the gain."""
    order = {r: -i for i, r in enumerate(sweeps.RIGHT_BY_SIMILARITY)}
    g = g.assign(close=g["pair"].map(lambda p: order.get(p.split(":")[1], math.nan)))
    return {int(s): _spearman(d["close"], d["gain"]) for s, d in g.groupby("seed")}


def _features(ctx: Context) -> Evidence:
    df = pd.concat([ctx.rows(s) for s in _pair_sweeps(ctx.scale)])
    g = gain_by_pair(df)
    fig = pages.figure(6, 4)
    ax = fig.add_subplot()
    names = [f"mnist:{r}" for r in sweeps.RIGHT_BY_SIMILARITY]
    for seed, d in g.groupby("seed"):
        d = d.set_index("pair").reindex(names)
        ax.plot(range(len(names)), d["gain"], marker="o", alpha=0.6, label=f"seed {seed}")
    ax.set_xticks(range(len(names)), names)
    ax.axhline(0, color="grey", linestyle="--")
    ax.set(ylabel="best Alice-based minus scratch (points)",
           title=f"gain of transfer at beta = {_pair_sweeps(ctx.scale)[0].betas[0]:g}")
    ax.legend(fontsize="x-small")
    return Evidence(_per_seed(feature_effects(g)), "Spearman rho between the right-hand source's "
                    "closeness to MNIST and the gain of transfer", tuple(g.to_dict("records")),
                    _save(fig, ctx))


# mb-attribution ----------------------------------------------------------------------------------

def attribution_effects(t: pd.DataFrame) -> dict:
    """Per seed: Spearman's rho between how many layers Bob retrains (L - l + 1) and the share
    of his attribution on his (right) half."""
    return {int(s): _spearman(g["L"] - g["l"] + 1, g["right"]) for s, g in t.groupby("seed")}


def _attribution(ctx: Context) -> Evidence:
    from engine.analysis import artifacts as art
    from engine.analysis.attribution import attribution_mass
    df = ctx.rows(sweeps.base(ctx.scale))
    d = _whole(df[(df["beta"] == 0) & (df["mode"] == "finetune")])
    rows = []
    for _, r in d.sort_values(["seed", "arch", "retrain_from"]).iterrows():
        bob, _ = art.bob_model(ctx.root, r["run_id"], log=ctx.log)
        _, test, manifest = art.dataset(ctx.root, r["dataset"])
        m = attribution_mass(bob, art.first(test, ctx.scale.max_samples), manifest,
                             method="integrated_gradients", steps=16)
        rows.append({"arch": r["arch"], "seed": int(r["seed"]), "l": int(r["retrain_from"]),
                     "L": int(r["n_layers"]), "left": m["left"], "right": m["right"]})
    t = pd.DataFrame(rows)
    fig = pages.figure(6, 4)
    ax = fig.add_subplot()
    for (arch, seed), g in t.groupby(["arch", "seed"]):
        ax.plot(g["l"], 100 * g["right"], marker="o", alpha=0.7, label=f"{arch} seed {seed}")
    ax.set(xlabel="retrain-from depth l (1 = every layer retrained)",
           ylabel="attribution on Bob's half (%)", title="beta = 0, finetune")
    ax.legend(fontsize="x-small")
    return Evidence(_per_seed(attribution_effects(t)), "Spearman rho between layers retrained "
                    "and the share of attribution on Bob's half (integrated gradients, beta = 0)",
                    tuple(t.to_dict("records")), _save(fig, ctx))


# The claims --------------------------------------------------------------------------------------

def _base(scale: Scale) -> tuple:
    return (sweeps.base(scale),)


RHO = "Spearman's rho, in [-1, 1]"
CLAIMS = (
    Claim("mb-monotone-beta", PAPER, "Bob's accuracy rises with beta, for every architecture and "
          "depth", f"mean over (arch, mode, l) cells of {RHO} between beta and Bob's accuracy",
          0.5, "Per seed, for each architecture, transfer mode (finetune, reinit) and depth l at "
          "the whole budget, rho between beta and accuracy; the effect is their mean. Margin 0.5: "
          "a clearly monotone rise on average.", _base, _monotone),
    Claim("mb-above-chance", PAPER, "At beta = 0, reusing Alice's whole network and retraining "
          "only the output layer (l = L) beats chance", "Bob's accuracy above chance, points",
          1.0, "Per seed, finetune at l = L, beta = 0, whole budget: accuracy minus chance (1 / "
          "classes), mean over architectures. Margin 1 point.", _base, _above_chance),
    Claim("mb-chance-from-architecture", PAPER, "That above-chance reuse comes from the network "
          "and its training, not Alice's task: a head trained on randomly initialised frozen "
          "layers beats chance too", "accuracy above chance with random frozen layers, points",
          1.0, "Per seed, random-frozen at l = L, beta = 0, whole budget: accuracy minus chance, "
          "mean over architectures; Alice's layers beside it in the summary and table. Margin 1 "
          "point.", _base, _from_architecture),
    Claim("mb-shallow-when-uncorrelated", PAPER, "At low beta, retraining from a low layer is "
          "best; the best depth rises with beta", "l*(highest beta) - l*(lowest beta), layers",
          1.0, "Per seed and architecture, the best retrain-from depth l* (reinit mode: the "
          "retrained layers start fresh, as Bob's do in the paper; ties go to the deeper l) at the "
          "whole budget; the effect is l* at the highest beta minus l* at the lowest, mean over "
          "architectures. Margin 1 layer.", _base, _shallow),
    Claim("mb-depth-indicates-correlation", PAPER, "The best depth ranks the task correlation "
          "across pairs and betas (the authors' hypothesis)", f"{RHO} between l* and the "
          "correlation's rank", 0.5, "Per seed, over the (pair, beta) cells of the base sweep "
          "(mnist:fashion, every beta) and the three pairs at the middle beta: rho between l* "
          "(reinit) and the cell's rank of task correlation (beta first; at equal beta mnist > "
          "emnist-letters > fashion on the right). Margin 0.5.",
          lambda s: _base(s) + _pair_sweeps(s), _ranks),
    Claim("mb-feature-correlation", PAPER, "At the same beta, a right-hand dataset closer to the "
          "left one gives more (mnist:mnist > mnist:emnist-letters > mnist:fashion)",
          f"{RHO} between the right source's closeness and the gain of transfer", 0.5,
          "Per seed at the middle beta: the gain is the best Alice-based accuracy (finetune or "
          "reinit, any l) minus scratch's, points, per pair; the effect is rho between the "
          "closeness order and the gains. Margin 0.5.", _pair_sweeps, _features),
    Claim("mb-attribution", PAPER, "At beta = 0, Bob's attribution moves to his half of the "
          "image as he retrains more layers", f"{RHO} between layers retrained and the share of "
          "attribution on Bob's half", 0.5, "Per seed, finetune runs at beta = 0 and the whole "
          "budget, one per depth l: integrated-gradients attribution (16 steps, the test split's "
          "first max_samples images) on the right half; rho between L - l + 1 and that share. "
          "Margin 0.5.", _base, _attribution),
)
