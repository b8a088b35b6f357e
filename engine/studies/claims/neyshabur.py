"""Neyshabur, Sedghi & Zhang 2020, "What is being transferred in transfer learning?" (NeurIPS 2020),
as claims of `engine reproduce` (engine.studies.claims.base).

Our setting stands in for theirs (ImageNet pre-training, fine-tuning on CheXpert/DomainNet): Alice
pre-trains on the left image of mnist:fashion at one middle correlation `BETA`, Bob fine-tunes the
whole network (l = 1, mode finetune) or trains it from scratch on his label, with his whole data
budget. Every effect is paired within a seed (same Alice, same dataset); with several archs it is
the mean over archs.

- Sec. 3.1, Fig. 2: block-shuffled targets; the gain of pre-training falls as blocks shrink
  (`neyshabur-shuffle-gain`), but pre-trained networks still train faster early on
  (`neyshabur-shuffle-speed`).
- Sec. 3.3, Fig. 5: two fine-tunes of one pre-trained network lie in one basin (no performance
  barrier), two networks trained from scratch do not (`neyshabur-one-basin`).
- Sec. 3.2, Table 2: fine-tuned networks are more alike in feature space (CKA) than networks
  trained from scratch (`neyshabur-feature-similarity`).
- Sec. 3.5, Fig. 8: in fine-tuned networks lower layers are less critical than upper ones
  (`neyshabur-criticality`).
- Sec. 3.6, Fig. 10: checkpoints from early in pre-training already give most of the gain
  (`neyshabur-early-checkpoints`).
The landscape and similarity claims live in engine.studies.claims.neyshabur_nets.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine.spec import Training
from engine.studies.claims import sweeps
from engine.studies.claims.base import Claim, Context, Evidence, Scale
from engine.studies.claims.effects import per_seed, records, require
from engine.sweep.spec import SweepSpec

PAPER = "Neyshabur et al. 2020"
# Bob's label equals Alice's with probability beta + (1 - beta)/10 (README "Pairing"): at 1 his task
# is hers, at 0 it is unrelated; 0.5 is a related but different target, as the paper's are.
BETA = 0.5
# Block sizes (pixels) dividing the 28x56 mnist:fashion image; None = unshuffled. The paper's
# Fig. 2 shuffles blocks of 1 (pixels) up to the whole image; smoke/small keep the ends, and two
# sizes between at small.
BLOCKS = {"smoke": (1, None), "small": (1, 4, 14, None), "paper": (1, 2, 4, 7, 14, 28, None)}
EARLY_FRACTION = 0.5  # "most of the gain": more than half


def blocks(scale: Scale) -> tuple[int | None, ...]:
    return BLOCKS.get(scale.name, BLOCKS["paper"])


def whole(scale: Scale, **changes) -> SweepSpec:
    """The base sweep cut to what these claims compare: beta `BETA`, l = 1 finetune and scratch,
    the whole budget (runs shared with the base sweep where it holds `BETA`)."""
    spec = dict(betas=(BETA,), layers=(1,), modes=("finetune",), baselines=("scratch",),
                n_bobs=(None,))
    return sweeps.base(scale, **{**spec, **changes})


def shuffle_sweep(scale: Scale) -> SweepSpec:
    return whole(scale, block_shuffles=blocks(scale))


def speed_sweep(scale: Scale) -> SweepSpec:
    """Bob after one epoch, at the smallest block and unshuffled."""
    return whole(scale, block_shuffles=(min(b for b in blocks(scale) if b), None),
                 bob=Training(epochs=1))


def early_sweep(scale: Scale) -> SweepSpec:
    """Bob fine-tuned from an Alice pre-trained for one epoch."""
    return whole(scale, alice=Training(epochs=1))


# Effects from stored rows (pure: tables in, tables out) -----------------------------------------

def gains(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, arch, block_shuffle): finetune (l = 1) and scratch test accuracy and
    gain = finetune - scratch (fractions). block_shuffle 0 = unshuffled (engine.store)."""
    keys = ["seed", "arch", "block_shuffle"]
    require(rows, "Bob at l = 1 and scratch")
    ft = rows[(rows["mode"] == "finetune") & (rows["retrain_from"] == 1)]
    sc = rows[rows["mode"] == "scratch"]
    t = pd.concat([ft.groupby(keys)["test_acc"].mean().rename("finetune"),
                   sc.groupby(keys)["test_acc"].mean().rename("scratch")], axis=1).reset_index()
    t["gain"] = t["finetune"] - t["scratch"]
    return t.sort_values(keys).reset_index(drop=True)


