"""The Ray executor: a sweep's Alices and work units as Ray tasks, on this machine or a cluster.

    engine sweep ... --executor ray [--ray-address auto|HOST:PORT] [--cpus-per-unit C]
                     [--gpus-per-unit G] [--max-retries R]

Without an address a local Ray instance starts with the sweep (one worker per core) and stops with
it; with one, the driver joins that running cluster. Each task declares C CPUs and G GPUs
(fractions pack several tasks onto one GPU) and runs torch on max(1, floor(C)) threads, on its GPU
when it has one. The driver keeps its three stages (engine.sweep.driver) and stays the only
writer of `out`:
- `pretrain` reads the arrays of each dataset an Alice needs once on the driver (engine.data.beton)
  and puts them into Ray's object store, from which the workers of a node map them without copies;
  it submits the Alices not complete under `out` (a complete one is loaded from her checkpoint and
  put instead) and returns without waiting: where tasks train batched (on GPUs: `--gpus-per-unit`
  above 0), one task per group of Alices of one shape, trained together
  (engine.train.batched_alice); elsewhere one task per Alice, so that CPU workers share them.
- `map` submits the tasks of each work unit, one per group of its runs that the batched trainer
  trains together (a unit of the default sweep: 4 or 5), with the unit's dataset arrays and its
  Alice's weights as arguments: Ray starts one once that Alice's task has finished, never waiting
  on another, on any node with the declared resources free. A task is `executors.train_unit`
  (batched trainer on a GPU, one run after another on a CPU).
- An Alice task returns her final weights (and those of each saved epoch) as numpy arrays with
  their metrics; the driver writes her checkpoints, the files `engine pretrain` writes, as soon as
  her task ends and before it yields any of her runs. A unit task returns its runs' metrics.
Workers open no file of the sweep: data and weights come through the object store and results go
back as return values, so the nodes of a cluster share only the network (and must have the same
engine and Ray installed). tests/test_ray.py runs a node that cannot see the output directory.

Faults: a task whose worker process or node dies is run again, up to `max_retries` times (also the
Alice task whose weights were lost with a node, when a unit still needs them). The driver yields a
task's runs once, when its result arrives, so each run is recorded once. A task that raises
stops the sweep with one line, as does one that died more often than allowed. On any stop (Ctrl-C
too) the driver cancels this sweep's queued and running tasks; what it recorded stays, and the same
command resumes from the store. `placements` maps each run_id to where its unit ran (node id,
host, pid, working directory, start and end time), `tasks` each task's name to the same.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import ray
import torch

from engine import __version__, paths
from engine.data.beton import read_beton
from engine.data.manifest import read_manifest
from engine.errors import EngineError
from engine.spec import AliceSpec
from engine.sweep.executors import Context, Executor, Result, n_classes, train_unit
from engine.sweep.plan import WorkUnit
from engine.train.alice import device_name, is_complete, train_alice
from engine.train.batched_alice import train_alices
from engine.train.checkpoint import load_checkpoint, save_checkpoint
from engine.train.device import DeviceData
from engine.train.trainer import CompiledModelCache

FIELDS = ["image", "alice_label", "bob_label"]
DEFAULTS = {"ray_address": None, "cpus_per_unit": 1.0, "gpus_per_unit": 0.0, "max_retries": 2}
KEEP_DATASETS = 2  # datasets a worker process keeps on its device for its next tasks


# Worker side: tasks read their inputs from arguments and return their outputs -------------------

_datasets: OrderedDict[tuple[str, str], tuple[DeviceData, DeviceData]] = OrderedDict()  # by key
_caches: dict[str, CompiledModelCache] = {}  # per device, shared by a worker's unit tasks


def _device() -> torch.device:
    """This task's device: the GPU Ray assigned it (CUDA_VISIBLE_DEVICES), else the CPU, with one
    torch thread per whole CPU the task declared."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    return torch.device("cuda" if ray.get_gpu_ids() else "cpu")


