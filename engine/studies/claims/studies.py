"""Runners of the studies claims may need besides sweeps (engine.studies.claims.base.Study).

RUNNERS maps a study kind to `run(out: Path, *, log, device: str, **params) -> None`, which writes
the study into `out` and is resumable: run again on the same `out` it does only what is missing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from engine.errors import EngineError
from engine.studies.claims.base import LOG, Study

RUNNERS: dict[str, Callable[..., None]] = {}


def run(study: Study, out: Path, *, log: LOG, device: str = "auto") -> Path:
    if study.kind not in RUNNERS:
        raise EngineError(f"unknown study kind {study.kind!r}; known: {', '.join(RUNNERS)}")
    out.mkdir(parents=True, exist_ok=True)
    RUNNERS[study.kind](out, log=log, device=device, **study.kwargs())
    return out
