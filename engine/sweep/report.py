"""`engine report DIR`: figures under DIR/report/ and a summary.md whose findings are computed from
the stored runs. Accuracies are shown in percent; "points" are percentage points.

Figures are drawn and saved through engine.pages (no pyplot state is touched), which also writes
`report.html`: every figure embedded with its finding, the depth x beta tables, the sweep's spec
(`sweep.json`), the figures of any `engine analyze` run on DIR, and the engine version.
With several n_bob values, per-mode figures get a `_n<n_bob>` suffix, one per value; with several
block-shuffle sizes, every figure gets a `_blk<B>` suffix (`_blknone` unshuffled), one per size, and
`acc_vs_block_*` compares the best Alice-based run with scratch across sizes.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from engine import pages
from engine.atomic import write_bytes
from engine.sweep.results import ALICE_MODES, block_name, cells, load, modes


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(name))


_save = pages.save_png


def _b(beta: float) -> str:
    return f"{beta:g}"


def _grid(block: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """depth x beta table of `value` (rows retrain_from, columns beta)."""
    return block.pivot_table(index="retrain_from", columns="beta", values=value, aggfunc="first")


def _best_per_beta(block: pd.DataFrame) -> pd.DataFrame:
    """For each beta the cell with the highest mean accuracy (over depths and modes in `block`)."""
    block = block.dropna(subset=["mean"])
    idx = block.groupby("beta")["mean"].idxmax()
    return block.loc[idx].set_index("beta").sort_index()


def _chance(block: pd.DataFrame) -> float:
    return float(block["chance"].mean())


# Lines that may coincide (best depths are small integers) stay distinguishable.
_STYLES = [dict(marker=m, markersize=s, linestyle=ls, linewidth=w) for m, s, ls, w in
           (("o", 10, "-", 4), ("s", 7, "--", 2.5), ("^", 5, ":", 1.5), ("D", 3, "-", 1))]


# -- figures, each returning its one-line finding -----------------------------------------------

def _acc_vs_beta(c: pd.DataFrame, mode: str, title: str, path: Path) -> str:
    block = c[c["mode"] == mode]
    fig = Figure(layout="constrained", figsize=(7, 4.5))
    ax = fig.add_subplot()
    for l, d in block.groupby("retrain_from"):
        ax.errorbar(d["beta"], 100 * d["mean"], yerr=100 * d["std"].fillna(0), marker="o",
                    capsize=3, label=f"l={l}")
    for other, style in (("scratch", ":"), ("random-frozen", "-.")):
        if other != mode and other in set(c["mode"]):
            best = _best_per_beta(c[c["mode"] == other])
            ax.errorbar(best.index, 100 * best["mean"], yerr=100 * best["std"].fillna(0),
                        color="black", linestyle=style, capsize=3, label=f"{other} (best l)")
    ax.axhline(100 * _chance(block), color="grey", linestyle="--", label="chance")
    ax.set(xlabel="beta (label correlation with Alice's task)", ylabel="Bob test accuracy (%)",
           title=title)
    ax.legend(fontsize="small", ncol=2)
    ax.grid(alpha=0.3)
    _save(fig, path)

    grid = _grid(block)
    if grid.shape[1] < 2:
        return f"only beta={_b(grid.columns[0])} was run; no trend in beta"
    not_mono = [l for l, row in grid.iterrows() if (np.diff(row.dropna().to_numpy()) < 0).any()]
    text = (f"accuracy is monotone non-decreasing in beta at {len(grid) - len(not_mono)}/"
            f"{len(grid)} depths")
    if not_mono:
        text += " (not at " + ", ".join(f"l={l}" for l in not_mono) + ")"
    lo, hi = grid.columns[0], grid.columns[-1]
    change = 100 * (grid[hi] - grid[lo]).mean()
    return text + f"; mean change from beta={_b(lo)} to beta={_b(hi)}: {change:+.1f} points"


def _heatmap(c: pd.DataFrame, mode: str, title: str, path: Path) -> str:
    grid = _grid(c[c["mode"] == mode]) * 100
    fig = Figure(layout="constrained", figsize=(max(5.0, 2.5 + 0.9 * grid.shape[1]),
                                                2.2 + 0.5 * grid.shape[0]))
    ax = fig.add_subplot()
    image = ax.imshow(grid.to_numpy(), cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(grid.shape[1]), [_b(b) for b in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(l) for l in grid.index])
    middle = np.nanmean(grid.to_numpy())
    for i, j in np.ndindex(grid.shape):
        v = grid.iat[i, j]
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                    color="black" if v > middle else "white")
    fig.colorbar(image, ax=ax, label="Bob test accuracy (%)")
    ax.set(xlabel="beta", ylabel="retrain_from l", title=title)
    _save(fig, path)
    values = grid.to_numpy()
    best = np.unravel_index(np.nanargmax(values), values.shape)
    worst = np.unravel_index(np.nanargmin(values), values.shape)
    return (f"best cell l={grid.index[best[0]]}, beta={_b(grid.columns[best[1]])} "
            f"({values[best]:.1f}%); worst cell l={grid.index[worst[0]]}, "
            f"beta={_b(grid.columns[worst[1]])} ({values[worst]:.1f}%)")


def _best_depth(c: pd.DataFrame, title: str, path: Path) -> str:
    """Best l vs beta per mode (at the largest n_bob); with several n_bob, best l vs n_bob."""
    depth_modes = [m for m in modes(c) if m != "scratch"]  # scratch has only l=1
    n_values = sorted(c["n_bob"].unique())
    n_max = n_values[-1]
    fig = Figure(layout="constrained", figsize=(12 if len(n_values) > 1 else 7, 4.5))
    axes = fig.subplots(1, 2 if len(n_values) > 1 else 1, squeeze=False)[0]
    findings = []
    for k, mode in enumerate(depth_modes):
        best = _best_per_beta(c[(c["mode"] == mode) & (c["n_bob"] == n_max)])
        axes[0].plot(best.index, best["retrain_from"], label=mode, **_STYLES[k % len(_STYLES)])
        findings.append(f"{mode}: best depth " + ", ".join(
            f"at beta={_b(b)} is l={l}" for b, l in best["retrain_from"].items()))
    axes[0].set(xlabel="beta", ylabel="best retrain_from l (argmax mean accuracy)",
                title=f"{title}, n_bob={n_max}")
    if len(n_values) > 1:
        mode = depth_modes[0]
        block = c[c["mode"] == mode]
        trends = []
        for k, (beta, d) in enumerate(block.dropna(subset=["mean"]).groupby("beta")):
            best = d.loc[d.groupby("n_bob")["mean"].idxmax()].sort_values("n_bob")
            axes[1].plot(best["n_bob"], best["retrain_from"], label=f"beta={_b(beta)}",
                         **_STYLES[k % len(_STYLES)])
            trends.append(f"beta={_b(beta)}: " + " → ".join(
                f"l={r.retrain_from} (n={r.n_bob})" for r in best.itertuples()))
        axes[1].set_xscale("log")
        axes[1].set(xlabel="n_bob (Bob training samples)", ylabel="best retrain_from l",
                    title=f"{title}, {mode}: best depth vs n_bob")
        findings.append(f"{mode} best depth vs n_bob: " + "; ".join(trends))
    depths = sorted(c["retrain_from"].unique())
    for ax in axes:
        ax.set_yticks(depths)
        ax.set_ylim(depths[0] - 0.5, depths[-1] + 0.5)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    _save(fig, path)
    return "; ".join(findings)


def _baselines(c: pd.DataFrame, title: str, path: Path) -> str | None:
    """Per beta: the best Alice-based cell, scratch, and the best random-frozen cell."""
    present = set(c["mode"])
    series = {}
    if present & set(ALICE_MODES):
        series["best Alice-based"] = _best_per_beta(c[c["mode"].isin(ALICE_MODES)])
    for mode in ("scratch", "random-frozen"):
        if mode in present:
            series[mode] = _best_per_beta(c[c["mode"] == mode])
    if len(series) < 2:
        return None
    betas = sorted(c["beta"].unique())
    fig = Figure(layout="constrained", figsize=(max(6, 1.2 * len(betas) + 2), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for k, (name, best) in enumerate(series.items()):
        best = best.reindex(betas)
        x = np.arange(len(betas)) + (k - (len(series) - 1) / 2) * width
        ax.bar(x, 100 * best["mean"], width, yerr=100 * best["std"].fillna(0), capsize=3,
               label=name)
        if name == "best Alice-based":  # which mode and depth won
            for xi, r in zip(x, best.itertuples()):
                if not np.isnan(r.mean):
                    ax.annotate(f"{r.mode}\nl={r.retrain_from}", (xi, 100 * r.mean), ha="center",
                                va="bottom", fontsize=7, xytext=(0, 6), textcoords="offset points")
    ax.axhline(100 * _chance(c), color="grey", linestyle="--", label="chance")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)  # room for the annotations
    ax.set_xticks(range(len(betas)), [_b(b) for b in betas])
    ax.set(xlabel="beta", ylabel="Bob test accuracy (%)", title=title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)

    findings = []
    # At the lowest beta, the run that reuses all of Alice's network (l = L: only the output
    # layer trained), the one Mohamud & Brink's above-chance claim is about; the best
    # Alice-based run there usually retrains every layer and says nothing about reuse.
    head = c[c["mode"].isin(ALICE_MODES) & (c["retrain_from"] == c["retrain_from"].max())]
    if len(head):
        b0 = head["beta"].min()
        h = head[head["beta"] == b0]
        findings.append(f"at beta={_b(b0)}, reusing Alice's network with only the output layer "
                        f"retrained (l={int(h['retrain_from'].iloc[0])}): "
                        f"{100 * h['mean'].mean():.1f}% vs chance {100 * h['chance'].mean():.1f}%")
    for mode in ALICE_MODES:
        if mode not in present:
            continue
        own = _best_per_beta(c[c["mode"] == mode])["mean"]
        for base in ("scratch", "random-frozen"):
            if base in series:
                other = series[base]["mean"]
                common = own.index.intersection(other.index)
                wins = int((own[common] > other[common]).sum())
                findings.append(f"{mode} (best l) beats {base} at {wins} of {len(common)} betas")
    return "; ".join(findings)


def _acc_vs_block(c: pd.DataFrame, title: str, path: Path) -> str | None:
    """Neyshabur et al. (2020), Fig. 2: Bob's accuracy vs block-shuffle size, best Alice-based run
    (over modes and depths) and scratch, one pair of lines per beta, at the largest n_bob."""
    n_bob = c["n_bob"].max()
    c = c[c["n_bob"] == n_bob]
    series = {name: block for name, block in (("best Alice-based", c[c["mode"].isin(ALICE_MODES)]),
                                               ("scratch", c[c["mode"] == "scratch"]))
              if not block.empty}
    if not series:
        return None
    # Small blocks (most shuffled) on the left, unshuffled ("none", stored as 0) on the right.
    shuffles = sorted(c["block_shuffle"].unique(), key=lambda b: (b == 0, b))
    x = {b: i for i, b in enumerate(shuffles)}
    fig = Figure(layout="constrained", figsize=(max(6, 0.9 * len(shuffles) + 3), 4.5))
    ax = fig.add_subplot()
    gaps = []
    for k, beta in enumerate(sorted(c["beta"].unique())):
        best = {}
        for (name, block), style in zip(series.items(), ("-", "--")):
            d = block[block["beta"] == beta].dropna(subset=["mean"])
            if d.empty:
                continue
            best[name] = (d.loc[d.groupby("block_shuffle")["mean"].idxmax()]
                          .set_index("block_shuffle"))
            b = best[name].loc[[s for s in shuffles if s in best[name].index]]
            ax.errorbar([x[s] for s in b.index], 100 * b["mean"], yerr=100 * b["std"].fillna(0),
                        color=f"C{k}", linestyle=style, marker="o", capsize=3,
                        label=f"{name}, beta={_b(beta)}")
        if len(best) == 2:
            gap = 100 * (best["best Alice-based"]["mean"] - best["scratch"]["mean"]).dropna()
            gaps.append(f"beta={_b(beta)}: " + ", ".join(
                f"{gap[s]:+.1f} ({block_name(s)})" for s in shuffles if s in gap.index))
    ax.axhline(100 * _chance(c), color="grey", linestyle="--", label="chance")
    ax.set_xticks(range(len(shuffles)), [block_name(s) for s in shuffles])
    ax.set(xlabel="block-shuffle size (pixels; none = unshuffled)", ylabel="Bob test accuracy (%)",
           title=f"{title}, n_bob={n_bob}")
    ax.legend(fontsize="small", ncol=2)
    ax.grid(alpha=0.3)
    _save(fig, path)
    if not gaps:
        return f"only {', '.join(series)} runs; no Alice-based vs scratch comparison"
    return (f"best Alice-based minus scratch at n_bob={n_bob}, points by block size: "
            + "; ".join(gaps))


# -- report --------------------------------------------------------------------------------------

def _what_was_run(df: pd.DataFrame) -> list[str]:
    def values(col):
        return ", ".join(str(v) for v in sorted(df[col].unique()))
    return [
        f"- runs: {len(df)}",
        f"- pairs: {values('pair')}",
        f"- archs: {values('arch')}",
        f"- modes: {', '.join(modes(df))}",
        f"- betas: {', '.join(_b(b) for b in sorted(df['beta'].unique()))}",
        f"- depths (retrain_from l): {values('retrain_from')} (L = {values('n_layers')})",
        f"- seeds: {values('seed')}",
        f"- n_bob: {values('n_bob')}",
        "- block shuffle: " + ", ".join(block_name(b) for b in sorted(df["block_shuffle"].unique())),
    ]


def _tables(c: pd.DataFrame) -> list[pages.Table]:
    """The depth x beta tables of `engine results` (mean ± std over seeds, %) as page tables."""
    tables = []
    shuffles = c["block_shuffle"].nunique() > 1
    for (pair, arch, shuffle, mode, n_bob), block in c.groupby(
            ["pair", "arch", "block_shuffle", "mode", "n_bob"], sort=True):
        text = block.assign(cell=[f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if n > 1 else "")
                                  for m, s, n in zip(block["mean"], block["std"], block["n"])])
        grid = text.pivot(index="retrain_from", columns="beta", values="cell").fillna("")
        grid.columns = [f"beta {_b(b)}" for b in grid.columns]
        grid.insert(0, "l", grid.index)
        caption = (f"{pair}, {arch}" + (f", blocks {block_name(shuffle)}" if shuffles else "")
                   + f", {mode}, n_bob={n_bob}: Bob test accuracy (%)")
        tables.append(pages.Table(grid.reset_index(drop=True), caption))
    return tables


def _page(out: Path, df: pd.DataFrame, c: pd.DataFrame, figures: list[tuple[Path, str]],
          path: Path, claims: list[str]) -> Path:
    from engine import paths
    sections: list[pages.Section] = [
        pages.Heading("What was run"), pages.Text([line[2:] for line in _what_was_run(df)])]
    if claims:
        sections += [pages.Heading("Claims (verdicts as engine reproduce judges them)"),
                     pages.Text(claims)]
    sections += [pages.Heading("Findings"), pages.Text([f"{p.stem}: {f}" for p, f in figures]),
                 pages.Heading("Figures")]
    sections += [pages.Image(p, f"{p.name}: {f}") for p, f in figures]
    sections += [pages.Heading("Results"), *_tables(c)]
    analyses = sorted(paths.analysis_dir(out).glob("*.png"))
    if analyses:
        sections += [pages.Heading("Analyses (engine analyze)")]
        sections += [pages.Image(p, p.name) for p in analyses]
    spec = paths.sweep_file(out)
    if spec.is_file():
        sections += [pages.Heading("Sweep spec (sweep.json)"), pages.Pre(spec.read_text())]
    return pages.write_page(path, f"Transfer report: {out}", sections)


def write_report(out: Path) -> list[Path]:
    """Write the figures, summary.md and report.html under out/report/; return their paths."""
    from engine import paths
    out = Path(out)
    df = load(out)
    c = cells(df)
    report = paths.report_dir(out)
    try:
        report.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from engine.atomic import os_error
        raise os_error(exc, "create", report) from None
    figures: list[tuple[Path, str]] = []

    def add(name: str, draw, *args) -> None:
        path = report / name
        finding = draw(*args, path)
        if finding is not None:
            figures.append((path, finding))

    shuffles = sorted(c["block_shuffle"].unique())
    for (pair, arch), ga in c.groupby(["pair", "arch"], sort=True):
        stem = f"{_safe(pair)}_{_safe(arch)}"
        for shuffle, g in ga.groupby("block_shuffle", sort=True):
            blk = f"_blk{'none' if shuffle == 0 else shuffle}" if len(shuffles) > 1 else ""
            shown = f", blocks {block_name(shuffle)}" if len(shuffles) > 1 else ""
            n_values = sorted(g["n_bob"].unique())
            for n_bob in n_values:
                gn = g[g["n_bob"] == n_bob]
                suffix = blk + (f"_n{n_bob}" if len(n_values) > 1 else "")
                for mode in modes(gn):
                    title = f"{pair}, {arch}{shown}, {mode}, n_bob={n_bob}"
                    add(f"acc_vs_beta_{stem}_{_safe(mode)}{suffix}.png", _acc_vs_beta, gn, mode,
                        title)
                    add(f"heatmap_{stem}_{_safe(mode)}{suffix}.png", _heatmap, gn, mode,
                        f"{title}\nmean Bob test accuracy (%) over seeds")
                add(f"baselines_{stem}{suffix}.png", _baselines, gn,
                    f"{pair}, {arch}{shown}, n_bob={n_bob}: best Alice-based vs baselines")
            if set(g["mode"]) - {"scratch"}:
                add(f"best_depth_{stem}{blk}.png", _best_depth, g, f"{pair}, {arch}{shown}")
        if ga["block_shuffle"].nunique() > 1:
            add(f"acc_vs_block_{stem}.png", _acc_vs_block, ga,
                f"{pair}, {arch}: Bob accuracy vs block shuffle")

    lines = [f"# Transfer report: {out}", "", "## What was run", "", *_what_was_run(df), "",
             "## Figures", ""]
    lines += [f"- `{path.name}`: {finding}" for path, finding in figures]
    from engine.studies.claims.on_sweep import lines as claim_lines
    claims = claim_lines(df)
    if claims:
        lines += ["", "## Claims (verdicts as `engine reproduce` judges them)", ""]
        lines += [f"- {line}" for line in claims]
    summary = report / "summary.md"
    write_bytes(summary, ("\n".join(lines) + "\n").encode())
    page = _page(out, df, c, figures, paths.report_page(report), claims)
    return [path for path, _ in figures] + [summary, page]
