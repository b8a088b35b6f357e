"""`engine sweep`: datasets, Alices and every Bob run of a freeze-depth sweep, resumable.

Order of work: validate every option (by expanding the sweep with placeholder datasets), build or
reuse one dataset per (beta, block-shuffle size) under `<out>/datasets`, expand the real runs, drop
those the results store already holds, then per dataset: load it once (onto the device, or streamed
from disk when it exceeds the device budget), pre-train or reuse each Alice when first needed, and
run the Bobs, recording each finished run at once. Runs with the same `computation_id` (their
specs differ only in a way that changes nothing computed) train once, also across resumes: the
others record the metrics of that run, naming it in `computed_by`. An interrupted sweep keeps
what it recorded; running it again does only the missing runs.

Block shuffling (Neyshabur et al. 2020, Sec. 3.1): Bob's datasets may have their images'
B x B blocks shuffled (engine.kernels.shuffle); Alice always pre-trains on the unshuffled dataset of
the same beta, so Alice-based runs on a shuffled dataset reuse features learnt on clean images, as
pre-trained networks do in the paper, and scratch runs are its random-init baseline.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence, TextIO

import torch

from engine import __version__, paths
from engine.train.alice import device_name, is_complete, load_data, pretrain, resolve_device
from engine.data.build import build_data, check_block_shuffles, parse_pair
from engine.train.checkpoint import load_checkpoint
from engine.errors import EngineError
from engine.train.freeze import frozen_prefix, prepare_bob
from engine.data.manifest import read_manifest
from engine.progress import Progress
from engine.spec import BASELINES, TRANSFER_MODES, BobSpec, Training, n_layers
from engine.sweep.expand import alice_spec, check_betas, describe, expand_sweep
from engine.spec import canonical_json
from engine.store import ResultsStore
from engine.train.stream import StreamData, dataset_bytes, evaluate_stream, fit_stream, fits_on_device
from engine.train.trainer import CompiledModelCache, evaluate, fit

LABEL = "bob_label"
METRICS = ("n_layers", "n_bob", "test_acc", "test_loss", "train_acc", "train_loss", "wall_s",
           "samples_per_s")  # what `run_bob` returns
DRY_RUN_SHOWN = 5  # specs a dry run prints


# Parsing comma-separated flag values ------------------------------------------------------------

def _items(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",")]
    if not all(items):
        raise EngineError(f"--{flag} must be a comma-separated list without empty items, got {text!r}")
    return items


def parse_floats(text: str, flag: str) -> list[float]:
    out = []
    for t in _items(text, flag):
        try:
            out.append(float(t))
        except ValueError:
            raise EngineError(f"--{flag}: {t!r} is not a number") from None
    return out


def parse_ints(text: str, flag: str, *, minimum: int = 0) -> list[int]:
    out = []
    for t in _items(text, flag):
        try:
            value = int(t)
        except ValueError:
            raise EngineError(f"--{flag}: {t!r} is not an integer") from None
        if value < minimum:
            raise EngineError(f"--{flag}: {value} is below {minimum}")
        out.append(value)
    return out


def parse_betas(text: str) -> list[float]:
    betas = parse_floats(text, "betas")
    for b in betas:
        if not (math.isfinite(b) and 0 <= b <= 1):
            raise EngineError(f"--betas: {b:g} is outside [0, 1]")
    return betas


def parse_layers(text: str) -> str | list[int]:
    return "all" if str(text).strip().lower() == "all" else parse_ints(text, "layers", minimum=1)


def parse_n_bobs(text: str) -> list[int | None]:
    out = []
    for t in _items(text, "n-bob"):
        if t.lower() == "all":
            out.append(None)
        elif t.isdigit() and int(t) >= 1:
            out.append(int(t))
        else:
            raise EngineError(f"--n-bob: {t!r} is not a positive integer or 'all'")
    return out


def parse_names(text: str, flag: str, allowed: Sequence[str]) -> list[str]:
    names = [t.lower() for t in _items(text, flag)]
    for n in names:
        if n not in allowed:
            raise EngineError(f"--{flag}: unknown value {n!r}; choose from: {', '.join(allowed)}")
    return names


def parse_baselines(text: str) -> list[str]:
    return [] if str(text).strip().lower() == "none" else parse_names(text, "baselines", BASELINES)


def parse_block_shuffles(text: str) -> list[int | None]:
    """"1,4,none" -> [1, 4, None]: block sizes in pixels, 'none' = unshuffled."""
    out = []
    for t in _items(text, "block-shuffle"):
        if t.lower() == "none":
            out.append(None)
        elif t.isdigit() and int(t) >= 1:
            out.append(int(t))
        else:
            raise EngineError(f"--block-shuffle: {t!r} is not a positive block size or 'none'")
    return list(dict.fromkeys(out))


# One Bob run -------------------------------------------------------------------------------------

def run_bob(spec: BobSpec, train, test, *, n_classes: int, alice_state: dict | None,
            cache: CompiledModelCache, device: torch.device) -> dict:
    """Set up Bob's network per `spec`, train it on `spec.n_bob` samples of `train`, evaluate on
    all of `test`; return the metrics for the results row."""
    L = n_layers(spec.arch, spec.depth, spec.width, spec.global_pool)
    frozen = frozen_prefix(L, spec.retrain_from, spec.mode)
    runner = cache.get(spec.arch, train.input_shape, n_classes, frozen_upto=frozen,
                       depth=spec.depth, width=spec.width, global_pool=spec.global_pool)
    model = runner.model
    params = prepare_bob(model, alice_state, retrain_from=spec.retrain_from, mode=spec.mode,
                         seed=spec.seed)
    data = train.subset(spec.n_bob, spec.seed)
    options = dict(epochs=spec.epochs, lr=spec.lr, optimizer=spec.optimizer,
                   batch_size=spec.batch_size, seed=spec.seed, frozen_upto=frozen, runner=runner)
    start = time.perf_counter()
    if isinstance(train, StreamData):
        m = fit_stream(model, params, data, LABEL, device=device, **options)
        test_acc, test_loss = evaluate_stream(model, test, LABEL, device=device, runner=runner)
    else:
        m = fit(model, params, data, LABEL, **options)
        test_acc, test_loss = evaluate(model, test, LABEL, runner=runner)
    return {"n_layers": L, "n_bob": len(data), "test_acc": test_acc, "test_loss": test_loss,
            "train_acc": m["train_acc"], "train_loss": m["train_loss"],
            "wall_s": time.perf_counter() - start, "samples_per_s": m["samples_per_s"]}


def make_row(spec: BobSpec, metrics: dict, manifest: dict, alice_test_acc: float,
             device: torch.device) -> dict:
    """A results row (engine.store.COLUMNS)."""
    return {
        "run_id": spec.run_id, "alice_id": spec.alice_id, "dataset": spec.dataset,
        "pair": manifest["pair"], "beta": float(manifest["spec"]["beta"]),
        "block_shuffle": manifest["spec"].get("block_shuffle") or 0, "arch": spec.arch,
        "seed": spec.seed, "retrain_from": spec.retrain_from, "mode": spec.mode,
        "epochs": spec.epochs, "optimizer": spec.optimizer, "lr": spec.lr,
        "batch_size": spec.batch_size, **metrics, "alice_test_acc": alice_test_acc,
        "chance": 1 / len(manifest["sources"]["right"]["classes"]),
        "device": device_name(device), "engine_version": __version__,
        "spec_json": canonical_json(spec.to_dict()),
    }


# The sweep ---------------------------------------------------------------------------------------

def run_sweep(pair: str, betas: Sequence[float], layers: str | Sequence[int] = "all",
              seeds: Sequence[int] = (0,), archs: Sequence[str] = ("cnn",),
              modes: Sequence[str] = TRANSFER_MODES, baselines: Sequence[str] = BASELINES,
              n_bobs: Sequence[int | None] = (None,), epochs: int = 10, alice_epochs: int = 10,
              device: str | torch.device = "auto", out=None, n_train: int | None = None,
              n_test: int | None = None, data_root=None, dry_run: bool = False, *,
              optimizer: str = "sgd", lr: float | None = None, batch_size: int = 128,
              alice_optimizer: str | None = None, alice_lr: float | None = None,
              depth: int | None = None, width: int | None = None, global_pool: bool = False,
              data_seed: int = 0, alice_save_epochs: Sequence[int] = (),
              device_budget_gb: float | None = None,
              block_shuffles: Sequence[int | None] = (None,), stdout: TextIO | None = None,
              stderr: TextIO | None = None) -> dict:
    """Run (or resume) a sweep; see the module docstring. Returns counts: total, done_before, ran.

    block_shuffles: one dataset per beta and entry, None = unshuffled (see the module docstring).

    lr None: the optimizer's default; Alice uses `optimizer`, the default lr and `batch_size`
    unless `alice_optimizer`/`alice_lr` are given.
    """
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    log: Callable[[str], None] = lambda msg: print(msg, file=stderr, flush=True)  # noqa: E731
    parse_pair(pair)
    betas = check_betas(betas)
    bob = Training(epochs, optimizer, lr, batch_size)
    alice = Training(alice_epochs, alice_optimizer or optimizer, alice_lr, batch_size)
    arch_opts = {"depth": depth, "width": width, "global_pool": global_pool}
    grid = dict(betas=betas, archs=archs, seeds=seeds, layers=layers, modes=modes,
                baselines=baselines, n_bobs=n_bobs, bob=bob, alice=alice, **arch_opts)
    blocks = list(dict.fromkeys(block_shuffles))
    if not blocks:
        raise EngineError("--block-shuffle must list at least one block size or 'none'")
    plan = _expand(grid, blocks)  # validates every option before any work
    if device_budget_gb is not None and not (math.isfinite(device_budget_gb) and device_budget_gb > 0):
        raise EngineError(f"--device-budget-gb must be a positive number, got {device_budget_gb!r}")
    if dry_run:
        print(f"{len(plan)} runs", file=stdout)
        for spec in plan[:DRY_RUN_SHOWN]:
            print("  " + describe(spec, with_id=False), file=stdout)
        if len(plan) > DRY_RUN_SHOWN:
            print(f"  ... and {len(plan) - DRY_RUN_SHOWN} more", file=stdout)
        return {"total": len(plan), "done_before": 0, "ran": 0}
    check_block_shuffles(pair, blocks, data_root=data_root)
    device = resolve_device(device)
    out = paths.sweep_out(out)

    dirs: dict[str, Path] = {}
    keys: dict[tuple[float, int | None], str] = {}
    # Alice pre-trains on the unshuffled datasets, built even when Bob uses none of them.
    needed = blocks + ([None] if modes and None not in blocks else [])
    for block in needed:
        for beta in betas:
            d = build_data(pair, beta, seed=data_seed, n_train=n_train, n_test=n_test,
                           data_root=data_root, out=paths.sweep_datasets(out),
                           block_shuffle=block, log=log)
            keys[beta, block], dirs[d.name] = d.name, d
            size = read_manifest(d)["spec"]["n_train"]
            too_big = [n for n in n_bobs if n is not None and n > size]
            if too_big:
                raise EngineError(f"--n-bob {max(too_big)} exceeds the {size} training samples of "
                                  f"{d.name}; use at most {size} or 'all'")
    specs = _expand(grid, blocks, keys)
    alices = {a.id: a for a in (alice_spec(keys[b, None], arch, s, alice, **arch_opts)
                                for b in betas for arch in archs for s in seeds)} if modes else {}

    with ResultsStore(out) as store:
        done = store.completed_ids()
        pending = [s for s in specs if s.run_id not in done]
        log(f"{len(specs)} runs: {len(specs) - len(pending)} already done, {len(pending)} to run")
        if not pending:
            return {"total": len(specs), "done_before": len(specs), "ran": 0}
        cache = CompiledModelCache(device)
        computed = _computed_before(specs, pending, store)
        bar = Progress(len(pending), stream=stderr)
        try:
            for key, group in itertools.groupby(pending, key=lambda s: s.dataset):
                _run_dataset(dirs[key], list(group), alices, dirs, store, cache, device, bar, out,
                             alice_save_epochs, device_budget_gb, computed)
        finally:
            bar.close()
    return {"total": len(specs), "done_before": len(specs) - len(pending), "ran": len(pending)}


def _expand(grid: dict, blocks: list[int | None],
            keys: dict[tuple[float, int | None], str] | None = None) -> list[BobSpec]:
    """Every Bob run, per block size in `blocks` (None = unshuffled); Alice's dataset is always
    the unshuffled one. Without `keys`, placeholder dataset names (dry runs)."""
    def key(beta, block):
        if keys is not None:
            return keys[beta, block]
        return f"beta-{beta:g}" + ("" if block is None else f"-blk{block}")

    specs = []
    for block in blocks:
        specs += expand_sweep(**grid, datasets={b: key(b, block) for b in grid["betas"]},
                              alice_datasets={b: key(b, None) for b in grid["betas"]})
    return specs


def _computed_before(specs: list[BobSpec], pending: list[BobSpec],
                     store: ResultsStore) -> dict[str, tuple[str, dict]]:
    """{computation_id: (run_id that trained, metrics)} for stored runs that a pending run
    computes again (see `_run_dataset`)."""
    pending_ids = {s.run_id for s in pending}
    done = {s.computation_id: s.run_id for s in specs if s.run_id not in pending_ids}
    wanted = {s.computation_id for s in pending} & done.keys()
    if not wanted:
        return {}
    rows = store.table().set_index("run_id")
    computed = {}
    for cid in wanted:
        row = rows.loc[done[cid]]
        computed[cid] = (row["computed_by"] or done[cid], {k: row[k] for k in METRICS})
    return computed


def _run_dataset(dataset_dir: Path, specs: list[BobSpec], alices: dict, dirs: dict[str, Path],
                 store: ResultsStore, cache: CompiledModelCache, device: torch.device,
                 bar: Progress, out: Path, save_epochs: Sequence[int],
                 budget_gb: float | None, computed: dict[str, tuple[str, dict]]) -> None:
    """Run `specs` (all on this dataset) in order. A spec whose computation_id is in `computed`
    (engine.spec.BobSpec.computation_id: reinit at l = 1 and scratch; finetune and reinit at
    l = L) is not trained again: its row takes those metrics and names that run in computed_by."""
    manifest = read_manifest(dataset_dir)
    stream = not fits_on_device(dataset_dir, device, budget_gb)
    if stream:
        bar.write(f"{dataset_dir.name}: {dataset_bytes(dataset_dir) / 2**30:.2f} GiB of images "
                  f"exceed the device budget; streaming from disk with FFCV")
    data = load_data(dataset_dir, device, stream=stream)
    n_classes = len(manifest["sources"]["right"]["classes"])
    alice_id, alice_state, alice_acc = None, None, math.nan
    for spec in specs:
        if spec.alice_id and spec.alice_id != alice_id:
            a = alices[spec.alice_id]
            a_dir, a_data = dirs[a.dataset], data
            if a_dir != dataset_dir:  # Bob's images are block-shuffled, Alice's are not
                a_data = None if is_complete(out, a, save_epochs) else load_data(a_dir, device,
                                                                                  stream=stream)
            path = pretrain(a_dir, a, out, save_epochs, device, data=a_data, cache=cache,
                            log=bar.write)
            del a_data  # frees Alice's images before Bob's runs
            state, _, metrics = load_checkpoint(path)
            alice_id, alice_state = spec.alice_id, {k: v.to(device) for k, v in state.items()}
            alice_acc = float(metrics["test_acc"])
        reused = computed.get(spec.computation_id)
        if reused is None:
            metrics = run_bob(spec, *data, n_classes=n_classes,
                              alice_state=alice_state if spec.alice_id else None, cache=cache,
                              device=device)
            computed[spec.computation_id] = (spec.run_id, metrics)
        else:
            metrics = {**reused[1], "computed_by": reused[0]}
        store.record(make_row(spec, metrics, manifest, alice_acc if spec.alice_id else math.nan,
                              device))
        bar.update(note=f"{spec.arch} l={spec.retrain_from} {spec.mode}: "
                        f"test acc {metrics['test_acc']:.3f}")
