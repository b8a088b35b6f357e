"""`engine analyze KIND DIR`: analyses of a finished sweep's networks. Each writes its rows to the
results store (`store.write_analysis(out, KIND, rows)`) and one PNG under `<out>/analysis/`, and
returns the paths written. Bob's networks are re-created on demand (`analysis.artifacts.bob_model`);
everything runs on the CPU. See README "Analysis" for what each computes and its source.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import pandas as pd

from engine import paths
from engine.analysis import artifacts as art
from engine.analysis import figures
from engine.analysis.landscape import snapshot
from engine.errors import EngineError
from engine.store import write_analysis

KINDS = ("cka", "transferability", "bound", "barrier", "criticality", "attribution",
         "select-source", "choose-depth")
LOG = Callable[[str], None]


@dataclasses.dataclass
class Options:
    betas: list[float] | None = None
    archs: list[str] | None = None
    seeds: list[int] | None = None
    n_bobs: list[int] | None = None
    modes: list[str] | None = None       # default per analysis
    max_samples: int = 1000              # samples per forward-pass analysis
    bound_mode: str = "learned-all"
    steps: int = 200                     # bound: Adam steps; attribution: integral steps use 16
    points: int = 11                     # barrier: points on each line
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    sigmas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    tolerance: float = 0.05              # criticality: allowed error above the trained network's
    method: str = "integrated_gradients"
    target: str | None = None            # select-source: target dataset dir
    n: int | None = None                 # select-source: target budget
    epochs: int = 10                     # select-source: scratch network's epochs
    predictors: list[str] | None = None  # choose-depth: these predictors (None: all)


def _runs(out: Path, o: Options, default_modes: tuple[str, ...]) -> pd.DataFrame:
    return art.filter_runs(art.sweep_runs(out), betas=o.betas, archs=o.archs, seeds=o.seeds,
                           n_bobs=o.n_bobs, modes=o.modes or default_modes)


def _finish(out: Path, kind: str, rows: list[dict], draw, *args) -> list[Path]:
    if not rows:
        raise EngineError(f"{kind}: nothing to analyse for these runs")
    part = write_analysis(out, kind, rows)
    png = paths.analysis_dir(out) / f"{kind}.png"
    draw(pd.DataFrame(rows), *args, png)
    return [png, part]


def _meta(r) -> dict:
    return {k: r[k] for k in ("run_id", "alice_id", "dataset", "beta", "arch", "seed",
                              "retrain_from", "mode", "n_bob")}


def cka(out: Path, o: Options, log: LOG) -> list[Path]:
    from engine.analysis.similarity import cka_matrix
    rows = []
    for _, r in _runs(out, o, ("finetune",)).iterrows():
        alice, _ = art.alice_model(out, r["alice_id"])
        bob, _ = art.bob_model(out, r["run_id"], log=log)
        m = cka_matrix(alice, bob, art.dataset(out, r["dataset"])[1], max_samples=o.max_samples)
        rows += [{**_meta(r), "layer_alice": i + 1, "layer_bob": j + 1, "cka": float(m[i, j])}
                 for i in range(m.shape[0]) for j in range(m.shape[1])]
    return _finish(out, "cka", rows, figures.cka)


def transferability(out: Path, o: Options, log: LOG) -> list[Path]:
    from engine.analysis.estimators import h_score, leep, logme, nce
    rows = []
    for _, r in _runs(out, o, ("finetune",)).iterrows():
        alice, _ = art.alice_model(out, r["alice_id"])
        train = art.dataset(out, r["dataset"])[0]
        y = art.labels(train, "bob_label", o.max_samples)
        feat = lambda k: art.features(out, r["alice_id"], alice, train, "train", k,  # noqa: E731
                                      data_key=r["dataset"], n=o.max_samples)
        logits, l = feat(alice.n_layers), int(r["retrain_from"])
        # at l = 1 Bob keeps no Alice layer: the features would be the raw input for every Alice
        f = feat(l - 1) if l > 1 else None
        rows.append({**_meta(r), "test_acc": r["test_acc"],
                     "logme": logme(f, y) if l > 1 else math.nan,
                     "h_score": h_score(f, y) if l > 1 else math.nan,
                     "leep": leep(art.softmax(logits), y),
                     "nce": nce(logits.argmax(1), y)})
    return _finish(out, "transferability", rows, figures.transferability)


def bound(out: Path, o: Options, log: LOG) -> list[Path]:
    from engine.analysis.bound import transfer_bound
    runs = _runs(out, o, ("finetune",))
    rows = []
    for alice_id, g in runs.groupby("alice_id", sort=False):
        r = g.iloc[0]
        alice, _ = art.alice_model(out, alice_id)
        L = alice.n_layers
        a_key = art.alice_dataset(out, alice_id)
        src, tgt = art.dataset(out, a_key)[0], art.dataset(out, r["dataset"])[0]
        zs = art.features(out, alice_id, alice, src, "train", L - 1, data_key=a_key,
                          n=o.max_samples)
        zt = art.features(out, alice_id, alice, tgt, "train", L - 1, data_key=r["dataset"],
                          n=o.max_samples)
        b = transfer_bound(zs, art.labels(src, "alice_label", o.max_samples), zt,
                           art.labels(tgt, "bob_label", o.max_samples), alice.head,
                           mode=o.bound_mode, steps=o.steps, seed=int(r["seed"]))
        last = g[g["retrain_from"] == L]
        rows.append({**{k: r[k] for k in ("alice_id", "dataset", "beta", "arch", "seed", "n_bob")},
                     "mode": o.bound_mode, "transforms": b["transforms"],
                     **{k: float(b[k]) for k in ("bound", "weighted_source_loss",
                                                 "conditional_entropy", "wasserstein", "tau",
                                                 "tau_wasserstein", "target_loss", "target_acc",
                                                 "source_loss", "source_acc")},
                     "bob_test_loss": float(last["test_loss"].mean()) if len(last) else math.nan})
    return _finish(out, "bound", rows, figures.bound)


def _line(out: Path, r, name: str, model, state_a: dict, state_b: dict, o: Options) -> list[dict]:
    from engine.analysis.landscape import interpolate
    test = art.first(art.dataset(out, r["dataset"])[1], o.max_samples)
    c = interpolate(model, state_a, state_b, test, "bob_label", k=o.points,
                    precision=art.run_spec(r).precision)
    return [{**_meta(r), "path": name, "t": float(t), "loss": float(loss), "acc": float(acc),
             "loss_barrier": c["loss_barrier"], "error_barrier": c["error_barrier"]}
            for t, loss, acc in zip(c["t"], c["loss"], c["acc"])]


def barrier(out: Path, o: Options, log: LOG) -> list[Path]:
    """Per finetune run at l=1 (and scratch run): Bob's start -> Bob, and Bob seed s <-> s+1 (the
    same spec with seed + 1: same Alice, other head init and data order), re-created on demand."""
    runs = _runs(out, o, ("finetune", "scratch"))
    runs = runs[runs["retrain_from"] == 1]
    rows = []
    for _, r in runs.iterrows():
        spec = art.run_spec(r)
        bob, _ = art.bob_model(out, spec=spec, log=log)
        other, _ = art.bob_model(out, spec=dataclasses.replace(spec, seed=spec.seed + 1), log=log)
        # End points are copies: `bob.state_dict()` shares storage with `bob`, into which
        # `interpolate` loads every point of the path.
        trained = snapshot(bob.state_dict())
        if r["mode"] == "finetune":
            rows += _line(out, r, "Alice -> Bob", bob, art.bob_initial_state(out, spec, bob),
                          trained, o)
        rows += _line(out, r, f"{r['mode']} seed {spec.seed} <-> {spec.seed + 1}", bob,
                      trained, snapshot(other.state_dict()), o)
    return _finish(out, "barrier", rows, figures.barrier)


def criticality(out: Path, o: Options, log: LOG) -> list[Path]:
    from engine.analysis.landscape import module_criticality
    from engine.train.trainer import evaluate
    runs = _runs(out, o, ("finetune", "scratch"))
    rows = []
    for _, r in runs[runs["retrain_from"] == 1].iterrows():
        spec = art.run_spec(r)
        bob, _ = art.bob_model(out, spec=spec, log=log)
        train = art.first(art.dataset(out, r["dataset"])[0], o.max_samples)
        threshold = min(1.0, 1 - evaluate(bob, train, "bob_label", precision=spec.precision)[0]
                        + o.tolerance)
        c = module_criticality(bob, art.bob_initial_state(out, spec, bob),
                               snapshot(bob.state_dict()), train,
                               "bob_label", o.alphas, o.sigmas, threshold, n_noise=2,
                               seed=spec.seed, precision=spec.precision)
        for i, layer in enumerate(c["layers"]):
            rows += [{**_meta(r), "layer": layer, "alpha": float(a), "sigma": float(s),
                      "error": float(c["error"][i, ai, si]), "threshold": threshold,
                      "criticality": float(c["criticality"][i])}
                     for ai, a in enumerate(c["alphas"]) for si, s in enumerate(c["sigmas"])]
    return _finish(out, "criticality", rows, figures.criticality)


def attribution(out: Path, o: Options, log: LOG) -> list[Path]:
    from engine.analysis.attribution import attribution_mass
    rows = []
    for _, r in _runs(out, o, ("finetune",)).iterrows():
        bob, _ = art.bob_model(out, r["run_id"], log=log)
        _, test, manifest = art.dataset(out, r["dataset"])
        m = attribution_mass(bob, art.first(test, o.max_samples), manifest, method=o.method,
                             steps=16)
        rows.append({**_meta(r), "method": o.method, "left": m["left"], "right": m["right"],
                     "n": m["n"]})
    return _finish(out, "attribution", rows, figures.attribution)


def select_source(out: Path, o: Options, log: LOG) -> list[Path]:
    from engine.analysis.select import SCORES
    from engine.analysis.select import select_source as select
    runs = _runs(out, o, ("finetune",))
    ids = [a for a in dict.fromkeys(runs["alice_id"]) if a]
    if o.target:
        target = Path(o.target)
    else:  # the first run's dataset, by key
        target = paths.dataset_dir(paths.sweep_datasets(out), sorted(runs["dataset"])[0])
    n = o.n or int(runs["n_bob"].min())
    log(f"select-source: {len(ids)} candidates, target {target.name}, n={n}")
    df = select(out, target, n, ids, art.sweep_runs(out), epochs=o.epochs,
                seed=(o.seeds or [0])[0], max_samples=o.max_samples)
    for score, rho in df.attrs["spearman"].items():
        log(f"  {score}: Spearman rho with measured accuracy = {rho:.3f}")
    rows = [{**row, **{f"spearman_{s}": v for s, v in df.attrs["spearman"].items()}}
            for row in df.to_dict("records")]
    return _finish(out, "select-source", rows, figures.select_source, SCORES)


def choose_depth(out: Path, o: Options, log: LOG) -> list[Path]:
    from engine.analysis.depth.evaluate import choose_depth as evaluate
    return evaluate(out, o, log)


COMMANDS = {"cka": cka, "transferability": transferability, "bound": bound, "barrier": barrier,
            "criticality": criticality, "attribution": attribution, "select-source": select_source,
            "choose-depth": choose_depth}


def analyze(kind: str, out: Path, options: Options, log: LOG = lambda m: None) -> list[Path]:
    out = Path(out)
    if kind not in COMMANDS:
        raise EngineError(f"unknown analysis {kind!r}; choose one of: {', '.join(KINDS)}")
    art.sweep_runs(out)  # a sweep directory, before any work
    return COMMANDS[kind](out, options, log)
