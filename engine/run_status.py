"""`engine status DIR [--json]`: where a sweep (or a case study) under DIR stands, while it runs
(from another terminal) or after it stopped. Read-only: it never takes DIR's lock, so a watcher
cannot delay or block the sweep.

Sources, all written by the driver: `sweep.json` or `study.json` (the spec), the driver's state
file (engine.sweep.state: the plan of the last invocation, its outcome), the results store (opened
read-only; engine.store), Alice checkpoints and dataset manifests (engine.paths); who holds the lock
comes from engine.locks.output_holder. Rates count the runs that trained (not copies) over the
last RATE_WINDOW_S seconds of the invocation; the ETA divides the runs still to train by that rate.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from engine import paths
from engine.errors import EngineError

RATE_WINDOW_S = 300.0  # runs per minute are measured over at most this many recent seconds


def _parse_time(text) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None


def _spec_line(out: Path) -> tuple[str, str]:
    """(kind, one-line description) of what DIR holds."""
    def load(path):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    study = load(paths.study_file(out))
    if isinstance(study, dict) and "options" in study:
        o = study["options"]
        return "case-study", (f"case study {study.get('study', '?')}: arch {o.get('arch')}, n_bob "
                              f"{','.join(map(str, o.get('n_bobs', [])))}, seeds "
                              f"{','.join(map(str, o.get('seeds', [])))}, image size "
                              f"{o.get('image_size')}, executor {o.get('executor')}")
    spec = load(paths.sweep_file(out))
    if isinstance(spec, dict) and "pair" in spec:
        def items(key, none="all"):
            v = spec.get(key)
            return none if v in (None, "all") else ",".join(none if x is None else f"{x:g}"
                                                            if isinstance(x, float) else str(x)
                                                            for x in v)
        bob = spec.get("bob") or {}
        return "sweep", (f"sweep {spec['pair']}: betas {items('betas')}, arch {items('archs')}, "
                         f"seeds {items('seeds')}, layers {items('layers')}, modes "
                         f"{items('modes', 'none')}, baselines {items('baselines', 'none')}, "
                         f"n_bob {items('n_bobs')}, epochs {bob.get('epochs')}, executor "
                         f"{spec.get('executor')}")
    return "unknown", "no sweep.json or study.json (not a sweep directory, or it has not started)"


def _stored_rows(out: Path) -> list[dict]:
    from engine.store import ResultsStore
    table = ResultsStore(out, read_only=True, log=None).table()
    return table[["run_id", "computed_by", "finished_at"]].to_dict("records")


def status(out) -> dict:
    """The status of the sweep or case study under `out`, as a plain dict (see README "Watching
    a sweep: engine status"). EngineError when `out` is not a directory."""
    from engine.locks import output_holder
    from engine.sweep import state as run_state
    out = Path(out)
    if not out.is_dir():
        raise EngineError(f"{out} is not a directory; give the --out of a sweep or case study")
    kind, line = _spec_line(out)
    state = run_state.read(out) or {}
    rows = _stored_rows(out) if (out / "results").is_dir() else []
    stored = {r["run_id"] for r in rows}
    planned = state.get("run_ids")
    if planned is None:  # a sweep from before state files: what the store holds
        planned = sorted(stored)
    planned_set = set(planned)
    total = len(planned)
    if not state and kind == "sweep":  # count the stored spec's runs (their IDs need datasets)
        from engine.sweep.plan import expand
        from engine.sweep.spec import SweepSpec
        try:
            total = max(total, len(expand(SweepSpec.from_dict(
                json.loads(paths.sweep_file(out).read_text())))))
        except (EngineError, TypeError, ValueError, OSError):
            pass
    to_train = [r for r in state.get("to_train", []) if r not in stored]
    copies = [r for r in state.get("copies", []) if r not in stored]
    alices = state.get("alices", [])
    alices_done = sum(paths.alice_checkpoint(out, a).is_file() for a in alices)
    datasets = state.get("datasets", {})
    built = sum(paths.manifest_file(Path(d)).is_file() for d in datasets.values())

    holder = output_holder(out)
    pid_running = False
    if holder is None and state and "ended_at" not in state:  # an unlocked driver (case study)
        import socket
        from engine.atomic import pid_alive
        pid_running = state.get("host") == socket.gethostname() and pid_alive(int(state["pid"]))
    running = holder is not None or pid_running
    if running and holder is None:
        holder = {k: state.get(k) for k in ("pid", "host")} | {"since": state.get("started_at")}

    now = datetime.now(timezone.utc)
    started = _parse_time(state.get("started_at"))
    since = now.timestamp() - RATE_WINDOW_S
    if started is not None:
        since = max(since, started.timestamp())
    window = now.timestamp() - since
    recent = 0
    for r in rows:
        t = _parse_time(r["finished_at"])
        if r["run_id"] in planned_set and not r["computed_by"] and t and t.timestamp() >= since:
            recent += 1
    rate = recent / window * 60 if (recent and window > 0) else (0.0 if running else None)
    eta = None
    if running and rate:
        eta = len(to_train) / rate * 60
    elif not running and not to_train and state.get("outcome") == "finished":
        eta = 0.0

    if running:
        phase = "running"
    elif not state:
        phase = "unknown"
    elif "ended_at" not in state:
        phase = "stopped"  # killed: no outcome recorded, lock free
    else:
        phase = state["outcome"]
    error = state.get("error")
    if phase == "stopped":
        error = "the process stopped without recording an outcome (killed?)"
    elif phase == "interrupted":
        error = "interrupted (Ctrl-C)"
    return {
        "dir": str(out), "kind": kind, "spec": line, "state": phase, "running": running,
        "holder": holder, "runs_total": total, "runs_done": len(planned_set & stored),
        "runs_to_train": len(to_train), "copies_to_record": len(copies),
        "alices_total": len(alices), "alices_done": alices_done,
        "datasets_total": len(datasets), "datasets_built": built,
        "runs_per_min": None if rate is None else round(rate, 3),
        "eta_s": None if eta is None else round(eta, 1),
        "started_at": state.get("started_at"), "ended_at": state.get("ended_at"),
        "last_error": error,
    }


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_status(s: dict) -> str:
    """`status(out)` for people, one fact per line."""
    lines = [s["spec"],
             f"runs: {s['runs_done']} of {s['runs_total']} done, {s['runs_to_train']} to train, "
             f"{s['copies_to_record']} copies to record",
             f"alices: {s['alices_done']} of {s['alices_total']} trained; datasets: "
             f"{s['datasets_built']} of {s['datasets_total']} built"]
    if s["runs_per_min"] is not None:
        eta = "unknown" if s["eta_s"] is None else _clock(s["eta_s"])
        lines.append(f"rate: {s['runs_per_min']:.2f} trained runs/min over the last "
                     f"{RATE_WINDOW_S / 60:g} min; ETA {eta}")
    if s["running"]:
        h = s["holder"] or {}
        lines.append(f"running: pid {h.get('pid', '?')} on {h.get('host', '?')} since "
                     f"{h.get('since', '?')}")
    else:
        ended = f" at {s['ended_at']}" if s["ended_at"] else ""
        lines.append(f"not running ({s['state']}{ended})")
    if s["last_error"]:
        lines.append(f"last error: {s['last_error']}")
    return "\n".join(lines)
