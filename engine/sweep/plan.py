"""The sweep plan: a pure function (no torch, no files) from a sweep to the work that remains.

    plan(sweep, done, keys) -> Plan(datasets, alices, units, copies)

- `datasets`: one `DatasetRequest` per (beta, block size) the sweep needs; Alice always pre-trains
  on the unshuffled dataset of her beta, so it is requested even when Bob uses only shuffled ones.
- `alices`: the `AliceSpec`s the remaining runs start from.
- `units`: `WorkUnit`s, each "one dataset, one Alice (or none, for baselines), her Bob runs": keys
  and specs only, so they pickle and travel to any executor (engine.sweep.executors).
- `copies`: runs that compute what another run computes (same `BobSpec.computation_id`: reinit at
  l = 1 and scratch; finetune and reinit at l = L). They are not trained again: their rows take the
  metrics of `source`, a run trained earlier (stored) or in this plan, and name it in
  `computed_by`.

`done` maps each stored run_id to its `computed_by` ("" when it trained itself). `keys` maps
(beta, block size) to a built dataset's key; without it keys are placeholders (dry runs and
validation). `plan_runs` is the same for any list of runs (the case study builds its own).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

from engine.spec import AliceSpec, BobSpec
from engine.sweep.expand import alice_spec, expand_sweep

if TYPE_CHECKING:
    from engine.sweep.spec import SweepSpec

DatasetKeys = Mapping[tuple[float, "int | None"], str]


@dataclass(frozen=True)
class DatasetRequest:
    beta: float
    block_shuffle: int | None = None


@dataclass(frozen=True)
class WorkUnit:
    """Bob runs on one dataset from one Alice ("" for runs that use none), each a distinct
    computation, in the order the sweep lists them."""
    dataset: str
    alice_id: str
    specs: tuple[BobSpec, ...]

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.alice_id or 'no-alice'}"


@dataclass(frozen=True)
class Copy:
    spec: BobSpec
    source: str  # run_id of the run whose training gives this row's metrics


@dataclass(frozen=True)
class Plan:
    datasets: tuple[DatasetRequest, ...]
    alices: tuple[AliceSpec, ...]
    units: tuple[WorkUnit, ...]
    copies: tuple[Copy, ...]
    total: int  # runs in the sweep
    done_before: int  # of those, already stored

    @property
    def n_train(self) -> int:
        return sum(len(u.specs) for u in self.units)

    @property
    def n_pending(self) -> int:
        return self.n_train + len(self.copies)


def dataset_requests(sweep: SweepSpec) -> list[DatasetRequest]:
    blocks = list(sweep.block_shuffles)
    if sweep.modes and None not in blocks:
        blocks.append(None)  # Alice's dataset
    return [DatasetRequest(beta, block) for block in blocks for beta in sweep.betas]


def _placeholder(beta: float, block: int | None) -> str:
    return f"beta-{beta:g}" + ("" if block is None else f"-blk{block}")


def expand(sweep: SweepSpec, keys: DatasetKeys | None = None,
           precision: str | None = None) -> list[BobSpec]:
    """Every Bob run of `sweep`, per block size; Alice's dataset is the unshuffled one.
    `precision`: what each spec records, `sweep.precision` resolved for the device
    (engine.train.device.spec_precision; None: the device's default)."""
    key = (lambda b, blk: keys[b, blk]) if keys is not None else _placeholder
    specs: list[BobSpec] = []
    for block in sweep.block_shuffles:
        specs += expand_sweep(
            sweep.betas, sweep.archs, sweep.seeds, sweep.layers, sweep.modes, sweep.baselines,
            sweep.n_bobs, datasets={b: key(b, block) for b in sweep.betas},
            alice_datasets={b: key(b, None) for b in sweep.betas}, bob=sweep.bob,
            alice=sweep.alice, depth=sweep.depth, width=sweep.width, global_pool=sweep.global_pool,
            precision=precision)
    return list({s.run_id: s for s in specs}.values())


def alices(sweep: SweepSpec, keys: DatasetKeys | None = None,
           precision: str | None = None) -> list[AliceSpec]:
    if not sweep.modes:
        return []
    key = (lambda b: keys[b, None]) if keys is not None else (lambda b: _placeholder(b, None))
    opts = {"depth": sweep.depth, "width": sweep.width, "global_pool": sweep.global_pool,
            "precision": precision}
    return list({a.id: a for a in (alice_spec(key(b), arch, s, sweep.alice, **opts)
                                   for b in sweep.betas for arch in sweep.archs
                                   for s in sweep.seeds)}.values())


def plan(sweep: SweepSpec, done: Mapping[str, str] | None = None,
         keys: DatasetKeys | None = None, precision: str | None = None) -> Plan:
    p = plan_runs(expand(sweep, keys, precision), alices(sweep, keys, precision), done)
    return Plan(tuple(dataset_requests(sweep)), p.alices, p.units, p.copies, p.total,
                p.done_before)


def plan_runs(specs: Iterable[BobSpec], alice_specs: Iterable[AliceSpec],
              done: Mapping[str, str] | None = None) -> Plan:
    """The plan for `specs` (run_id order kept) given the stored runs `done`."""
    specs = list({s.run_id: s for s in specs}.values())
    done = done or {}
    by_id = {a.id: a for a in alice_specs}
    stored = {s.computation_id: done[s.run_id] or s.run_id for s in specs if s.run_id in done}
    trains: dict[str, BobSpec] = {}  # computation_id -> the pending run that trains it
    copies: list[Copy] = []
    for s in specs:
        if s.run_id in done:
            continue
        cid = s.computation_id
        if cid in stored:
            copies.append(Copy(s, stored[cid]))
        elif cid in trains:
            copies.append(Copy(s, trains[cid].run_id))
        else:
            trains[cid] = s
    groups: dict[tuple[str, str], list[BobSpec]] = {}
    for s in trains.values():
        groups.setdefault((s.dataset, s.alice_id), []).append(s)
    units = tuple(WorkUnit(d, a, tuple(g)) for (d, a), g in groups.items())
    missing = {u.alice_id for u in units if u.alice_id} - by_id.keys()
    if missing:
        raise ValueError(f"runs name Alices without a spec: {', '.join(sorted(missing))}")
    needed = tuple(by_id[a] for a in dict.fromkeys(u.alice_id for u in units if u.alice_id))
    n_done = sum(s.run_id in done for s in specs)
    return Plan((), needed, units, tuple(copies), len(specs), n_done)
