"""`engine reproduce`: train what the chosen claims need, once, then evaluate and judge them.

    reproduce(ids, scale=...) -> 1. the claims' needs: the union of their sweeps and studies
                              -> 2. every sweep's runs trained into ONE sweep root (DIR/runs),
                                    deduplicated by run ID, through the driver's `execute` (its
                                    store, resume, executors); each study into DIR/studies/<id>
                              -> 3. each claim's evidence (DIR/claims/<id>.json, reused while the
                                    claim's inputs are unchanged)
                              -> 4. one judgement over all of them (engine.studies.claims.stats)
                                    and the report (engine.studies.claims.report)

A killed run resumes: the store keeps every finished run, studies skip what they hold, and
evidence already evaluated is reused. `report_only` skips steps 1-2 and evaluates from what
is stored.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Iterable

import pandas as pd

from engine import paths
from engine.atomic import write_bytes
from engine.errors import EngineError
from engine.studies.claims import select
from engine.studies.claims import scales as scales_mod
from engine.studies.claims import studies as studies_mod
from engine.studies.claims.base import LOG, Claim, Context, Evidence, Scale, Study, need_id
from engine.studies.claims.effects import plain
from engine.sweep.spec import SweepSpec

PRECISIONS = (None, "fp32", "bf16")  # what a stored run's spec may record (engine.spec)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# 1. Needs ----------------------------------------------------------------------------------------

def needs(claims: Iterable[Claim], scale: Scale) -> tuple[dict[str, SweepSpec], dict[str, Study]]:
    """Every sweep and study the claims need, each once, by need ID."""
    sweeps, studies = {}, {}
    for c in claims:
        for n in c.needs(scale):
            (studies if isinstance(n, Study) else sweeps)[need_id(n)] = n
    return sweeps, studies


def _dataset_keys(sweep: SweepSpec) -> dict:
    """(beta, block) -> the key of the dataset the driver builds for it (nothing is built)."""
    from engine.data.build import planned_dataset
    from engine.sweep.plan import dataset_requests
    return {(r.beta, r.block_shuffle): planned_dataset(
        sweep.pair, r.beta, seed=sweep.data_seed, n_train=sweep.n_train, n_test=sweep.n_test,
        data_root=sweep.data_root, fit=sweep.fit, image_size=sweep.image_size,
        block_shuffle=r.block_shuffle)[0].key for r in dataset_requests(sweep)}


def run_ids(sweep: SweepSpec) -> set[str]:
    """The run IDs of `sweep` under any precision a run may have recorded."""
    from engine.sweep.plan import expand
    keys = _dataset_keys(sweep)
    return {s.run_id for p in PRECISIONS for s in expand(sweep, keys, p)}


# 2. Training -------------------------------------------------------------------------------------

def train_sweeps(root: Path, sweeps: Iterable[SweepSpec], *, executor: str, device: str,
                 log: LOG = _stderr) -> dict:
    """Every run of every sweep, trained once into the sweep root `root`: stages 1-3 of
    engine.sweep.driver over the union of the sweeps' runs and Alices."""
    from engine.data.build import check_block_shuffles, parse_pair
    from engine.locks import output_lock
    from engine.sweep import plan as planner
    from engine.sweep import preflight, state
    from engine.sweep.driver import build_datasets, execute
    from engine.train.alice import resolve_device
    from engine.train.device import spec_precision
    sweeps = [s.replace(executor=executor, device=device) for s in sweeps]
    for s in sweeps:  # everything that would fail mid-way, before any work
        parse_pair(s.pair)
        preflight.check(s, dry_run=False, log=log)
        check_block_shuffles(s.pair, list(s.block_shuffles), data_root=s.data_root, fit=s.fit,
                             image_size=s.image_size)
    dev = resolve_device(device)
    specs, alices, dirs, save_epochs = {}, {}, {}, set()
    with output_lock(root, log=log), state.recording(root):
        for s in sweeps:
            keys, built = build_datasets(s, paths.sweep_datasets(root), log)
            dirs.update(built)
            precision = spec_precision(s.precision, dev)
            specs.update((b.run_id, b) for b in planner.expand(s, keys, precision))
            alices.update((a.id, a) for a in planner.alices(s, keys, precision))
            save_epochs.update(s.alice_save_epochs)
        return execute(root, specs.values(), alices.values(), dirs, executor=executor,
                       device=dev, save_epochs=sorted(save_epochs), log=log)


def run_studies(out: Path, studies: dict[str, Study], *, device: str, log: LOG) -> None:
    for sid, study in studies.items():
        log(f"study {sid}")
        studies_mod.run(study, paths.claims_study(out, sid), log=log, device=device)


# 3. Evidence -------------------------------------------------------------------------------------

class _Rows:
    """`Context.rows`: the stored rows of a sweep's runs (the store is read once)."""

    def __init__(self, root: Path):
        self.root, self._table = root, None

    def __call__(self, sweep: SweepSpec) -> pd.DataFrame:
        if self._table is None:
            from engine.store import ResultsStore
            if not (self.root / "results").is_dir():
                raise EngineError(f"{self.root} holds no results yet")
            self._table = ResultsStore(self.root, read_only=True).table()
        t = self._table
        return t[t["run_id"].isin(run_ids(sweep))].reset_index(drop=True)


