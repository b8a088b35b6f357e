"""Executors: carry out a plan's work units and yield each run's metrics; the driver records them.

    for spec, metrics in EXECUTORS[name]().map(units, context): ...

An executor reads the datasets and Alice checkpoints named by the units (built and trained by the
driver's first two stages) and writes nothing: the driver stays the only writer of the results
store. Metrics are `run_bob`'s keys. Three executors:
- `serial`: one run after another, each with the trainer of engine.train.trainer (or streamed from
  disk with FFCV when a dataset exceeds the device budget).
- `batched`: runs that share a group shape (engine.train.batched.group_key) train together as one
  stacked model, across units, betas and Alices; streamed datasets fall back to `serial`.
- `ray` (engine.sweep.ray_executor, imported when used): Alices and units as Ray tasks on this
  machine or a cluster, each unit through `train_unit`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from engine.data.manifest import read_manifest
from engine.spec import AliceSpec, BobSpec, frozen_prefix, n_layers
from engine.sweep.plan import WorkUnit
from engine.train.alice import is_complete, load_data, pretrain
from engine.train.checkpoint import load_checkpoint
from engine.train.freeze import prepare_bob
from engine.train.stream import (StreamData, dataset_bytes, evaluate_stream, fit_stream,
                                 fits_on_device)
from engine.train.features import PrefixStore, shared_inputs
from engine.train.device import precision_used
from engine.train.trainer import CompiledModelCache, evaluate, feature_budget, fit

LABEL = "bob_label"
Result = tuple[BobSpec, dict]


@dataclass
class Context:
    """What every unit of one sweep shares."""
    out: Path  # sweep root: alice/<id>/model.safetensors lives here
    dataset_dirs: dict[str, Path]  # dataset key -> directory
    device: torch.device
    budget_gb: float | None = None  # datasets with more image bytes stream from disk
    max_group: int | None = None
    log: Callable[[str], None] = field(default=lambda msg: None)
    alice_save_epochs: tuple[int, ...] = ()  # Alice checkpoints kept besides the final one


def n_classes(manifest: dict) -> int:
    return len(manifest["sources"]["right"]["classes"])


# One Bob run -------------------------------------------------------------------------------------

def run_bob(spec: BobSpec, train, test, *, n_classes: int, alice_state: dict | None,
            cache: CompiledModelCache, device: torch.device,
            store: PrefixStore | None = None) -> dict:
    """Set up Bob's network per `spec`, train it on `spec.n_bob` samples of `train`, evaluate on
    all of `test`; return the metrics for the results row. With a `store`, the frozen prefix's
    outputs come from it where runs share them (engine.train.features.shared_inputs)."""
    L = n_layers(spec.arch, spec.depth, spec.width, spec.global_pool)
    frozen = frozen_prefix(L, spec.retrain_from, spec.mode)
    runner = cache.get(spec.arch, train.input_shape, n_classes, frozen_upto=frozen,
                       depth=spec.depth, width=spec.width, global_pool=spec.global_pool,
                       precision=spec.precision)
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
        shared = (shared_inputs(runner, spec, train, test, n_classes, feature_budget(device), store)
                  if store is not None else None)
        m = fit(model, params, data, LABEL, **options,
                features=None if shared is None else shared[0])
        test_acc, test_loss = evaluate(model, test, LABEL, runner=runner,
                                       features=None if shared is None else shared[1])
    return {"n_layers": L, "n_bob": len(data), "test_acc": test_acc, "test_loss": test_loss,
            "train_acc": m["train_acc"], "train_loss": m["train_loss"],
            "wall_s": time.perf_counter() - start, "samples_per_s": m["samples_per_s"],
            "precision": precision_used(spec.precision, device)}


def train_unit(unit: WorkUnit, train, test, n_classes: int, alice_state: dict | None,
               device: torch.device, *, batched: bool = True, max_group: int | None = None,
               cache: CompiledModelCache | None = None) -> list[Result]:
    """Every run of `unit` on in-memory DeviceData `train`/`test`: runs of one group shape
    together (engine.train.batched), or with `batched=False` one after another (`run_bob`).
    Reads no file: the Ray executor's unit task (engine.sweep.ray_executor) is this call."""
    if not batched:
        cache = cache or CompiledModelCache(device)
        return [(s, run_bob(s, train, test, n_classes=n_classes, alice_state=alice_state,
                            cache=cache, device=device)) for s in unit.specs]
    from engine.train.batched import Member
    return list(train_groups([Member(s, train, test, alice_state, n_classes) for s in unit.specs],
                             device, max_group))


