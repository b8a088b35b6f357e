"""`choose-depth.png`: each predictor's median regret (points, 95% interval over groups) against
its median cost as a fraction of the sweep's wall time (log scale), per arch and pooled."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from engine.pages import figure as new_figure
from engine.pages import save_png

MARKERS = {"pooled": "o", "mlp": "s", "cnn": "^", "resnet18": "D"}


def draw(df: pd.DataFrame, path: Path) -> Path:
    s = df[df["level"] == "summary"]
    fig = new_figure(7.5, 4.8)
    ax = fig.subplots()
    colours = {p: f"C{i}" for i, p in enumerate(dict.fromkeys(s["predictor"]))}
    for _, r in s.iterrows():
        x, y = r["cost_fraction"], r["regret"]
        if not (np.isfinite(x) and np.isfinite(y)) or x <= 0:
            continue
        err = [[max(0.0, y - r["regret_lo"])], [max(0.0, r["regret_hi"] - y)]] \
            if np.isfinite(r["regret_lo"]) else None
        ax.errorbar([x], [y], yerr=err, fmt=MARKERS.get(r["arch"], "x"),
                    color=colours[r["predictor"]], capsize=3,
                    mfc="none" if r["arch"] != "pooled" else colours[r["predictor"]],
                    label=r["predictor"] if r["arch"] == "pooled" else None)
    ax.set_xscale("log")
    ax.axvline(0.1, color="grey", lw=0.8, ls=":")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("cost, fraction of the sweep's wall time (log)")
    ax.set_ylabel("median regret (accuracy points)")
    ax.set_title("Choosing the depth: regret vs cost (filled: pooled; "
                 + ", ".join(f"{m} {a}" for a, m in MARKERS.items() if a in set(s['arch'])
                             and a != "pooled") + ")", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    return save_png(fig, path)
