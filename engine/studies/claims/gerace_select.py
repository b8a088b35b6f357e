"""`gerace-source-selection` (Gerace et al. 2024): does the layer-wise similarity of a candidate
source network to a small scratch network trained on Bob's few samples rank the candidates by how
well they transfer?

Targets and candidates come from the shared base sweep: per seed and arch, each beta's dataset is
in turn the target, and the candidates are that seed's Alices of every beta. A candidate's measured
transfer is Bob's best finetune test accuracy over depths on the target at Bob's smallest budget:
for the target's own Alice those runs are the base sweep's; for the others they are extra runs,
the base sweep's specs with the target's dataset, trained through the sweep driver
(engine.sweep.driver.execute) into this claim's work directory (copies of the Alices'
checkpoints there, so no Alice retrains; its store resumes). Scores: engine.analysis.select.
select_source (scratch network on the same budget, CKA on the target's test inputs), cached per
(seed, arch, target) as CSV in the work directory.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from engine import pages, paths
from engine.errors import EngineError
from engine.studies.claims import sweeps
from engine.studies.claims.base import Context, Evidence, Scale

SCORE = "cka_diag"  # the judged score; cka_best and the estimators are in the numbers table
OTHER_SCORES = ("cka_best", "logme", "leep")


def needs(scale: Scale):
    return (sweeps.base(scale),)


def _finetune_small(rows: pd.DataFrame) -> pd.DataFrame:
    """The base sweep's finetune runs at Bob's smallest budget."""
    fin = rows[rows["mode"] == "finetune"]
    if fin.empty:
        raise EngineError("the base sweep has no finetune runs stored")
    return fin[fin["n_bob"] == fin["n_bob"].min()]


def cross_specs(fin: pd.DataFrame) -> list:
    """Per (seed, arch), every Alice's finetune specs moved to every other beta's dataset."""
    from engine.analysis.artifacts import run_spec
    out = []
    for _, g in fin.groupby(["seed", "arch"]):
        targets = g.groupby("beta")["dataset"].first()
        for _, r in g.iterrows():
            spec = run_spec(r)
            out += [dataclasses.replace(spec, dataset=key) for beta, key in targets.items()
                    if key != spec.dataset]
    return out


def _copy_alice(root: Path, work: Path, alice_id: str):
    """Alice's checkpoint directory copied into `work` (once); her AliceSpec."""
    from engine.spec import AliceSpec
    from engine.train.checkpoint import load_checkpoint
    src, dst = paths.alice_dir(root, alice_id), paths.alice_dir(work, alice_id)
    if not paths.alice_checkpoint(work, alice_id).is_file():
        if dst.exists():
            shutil.rmtree(dst)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        tmp.rename(dst)
    spec = AliceSpec(**load_checkpoint(paths.alice_checkpoint(work, alice_id))[1]["alice"])
    if spec.id != alice_id:
        raise EngineError(f"Alice {alice_id}: her checkpoint's spec hashes to {spec.id}")
    return spec


def train_cross(ctx: Context, fin: pd.DataFrame) -> pd.DataFrame:
    """The extra runs' rows (trained now unless stored in the work directory)."""
    from engine.store import ResultsStore
    from engine.sweep.driver import execute
    work = ctx.work_dir() / "runs"
    specs = cross_specs(fin)
    if not specs:
        return fin.iloc[:0]
    alices = [_copy_alice(ctx.root, work, a) for a in sorted({s.alice_id for s in specs})]
    datasets = paths.sweep_datasets(ctx.root)
    dirs = {k: paths.dataset_dir(datasets, k) for k in {s.dataset for s in specs}
            | {a.dataset for a in alices}}
    execute(work, specs, alices, dirs, executor="batched", device="cpu", log=ctx.log)
    table = ResultsStore(work, read_only=True).table()
    return table[table["run_id"].isin({s.run_id for s in specs})]


