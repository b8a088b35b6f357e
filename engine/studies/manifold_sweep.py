"""`engine manifold-sweep`: the best transfer depth in the correlated hidden-manifold model.

For each similarity level s in --overlaps, a dataset (engine.data.manifold) whose target differs from the
source by s, according to `vary`:

    vary        feature_overlap   teacher_overlap
    both        s                 s
    features    s                 1
    teacher     1                 s

then, per seed, Alice (an mlp with L = depth + 1 layers) is pre-trained on source-train alice_label,
and for every n_target Bob is trained on the first n_target samples of target-train (nested subsets,
engine.train.device.DeviceData.subset) for bob_label: fine-tuned from Alice for every retrain-from layer
l = 1..L (mode finetune: layers 1..l-1 frozen, l..L-1 trained from Alice's weights, a fresh head),
and from scratch. Each Bob run is tested on all of target-test.

Bob's budget: `epochs` epochs, but at least `min_steps` optimiser steps, so a 100-sample target set
(one batch per epoch) is not left with a handful of steps that would make scratch look worse than it
is. The epochs actually used are in the run's spec and row.

Rows go to the results store under <out>/results (pair "manifold:<vary>", beta = s, n_bob =
n_target), so `engine results` and `engine report` read them too; run ids are spec hashes and runs
already stored are skipped. Alice is not stored: a resumed sweep retrains her (deterministically)
only for the settings that still have runs to do. Figures: engine.studies.manifold_figures.

Defaults are sized for a CPU: D = 20, N = 200, K = 10 classes (binary labels gave scratch ~96 %
at n = 1000, leaving transfer little to show), 10k source samples, an mlp of depth 4 and width 64,
Adam (converges in a few hundred steps without tuning); 96 runs in about a minute on 2 cores.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from engine import __version__, paths
from engine.train.alice import device_name, init_seed, resolve_device
from engine.errors import EngineError
from engine.train.freeze import prepare_bob
from engine.data.manifold import ManifoldSpec, build_manifold, read_split
from engine.progress import Progress
from engine.threads import one_thread
from engine.spec import AliceSpec, BobSpec, n_layers
from engine.spec import canonical_json
from engine.store import ResultsStore
from engine.sweep.executors import run_bob
from engine.sweep.parse import parse_floats
from engine.train.device import DeviceData
from engine.train.trainer import CompiledModelCache, evaluate, fit

ARCH = "mlp"
VARY = ("both", "features", "teacher")


def parse_overlaps(text: str) -> list[float]:
    values = list(dict.fromkeys(parse_floats(text, "overlaps")))
    for v in values:
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise EngineError(f"--overlaps: {v:g} is outside [0, 1]")
    return values


def overlaps_for(vary: str, s: float) -> dict:
    """ManifoldSpec overlap arguments for similarity `s` (see the module docstring)."""
    if vary not in VARY:
        raise EngineError(f"--vary must be one of {', '.join(VARY)}, got {vary!r}")
    return {"feature_overlap": s if vary in ("both", "features") else 1.0,
            "teacher_overlap": s if vary in ("both", "teacher") else 1.0}


def bob_epochs(n: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """`epochs`, raised until there are at least `min_steps` steps (engine.train.trainer.epoch_batches
    makes max(1, n // batch_size) batches per epoch)."""
    per_epoch = max(1, n // batch_size)
    return max(epochs, -(-min_steps // per_epoch))


def plan(datasets: dict[float, str], n_targets: Sequence[int], seeds: Sequence[int], *,
         epochs: int, min_steps: int, alice_epochs: int, optimizer: str, lr: float | None,
         batch_size: int, depth: int | None, width: int | None) -> tuple[dict, list[BobSpec]]:
    """(Alices by id, Bob runs) for datasets {s: key}: per s, seed and n_target, finetune at
    l = 1..L, then scratch."""
    L = n_layers(ARCH, depth, width)
    arch = dict(arch=ARCH, optimizer=optimizer, lr=lr, batch_size=batch_size, depth=depth,
                width=width)
    alices, runs = {}, []
    for key in datasets.values():
        for seed in seeds:
            alice = AliceSpec(dataset=key, epochs=alice_epochs, seed=seed, **arch)
            alices[alice.id] = alice
            for n in n_targets:
                common = dict(dataset=key, n_bob=n, seed=seed, **arch,
                              epochs=bob_epochs(n, batch_size, epochs, min_steps))
                runs += [BobSpec(alice_id=alice.id, retrain_from=l, mode="finetune", **common)
                         for l in range(1, L + 1)]
                runs.append(BobSpec(alice_id="", retrain_from=1, mode="scratch", **common))
    return alices, runs


def load_task(dataset: Path, task: str, device: torch.device) -> tuple[DeviceData, DeviceData]:
    """(train, test) of `task` ("source" or "target") on `device`."""
    out = []
    for part in ("train", "test"):
        s = read_split(dataset, f"{task}-{part}")
        out.append(DeviceData.from_features(s.x, {"alice_label": s.alice_label,
                                                  "bob_label": s.bob_label}, device))
    return out[0], out[1]


def train_alice(spec: AliceSpec, train: DeviceData, test: DeviceData, n_classes: int,
                cache: CompiledModelCache) -> tuple[dict, float]:
    """Alice's weights (a copy) and her accuracy on source-test alice_label."""
    runner = cache.get(spec.arch, train.input_shape, n_classes, frozen_upto=0, depth=spec.depth,
                       width=spec.width)
    model = runner.model
    params = prepare_bob(model, None, retrain_from=1, mode="scratch", seed=init_seed(spec.seed))
    fit(model, params, train, "alice_label", epochs=spec.epochs, lr=spec.lr,
        optimizer=spec.optimizer, batch_size=spec.batch_size, seed=spec.seed, runner=runner)
    acc, _ = evaluate(model, test, "alice_label", runner=runner)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, acc


def make_row(spec: BobSpec, metrics: dict, data: ManifoldSpec, s: float, vary: str,
             alice_acc: float, device: torch.device) -> dict:
    """A results row (engine.store.COLUMNS)."""
    return {
        "run_id": spec.run_id, "alice_id": spec.alice_id, "dataset": spec.dataset,
        "pair": f"manifold:{vary}", "beta": s, "arch": spec.arch, "seed": spec.seed,
        "retrain_from": spec.retrain_from, "mode": spec.mode, "epochs": spec.epochs,
        "optimizer": spec.optimizer, "lr": spec.lr, "batch_size": spec.batch_size, **metrics,
        "alice_test_acc": alice_acc, "chance": 1 / data.n_classes,
        "device": device_name(device), "engine_version": __version__,
        "spec_json": canonical_json({"bob": spec.to_dict(), "data": data.to_dict()}),
    }


def run_manifold_sweep(overlaps: Sequence[float], n_targets: Sequence[int],
                       seeds: Sequence[int] = (0,), *, vary: str = "both", d_latent: int = 20,
                       n_input: int = 200, target_latent: int | None = None, n_classes: int = 10,
                       nonlinearity: str = "tanh", n_source: int = 10_000, n_test: int = 2_000,
                       data_seed: int = 0, epochs: int = 20, min_steps: int = 200,
                       alice_epochs: int = 10, optimizer: str = "adam", lr: float | None = None,
                       batch_size: int = 128, depth: int | None = 4, width: int | None = 64,
                       device: str | torch.device = "auto", out=None,
                       log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the sweep and write its figures; see the module docstring.
    Returns {"total", "ran", "figures", "best"} (best: engine.studies.manifold_figures.best_depths)."""
    from engine.studies.manifold_figures import best_depths, write_figures
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    n_targets, seeds = list(dict.fromkeys(n_targets)), list(dict.fromkeys(seeds))
    if not overlaps or not n_targets or not seeds:
        raise EngineError("--overlaps, --n-target and --seeds each need at least one value")
    for n in n_targets:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise EngineError(f"--n-target values must be positive integers, got {n!r}")
    for flag, value, least in (("epochs", epochs, 1), ("batch-size", batch_size, 1),
                               ("min-steps", min_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise EngineError(f"--{flag} must be an integer >= {least}, got {value!r}")
    specs = {s: ManifoldSpec(d_latent=d_latent, n_input=n_input, n_classes=n_classes,
                             nonlinearity=nonlinearity, target_latent=target_latent,
                             n_source=n_source, n_target=max(n_targets), n_test=n_test,
                             seed=data_seed, **overlaps_for(vary, s))
             for s in overlaps}
    keys = {s: spec.key for s, spec in specs.items()}
    alices, runs = plan(keys, n_targets, seeds, epochs=epochs, min_steps=min_steps,
                        alice_epochs=alice_epochs, optimizer=optimizer, lr=lr,
                        batch_size=batch_size, depth=depth, width=width)  # validates options
    device = resolve_device(device)
    out = paths.sweep_out(out)

    with ResultsStore(out) as store, one_thread(device.type == "cpu"):
        done = store.completed_ids()
        pending = [r for r in runs if r.run_id not in done]
        log(f"{len(runs)} runs: {len(runs) - len(pending)} already done, {len(pending)} to run")
        cache = CompiledModelCache(device)
        bar = Progress(len(pending), stream=sys.stderr) if pending else None
        try:
            for s, spec in specs.items():
                todo = [r for r in pending if r.dataset == spec.key]
                if todo:
                    _run_setting(spec, s, vary, todo, alices, store, cache, device, out, bar)
        finally:
            if bar is not None:
                bar.close()
        store.flush()
        table = store.table()
    table = table[table["run_id"].isin({r.run_id for r in runs})]
    figures = write_figures(table, paths.manifold_figures(out))
    return {"total": len(runs), "ran": len(pending), "figures": figures,
            "best": best_depths(table)}


def _run_setting(spec: ManifoldSpec, s: float, vary: str, todo: list[BobSpec], alices: dict,
                 store: ResultsStore, cache: CompiledModelCache, device: torch.device, out: Path,
                 bar: Progress) -> None:
    dataset = build_manifold(spec, paths.sweep_datasets(out), log=bar.write)
    source = load_task(dataset, "source", device)
    train, test = load_task(dataset, "target", device)
    alice_id, alice_state, alice_acc = None, None, math.nan
    for run in todo:  # grouped by seed (plan order), so each Alice is trained once
        if run.alice_id and run.alice_id != alice_id:
            alice_id = run.alice_id
            alice_state, alice_acc = train_alice(alices[alice_id], *source, spec.n_classes, cache)
            bar.write(f"overlap {s:g} seed {run.seed}: Alice source-test accuracy {alice_acc:.3f}")
        metrics = run_bob(run, train, test, n_classes=spec.n_classes,
                          alice_state=alice_state if run.alice_id else None, cache=cache,
                          device=device)
        store.record(make_row(run, metrics, spec, s, vary,
                              alice_acc if run.alice_id else math.nan, device))
        bar.update(note=f"s={s:g} n={run.n_bob} l={run.retrain_from} {run.mode}: "
                        f"test acc {metrics['test_acc']:.3f}")
