"""The tracked ratios across saved benchmark runs: `python -m bench.history` (`make bench-history`).

    python -m bench.history [--storage DIR] [--out DIR] [--last N]

Reads every pytest-benchmark JSON under the storage (default `$BENCH_STORAGE` or `.benchmarks`:
one file per `make bench` or `make bench-quick` run, written as bench/conftest.py describes) and
groups the tracked ratios by (ratio, workload, kind of machine): runs at other sizes or on another
kind of machine are never compared. Per group it prints the last N runs (date, commit, host,
value) and flags a run
- `UNDER FLOOR` when its value is under the floor it recorded (the project's goal), and
- `DROP` when its value fell from the previous run of its group by more than the ratio's spread:
  the larger of the range (max - min) of up to SPREAD_RUNS earlier runs of the group (when there
  are at least MIN_SPREAD_RUNS) and the spread the benchmark declared (a fraction of the
  previous value). With neither, a drop is not judged.
It writes one PNG per ratio (its value over the runs, labelled by commit; one line per machine
kind and workload; floors dashed) and index.html, a page with the tables and the PNGs embedded,
under --out (default out/bench-history). Exit status 2 with one line on bad input.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SPREAD_RUNS = 10  # earlier runs whose range estimates a group's run-to-run spread
MIN_SPREAD_RUNS = 3  # fewer earlier runs give no range worth trusting


class HistoryError(Exception):
    """Bad input: a storage that does not exist or a file that is not a benchmark run."""


@dataclass(frozen=True)
class Run:
    when: str  # ISO 8601, UTC, as pytest-benchmark writes it
    commit: str  # short id, "+" when the working tree had changes
    host: str
    kind: str
    path: Path


@dataclass
class Point:
    run: Run
    value: float
    floor: float
    ci_floor: float | None
    spread: float | None  # declared, a fraction of the value
    flags: list[str] = field(default_factory=list)


def _kind(machine: dict) -> str:
    """bench/conftest.py's `kind`; for runs saved without it, the CPU and its core count."""
    if machine.get("kind"):
        return machine["kind"]
    cpu = machine.get("cpu") or {}
    return f"{cpu.get('brand_raw', machine.get('processor', '?'))}, {cpu.get('count', '?')} cores"