def block_order(block: int) -> float:
    """Sort key of a stored block size: 0 (unshuffled) is the largest."""
    return math.inf if block == 0 else float(block)


def shuffle_effects(g: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, arch): gain unshuffled - gain at the smallest block."""
    out = []
    for (seed, arch), t in g.groupby(["seed", "arch"]):
        t = t.sort_values("block_shuffle", key=lambda s: s.map(block_order))
        ok = (t["block_shuffle"] == 0).any() and len(t) >= 2
        out.append({"seed": int(seed), "arch": arch,
                    "effect": float(t["gain"].iloc[-1] - t["gain"].iloc[0]) if ok else math.nan})
    return pd.DataFrame(out, columns=["seed", "arch", "effect"])


def early_effects(early: pd.DataFrame, full: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, arch): gain(early Alice) - EARLY_FRACTION * gain(full Alice); NaN where the full
    Alice gives no gain (nothing to keep a fraction of)."""
    t = early[["seed", "arch", "gain"]].merge(full[["seed", "arch", "gain"]], on=["seed", "arch"],
                                              suffixes=("_early", "_full"))
    t["effect"] = np.where(t["gain_full"] > 0,
                           t["gain_early"] - EARLY_FRACTION * t["gain_full"], math.nan)
    return t


def _label(block: int) -> str:
    return "none" if block == 0 else str(int(block))


# Evaluations ------------------------------------------------------------------------------------

def _shuffle_gain(ctx: Context) -> Evidence:
    g = gains(ctx.rows(shuffle_sweep(ctx.scale)))
    eff = shuffle_effects(g)
    effects = per_seed(eff, "effect", ctx.scale.seed_list)
    by_block = g.groupby("block_shuffle")["gain"].mean()
    order = sorted(by_block.index, key=block_order)
    fig = _figure_gain(g, order, "Bob's gain from pre-training vs block size",
                       "gain: finetune - scratch (points)")
    from engine.pages import save_png
    save_png(fig, ctx.figure_path())
    return Evidence(effects, "mean gain (points) by block size: " + ", ".join(
        f"{_label(b)}: {100 * by_block[b]:+.1f}" for b in order), records(g),
        str(ctx.figure_path()))


def _shuffle_speed(ctx: Context) -> Evidence:
    g = gains(ctx.rows(speed_sweep(ctx.scale)))
    smallest = min(b for b in blocks(ctx.scale) if b)
    at = g[g["block_shuffle"] == smallest]
    effects = per_seed(at, "gain", ctx.scale.seed_list)
    late = gains(ctx.rows(shuffle_sweep(ctx.scale)))
    late_gain = late.loc[late["block_shuffle"] == smallest, "gain"].mean()
    fig = _figure_gain(g, sorted(g["block_shuffle"].unique(), key=block_order),
                       "Bob after one epoch: finetune - scratch", "gain after 1 epoch (points)")
    from engine.pages import save_png
    save_png(fig, ctx.figure_path())
    summary = (f"block {smallest}: finetune - scratch after 1 epoch {100 * at['gain'].mean():+.1f} "
               f"points (after {ctx.scale.epochs} epochs {100 * late_gain:+.1f})")
    return Evidence(effects, summary, records(g), str(ctx.figure_path()))


def _early(ctx: Context) -> Evidence:
    full = gains(ctx.rows(whole(ctx.scale)))
    early = gains(ctx.rows(early_sweep(ctx.scale)))
    t = early_effects(early, full)
    effects = per_seed(t, "effect", ctx.scale.seed_list)
    from engine.pages import figure, save_png
    fig = figure(6, 3.6)
    ax = fig.subplots()
    seeds = sorted(t["seed"].unique())
    x = np.arange(len(seeds))
    for off, col, name in ((-0.2, "gain_early", "Alice after 1 epoch"),
                           (0.2, "gain_full", f"Alice after {ctx.scale.alice_epochs} epochs")):
        ax.bar(x + off, [100 * t.loc[t["seed"] == s, col].mean() for s in seeds], 0.4, label=name)
    ax.set_xticks(x, [str(s) for s in seeds])
    ax.set_xlabel("seed")
    ax.set_ylabel("gain: finetune - scratch (points)")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=8)
    save_png(fig, ctx.figure_path())
    summary = (f"gain from Alice after 1 epoch {100 * t['gain_early'].mean():+.1f} points vs "
               f"{100 * t['gain_full'].mean():+.1f} after {ctx.scale.alice_epochs}")
    return Evidence(effects, summary, records(t), str(ctx.figure_path()))


