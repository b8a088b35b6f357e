"""`engine sweep`: the driver. Three stages over a pure plan, and the only writer of the store.

    run_sweep(SweepSpec) -> stage 1: build or reuse the datasets (engine.data.build)
                         -> plan (engine.sweep.plan) minus the runs the store holds
                         -> stage 2: pre-train or reuse the Alices the remaining runs need
                         -> stage 3: executor.map(units) (engine.sweep.executors); each finished
                            run is recorded at once, then any run that only copies its metrics

`execute` is stages 2 and 3 for any list of runs (the case study builds its own). An interrupted
sweep keeps what it recorded; running it again does only what is missing.

Block shuffling (Neyshabur et al. 2020, Sec. 3.1): Bob's datasets may have their images' B x B
blocks shuffled (engine.kernels.shuffle); Alice always pre-trains on the unshuffled dataset of the
same beta, so Alice-based runs on a shuffled dataset reuse features learnt on clean images, as
pre-trained networks do in the paper, and scratch runs are its random-init baseline.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Callable, Iterable, TextIO

import torch

from engine import __version__, paths
from engine.atomic import write_bytes
from engine.data.build import build_data, check_block_shuffles, parse_pair, planned_dataset
from engine.data.manifest import is_complete, verify_dataset
from engine.data.resources import Estimate, dataset_estimate, require, training_memory
from engine.errors import EngineError
from engine.locks import output_lock
from engine.progress import Progress
from engine.spec import AliceSpec, BobSpec, canonical_json
from engine.train.device import spec_precision
from engine.store import ResultsStore
from engine.sweep import plan as planner
from engine.sweep import preflight, state
from engine.sweep.executors import EXECUTORS, Context
from engine.sweep.expand import describe
from engine.sweep.spec import SweepSpec
from engine.train.alice import device_name, resolve_device
from engine.train.checkpoint import load_checkpoint

METRICS = ("n_layers", "n_bob", "test_acc", "test_loss", "train_acc", "train_loss", "wall_s",
           "samples_per_s")  # what an executor returns per run; it may add "device", where the
                             # run trained when that is not the driver's device (Ray workers)
DRY_RUN_SHOWN = 5  # specs a dry run prints


def make_row(spec: BobSpec, metrics: dict, manifest: dict, alice_test_acc: float,
             device: torch.device, executor: str) -> dict:
    """A results row (engine.store.COLUMNS). `device`: the driver's, unless `metrics` names the
    device the run trained on."""
    metrics = dict(metrics)
    trained_on = metrics.pop("device", None) or device_name(device)
    return {
        "run_id": spec.run_id, "alice_id": spec.alice_id, "dataset": spec.dataset,
        "pair": manifest["pair"], "beta": float(manifest["spec"]["beta"]),
        "block_shuffle": manifest["spec"].get("block_shuffle") or 0, "arch": spec.arch,
        "seed": spec.seed, "retrain_from": spec.retrain_from, "mode": spec.mode,
        "epochs": spec.epochs, "optimizer": spec.optimizer, "lr": spec.lr,
        "batch_size": spec.batch_size, **metrics, "alice_test_acc": alice_test_acc,
        "chance": 1 / len(manifest["sources"]["right"]["classes"]),
        "device": trained_on, "executor": executor, "engine_version": __version__,
        "spec_json": canonical_json(spec.to_dict()),
    }


# The sweep ---------------------------------------------------------------------------------------

def run_sweep(sweep: SweepSpec, out=None, *, dry_run: bool = False, wait: bool = True,
              stdout: TextIO | None = None, stderr: TextIO | None = None) -> dict:
    """Run (or resume) `sweep`; see the module docstring. Returns counts: total, done_before, ran.
    The sweep holds `out`'s lock (engine.locks): another sweep on it waits, or with `wait` False
    refuses in one line."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    parse_pair(sweep.pair)
    preflight.check(sweep, dry_run=dry_run, log=log_to(stderr))  # what would fail mid-way
    if dry_run:
        specs = planner.expand(sweep)
        print(f"{len(specs)} runs", file=stdout)
        for spec in specs[:DRY_RUN_SHOWN]:
            print("  " + describe(spec, with_id=False), file=stdout)
        if len(specs) > DRY_RUN_SHOWN:
            print(f"  ... and {len(specs) - DRY_RUN_SHOWN} more", file=stdout)
        return {"total": len(specs), "done_before": 0, "ran": 0}
    check_block_shuffles(sweep.pair, list(sweep.block_shuffles), data_root=sweep.data_root,
                         fit=sweep.fit, image_size=sweep.image_size)
    device = resolve_device(sweep.device)
    out = paths.sweep_out(out)
    log = log_to(stderr)
    with output_lock(out, wait=wait, log=log), state.recording(out):  # one writer per directory
        return _run_locked(sweep, out, device, stderr, log)


