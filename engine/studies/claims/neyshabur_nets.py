"""Neyshabur et al. 2020's claims about the trained networks themselves (engine.studies.claims.
neyshabur holds the claims and their sweep): performance barriers (Sec. 3.3), feature similarity
(Sec. 3.2) and module criticality (Sec. 3.5).

The networks: Bob at l = 1 (fine-tuned from Alice) and scratch, beta `neyshabur.BETA`, whole
budget, unshuffled. The second network of a pair is the same spec with seed + 1: for a fine-tune
the same Alice with another head initialisation and batch order ("two fine-tunes of one Alice"),
for scratch another initialisation (README "Performance barriers"). Sweeps keep no weights, so
`engine.analysis.artifacts.bob_model` re-trains them on the CPU and keeps them under
`<root>/bob/` (one re-training serves all three claims).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from engine.analysis import artifacts as art
from engine.studies.claims.base import Context, Evidence
from engine.studies.claims.effects import per_seed, rank_correlation, records, require

POINTS = 11  # points on each straight line, t = 0, 0.1, .., 1
# Module criticality grid and tolerance: `engine analyze criticality`'s defaults (Chatterji et al.
# 2020 eq. 2); a cell is feasible when its training error is within TOLERANCE of the trained one.
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SIGMAS = (0.0, 0.05, 0.1, 0.2)
TOLERANCE = 0.05
SMOKE_GRID = ((0.0, 0.5, 1.0), (0.0, 0.1))  # smoke: 9 evaluations a layer, not 35

BASIN_RULE = (
    "Per seed s: the test cross-entropy along the straight line between two networks (11 points, "
    "first max_samples test samples); barrier = its largest rise above the chord between the end "
    "points. Finetune pair: Bob (l = 1) seeds s and s + 1 from the same Alice of seed s; scratch "
    "pair: scratch seeds s and s + 1. Effect: scratch barrier - finetune barrier. Margin: 0.05 "
    "nats.")
CKA_RULE = (
    "Per seed s: linear CKA between layer i of two networks, for every layer i = 1..L, on the "
    "first max_samples test inputs; the pairs as in neyshabur-one-basin (two fine-tunes of Alice "
    "s, seeds s and s + 1; scratch seeds s and s + 1). Effect: mean over layers of CKA(finetune "
    "pair) - CKA(scratch pair). Margin: 0.05.")
CRITICALITY_RULE = (
    "Per seed: module criticality (Chatterji et al. 2020 eq. 2) of each layer of Bob fine-tuned "
    "from Alice (l = 1), rewound towards his starting weights (Alice's layers, a fresh head) on a "
    "grid alpha 0, 0.25, .., 1 x relative noise 0, 0.05, 0.1, 0.2 (smoke: 0, 0.5, 1 x 0, 0.1), "
    "feasible within 0.05 training error of the trained network (first max_samples training "
    "samples). Effect: Spearman rho between "
    "layer index and criticality (an uncritical layer is 0, one never feasible infinite and "
    "ranked highest); 0 when every layer is equally critical. Margin: rho 0.5.")


def _runs(ctx: Context, mode: str) -> pd.DataFrame:
    from engine.studies.claims.neyshabur import whole  # it imports this module for its claims
    rows = ctx.rows(whole(ctx.scale))
    require(rows, f"Bob {mode} at l = 1")
    pick = (rows["mode"] == mode) & (rows["retrain_from"] == 1) & (rows["block_shuffle"] == 0)
    return rows[pick].sort_values(["seed", "arch"]).reset_index(drop=True)


def _pair(ctx: Context, row):
    """(spec, network, its seed + 1 partner), re-trained on demand."""
    spec = art.run_spec(row)
    a, _ = art.bob_model(ctx.root, spec=spec, log=ctx.log)
    b, _ = art.bob_model(ctx.root, spec=dataclasses.replace(spec, seed=spec.seed + 1), log=ctx.log)
    return spec, a, b


def _pairs(ctx: Context):
    """(mode, row, spec, network, partner) for the finetune and scratch runs of every seed/arch."""
    for mode in ("finetune", "scratch"):
        for _, row in _runs(ctx, mode).iterrows():
            yield (mode, row, *_pair(ctx, row))


def paired_effects(table: pd.DataFrame, value: str, keys=("seed", "arch")) -> pd.DataFrame:
    """Per `keys`: `value` of the scratch rows - `value` of the finetune rows (means over any
    further rows, e.g. layers), as column `effect` beside both."""
    keys = list(keys)
    m = table.groupby(keys + ["mode"])[value].mean().unstack("mode")
    out = pd.DataFrame({"finetune": m.get("finetune"), "scratch": m.get("scratch")}).reset_index()
    out["effect"] = out["scratch"] - out["finetune"]
    return out


# neyshabur-one-basin ------------------------------------------------------------------------------

def one_basin(ctx: Context) -> Evidence:
    from engine.analysis.landscape import interpolate, snapshot
    rows, curves = [], []
    for mode, row, spec, a, b in _pairs(ctx):
        test = art.first(art.dataset(ctx.root, row["dataset"])[1], ctx.scale.max_samples)
        c = interpolate(a, snapshot(a.state_dict()), snapshot(b.state_dict()), test, "bob_label",
                        k=POINTS, precision=spec.precision)
        rows.append({"seed": int(spec.seed), "arch": spec.arch, "mode": mode,
                     "loss_barrier": c["loss_barrier"], "error_barrier": c["error_barrier"],
                     "loss_start": float(c["loss"][0]), "loss_end": float(c["loss"][-1])})
        curves.append((mode, c["t"], c["loss"]))
    t = pd.DataFrame(rows)
    eff = paired_effects(t, "loss_barrier")
    effects = per_seed(eff, "effect", ctx.scale.seed_list)
    _figure_lines(ctx, curves)
    m = t.groupby("mode")["loss_barrier"].mean()
    summary = (f"test-loss barrier: finetune pair {m.get('finetune', math.nan):.3f} nats, "
               f"scratch pair {m.get('scratch', math.nan):.3f} nats")
    return Evidence(effects, summary, records(t), str(ctx.figure_path()))


def _figure_lines(ctx: Context, curves) -> None:
    from engine.pages import figure, save_png
    fig = figure(6, 3.6)
    ax = fig.subplots()
    colours = {"finetune": "tab:blue", "scratch": "tab:orange"}
    for i, (mode, t, loss) in enumerate(curves):
        first = all(m != mode for m, _, _ in curves[:i])
        ax.plot(t, loss, "o-", color=colours[mode], alpha=0.6, ms=3,
                label=f"{mode}: seed s <-> s+1" if first else None)
    ax.set_xlabel("t: (1 - t) network s + t network s+1")
    ax.set_ylabel("test cross-entropy (nats)")
    ax.set_title("Loss along the straight line between two networks", fontsize=10)
    ax.legend(fontsize=8)
    save_png(fig, ctx.figure_path())


# neyshabur-feature-similarity ---------------------------------------------------------------------

def feature_similarity(ctx: Context) -> Evidence:
    from engine.analysis.similarity import cka_matrix
    rows = []
    for mode, row, spec, a, b in _pairs(ctx):
        test = art.dataset(ctx.root, row["dataset"])[1]
        m = cka_matrix(a, b, test, max_samples=ctx.scale.max_samples)
        rows += [{"seed": int(spec.seed), "arch": spec.arch, "mode": mode, "layer": i + 1,
                  "cka": float(m[i, i])} for i in range(min(m.shape))]
    t = pd.DataFrame(rows)
    eff = paired_effects(t, "cka")
    eff["effect"] = -eff["effect"]  # finetune - scratch: more alike after fine-tuning
    effects = per_seed(eff, "effect", ctx.scale.seed_list)
    from engine.pages import figure, save_png
    fig = figure(6, 3.6)
    ax = fig.subplots()
    for mode, g in t.groupby("mode"):
        mean = g.groupby("layer")["cka"].mean()
        ax.plot(mean.index, mean.values, "o-", label=f"{mode} pair (mean over seeds)")
    ax.set_xlabel("layer")
    ax.set_ylabel("linear CKA, layer i vs layer i")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    save_png(fig, ctx.figure_path())
    m = t.groupby("mode")["cka"].mean()
    summary = (f"mean layer CKA: two fine-tunes {m.get('finetune', math.nan):.3f}, two scratch "
               f"networks {m.get('scratch', math.nan):.3f}")
    return Evidence(effects, summary, records(t), str(ctx.figure_path()))


# neyshabur-criticality ----------------------------------------------------------------------------

def criticality(ctx: Context) -> Evidence:
    from engine.analysis.landscape import module_criticality, snapshot
    from engine.train.trainer import evaluate
    rows, effects_rows = [], []
    for _, row in _runs(ctx, "finetune").iterrows():
        spec = art.run_spec(row)
        bob, _ = art.bob_model(ctx.root, spec=spec, log=ctx.log)
        train = art.first(art.dataset(ctx.root, row["dataset"])[0], ctx.scale.max_samples)
        error = 1 - evaluate(bob, train, "bob_label", precision=spec.precision)[0]
        alphas, sigmas = SMOKE_GRID if ctx.scale.name == "smoke" else (ALPHAS, SIGMAS)
        c = module_criticality(bob, art.bob_initial_state(ctx.root, spec, bob),
                               snapshot(bob.state_dict()), train, "bob_label", alphas, sigmas,
                               min(1.0, error + TOLERANCE), n_noise=2, seed=spec.seed,
                               precision=spec.precision)
        mu = np.asarray(c["criticality"], dtype=float)
        rows += [{"seed": int(spec.seed), "arch": spec.arch, "layer": int(layer),
                  "criticality": float(mu[i]), "distance": float(c["distance"][i]),
                  "train_error": float(error)} for i, layer in enumerate(c["layers"])]
        effects_rows.append({"seed": int(spec.seed), "arch": spec.arch,
                             "effect": rank_correlation(c["layers"], mu)})
    t, eff = pd.DataFrame(rows), pd.DataFrame(effects_rows)
    effects = per_seed(eff, "effect", ctx.scale.seed_list)
    _figure_criticality(ctx, t)
    med = t.groupby("layer")["criticality"].median()
    summary = "median criticality by layer: " + ", ".join(
        f"{int(k)}: {v:.3g}" for k, v in med.items())
    return Evidence(effects, summary, records(t), str(ctx.figure_path()))


def _figure_criticality(ctx: Context, t: pd.DataFrame) -> None:
    from engine.pages import figure, save_png
    fig = figure(6, 3.6)
    ax = fig.subplots()
    y = np.log10(1 + t["criticality"].astype(float))
    top = (np.nanmax(y[np.isfinite(y)]) if np.isfinite(y).any() else 0) + 1
    for (seed, arch), g in t.assign(y=y).groupby(["seed", "arch"]):
        gy = g["y"].where(np.isfinite(g["y"]), top)
        ax.plot(g["layer"], gy, "o-", alpha=0.6, label=f"seed {seed} {arch}")
    if np.isinf(t["criticality"].astype(float)).any():
        ax.axhline(top, color="grey", ls=":", lw=1)
        ax.text(1, top, " never feasible", va="bottom", fontsize=7, color="grey")
    ax.set_xticks(sorted(t["layer"].unique()))
    ax.set_xlabel("layer of fine-tuned Bob (l = 1)")
    ax.set_ylabel("log10(1 + module criticality)")
    ax.legend(fontsize=7)
    save_png(fig, ctx.figure_path())