def _where(started: float, device: torch.device) -> dict:
    """Where and when a task ran (`started`, `ended`: seconds since the epoch)."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "cwd": os.getcwd(), "device": device_name(device),
            "engine_version": __version__,
            "started": started, "ended": time.time()}


def _on_device(dataset: str, arrays: dict, device: torch.device) -> tuple[DeviceData, DeviceData]:
    """(train, test) DeviceData of dataset `dataset` from its `arrays` (views of the object
    store), as load_data builds them; the last KEEP_DATASETS stay for the worker's next tasks (a
    dataset key names its contents)."""
    key = (dataset, str(device))
    if key not in _datasets:
        tr, te = dict(arrays["train"]), dict(arrays["test"])
        train = DeviceData.from_arrays(tr.pop("image"), tr, device)
        _datasets[key] = train, DeviceData.from_arrays(te.pop("image"), te, device,
                                                       stats=train.stats)
        while len(_datasets) > KEEP_DATASETS:
            _datasets.popitem(last=False)
    _datasets.move_to_end(key)
    return _datasets[key]


def _numpy(state: dict) -> dict[str, np.ndarray]:
    return {k: v.detach().to("cpu", copy=True).numpy() for k, v in state.items()}


@ray.remote(num_returns=2)
def _alice_task(spec: AliceSpec, classes: int, save_epochs: tuple[int, ...],
                arrays: dict) -> tuple[dict, dict]:
    """Train Alice; returns her final weights and {model_spec, metrics, epochs, where}."""
    started, device = time.time(), _device()
    train, test = _on_device(spec.dataset, arrays, device)
    out: dict = {"epochs": []}

    def keep(epoch: int | None, state: dict, model_spec: dict, metrics: dict) -> None:
        if epoch is None:
            out.update(state=_numpy(state), model_spec=model_spec, metrics=metrics)
        else:
            out["epochs"].append((epoch, _numpy(state), metrics))

    train_alice(spec, train, test, classes, save_epochs, device, write=keep)
    state = out.pop("state")
    return state, {"alices": {spec.id: out}, "where": _where(started, device)}


@ray.remote
def _alices_task(specs: tuple[AliceSpec, ...], classes: dict[str, int],
                 save_epochs: tuple[int, ...], *arrays: dict) -> tuple:
    """Train Alices of one group shape together; returns each one's final weights, in order,
    then {"alices": {id: {model_spec, metrics, epochs}}, "where"}. `arrays`: per dataset of
    `specs` (in order of first use), its arrays."""
    started, device = time.time(), _device()
    keys = list(dict.fromkeys(s.dataset for s in specs))
    data = {k: (*_on_device(k, a, device), classes[k]) for k, a in zip(keys, arrays)}
    out: dict = {s.id: {"epochs": []} for s in specs}

    def keep(spec: AliceSpec, epoch: int | None, state: dict, model_spec: dict,
             metrics: dict) -> None:
        if epoch is None:
            out[spec.id].update(state=_numpy(state), model_spec=model_spec, metrics=metrics)
        else:
            out[spec.id]["epochs"].append((epoch, _numpy(state), metrics))

    train_alices(specs, data, device, save_epochs, write=keep)
    states = [out[s.id].pop("state") for s in specs]
    return (*states, {"alices": out, "where": _where(started, device)})


@ray.remote
def _unit_task(unit: WorkUnit, classes: int, arrays: dict, alice: dict | None,
               batched: bool | None, max_group: int | None) -> tuple[list[Result], dict]:
    """Train a unit's runs; returns [(spec, metrics)] and where they ran."""
    started, device = time.time(), _device()
    train, test = _on_device(unit.dataset, arrays, device)
    state = None if alice is None else {k: torch.tensor(v, device=device) for k, v in alice.items()}
    if str(device) not in _caches:
        _caches[str(device)] = CompiledModelCache(device)
    batched = device.type == "cuda" if batched is None else batched
    return train_unit(unit, train, test, classes, state, device, batched=batched,
                      max_group=max_group, cache=_caches[str(device)]), _where(started, device)