def train_groups(members: Iterable, device: torch.device, max_group: int | None,
                 log: Callable[[str], None] | None = None) -> Iterator[Result]:
    """Batched-trainer members bucketed by group shape (engine.train.batched.group_key), each
    bucket trained as one group; (spec, metrics) per member. `log` gets compile times."""
    from engine.train import batched
    groups: dict[tuple, list] = {}
    for m in members:
        key = batched.group_key(m.spec, m.train.input_shape, m.n_classes,
                                m.spec.n_bob or len(m.train))
        groups.setdefault(key, []).append(m)
    # Shallow frozen depths first: deeper groups continue from their prefix outputs.
    store = PrefixStore(device=device)
    for key in sorted(groups, key=lambda k: k[6]):
        bucket = groups[key]
        metrics = batched.train_group(bucket, device, max_group=max_group, store=store, log=log)
        yield from ((m.spec, r) for m, r in zip(bucket, metrics))


# Inputs of units ---------------------------------------------------------------------------------

class Inputs:
    """Datasets and Alice weights on the device, loaded on first use and dropped on request."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.data: dict[str, tuple] = {}  # key -> (train, test, n_classes)
        self.alices: dict[str, dict] = {}

    def dataset(self, key: str) -> tuple:
        if key not in self.data:
            d = self.ctx.dataset_dirs[key]
            stream = not fits_on_device(d, self.ctx.device, self.ctx.budget_gb)
            if stream:
                self.ctx.log(f"{key}: {dataset_bytes(d) / 2**30:.2f} GiB of images exceed the "
                             f"device budget; streaming from disk with FFCV")
            train, test = load_data(d, self.ctx.device, stream=stream)
            self.data[key] = (train, test, n_classes(read_manifest(d)))
        return self.data[key]

    def alice(self, alice_id: str) -> dict | None:
        if not alice_id:
            return None
        if alice_id not in self.alices:
            from engine import paths
            state, _, _ = load_checkpoint(paths.alice_checkpoint(self.ctx.out, alice_id))
            self.alices[alice_id] = {k: v.to(self.ctx.device) for k, v in state.items()}
        return self.alices[alice_id]

    def keep_only(self, datasets: Iterable[str] = (), alices: Iterable[str] = ()) -> None:
        keep_d, keep_a = set(datasets), set(alices)
        self.data = {k: v for k, v in self.data.items() if k in keep_d}
        self.alices = {k: v for k, v in self.alices.items() if k in keep_a}


# Executors ---------------------------------------------------------------------------------------

class Executor:
    """Stage 2 (`pretrain`) and stage 3 (`map`) of the driver. Alice checkpoints are written in
    the driver's process, under `ctx.out`, by the time any of her runs is yielded."""
    name = ""

    def pretrain(self, alices: Iterable[AliceSpec], ctx: Context) -> None:
        """Each Alice trained here, one after another (or reused when complete and verified)."""
        for a in alices:
            d = ctx.dataset_dirs[a.dataset]
            data = (None if is_complete(ctx.out, a, ctx.alice_save_epochs, log=ctx.log)
                    else load_data(d, ctx.device))
            pretrain(d, a, ctx.out, ctx.alice_save_epochs, ctx.device, data=data, log=ctx.log)
            del data  # frees Alice's images before the next

    def map(self, units: Iterable[WorkUnit], ctx: Context) -> Iterator[Result]:
        raise NotImplementedError


class SerialExecutor(Executor):
    """One run at a time, units in order; each dataset and Alice loaded once per unit run."""
    name = "serial"

    def map(self, units: Iterable[WorkUnit], ctx: Context) -> Iterator[Result]:
        inputs = Inputs(ctx)
        cache = CompiledModelCache(ctx.device)
        for unit in units:
            inputs.keep_only([unit.dataset], [unit.alice_id])
            yield from self.run_unit(unit, inputs, cache)

    @staticmethod
    def run_unit(unit: WorkUnit, inputs: Inputs, cache: CompiledModelCache,
                 store: PrefixStore | None = None) -> Iterator[Result]:
        """The unit's runs one after another; with a `store` (the batched executor's runs that
        train alone), shallow frozen depths first, so that deeper ones continue from their
        prefix outputs."""
        train, test, classes = inputs.dataset(unit.dataset)
        alice = inputs.alice(unit.alice_id)
        specs = unit.specs
        if store is not None:
            specs = sorted(specs, key=lambda s: frozen_prefix(
                n_layers(s.arch, s.depth, s.width, s.global_pool), s.retrain_from, s.mode))
        for spec in specs:
            yield spec, run_bob(spec, train, test, n_classes=classes, alice_state=alice,
                                cache=cache, device=inputs.ctx.device, store=store)


def batchable(spec: BobSpec, device: torch.device) -> bool:
    """Whether `spec` trains in a batched group on `device`. resnet18 has no batched form. On the
    CPU only runs whose trained layers are all linear (the mlp; the cnn from its head) are batched:
    there oneDNN's grouped convolution takes 1.0-1.8x the time of the K separate ones it replaces
    (single-threaded, reference cnn; bench/RESULTS.md), so conv tails train one run at a time."""
    if spec.arch not in ("mlp", "cnn"):
        return False
    if device.type != "cpu" or spec.arch == "mlp":
        return True
    L = n_layers(spec.arch, spec.depth, spec.width, spec.global_pool)
    return frozen_prefix(L, spec.retrain_from, spec.mode) >= L - 1


