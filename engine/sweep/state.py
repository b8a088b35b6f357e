"""What the driver is doing under a sweep root, or last did, for `engine status`: the JSON file
`paths.run_state(out)`, written only by the driver (engine.sweep.driver), atomically, at each stage:

- begun:   {"pid", "host", "started_at", "phase": "datasets"}
- planned: + "phase": "training", "run_ids" (every run of this invocation), "to_train" (those still
           to train when it planned), "copies" (those that take another run's metrics), "alices",
           "datasets" ({key: directory})
- ended:   + "ended_at", "outcome": "finished" | "interrupted" | "failed", "error" (one line)

A process killed outright leaves the file without "ended_at"; `engine status` then reports the
sweep as stopped (its lock is free). Failing to write this file never fails the sweep.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from engine import paths
from engine.errors import EngineError

_active: set[str] = set()  # sweep roots this process is recording (execute inside run_sweep)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read(out) -> dict | None:
    try:
        state = json.loads(paths.run_state(Path(out)).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write(out: Path, state: dict) -> None:
    from engine.atomic import write_json
    with contextlib.suppress(OSError, EngineError, ValueError):
        write_json(paths.run_state(out), state)


def planned(out, *, run_ids, to_train, copies, alices, datasets: dict) -> None:
    """Record the plan of the invocation in progress (after `recording` began it)."""
    out = Path(out)
    state = read(out) or {}
    state.update(phase="training", run_ids=list(run_ids), to_train=list(to_train),
                 copies=list(copies), alices=list(alices),
                 datasets={k: str(v) for k, v in datasets.items()})
    _write(out, state)


@contextlib.contextmanager
def recording(out) -> Iterator[None]:
    """Begin a state file for `out` and end it with the block's outcome; nested uses (execute
    inside run_sweep) record nothing more."""
    out = Path(out)
    key = str(out.resolve())
    if key in _active:
        yield
        return
    _active.add(key)
    _write(out, {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now(),
                 "phase": "datasets"})
    outcome, error = "finished", None
    try:
        yield
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    except BaseException as exc:
        outcome, error = "failed", " ".join(str(exc).split())[:500] or type(exc).__name__
        raise
    finally:
        _active.discard(key)
        state = read(out) or {}
        state.update(ended_at=_now(), outcome=outcome, error=error)
        _write(out, state)