# Driver side -------------------------------------------------------------------------------------

def _parts(unit: WorkUnit) -> list[WorkUnit]:
    """`unit` split where the batched trainer would split it (runs of one group shape train
    together; within a unit the dataset is one): one Ray task each, so that many workers share
    a few units evenly and none waits long for the last one."""
    from engine.train.batched import group_key
    groups: dict[tuple, list] = {}
    for s in unit.specs:
        groups.setdefault(group_key(s, (), 0, s.n_bob or 0), []).append(s)
    return [WorkUnit(unit.dataset, unit.alice_id, tuple(g)) for g in groups.values()]


@dataclass
class _Alice:
    spec: AliceSpec
    state: ray.ObjectRef  # her final weights, an argument of her units' tasks
    record: ray.ObjectRef | None  # what her task returned to be written; None: reused, on disk


class RayExecutor(Executor):
    """See the module docstring. Options are SweepSpec's `ray_address`, `cpus_per_unit`,
    `gpus_per_unit` and `max_retries` (the driver passes them from the SweepSpec); those not
    given take their defaults. `batched`: how a task trains its
    runs, with the batched trainer (True) or one after another as the serial executor does
    (False); None (default): batched on a GPU, one after another on a CPU, where a task's groups
    (1 or 2 runs) gain nothing from it (mlp sweep mix, one thread: 45-52 s of tasks against
    41-43 s, bench/test_ray_bench.py)."""
    name = "ray"

    def __init__(self, *, batched: bool | None = None, **options):
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown Ray executor options: {', '.join(sorted(unknown))}")
        self.given, self.batched = options, batched
        self.options = dict(DEFAULTS)
        self.placements: dict[str, dict] = {}  # run_id -> where its unit ran
        self.tasks: dict[str, dict] = {}  # "alice <id>" / "unit <name>" -> where and when it ran
        self._alices: dict[str, _Alice] = {}
        self._data: dict[str, ray.ObjectRef] = {}
        self._written: set[str] = set()
        self._ctx: Context | None = None
        self._owner = False  # this executor started (or joined) Ray and shuts it down

    # Setting up ----------------------------------------------------------------------------------

    def _start(self, ctx: Context) -> None:
        if self._ctx is not None:
            return
        self._ctx = ctx
        self.options.update(self.given)
        if ray.is_initialized():  # the caller's Ray session: used as it is, left running
            return self._check_resources()
        address = self.options["ray_address"]
        if address and address != "auto":  # ray.init waits minutes for a GCS that is not there
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=10).close()
            except OSError as e:
                raise EngineError(f"no Ray cluster answers at {address} ({e.strerror or e}); "
                                  f"start one with `ray start --head --port={port}`") from None
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise EngineError(f"could not start or join {where}: {' '.join(str(e).split())[:300]}"
                              ) from None
        self._owner = True
        total = ray.cluster_resources()
        ctx.log(f"Ray: {'joined ' + address if address else 'started a local instance'}, "
                f"{total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs")
        self._check_resources()

    def _check_resources(self) -> None:
        """A task must fit on some node (else Ray would hold it forever); GPUs left unused are
        worth a notice."""
        cpus, gpus = self.options["cpus_per_unit"], self.options["gpus_per_unit"]
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
            have = "; ".join(f"{r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs" for r in nodes)
            raise EngineError(f"no node of the Ray cluster has the {cpus:g} CPUs and {gpus:g} GPUs "
                              f"a task declares (--cpus-per-unit, --gpus-per-unit); its nodes "
                              f"have: {have}")
        if not gpus and any(r.get("GPU") for r in nodes):
            self._ctx.log("notice: the Ray cluster has GPUs, but its tasks declare none "
                          "(--gpus-per-unit 0), so they train on CPUs")

    def _resources(self, task: str) -> dict:
        """Ray options of the task `task` ("alice <id>" or "unit <name>")."""
        return {"num_cpus": self.options["cpus_per_unit"],
                "num_gpus": self.options["gpus_per_unit"],
                "max_retries": self.options["max_retries"], "retry_exceptions": False}

    def _dataset(self, key: str) -> ray.ObjectRef:
        """The object-store copy of dataset `key`'s train and test arrays, put once."""
        if key not in self._data:
            d = self._ctx.dataset_dirs[key]
            self._data[key] = ray.put({split: read_beton(paths.split_file(d, split), FIELDS)
                                       for split in ("train", "test")})
        return self._data[key]

    def _stop(self, refs: Iterable[ray.ObjectRef] = ()) -> None:
        """Stop this sweep's tasks still queued or running (`refs`), leaving Ray if this executor
        started or joined it: Ray ends a job's tasks when its driver leaves, and a local instance
        stops whole. In a Ray session of the caller's the tasks are cancelled instead (not with
        force=True, whose race with a finishing task can abort the driver: Ray 2.60)."""
        if self._owner:
            self._owner = False
            ray.shutdown()
            return
        for ref in refs:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - finished or already gone: nothing to stop
                pass

    # Stage 2 -------------------------------------------------------------------------------------

    def pretrain(self, alices: Iterable[AliceSpec], ctx: Context) -> None:
        """Submit the tasks of the Alices to train (see the module docstring); put a complete
        Alice's weights. Does not wait."""
        alices = list(alices)
        if not alices:
            return
        try:
            self._start(ctx)
            todo: dict[tuple, list[AliceSpec]] = {}
            for a in alices:
                final = paths.alice_checkpoint(ctx.out, a.id)
                if is_complete(ctx.out, a, ctx.alice_save_epochs, log=ctx.log):
                    ctx.log(f"reusing Alice {a.id} ({final}, verified)")
                    state = _numpy(load_checkpoint(final)[0])
                    self._alices[a.id] = _Alice(a, ray.put(state), None)
                    self._written.add(a.id)
                    continue
                manifest = read_manifest(ctx.dataset_dirs[a.dataset])
                if manifest["key"] != a.dataset:
                    raise EngineError(f"Alice spec is for dataset {a.dataset}, but "
                                      f"{ctx.dataset_dirs[a.dataset]} holds {manifest['key']}")
                shape = dict(a.to_dict(), dataset="", seed=0) if self._group_alices() else a.id
                todo.setdefault(str(shape), []).append(a)
            for group in todo.values():
                self._submit_alices(group, ctx)
        except BaseException:
            self._stop(a.state for a in self._alices.values() if a.record is not None)
            raise

    def _group_alices(self) -> bool:
        """Whether tasks train Alices together: where they train batched (engine.train
        .batched_alice), i.e. on GPUs unless `batched` says otherwise."""
        return self.batched if self.batched is not None else self.options["gpus_per_unit"] > 0

    def _submit_alices(self, group: list[AliceSpec], ctx: Context) -> None:
        classes = {a.dataset: len(read_manifest(ctx.dataset_dirs[a.dataset])["sources"]["left"]
                                  ["classes"]) for a in group}
        save = tuple(ctx.alice_save_epochs)
        if len(group) == 1:
            [a] = group
            state, record = _alice_task.options(**self._resources(f"alice {a.id}")).remote(
                a, classes[a.dataset], save, self._dataset(a.dataset))
            self._alices[a.id] = _Alice(a, state, record)
            return
        keys = list(dict.fromkeys(a.dataset for a in group))
        *states, record = _alices_task.options(
            num_returns=len(group) + 1, **self._resources(f"alices x{len(group)}")).remote(
            tuple(group), classes, save, *(self._dataset(k) for k in keys))
        for a, state in zip(group, states):
            self._alices[a.id] = _Alice(a, state, record)

    def _write_alice(self, alice: _Alice) -> None:
        """Her checkpoints under `out`, epochs first and model.safetensors last (as `pretrain`)."""
        if alice.spec.id in self._written:
            return
        task = self._get(alice.record, f"Alice {alice.spec.id}")
        record = {**task["alices"][alice.spec.id], "where": task["where"]}
        state = ray.get(alice.state)
        tensors = lambda s: {k: torch.from_numpy(np.array(v)) for k, v in s.items()}  # noqa: E731
        out, aid = self._ctx.out, alice.spec.id
        for epoch, s, metrics in record["epochs"]:
            save_checkpoint(paths.alice_epoch_checkpoint(out, aid, epoch), tensors(s),
                            record["model_spec"], metrics)
        save_checkpoint(paths.alice_checkpoint(out, aid), tensors(state), record["model_spec"],
                        record["metrics"])
        self._written.add(aid)
        w = self.tasks[f"alice {aid}"] = record["where"]
        self._ctx.log(f"Alice {aid}: test accuracy {record['metrics']['test_acc']:.4f} on "
                      f"alice_label (trained on {w['host']}, pid {w['pid']})")

    def _get(self, ref: ray.ObjectRef, what: str):
        """A task's result; a failed task is one line (its own EngineError, or why it failed)."""
        try:
            value = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, EngineError):
                raise EngineError(f"{what}: {e.cause}") from None
            raise e.as_instanceof_cause() from None
        except ray.exceptions.RayError as e:
            reason = " ".join(str(e).split())[:200]
            raise EngineError(f"{what}: its Ray task failed ({type(e).__name__}: {reason}) after "
                              f"up to {self.options['max_retries']} retries; the runs recorded "
                              "so far are kept, and the same command resumes") from None
        where = value[-1] if isinstance(value, tuple) else value.get("where", {})
        if where.get("engine_version", __version__) != __version__:
            raise EngineError(f"{what} ran on {where['host']} with engine "
                              f"{where['engine_version']}, the driver has {__version__}; install "
                              "the same engine on every node")
        return value

    # Stage 3 -------------------------------------------------------------------------------------

    def map(self, units: Iterable[WorkUnit], ctx: Context) -> Iterator[Result]:
        units = list(units)
        pending: dict[ray.ObjectRef, _Alice | WorkUnit] = {}
        try:
            if not units:
                return
            self._start(ctx)
            pending.update({a.record: a for a in self._alices.values() if a.record is not None})
            names: dict[ray.ObjectRef, str] = {}
            for unit in units:
                state = self._alices[unit.alice_id].state if unit.alice_id else None
                classes = n_classes(read_manifest(ctx.dataset_dirs[unit.dataset]))
                parts = _parts(unit)
                for i, part in enumerate(parts):
                    name = f"unit {unit.name}" + (f" {i + 1}/{len(parts)}" if len(parts) > 1
                                                  else "")
                    ref = _unit_task.options(**self._resources(name)).remote(
                        part, classes, self._dataset(unit.dataset), state, self.batched,
                        ctx.max_group)
                    pending[ref], names[ref] = part, name
            left = len(names)
            while left:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                item = pending.pop(ref)
                if isinstance(item, _Alice):  # with the Alices trained in the same task
                    for a in self._alices.values():
                        if a.record == item.record:
                            self._write_alice(a)
                    continue
                results, where = self._get(ref, names[ref])
                where = self.tasks[names[ref]] = {**where, "task": names[ref]}
                left -= 1
                if item.alice_id:
                    self._write_alice(self._alices[item.alice_id])  # before any of her runs
                for spec, metrics in results:
                    self.placements[spec.run_id] = where
                    yield spec, {**metrics, "device": where["device"]}
        finally:
            self._stop([r for r, item in pending.items() if isinstance(item, WorkUnit)]
                       + [a.state for a in self._alices.values() if a.record is not None])