def scores(ctx: Context, fin: pd.DataFrame, cross: pd.DataFrame) -> pd.DataFrame:
    """select_source's rows for every (seed, arch, target beta), with the candidate's beta and
    the target's, cached per cell in the work directory."""
    from engine.analysis.select import select_source
    work = ctx.work_dir()
    every = pd.concat([fin, cross], ignore_index=True)
    every["alice_beta"] = every["alice_id"].map(fin.groupby("alice_id")["beta"].first())
    frames = []
    for (seed, arch), g in fin.groupby(["seed", "arch"]):
        alice_ids = list(g.sort_values("beta").drop_duplicates("alice_id")["alice_id"])
        for t_beta, key in g.groupby("beta")["dataset"].first().items():
            cache = work / f"select-s{seed}-{arch}-b{t_beta:g}.csv"
            if cache.is_file():
                frames.append(pd.read_csv(cache))
                continue
            runs = every[(every["dataset"] == key) & (every["seed"] == seed)]
            df = select_source(work / "runs", paths.dataset_dir(paths.sweep_datasets(ctx.root), key),
                               int(g["n_bob"].iloc[0]), alice_ids, runs, seed=int(seed),
                               max_samples=ctx.scale.max_samples)
            df = df.assign(seed=int(seed), target_beta=float(t_beta),
                           alice_beta=df["alice_id"].map(every.groupby("alice_id")["alice_beta"]
                                                         .first()))
            from engine.atomic import atomic_path
            with atomic_path(cache) as tmp:
                df.to_csv(tmp, index=False)
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def selection_cells(table: pd.DataFrame, score: str = SCORE) -> pd.DataFrame:
    """Per (seed, arch, target): Spearman(score, measured accuracy) over the candidates."""
    from engine.analysis.select import spearman
    rows = []
    for (seed, arch, target), g in table.groupby(["seed", "arch", "target_beta"]):
        row = {"seed": int(seed), "arch": arch, "target_beta": float(target),
               "candidates": len(g), "rho": spearman(g[score], g["actual_acc"])}
        row.update({f"rho_{s}": spearman(g[s], g["actual_acc"]) for s in OTHER_SCORES if s in g})
        row["best_by_score"] = float(g.loc[g[score].idxmax(), "alice_beta"]) \
            if g[score].notna().any() else math.nan
        row["best_measured"] = float(g.loc[g["actual_acc"].idxmax(), "alice_beta"])
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate(ctx: Context) -> Evidence:
    fin = _finetune_small(ctx.rows(sweeps.base(ctx.scale)))
    cross = train_cross(ctx, fin)
    table = scores(ctx, fin, cross)
    cells = selection_cells(table)
    means = cells.groupby("seed")["rho"].mean() if len(cells) else pd.Series(dtype=float)
    effects = tuple(float(means.get(s, math.nan)) for s in ctx.scale.seed_list)

    fig = pages.figure(6.5, 4)
    ax = fig.subplots()
    for target, g in table.groupby("target_beta"):
        ax.scatter(g[SCORE], 100 * g["actual_acc"], label=f"target beta {target:g}")
    ax.set(xlabel=f"{SCORE} (CKA to a scratch network on n = {int(fin['n_bob'].min())} samples)",
           ylabel="measured transfer: best finetune test accuracy (%)",
           title="Source selection: candidate Alices (every beta) per target")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure = str(pages.save_png(fig, ctx.figure_path()))
    finite = [e for e in effects if math.isfinite(e)]
    picked = float((cells["best_by_score"] == cells["best_measured"]).mean()) if len(cells) else 0
    summary = (f"Spearman rho({SCORE}, measured transfer) {np.mean(finite):+.2f} (mean over seeds "
               f"and targets); the top-scored candidate is the best-transferring one in "
               f"{picked:.0%} of {len(cells)} (seed, target) cells" if finite
               else "no target with ranked candidates (ties or fewer than two candidates)")
    numbers = tuple({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                    for r in cells.to_dict("records"))
    return Evidence(effects=effects, summary=summary, numbers=numbers, figure=figure)