def log_to(stream: TextIO) -> Callable[[str], None]:
    return lambda msg: print(msg, file=stream, flush=True)


def _check_resources(sweep: SweepSpec, datasets_root: Path, out: Path) -> None:
    """Refuse in one line, before building anything, when the datasets still to build cannot fit
    on the disk or in memory (engine.data.resources)."""
    todo, training = [], 0
    for r in planner.dataset_requests(sweep):
        spec, shape = planned_dataset(sweep.pair, r.beta, seed=sweep.data_seed,
                                      n_train=sweep.n_train, n_test=sweep.n_test,
                                      data_root=sweep.data_root, fit=sweep.fit,
                                      image_size=sweep.image_size, block_shuffle=r.block_shuffle)
        training = max(training, training_memory(shape, spec.n_train, spec.n_test))
        if not is_complete(paths.dataset_dir(datasets_root, spec.key), spec):
            todo.append(dataset_estimate(shape, spec.n_train, spec.n_test))
    if not todo:
        return
    total = Estimate(sum(e.disk for e in todo), max(max(e.memory for e in todo), training))
    require(total, datasets_root if datasets_root.exists() else out, f"sweep ({len(todo)} "
            "datasets to build)", "lower --n-train/--n-test, sweep fewer betas or free space")


def _precision(sweep: SweepSpec, out: Path, device: torch.device,
               log: Callable[[str], None]) -> str | None:
    """What every run's spec records for `sweep.precision` on `device`
    (engine.train.device.spec_precision). Under auto, a directory holding runs stored before the
    option existed (precision "") resumes in the device's default arithmetic, the one they used,
    so that their run IDs still match: where auto picks bf16 on a CPU (AMX) it would otherwise
    train them all again in bf16."""
    chosen = spec_precision(sweep.precision, device)
    if sweep.precision != "auto" or chosen is None or not (out / "results").is_dir():
        return chosen
    table = ResultsStore(out, read_only=True).table()
    if "" in set(table["precision"]):
        log(f"notice: {out} holds runs from before --precision; resuming in the device's "
            "default arithmetic (fp32 on the CPU), as they were; --precision bf16 adds bf16 runs")
        return None
    return chosen


def _run_locked(sweep: SweepSpec, out: Path, device: torch.device, stderr: TextIO,
                log: Callable[[str], None]) -> dict:
    datasets_root = Path(sweep.datasets_dir) if sweep.datasets_dir else paths.sweep_datasets(out)
    _check_resources(sweep, datasets_root, out)

    keys, dirs = build_datasets(sweep, datasets_root, log)  # stage 1
    _write_spec(sweep, out, log)
    options = ({k: getattr(sweep, k) for k in ("ray_address", "cpus_per_unit", "gpus_per_unit",
                                                "max_retries")} if sweep.executor == "ray" else {})
    precision = _precision(sweep, out, device, log)
    return execute(out, planner.expand(sweep, keys, precision),
                   planner.alices(sweep, keys, precision), dirs,
                   executor=sweep.executor, executor_options=options, device=device,
                   save_epochs=sweep.alice_save_epochs, budget_gb=sweep.device_budget_gb,
                   max_group=sweep.max_group, stderr=stderr)


def build_datasets(sweep: SweepSpec, datasets_root: Path, log: Callable[[str], None]
                   ) -> tuple[dict[tuple[float, int | None], str], dict[str, Path]]:
    """Stage 1: build or reuse every dataset of `sweep` under `datasets_root`. Returns the keys
    by (beta, block size) and the directories by key."""
    keys: dict[tuple[float, int | None], str] = {}
    dirs: dict[str, Path] = {}
    for req in planner.dataset_requests(sweep):
        d = build_data(sweep.pair, req.beta, seed=sweep.data_seed, n_train=sweep.n_train,
                       n_test=sweep.n_test, data_root=sweep.data_root, out=datasets_root,
                       fit=sweep.fit, image_size=sweep.image_size,
                       block_shuffle=req.block_shuffle, log=log)
        keys[req.beta, req.block_shuffle], dirs[d.name] = d.name, d
    return keys, dirs


def _write_spec(sweep: SweepSpec, out: Path, log: Callable[[str], None]) -> None:
    """`out/sweep.json` := this sweep. The command line (or `--from`/`--config` resolved into
    this spec) wins over a stored spec that differs, hand-edited or from another sweep; a notice
    names the fields that differed."""
    path = paths.sweep_file(out)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = None
    new = json.loads(sweep.to_json())
    if isinstance(stored, dict) and stored != new:
        changed = sorted(k for k in stored.keys() | new.keys() if stored.get(k) != new.get(k))
        log(f"notice: {path} held another spec ({', '.join(changed)} differ); it is replaced by "
            f"this sweep's (to run the stored spec instead: engine sweep --from {out})")
    write_bytes(path, sweep.to_json().encode())


