"""`engine results DIR [--csv FILE]`: depth x beta tables of Bob's test accuracy, and CSV export.
With several block-shuffle sizes in the store, each gets its own tables.

Also the aggregation shared with engine.sweep.report: `load` and `cells`.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from engine.atomic import atomic_path
from engine.errors import EngineError
from engine.store import ResultsStore

ALICE_MODES = ("finetune", "reinit")          # Bob starts from Alice's layers
BASELINES = ("scratch", "random-frozen")      # no Alice
MODE_ORDER = ALICE_MODES + BASELINES
# One cell = all seeds of these.
CELL = ["pair", "arch", "block_shuffle", "mode", "n_bob", "retrain_from", "beta"]


def load(out: Path) -> pd.DataFrame:
    """Every stored run, read without writing anything; EngineError if there are none."""
    df = ResultsStore(Path(out), read_only=True).table()
    if df.empty:
        raise EngineError(f"no results in {out}; run `engine sweep --out {out}` first")
    return df


def block_name(block: int) -> str:
    """A block_shuffle value for people: 0 -> "none", 4 -> "4x4"."""
    return "none" if block == 0 else f"{block}x{block}"


def modes(df: pd.DataFrame) -> list[str]:
    present = set(df["mode"])
    return [m for m in MODE_ORDER if m in present] + sorted(present - set(MODE_ORDER))


def cells(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell: test accuracy mean, std over seeds (ddof 1; NaN for one seed), n; mean Alice
    test accuracy and chance level."""
    g = df.groupby(CELL, sort=True)
    return pd.DataFrame({
        "mean": g["test_acc"].mean(),
        "std": g["test_acc"].std(ddof=1),
        "n": g["test_acc"].size(),
        "alice": g["alice_test_acc"].mean(),
        "chance": g["chance"].mean(),
    }).reset_index()


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}"


def _cell_text(row, show_n: bool) -> str:
    text = _pct(row["mean"]) + (f" ± {_pct(row['std'])}" if row["n"] > 1 else "")
    return text + (f" (n={row['n']})" if show_n else "")


def _format_block(block: pd.DataFrame, title: str) -> list[str]:
    """One depth x beta table (rows l, columns beta) for the cells of one group."""
    betas = sorted(block["beta"].unique())
    depths = sorted(block["retrain_from"].unique())
    show_n = block["n"].nunique() > 1
    by = {(r.retrain_from, r.beta): r for r in block.itertuples()}
    grid = [["l \\ beta"] + [f"{b:g}" for b in betas]]
    for l in depths:
        line = [f"l={l}"]
        for b in betas:
            r = by.get((l, b))
            line.append(_cell_text(r._asdict(), show_n) if r is not None else "")
        grid.append(line)
    alice = block.groupby("beta")["alice"].mean()
    if alice.notna().any():
        grid.append(["Alice"] + [_pct(alice.get(b, math.nan)) for b in betas])
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    lines = [title]
    for row in grid:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    chance = block["chance"].unique()
    lines.append("chance: " + ", ".join(_pct(c) for c in sorted(chance)) + " %")
    return lines


def results_table(out: Path) -> str:
    """Text tables of Bob's test accuracy (%, mean ± std over seeds), one per
    (pair, arch, mode, n_bob), and per block-shuffle size when the store has several."""
    df = load(out)
    c = cells(df)
    lines = [f"{len(df)} runs in {Path(out) / 'results'}; Bob test accuracy in %, mean ± std over "
             "seeds; rows: retrain_from l, columns: beta; Alice = her test accuracy (mean)"]
    shuffles = sorted(c["block_shuffle"].unique())
    for (pair, arch, shuffle), group in c.groupby(["pair", "arch", "block_shuffle"], sort=True):
        shown = f"  block shuffle {block_name(shuffle)}" if len(shuffles) > 1 else ""
        for mode in modes(group):
            by_n = group[group["mode"] == mode]
            for n_bob in sorted(by_n["n_bob"].unique()):
                block = by_n[by_n["n_bob"] == n_bob]
                title = f"pair {pair}  arch {arch}{shown}  mode {mode}  n_bob {n_bob}"
                lines += [""] + _format_block(block, title)
    return "\n".join(lines)


def export_csv(out: Path, path: Path) -> Path:
    """All stored runs, one row each, as CSV (written atomically)."""
    df = load(out)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path
