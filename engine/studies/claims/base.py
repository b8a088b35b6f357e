"""The contract of a claim (`engine reproduce`): what it needs trained, how its effect is measured,
and the scales it runs at.

A claim is a frozen `Claim` value in its paper's module (engine.studies.claims.<paper>). It names
the runs it needs as `SweepSpec`s (trained through the normal driver code, store and run IDs, in
one sweep root shared by every claim, so a run two claims need trains once) and as `Study`s (the
toy model, the case study, the hidden-manifold sweep: engine.studies.claims.studies runs them).
Its `evaluate` turns the stored results into `Evidence`: one effect per independent unit (a seed;
paired where the design pairs runs: same seed, same Alice), oriented so that a positive effect
is what the paper claims. engine.studies.claims.stats turns the effects into the verdict; no
claim decides its own verdict.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from engine.sweep.spec import SweepSpec

LOG = Callable[[str], None]


@dataclass(frozen=True)
class Scale:
    """How big every claim's runs are. `seeds` is the number of independent repeats (seeds
    0..seeds-1); the rest size the shared sweeps (engine.studies.claims.sweeps)."""
    name: str
    seeds: int
    n_train: int | None         # training samples per dataset (None: the source's split)
    n_test: int | None
    epochs: int                 # Bob's
    alice_epochs: int
    betas: tuple[float, ...]
    archs: tuple[str, ...]
    n_bobs: tuple[int | None, ...]  # Bob's data budgets (None: all n_train)
    max_samples: int            # samples per forward-pass analysis (CKA, barriers, bounds)
    minutes: str                # the expected wall time, in words, for --list

    def with_seeds(self, seeds: int) -> Scale:
        return dataclasses.replace(self, seeds=seeds)

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seeds))


@dataclass(frozen=True)
class Study:
    """Runs that are not a freeze-depth sweep: `kind` names a runner in
    engine.studies.claims.studies, `params` its keyword arguments (sorted pairs, so equal studies
    compare and hash equal and two claims needing the same study run it once)."""
    kind: str
    params: tuple[tuple[str, object], ...] = ()

    @staticmethod
    def of(kind: str, **params) -> Study:
        return Study(kind, tuple(sorted((k, _frozen(v)) for k, v in params.items())))

    @property
    def id(self) -> str:
        text = json.dumps([self.kind, [[k, v] for k, v in self.params]], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def kwargs(self) -> dict:
        return dict(self.params)


def _frozen(v):
    return tuple(v) if isinstance(v, list) else v


Need = Union[SweepSpec, Study]


def need_id(need: Need) -> str:
    """A stable ID for a need: a study's hash, or the hash of a sweep's spec."""
    if isinstance(need, Study):
        return f"{need.kind}-{need.id}"
    return "sweep-" + hashlib.sha256(need.to_json().encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Evidence:
    """What a claim's evaluation found. `effects`: one value per independent unit (`unit` says
    which, "seed" by default), oriented so that positive supports the claim; NaN units are
    dropped by the statistics. `numbers`: the table behind the effect (rows of plain values), shown
    in the report; `figure`: the PNG drawn (None when there is nothing to draw); `summary`: one
    line in the claim's own units."""
    effects: tuple[float, ...]
    summary: str
    numbers: tuple[dict, ...] = ()
    figure: str | None = None
    unit: str = "seed"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Evidence:
        return Evidence(effects=tuple(d["effects"]), summary=d["summary"],
                        numbers=tuple(d.get("numbers", ())), figure=d.get("figure"),
                        unit=d.get("unit", "seed"))


@dataclass
class Context:
    """What a claim's `evaluate` gets. `root`: the shared sweep root (a normal `engine sweep`
    directory: `engine analyze` and engine.analysis.artifacts work on it); `rows(sweep)`: the
    stored rows of exactly that sweep's runs; `study(s)`: the directory study `s` wrote;
    `figure_path()`: where this claim's PNG goes; `work_dir()`: a directory of its own for
    intermediate files."""
    out: Path
    root: Path
    scale: Scale
    claim_id: str
    log: LOG
    rows: Callable[[SweepSpec], object]
    study: Callable[[Study], Path]

    def figure_path(self) -> Path:
        from engine import paths
        path = paths.claims_figure(self.out, self.claim_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def work_dir(self) -> Path:
        from engine import paths
        d = paths.claims_work(self.out, self.claim_id)
        d.mkdir(parents=True, exist_ok=True)
        return d


@dataclass(frozen=True)
class Claim:
    """One claim of a paper, tested at any scale.

    id: kebab-case, prefixed by the paper (`mb-`, `gerace-`, `mehra-`, `neyshabur-`);
    paper: "Mohamud & Brink 2025" etc.; sentence: what is tested, in our words;
    effect: what one effect value measures, with its units; margin: the smallest effect that would
    count as the claim holding (same units), so that an interval lying wholly below it contradicts
    the claim; rule: how the effect is computed and judged, in words (shown in the report);
    needs(scale): the sweeps and studies it reads; evaluate(ctx): the evidence."""
    id: str
    paper: str
    sentence: str
    effect: str
    margin: float
    rule: str
    needs: Callable[[Scale], tuple[Need, ...]] = field(compare=False)
    evaluate: Callable[[Context], Evidence] = field(compare=False)