class BatchedExecutor(Executor):
    """Runs of one group shape train together (engine.train.batched), across units.

    Units are taken in chunks whose datasets fit the device budget together; within a chunk every
    run is assigned to its group, and each group trains as one stacked model (split further by
    the batched trainer's memory budget and `max_group`). Units on streamed datasets, and runs
    that `batchable` leaves out, run serially.
    """
    name = "batched"

    def pretrain(self, alices: Iterable[AliceSpec], ctx: Context) -> None:
        """Alices of one group shape pre-trained together (engine.train.batched_alice), in
        chunks whose datasets fit the device budget; complete ones reused, and those the batched
        trainer does not take (streamed datasets, resnet18, cnn Alices on the CPU) trained one
        at a time. Writes what `pretrain` writes."""
        from engine import paths
        from engine.train.batched_alice import batchable as alice_batchable, train_alices
        from engine.train.checkpoint import save_checkpoint
        todo = [a for a in alices if not is_complete(ctx.out, a, ctx.alice_save_epochs,
                                                     log=ctx.log)]
        for a in alices:
            if a not in todo:
                ctx.log(f"reusing Alice {a.id} ({paths.alice_checkpoint(ctx.out, a.id)}, "
                        "verified)")
        grouped = [a for a in todo if alice_batchable(a, ctx.device)
                   and fits_on_device(ctx.dataset_dirs[a.dataset], ctx.device, ctx.budget_gb)]
        super().pretrain([a for a in todo if a not in grouped], ctx)

        def write(spec: AliceSpec, epoch: int | None, state: dict, model_spec: dict,
                  metrics: dict) -> None:
            path = (paths.alice_checkpoint(ctx.out, spec.id) if epoch is None
                    else paths.alice_epoch_checkpoint(ctx.out, spec.id, epoch))
            save_checkpoint(path, state, model_spec, metrics)

        inputs = Inputs(ctx)
        for chunk in self._chunks(grouped, ctx):
            inputs.keep_only({a.dataset for a in chunk})
            data = {a.dataset: inputs.dataset(a.dataset) for a in chunk}
            train_alices(chunk, data, ctx.device, ctx.alice_save_epochs, write=write,
                         max_group=ctx.max_group, log=ctx.log)
        inputs.keep_only()

    def map(self, units: Iterable[WorkUnit], ctx: Context) -> Iterator[Result]:
        from engine.train import batched
        inputs = Inputs(ctx)
        serial_cache = CompiledModelCache(ctx.device)
        for chunk in self._chunks(list(units), ctx):
            inputs.keep_only({u.dataset for u in chunk}, {u.alice_id for u in chunk})
            members: list[batched.Member] = []
            for unit in chunk:
                train, test, classes = inputs.dataset(unit.dataset)
                if isinstance(train, StreamData):
                    yield from SerialExecutor.run_unit(unit, inputs, serial_cache)
                    continue
                alice = inputs.alice(unit.alice_id)
                alone = tuple(s for s in unit.specs if not batchable(s, ctx.device))
                if alone:
                    store = PrefixStore(device=ctx.device)
                    yield from SerialExecutor.run_unit(WorkUnit(unit.dataset, unit.alice_id,
                                                                alone), inputs, serial_cache, store)
                members += [batched.Member(s, train, test, alice, classes)
                            for s in unit.specs if s not in alone]
            yield from train_groups(members, ctx.device, ctx.max_group, ctx.log)

    @staticmethod
    def _chunks(units: list, ctx: Context) -> Iterator[list]:
        """Consecutive units (or Alices: anything with a `dataset` key) whose distinct datasets
        fit the device budget together."""
        from engine.train.device import usable_memory
        budget = (usable_memory(ctx.device) * 0.5 if ctx.budget_gb is None
                  else ctx.budget_gb * 2**30)
        chunk: list[WorkUnit] = []
        sizes: dict[str, int] = {}
        for unit in units:
            size = dataset_bytes(ctx.dataset_dirs[unit.dataset])
            if chunk and unit.dataset not in sizes and sum(sizes.values()) + size > budget:
                yield chunk
                chunk, sizes = [], {}
            chunk.append(unit)
            sizes[unit.dataset] = size
        if chunk:
            yield chunk


def _ray(**options) -> Executor:
    """The Ray executor (engine.sweep.ray_executor); Ray, an optional dependency, is imported only
    when it is used."""
    from engine.sweep.spec import require_ray
    require_ray()
    from engine.sweep.ray_executor import RayExecutor
    return RayExecutor(**options)


EXECUTORS = {"serial": SerialExecutor, "batched": BatchedExecutor, "ray": _ray}