def _figure_gain(g: pd.DataFrame, order, title: str, ylabel: str):
    from engine.pages import figure
    fig = figure(6, 3.6)
    ax = fig.subplots()
    x = np.arange(len(order))
    for seed, t in g.groupby("seed"):
        y = [100 * t.loc[t["block_shuffle"] == b, "gain"].mean() for b in order]
        ax.plot(x, y, "o-", alpha=0.5, label=f"seed {seed}")
    ax.plot(x, [100 * g.loc[g["block_shuffle"] == b, "gain"].mean() for b in order], "k-",
            lw=2, label="mean")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, [_label(b) for b in order])
    ax.set_xlabel("block size (pixels; none = unshuffled)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig


def _claims() -> tuple[Claim, ...]:
    from engine.studies.claims import neyshabur_nets as nets
    return (
        Claim("neyshabur-shuffle-gain", PAPER,
              "The gain of pre-training shrinks as the target's shuffled blocks get smaller.",
              "gain unshuffled - gain at block size 1, accuracy (fraction); gain = finetune (l=1) "
              "- scratch test accuracy, same seed", 0.02,
              f"Alice pre-trains on unshuffled images (beta {BETA}); Bob fine-tunes all layers "
              "(l = 1) or trains from scratch on each block-shuffled version, whole budget. Per "
              "seed: gain(unshuffled) - gain(block 1). Margin: 2 accuracy points of shrinkage.",
              lambda s: (shuffle_sweep(s),), _shuffle_gain),
        Claim("neyshabur-shuffle-speed", PAPER,
              "Pre-training still speeds up early training when the gain is gone (pixel-"
              "shuffled target).",
              "finetune - scratch test accuracy after 1 epoch at block size 1 (fraction)", 0.01,
              f"Bob trains for 1 epoch on the pixel-shuffled (block 1) data of beta {BETA}, "
              "fine-tuned from Alice (l = 1) or from scratch, same seed. Per seed: the accuracy "
              "difference. Margin: 1 accuracy point.",
              lambda s: (speed_sweep(s), shuffle_sweep(s)), _shuffle_speed),
        Claim("neyshabur-one-basin", PAPER,
              "Two fine-tunes of one pre-trained network have no performance barrier between "
              "them; two networks trained from scratch do.",
              "scratch barrier - finetune barrier, test cross-entropy (nats)", 0.05,
              nets.BASIN_RULE, lambda s: (whole(s),), nets.one_basin),
        Claim("neyshabur-feature-similarity", PAPER,
              "Fine-tuned networks are more alike in feature space (linear CKA) than networks "
              "trained from scratch.",
              "mean over layers of CKA(two fine-tunes) - CKA(two scratch networks)", 0.05,
              nets.CKA_RULE, lambda s: (whole(s),), nets.feature_similarity),
        Claim("neyshabur-criticality", PAPER,
              "In a fine-tuned network lower layers are less critical than upper ones.",
              "Spearman rho between layer index and module criticality", 0.5,
              nets.CRITICALITY_RULE, lambda s: (whole(s),), nets.criticality),
        Claim("neyshabur-early-checkpoints", PAPER,
              "Checkpoints from early in pre-training already give most of the gain.",
              f"gain(Alice after 1 epoch) - {EARLY_FRACTION} x gain(full Alice), accuracy "
              "(fraction)", 0.01,
              "Bob fine-tunes all layers (l = 1) from an Alice pre-trained for 1 epoch and from "
              f"the full Alice, beta {BETA}, whole budget; gain = finetune - scratch, same seed. "
              f"Per seed: gain(early) - {EARLY_FRACTION} x gain(full), NaN (dropped) where the "
              "full Alice gives no gain. Positive: the early checkpoint keeps more than half the "
              "gain; margin: 1 accuracy point more than half.",
              lambda s: (whole(s), early_sweep(s)), _early),
    )


CLAIMS = _claims()
