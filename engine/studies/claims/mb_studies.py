"""Mohamud & Brink 2025's claims that need studies rather than the freeze-depth sweep: the Gaussian
feature-correlation model (`engine toy`, Figs. 1-2) and the real-photo case study (`engine
case-study cats-dogs`). The studies run through engine.studies.claims.studies; effects are
computed per seed by the functions below, which are tested on hand-made tables.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine import pages
from engine.errors import EngineError
from engine.studies.claims.base import Claim, Context, Evidence, Scale, Study

PAPER = "Mohamud & Brink 2025"

# mb-toy-rotation ----------------------------------------------------------------------------------

TOY_ALPHAS = (-1.0, -0.5, 0.0, 0.5, 1.0)
TOY_LAM, TOY_K = 1.0, 4           # ridge strength and features per group (README's defaults)
TOY_N = {"smoke": 2000, "small": 20000, "paper": 20000}  # samples per simulated set
MISMATCH_PENALTY = 90.0           # degrees: a failed accuracy match pulls the effect below zero


def toy_study(scale: Scale) -> Study:
    return Study.of("toy", seeds=scale.seed_list, n=TOY_N.get(scale.name, 20000),
                    alphas=TOY_ALPHAS, lam=TOY_LAM, k=TOY_K)


def accuracy_tolerance(n: int) -> float:
    """Fraction: 4 binomial standard errors of an accuracy near 1/2 measured on n test samples."""
    return 4 * math.sqrt(0.25 / n)


def rotation_effect(t: pd.DataFrame) -> dict:
    """One seed's toy table (engine.studies.claims.studies.TOY_COLUMNS) -> the rotation of Alice's
    simulated weights, the analytic one, the largest analytic-vs-simulated gaps and the effect:
    rotation = (angle(+1) - angle(-1)) / 2 - |angle(0)| (degrees; angle 0 = [1, 0], +-45 =
    [1, +-1]); effect = simulated rotation - largest angle gap - MISMATCH_PENALTY if any
    accuracy gap exceeds the tolerance."""
    t = t.set_index("alpha")
    for a in (-1.0, 0.0, 1.0):
        if a not in t.index:
            raise EngineError(f"the toy study has no alpha {a:g}; it needs -1, 0 and 1")

    def rotation(col: str) -> float:
        return (t.loc[1.0, col] - t.loc[-1.0, col]) / 2 - abs(t.loc[0.0, col])

    sim, ana = rotation("simulated_angle"), rotation("analytic_angle")
    angle_gap = float((t["simulated_angle"] - t["analytic_angle"]).abs().max())
    acc_gap = float(max((t["simulated_as_is"] - t["analytic_as_is"]).abs().max(),
                        (t["simulated_retrained"] - t["analytic_retrained"]).abs().max()))
    tol = accuracy_tolerance(int(t["n"].iloc[0]))
    effect = sim - angle_gap - (MISMATCH_PENALTY if acc_gap > tol else 0.0)
    return {"seed": int(t["seed"].iloc[0]), "rotation_simulated": float(sim),
            "rotation_analytic": float(ana), "angle_gap": angle_gap, "accuracy_gap": acc_gap,
            "accuracy_tolerance": tol, "effect": float(effect)}


def _toy(ctx: Context) -> Evidence:
    from engine.studies.claims.studies import toy_file
    d = ctx.study(toy_study(ctx.scale))
    tables, rows = {}, []
    for s in ctx.scale.seed_list:
        if toy_file(d, s).is_file():
            tables[s] = pd.read_csv(toy_file(d, s))
            rows.append(rotation_effect(tables[s]))
    by_seed = {r["seed"]: r["effect"] for r in rows}
    effects = tuple(float(by_seed.get(s, math.nan)) for s in ctx.scale.seed_list)

    fig = pages.figure(6.5, 4)
    ax = fig.subplots()
    for s, t in tables.items():
        ax.plot(t["alpha"], t["simulated_angle"], "o", mfc="none",
                label=f"simulated, seed {s}" if s < 3 else None)
    if tables:
        t = next(iter(tables.values()))
        ax.plot(t["alpha"], t["analytic_angle"], "-", color="k", label="analytic (ridge)")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(xlabel="alpha (feature correlation)",
           ylabel="angle of Alice's w* from [1, 0] (degrees)",
           title="S1: w* turns from [1, 0] to [1, ±1]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure = str(pages.save_png(fig, ctx.figure_path()))
    if not rows:
        return Evidence(effects=effects, summary="the toy study wrote no seeds", figure=figure)
    r = pd.DataFrame(rows)
    summary = (f"w* turns by {r['rotation_simulated'].mean():.1f} degrees simulated vs "
               f"{r['rotation_analytic'].mean():.1f} analytic between alpha 0 and |alpha| 1; "
               f"largest gaps {r['angle_gap'].max():.2f} degrees and "
               f"{100 * r['accuracy_gap'].max():.2f} points of accuracy (tolerance "
               f"{100 * r['accuracy_tolerance'].iloc[0]:.2f})")
    return Evidence(effects=effects, summary=summary, numbers=tuple(rows), figure=figure)


# mb-semantic-photos -------------------------------------------------------------------------------

# The case study's sizes per scale (engine.studies.case_study.run_case_study's options, plus the
# runner's subsets of the real data: `cifar_images` CIFAR-10 images for Alice, `photos` cat and
# dog photos per class for Bob's training, half as many for his test). At smoke and small only
# the two Alices the effect compares, and Bob in finetune mode: the full study (4 Alices, both
# modes) took 6 CPU-minutes for its first 13 of 164 runs at small's sizes on the 2-core CPU.
PAIR = ("cifar-cat-dog", "cifar-vehicles")
CASE_STUDY = {
    "smoke": dict(cifar_images=400, photos=40, n_bobs=(None,), alice_epochs=1, passes=80,
                  min_epochs=1, alice_tasks=PAIR, modes=("finetune",)),
    "small": dict(cifar_images=3000, photos=300, n_bobs=(None,), alice_epochs=3, passes=1200,
                  min_epochs=2, alice_tasks=PAIR, modes=("finetune",)),
    "paper": dict(n_bobs=(100, 500, None), alice_epochs=6, passes=3000, min_epochs=2),
}


def case_study(scale: Scale) -> Study:
    return Study.of("case-study", seeds=scale.seed_list, noise=(), arch="cnn",
                    **CASE_STUDY.get(scale.name, CASE_STUDY["paper"]))


def semantic_effects(df: pd.DataFrame, ranks: dict[str, int]) -> pd.DataFrame:
    """Per (seed, n_bob): the best test accuracy over (l, mode) of each graded Alice task, the gap
    closest minus farthest (points) and Spearman(rank, best accuracy). `df` has a `task` column."""
    from engine.analysis.select import spearman
    graded = sorted(ranks, key=lambda t: -ranks[t])
    closest, farthest = graded[0], graded[-1]
    rows = []
    alice = df[df["task"].isin(graded) & df["mode"].isin(("finetune", "reinit"))]
    for (seed, n), g in alice.groupby(["seed", "n_bob"]):
        best = g.groupby("task")["test_acc"].max()
        if closest not in best or farthest not in best:
            continue
        scratch = df[(df["mode"] == "scratch") & (df["seed"] == seed) & (df["n_bob"] == n)]
        row = {"seed": int(seed), "n_bob": int(n),
               "gap": float(100 * (best[closest] - best[farthest])),
               "rho": spearman([ranks[t] for t in best.index], best.values),
               "scratch_acc": float(scratch["test_acc"].mean()) if len(scratch) else math.nan}
        row.update({f"acc_{t}": float(best.get(t, math.nan)) for t in graded})
        rows.append(row)
    return pd.DataFrame(rows)


def _photos(ctx: Context) -> Evidence:
    from engine.studies.case_study_report import load_study
    study, df = load_study(ctx.study(case_study(ctx.scale)))
    ranks = {t: info["rank"] for t, info in study["tasks"].items() if info["rank"] is not None}
    cells = semantic_effects(df, ranks)
    means = cells.groupby("seed")["gap"].mean() if len(cells) else pd.Series(dtype=float)
    effects = tuple(float(means.get(s, math.nan)) for s in ctx.scale.seed_list)

    graded = sorted(ranks, key=lambda t: -ranks[t])
    fig = pages.figure(6.5, 4)
    ax = fig.subplots()
    for s, g in cells.groupby("seed"):
        ax.plot(range(len(graded)), [100 * g[f"acc_{t}"].mean() for t in graded], marker="o",
                label=f"seed {s}")
    if len(cells):
        ax.axhline(100 * cells["scratch_acc"].mean(), color="k", linestyle="--",
                   label="scratch (mean)")
    ax.set_xticks(range(len(graded)), graded, rotation=15, fontsize="small")
    ax.set(xlabel="Alice's task, closest to cat vs dog first",
           ylabel="Bob's best test accuracy (%)", title="Cats vs dogs: Alice's relation and gain")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure = str(pages.save_png(fig, ctx.figure_path()))
    finite = [e for e in effects if math.isfinite(e)]
    rho = (f"; mean Spearman rho(relation, accuracy) over {len(graded)} Alices "
           f"{cells['rho'].mean():+.2f}" if len(graded) > 2 else "")
    summary = (f"the closest Alice ({graded[0]}) beats the farthest ({graded[-1]}) by "
               f"{np.mean(finite):+.1f} points (mean over seeds){rho}" if finite
               else "no seeds with both Alices")
    numbers = tuple({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                    for r in cells.to_dict("records"))
    return Evidence(effects=effects, summary=summary, numbers=numbers, figure=figure)


CLAIMS = (
    Claim(
        id="mb-toy-rotation", paper=PAPER,
        sentence="In the Gaussian feature-correlation model (S1) Alice's optimal weights w* turn "
                 "from [1, 0] at alpha = 0 to [1, ±1] at alpha = ±1, and the closed form matches "
                 "the simulation.",
        effect="simulated rotation of w* between alpha = 0 and |alpha| = 1, less the largest "
               "analytic-vs-simulated angle gap (degrees; 90 less when an accuracy gap fails)",
        margin=22.5,
        rule="Per seed, engine toy's S1 (k = 4, lambda = 1) at alpha = -1, -0.5, 0, 0.5, 1: the "
             "angle of w* = (mean weight on Alice's group, on Bob's) from [1, 0] in degrees, "
             "analytic (ridge closed form) and simulated (trained by SGD on n samples). Rotation "
             "= (angle(+1) - angle(-1)) / 2 - |angle(0)|, 45 degrees analytically. Effect = the "
             "simulated rotation - the largest |simulated - analytic| angle over the alphas, and "
             "a further 90 degrees less when Bob's accuracy (as is or retrained) differs from "
             "Sheppard's formula by more than 4 binomial standard errors (4 sqrt(0.25 / n)) at "
             "any alpha. Margin 22.5 degrees: w* at least half-way to [1, ±1].",
        needs=lambda scale: (toy_study(scale),), evaluate=_toy),
    Claim(
        id="mb-semantic-photos", paper=PAPER,
        sentence="On real photos (cats vs dogs), a semantically closer Alice (CIFAR-10 cat/dog) "
                 "helps Bob more than an unrelated one (CIFAR-10 vehicles).",
        effect="Bob's best test accuracy with the cat/dog Alice minus with the vehicles Alice "
               "(points; best over depths and modes; mean over Bob's budgets of one seed)",
        margin=1.0,
        rule="engine case-study cats-dogs (cnn, 32x32; at smoke and small on subsets of CIFAR-10 "
             "and of the photos, with only the two compared Alices and Bob in finetune mode: "
             "engine.studies.claims.mb_studies.CASE_STUDY). Per seed and Bob budget: the best "
             "test accuracy over retrain-from depths (and modes, where both run) with each Alice "
             "(same seed, same photos), the effect the closest Alice's (cifar-cat-dog) minus the "
             "farthest's (cifar-vehicles), in points, averaged over budgets. At paper scale, "
             "with all four graded Alices, Spearman of relation rank vs accuracy is reported "
             "too. Margin 1 point.",
        needs=lambda scale: (case_study(scale),), evaluate=_photos),
)