def execute(out, specs: Iterable[BobSpec], alices: Iterable[AliceSpec],
            dataset_dirs: dict[str, Path], *, executor: str = "batched",
            executor_options: dict | None = None, device: str | torch.device = "auto",
            save_epochs: Iterable[int] = (),
            budget_gb: float | None = None, max_group: int | None = None,
            stderr: TextIO | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Stages 2 and 3 for `specs`: pre-train each needed Alice on `dataset_dirs[alice.dataset]`
    (alice_label), train every run not yet stored on `dataset_dirs[spec.dataset]` (bob_label) and
    record it. `executor_options` go to the executor (the Ray executor's address and resources).
    Returns counts: total, done_before, ran (rows recorded now, copies included)."""
    stderr = stderr or sys.stderr
    log = log or log_to(stderr)
    if executor not in EXECUTORS:
        raise EngineError(f"unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    device = resolve_device(device)
    out = Path(out)
    specs, alices = list(specs), list(alices)
    with state.recording(out), ResultsStore(out) as store:
        stored = _stored(store)
        p = planner.plan_runs(specs, alices, {rid: row["computed_by"] for rid, row in stored.items()})
        state.planned(out, run_ids=[s.run_id for s in specs],
                      to_train=[s.run_id for u in p.units for s in u.specs],
                      copies=[c.spec.run_id for c in p.copies], alices=[a.id for a in alices],
                      datasets=dataset_dirs)
        log(f"{p.total} runs: {p.done_before} already done, {p.n_pending} to run "
            f"({p.n_train} to train)")
        if not p.n_pending:
            return {"total": p.total, "done_before": p.done_before, "ran": 0}
        manifests = {k: verify_dataset(d) for k, d in dataset_dirs.items()}  # before any use
        bar = Progress(p.n_pending, stream=stderr)
        recorder = _Recorder(store, manifests, device, executor, bar, out)
        try:
            pending_copies: dict[str, list[planner.Copy]] = {}
            for copy in p.copies:
                if copy.source in stored:
                    recorder.copy(copy, stored[copy.source])
                else:  # recorded when its source finishes below
                    pending_copies.setdefault(copy.source, []).append(copy)
            ctx = Context(out, dataset_dirs, device, budget_gb, max_group, bar.write,
                          tuple(save_epochs))
            runner = EXECUTORS[executor](**(executor_options or {}))
            runner.pretrain(p.alices, ctx)  # stage 2
            bar.restart_eta()  # the rate of Bob's runs, not of Alices' pre-training
            for spec, metrics in runner.map(p.units, ctx):  # stage 3
                recorder.record(spec, metrics)
                for copy in pending_copies.pop(spec.run_id, []):
                    recorder.record(copy.spec, {**metrics, "computed_by": spec.run_id})
        finally:
            bar.close()
    return {"total": p.total, "done_before": p.done_before, "ran": p.n_pending}


def _stored(store: ResultsStore) -> dict[str, dict]:
    """The stored rows by run_id (empty when the store holds none)."""
    if not store.completed_ids():
        return {}
    return {row["run_id"]: row for row in store.table().to_dict("records")}


class _Recorder:
    """Turns (spec, metrics) into rows and records them, advancing the progress bar."""

    def __init__(self, store: ResultsStore, manifests: dict[str, dict], device: torch.device,
                 executor: str, bar: Progress, out: Path):
        self.store, self.manifests, self.device = store, manifests, device
        self.executor, self.bar, self.out = executor, bar, out
        self.alice_acc: dict[str, float] = {}

    def _alice_acc(self, alice_id: str) -> float:
        """Alice's test accuracy, from her checkpoint (written by stage 2 before her runs end)."""
        if not alice_id:
            return math.nan
        if alice_id not in self.alice_acc:
            path = paths.alice_checkpoint(self.out, alice_id)
            self.alice_acc[alice_id] = float(load_checkpoint(path)[2]["test_acc"])
        return self.alice_acc[alice_id]

    def record(self, spec: BobSpec, metrics: dict) -> None:
        acc = self._alice_acc(spec.alice_id)
        self.store.record(make_row(spec, metrics, self.manifests[spec.dataset], acc, self.device,
                                   self.executor))
        self.bar.update(note=f"{spec.arch} l={spec.retrain_from} {spec.mode}: "
                             f"test acc {metrics['test_acc']:.3f}")

    def copy(self, copy: planner.Copy, row: dict) -> None:
        """A run whose computation a stored run (`row`) did: its row takes that run's metrics."""
        if copy.spec.alice_id and copy.spec.alice_id not in self.alice_acc:
            self.alice_acc[copy.spec.alice_id] = float(row["alice_test_acc"])
        self.record(copy.spec, {**{k: row[k] for k in METRICS}, "device": row["device"],
                                "computed_by": copy.source})
