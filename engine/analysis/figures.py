"""Figures of `engine analyze`, drawn from the analysis tables (Agg, no pyplot state; the report's
conventions: accuracies in percent, one PNG per analysis under `<out>/analysis/`)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from engine.analysis.select import spearman
from engine.pages import save_png as _save


def _grid(rows: int, cols: int, w: float = 3.2, h: float = 2.8):
    fig = Figure(figsize=(max(4.0, w * cols), max(3.0, h * rows)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def cka(df: pd.DataFrame, path: Path) -> Path:
    """Alice (rows) vs Bob (columns) layer x layer CKA; one panel per (beta, l), mean over seeds."""
    betas, ls = sorted(df["beta"].unique()), sorted(df["retrain_from"].unique())
    fig, axes = _grid(len(betas), len(ls))
    for i, beta in enumerate(betas):
        for j, l in enumerate(ls):
            ax = axes[i][j]
            cell = df[(df["beta"] == beta) & (df["retrain_from"] == l)]
            m = cell.pivot_table(index="layer_alice", columns="layer_bob", values="cka")
            im = ax.imshow(m.to_numpy(), vmin=0, vmax=1, cmap="viridis", origin="lower",
                           extent=(0.5, m.shape[1] + 0.5, 0.5, m.shape[0] + 0.5))
            ax.set_title(f"beta={beta:g}, l={l}", fontsize=9)
            ax.set_xlabel("Bob layer")
            ax.set_ylabel("Alice layer")
    fig.colorbar(im, ax=axes, shrink=0.8, label="linear CKA")
    fig.suptitle("Alice vs fine-tuned Bob: layer-wise CKA")
    return _save(fig, path)


def transferability(df: pd.DataFrame, path: Path) -> Path:
    """Each estimator's score vs Bob's measured accuracy; points coloured by depth l."""
    names = [n for n in ("logme", "h_score", "leep", "nce") if n in df]
    fig, axes = _grid(1, len(names))
    for ax, name in zip(axes[0], names):
        for l, g in df.groupby("retrain_from"):
            ax.scatter(g[name], 100 * g["test_acc"], label=f"l={l}", s=20)
        ax.set_title(f"{name}: Spearman rho={spearman(df[name], df['test_acc']):.2f}", fontsize=9)
        ax.set_xlabel(f"{name} of Alice's layer l-1" if name in ("logme", "h_score")
                      else f"{name} of Alice's predictions")
        ax.set_ylabel("Bob test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


BOUND_TERMS = (("weighted_source_loss", "source loss"), ("conditional_entropy", "H(Y_T|Y_S)"),
               ("tau_wasserstein", "tau x W1"), ("bound", "bound"),
               ("target_loss", "transferred head loss"), ("bob_test_loss", "Bob (l=L) test loss"))


def bound(df: pd.DataFrame, path: Path) -> Path:
    """Each term of the bound, the bound, and measured target losses vs beta (mean over seeds)."""
    m = df.groupby("beta")[[c for c, _ in BOUND_TERMS]].mean()
    fig, axes = _grid(1, 1, 5.5, 4)
    ax = axes[0][0]
    for (column, name), style in zip(BOUND_TERMS, ("--", "--", "--", "-", ":", ":")):
        ax.plot(m.index, m[column], style, marker="o", label=name)
    ax.set_xlabel("beta")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("Mehra et al. bound on the target loss", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def barrier(df: pd.DataFrame, path: Path) -> Path:
    """Loss along each straight line, one panel per beta."""
    betas = sorted(df["beta"].unique())
    fig, axes = _grid(1, len(betas))
    for ax, beta in zip(axes[0], betas):
        for pair, g in df[df["beta"] == beta].groupby("path", sort=True):
            g = g.sort_values("t")
            ax.plot(g["t"], g["loss"], marker=".",
                    label=f"{pair} (barrier {g['loss_barrier'].iloc[0]:.3f})")
        ax.set_title(f"beta={beta:g}", fontsize=9)
        ax.set_xlabel("t along the line")
        ax.set_ylabel("Bob test loss (nats)")
        ax.legend(fontsize=6)
    return _save(fig, path)


def criticality(df: pd.DataFrame, path: Path) -> Path:
    """Per network (rows) and layer (columns): training error on the alpha x sigma grid."""
    nets = list(dict.fromkeys(zip(df["beta"], df["mode"])))
    layers = sorted(df["layer"].unique())
    fig, axes = _grid(len(nets), len(layers), 2.8, 2.6)
    for i, (beta, mode) in enumerate(nets):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            cell = df[(df["beta"] == beta) & (df["mode"] == mode) & (df["layer"] == layer)]
            m = cell.pivot_table(index="alpha", columns="sigma", values="error")
            im = ax.imshow(100 * m.to_numpy(), vmin=0, vmax=100, cmap="magma", origin="lower",
                           aspect="auto")
            ax.set_xticks(range(m.shape[1]), [f"{s:g}" for s in m.columns], fontsize=6)
            ax.set_yticks(range(m.shape[0]), [f"{a:g}" for a in m.index], fontsize=6)
            mu = cell["criticality"].iloc[0]
            ax.set_title(f"beta={beta:g} {mode}, layer {layer}\nmu={mu:.3g}", fontsize=8)
            ax.set_xlabel("sigma")
            ax.set_ylabel("alpha (rewind)")
    fig.colorbar(im, ax=axes, shrink=0.8, label="training error (%)")
    return _save(fig, path)


def attribution(df: pd.DataFrame, path: Path) -> Path:
    """Share of attribution on each half vs beta, one line per depth l (mean over seeds)."""
    modes = sorted(df["mode"].unique())
    fig, axes = _grid(1, len(modes), 4, 3.2)
    for ax, mode in zip(axes[0], modes):
        g = df[df["mode"] == mode].groupby(["retrain_from", "beta"])[["left", "right"]].mean()
        for k, l in enumerate(sorted(g.index.get_level_values(0).unique())):
            s = g.loc[l]
            ax.plot(s.index, 100 * s["left"], "-", marker="o", color=f"C{k}", label=f"l={l} left")
            ax.plot(s.index, 100 * s["right"], "--", marker="s", color=f"C{k}", label=f"l={l} right")
        ax.set_ylim(0, 100)
        ax.set_xlabel("beta")
        ax.set_ylabel("attribution mass (%)")
        ax.set_title(f"{mode} ({df['method'].iloc[0]})", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def select_source(df: pd.DataFrame, scores: tuple[str, ...], path: Path) -> Path:
    """Each candidate's score vs its measured transfer accuracy, with Spearman rho."""
    fig, axes = _grid(1, len(scores), 2.8, 2.8)
    for ax, score in zip(axes[0], scores):
        ax.scatter(df[score], 100 * df["actual_acc"], s=25)
        for _, r in df.iterrows():
            ax.annotate(r["alice_id"][:6], (r[score], 100 * r["actual_acc"]), fontsize=6)
        rho = spearman(df[score], df["actual_acc"])
        ax.set_title(f"{score}: rho={rho:.2f}" if not math.isnan(rho) else f"{score}: rho n/a",
                     fontsize=9)
        ax.set_xlabel(score)
        ax.set_ylabel("best finetune accuracy (%)")
    return _save(fig, path)