def fingerprint(claim: Claim, scale: Scale) -> str:
    """What a claim's evidence depends on: its id, the scale, its needs and the source of the
    module that evaluates it (so evidence from an older evaluation is not reused; helpers in
    other modules are not covered: delete DIR/claims/<id>.json to force a new evaluation)."""
    import inspect
    try:
        source = Path(inspect.getsourcefile(claim.evaluate)).read_bytes()
    except (TypeError, OSError):
        source = b""
    text = json.dumps([claim.id, scale.__dict__, sorted(need_id(n) for n in claim.needs(scale)),
                       hashlib.sha256(source).hexdigest()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_evidence(path: Path, fp: str) -> Evidence | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if d.get("fingerprint") != fp:
        return None
    return Evidence.from_dict(d["evidence"])


def evaluate(out: Path, claims: list[Claim], scale: Scale, *, log: LOG = _stderr,
             reuse: bool = True) -> dict[str, Evidence]:
    """Each claim's evidence, evaluated from the stored runs or reused from DIR/claims/. A claim
    whose evaluation fails for want of data gets no effects (inconclusive) and a summary saying
    why; its evidence is not stored, so the next run tries again."""
    root, rows = paths.claims_runs(out), _Rows(paths.claims_runs(out))
    found = {}
    for claim in claims:
        path, fp = paths.claims_evidence(out, claim.id), fingerprint(claim, scale)
        ev = _read_evidence(path, fp) if reuse else None
        if ev is None:
            ctx = Context(out=out, root=root, scale=scale, claim_id=claim.id, log=log, rows=rows,
                          study=lambda s: paths.claims_study(out, need_id(s)))
            log(f"evaluating {claim.id}")
            try:
                ev = claim.evaluate(ctx)
            except EngineError as exc:
                log(f"{claim.id}: not evaluated: {exc}")
                found[claim.id] = Evidence(effects=(), summary=f"not evaluated: {exc}")
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"fingerprint": fp, "claim": claim.id, "evidence": ev.to_dict()}
            write_bytes(path, (json.dumps(payload, indent=1, default=plain) + "\n").encode())
        found[claim.id] = ev
    return found


# The command -------------------------------------------------------------------------------------

def reproduce(ids: Iterable[str] = (), *, scale: str = "small", seeds: int | None = None,
              out=None, executor: str = "batched", device: str = "auto",
              report_only: bool = False, log: LOG = _stderr) -> Path:
    """`engine reproduce`; returns the path of DIR/report.html."""
    from engine.locks import output_lock
    from engine.studies.claims import report, stats
    chosen = select(list(ids))
    sc = scales_mod.scale(scale, seeds)
    out = paths.reproduce_out(out)
    if report_only and not (paths.claims_runs(out) / "results").is_dir() \
            and not (out / "claims").is_dir():
        raise EngineError(f"--report-only: {out} holds no results yet; run engine reproduce "
                          f"--out {out} without --report-only first")
    with output_lock(out, log=log):
        if not report_only:
            sweeps, studies = needs(chosen, sc)
            log(f"{len(chosen)} claims at scale {sc.name} ({sc.seeds} seeds): {len(sweeps)} "
                f"sweeps, {len(studies)} studies")
            if sweeps:
                train_sweeps(paths.claims_runs(out), sweeps.values(), executor=executor,
                             device=device, log=log)
            run_studies(out, studies, device=device, log=log)
        evidence = evaluate(out, chosen, sc, log=log)
        verdicts = stats.judge({c.id: evidence[c.id].effects for c in chosen},
                               {c.id: c.margin for c in chosen})
        return report.write(out, chosen, sc, evidence, verdicts)


def listing(ids: Iterable[str] = (), *, scale: str = "small", seeds: int | None = None) -> str:
    """`--list`: each claim's id, paper, sentence, runs and estimated time at the scale."""
    from engine.sweep import plan as planner
    chosen = select(list(ids))
    sc = scales_mod.scale(scale, seeds)
    per_run = scales_mod.SECONDS_PER_RUN[sc.name]
    lines, every_spec, every_alice = [], {}, {}
    for c in chosen:
        specs, alices, names = {}, {}, []
        for n in c.needs(sc):
            if isinstance(n, Study):
                names.append(f"study {n.kind}")
                continue
            keys = {(r.beta, r.block_shuffle): f"{n.pair}|{n.n_train}|{n.n_test}|{r.beta}|"
                    f"{r.block_shuffle}" for r in planner.dataset_requests(n)}
            specs.update((s.run_id, s) for s in planner.expand(n, keys))
            alices.update((a.id, a) for a in planner.alices(n, keys))
        every_spec.update(specs)
        every_alice.update(alices)
        trained = planner.plan_runs(specs.values(), alices.values(), {}).n_train
        what = [f"{len(specs)} runs ({trained} trained, {len(alices)} Alices)"] if specs else []
        lines += [f"{c.id}  [{c.paper}]", f"    {c.sentence}",
                  f"    needs: {', '.join(what + names) or 'nothing'}; ~{_minutes(trained, len(alices), per_run, sc)}"]
    trained = planner.plan_runs(every_spec.values(), every_alice.values(), {}).n_train
    lines.append(f"all {len(chosen)} claims at scale {sc.name} ({sc.seeds} seeds): "
                 f"{len(every_spec)} runs, {trained} trained once, {len(every_alice)} Alices; "
                 f"~{_minutes(trained, len(every_alice), per_run, sc)} of training plus studies "
                 f"and analyses ({sc.minutes} in all)")
    return "\n".join(lines)


def _minutes(trained: int, n_alices: int, per_run: float, sc: Scale) -> str:
    """Training time at `per_run` seconds per Bob run; an Alice counts as alice_epochs/epochs
    runs on the whole split."""
    seconds = per_run * (trained + n_alices * sc.alice_epochs / max(1, sc.epochs))
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