def load(storage: Path) -> list[tuple[Run, dict]]:
    """(run, {(ratio, workload): entry}) per saved file, oldest first."""
    if not storage.is_dir():
        raise HistoryError(f"{storage}: no such directory (run `make bench` or `make bench-quick`)")
    runs = []
    for path in sorted(storage.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
            commit = data["commit_info"]
            run = Run(data["datetime"], commit["id"][:8] + ("+" if commit.get("dirty") else ""),
                      data["machine_info"].get("node", "?"), _kind(data["machine_info"]), path)
            ratios = {(name, e.get("workload", "")): e for b in data["benchmarks"]
                      for name, e in b.get("extra_info", {}).get("ratios", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise HistoryError(f"{path}: not a pytest-benchmark run ({type(e).__name__}: {e})")
        runs.append((run, ratios))
    runs.sort(key=lambda r: r[0].when)
    return runs


def groups(runs: list[tuple[Run, dict]]) -> dict[tuple[str, str, str], list[Point]]:
    """(ratio, workload, machine kind) -> its points, oldest first, flagged."""
    out: dict[tuple[str, str, str], list[Point]] = {}
    for run, ratios in runs:
        for (name, workload), e in ratios.items():
            out.setdefault((name, workload, run.kind), []).append(
                Point(run, float(e["value"]), e["floor"], e.get("ci_floor"), e.get("spread")))
    for points in out.values():
        flag(points)
    return out


def spread(earlier: list[Point]) -> float | None:
    """The spread a drop from earlier[-1] is judged against, in the ratio's units (see above)."""
    if not earlier:
        return None
    prev = earlier[-1]
    values = [p.value for p in earlier[-SPREAD_RUNS:]]
    seen = max(values) - min(values) if len(values) >= MIN_SPREAD_RUNS else None
    declared = prev.spread * prev.value if prev.spread is not None else None
    known = [s for s in (seen, declared) if s is not None]
    return max(known) if known else None


def flag(points: list[Point]) -> None:
    for i, p in enumerate(points):
        if p.value < p.floor:
            p.flags.append(f"UNDER FLOOR {p.floor:g}")
        s = spread(points[:i])
        if s is not None and points[i - 1].value - p.value > s:
            p.flags.append(f"DROP {points[i - 1].value - p.value:.2f} > spread {s:.2f}")


def report(grouped: dict, last: int) -> str:
    lines = []
    for (name, workload, kind), points in sorted(grouped.items()):
        p = points[-1]
        ci = f", CI floor {p.ci_floor:g}x" if p.ci_floor is not None else ""
        lines += [name, f"  machine: {kind}" + (f"; workload: {workload}" if workload else ""),
                  f"  floor {p.floor:g}x{ci}; {len(points)} runs, last {min(last, len(points))}:"]
        for p in points[-last:]:
            lines.append(f"  {p.run.when[:16].replace('T', ' ')}  {p.run.commit:9} "
                         f"{p.run.host:12} {p.value:7.2f}x  {'  '.join(p.flags)}".rstrip())
    return "\n".join(lines)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def plot(grouped: dict, out: Path) -> list[Path]:
    """One PNG per ratio: value per run (x: runs in time order, labelled by commit)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    for name in sorted({k[0] for k in grouped}):
        series = {k: v for k, v in grouped.items() if k[0] == name}
        runs = sorted({p.run for v in series.values() for p in v}, key=lambda r: r.when)
        x = {r: i for i, r in enumerate(runs)}
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(runs) + 2), 3.6))
        for (_, workload, kind), points in sorted(series.items()):
            label = kind + (f" ({workload})" if workload else "")
            line, = ax.plot([x[p.run] for p in points], [p.value for p in points], "o-",
                            label=label)
            ax.axhline(points[-1].floor, color=line.get_color(), ls="--", lw=1)
            if points[-1].ci_floor is not None:
                ax.axhline(points[-1].ci_floor, color=line.get_color(), ls=":", lw=1)
        ax.set_xticks(range(len(runs)), [r.commit for r in runs], rotation=60, fontsize=7)
        ax.set_ylabel("ratio (x)")
        ax.set_title(f"{name}\n(dashed: floor, dotted: CI floor)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{_slug(name)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files


def write_page(grouped: dict, pngs: list[Path], text: str, path: Path) -> None:
    """A self-contained page: the printed tables and every PNG inline."""
    images = "\n".join(
        f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}">' for p in pngs)
    flagged = sum(bool(p.flags) for v in grouped.values() for p in v)
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Benchmark history</title>
<style>body{{font-family:sans-serif;margin:2em}} pre{{background:#f6f6f6;padding:1em}}
img{{display:block;margin:1em 0;max-width:100%}}</style></head><body>
<h1>Tracked ratios</h1>
<p>{len(grouped)} series, {flagged} flagged runs. Generated by <code>python -m bench.history</code>.</p>
<pre>{html.escape(text)}</pre>
{images}
</body></html>
""")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n")[0])
    ap.add_argument("--storage", type=Path,
                    default=Path(os.environ.get("BENCH_STORAGE", ".benchmarks")))
    ap.add_argument("--out", type=Path, default=Path("out/bench-history"))
    ap.add_argument("--last", type=int, default=10, help="runs printed per series (default 10)")
    args = ap.parse_args(argv)
    try:
        if args.last < 1:
            raise HistoryError(f"--last {args.last}: must be at least 1")
        grouped = groups(load(args.storage))
    except HistoryError as e:
        print(f"bench.history: {e}", file=sys.stderr)
        return 2
    if not grouped:
        print(f"no tracked ratios in {args.storage}")
        return 0
    text = report(grouped, args.last)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    pngs = plot(grouped, args.out)
    write_page(grouped, pngs, text, args.out / "index.html")
    print(f"{len(pngs)} plots and index.html in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
