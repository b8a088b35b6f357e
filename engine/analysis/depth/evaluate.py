"""`engine analyze choose-depth DIR`: every predictor on every complete group of a stored sweep,
scored against the measured depth curve (engine.analysis.depth.scoring). Rows into the analysis
store (`level` "group": one per predictor and group; `level` "summary": one per predictor and
arch, and pooled), `DIR/analysis/choose-depth.png` (regret vs cost per predictor)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from engine.analysis import artifacts as art
from engine.analysis.depth import figure, registry, scoring
from engine.analysis.depth.cost import Cost, sweep_flops
from engine.analysis.depth.task import Budget, Task, run_predictor
from engine.sweep.executors import n_classes as classes_of

KIND = "choose-depth"


def group_task(out: Path, g: dict) -> tuple[Task, float]:
    """The Task of one truth group (the sweep's own draw of Bob's samples) and the FLOPs of the
    group's sweep runs."""
    spec = json.loads(g["spec_json"])
    train, test, manifest = art.dataset(out, g["dataset"])
    alice, _ = art.alice_model(out, g["alice_id"])
    data = train.subset(spec["n_bob"], g["seed"])
    source_train = art.dataset(out, art.alice_dataset(out, g["alice_id"]))[0]
    source = source_train.subset(min(len(data), len(source_train)), g["seed"])
    task = Task(alice, data, classes_of(manifest),
                Budget(spec["epochs"], spec["optimizer"], spec["lr"], spec["batch_size"]),
                seed=g["seed"], alice_id=g["alice_id"], dataset_key=g["dataset"], source=source,
                n_sweep_eval=len(test))
    return task, sweep_flops(task.fwd, len(data), spec["epochs"], len(test))


def evaluate(out: Path, runs: pd.DataFrame, *, mode: str = "finetune",
             predictors: list[str] | None = None, log=lambda m: None) -> pd.DataFrame:
    """One row per (predictor, group): the group's keys, chosen and best depth, the metrics of
    `scoring.group_metrics`, the predictor's cost and its fraction of the group's sweep."""
    chosen = registry.get(predictors)
    groups = scoring.truth_curves(runs, mode)
    rows = []
    for i, g in enumerate(groups, 1):
        task, flops = group_task(out, g)
        log(f"choose-depth: group {i}/{len(groups)}: {g['pair']} beta={g['beta']:g} "
            f"{g['arch']} n_bob={g['n_bob']}")
        for name, fn in chosen.items():
            try:
                scores, cost = run_predictor(fn, task)
            except (ArithmeticError, RuntimeError, ValueError, np.linalg.LinAlgError) as exc:
                # a predictor that fails on one group (e.g. a diverged fit) abstains there
                log(f"  {name}: failed on this group ({type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:120]}); no pick")
                scores, cost = np.full(task.L, np.nan), Cost()
            rows.append({"level": "group", "predictor": name,
                         **{k: g[k] for k in scoring.GROUP_KEYS}, "seed": g["seed"],
                         "mode": mode, **scoring.group_metrics(scores, g["curve"]),
                         "wall_s": cost.wall_s, "flops": cost.flops,
                         "sweep_wall_s": g["wall_s"], "sweep_flops": flops,
                         "cost_fraction": cost.wall_s / g["wall_s"],
                         "flops_fraction": cost.flops / flops,
                         "scores": json.dumps([None if s != s else round(float(s), 6)
                                               for s in scores]),
                         "truth": json.dumps([round(float(a), 6) for a in g["curve"]])})
    return pd.DataFrame(rows)


def choose_depth(out: Path, o, log) -> list[Path]:
    """The analysis of `engine analyze choose-depth` (Options `o`: filters, `o.predictors`)."""
    from engine.analysis.analyze import _finish
    modes = o.modes or ["finetune"]
    runs = art.filter_runs(art.sweep_runs(out), betas=o.betas, archs=o.archs, seeds=o.seeds,
                           n_bobs=o.n_bobs, modes=modes)
    per_group = pd.concat([evaluate(out, runs, mode=m, predictors=o.predictors, log=log)
                           for m in modes], ignore_index=True)
    summary = pd.concat([scoring.summarize(g).assign(mode=m)
                         for m, g in per_group.groupby("mode", sort=False)], ignore_index=True)
    for _, r in summary[summary["arch"] == "pooled"].iterrows():
        log(f"  {r['predictor']:>12} ({r['mode']}): median regret {r['regret']:.2f} points, "
            f"hit rate {r['hit_rate']:.2f}, cost {r['cost_fraction']:.3f} of the sweep")
    rows = [*per_group.to_dict("records"), *summary.assign(level="summary").to_dict("records")]
    written = _finish(out, KIND, rows, figure.draw)
    return [*written, write_table(out, summary, per_group)]


def write_table(out: Path, summary: pd.DataFrame, per_group: pd.DataFrame) -> Path:
    """`DIR/analysis/choose-depth.md`: the predictors x metrics table (for reports and README)."""
    from engine import paths
    from engine.atomic import write_bytes
    lines = [f"# Choosing the depth: {out}", "",
             f"{per_group[['pair', 'beta', 'arch', 'alice_id', 'n_bob']].drop_duplicates().shape[0]}"
             f" groups; seeds {sorted(set(per_group['seed']))}; truth: mode "
             f"{', '.join(sorted(set(per_group['mode'])))}. Mean Spearman, hit rate, within one, "
             "median regret and median cost, 95% bootstrap intervals over groups.", ""]
    for mode, s in summary.groupby("mode", sort=False):
        t = scoring.table(s)
        lines += [f"## {mode}", "", "| " + " | ".join(t.columns) + " |",
                  "|" + " --- |" * len(t.columns)]
        lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in t.itertuples(index=False)]
        lines.append("")
    path = paths.analysis_dir(out) / f"{KIND}.md"
    write_bytes(path, "\n".join(lines).encode())
    return path

