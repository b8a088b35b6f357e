"""What `engine reproduce` writes: DIR/verdicts.json (for scripts and CI), DIR/report.md and a
self-contained DIR/report.html (through engine.pages): one table first (claim, paper, effect with
its 95% interval, seeds, verdict, seeds needed), then a section per claim with its figure, the
rule that judged it and the numbers behind it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from engine import pages, paths
from engine.atomic import write_bytes
from engine.studies.claims.base import Claim, Evidence, Scale
from engine.studies.claims.stats import ALPHA, Verdict

NUMBERS_SHOWN = 60  # rows of a claim's table in the report (all are in DIR/claims/<id>.json)


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if x is not None and math.isfinite(x) else "n/a"


def _effect_text(v: Verdict) -> str:
    if not math.isfinite(v.effect):
        return "n/a"
    if not math.isfinite(v.ci_low):
        return f"{_fmt(v.effect)} (no interval)"
    return f"{_fmt(v.effect)} [{_fmt(v.ci_low)}, {_fmt(v.ci_high)}]"


def _needed(v: Verdict) -> str:
    if v.seeds_needed is None:
        return "unknown (one seed)" if v.seeds < 2 else "more than 1000"
    return str(v.seeds_needed)


def records(out: Path, claims: list[Claim], evidence: dict[str, Evidence],
            verdicts: dict[str, Verdict]) -> list[dict]:
    """verdicts.json: one object per claim run; figure paths are relative to DIR."""
    rows = []
    for c in claims:
        v, ev = verdicts[c.id], evidence[c.id]
        figure = None
        if ev.figure and Path(ev.figure).is_file():
            p = Path(ev.figure)
            figure = str(p.relative_to(out)) if p.is_relative_to(out) else str(p)
        rows.append({"id": c.id, "paper": c.paper, "sentence": c.sentence, "effect": _num(v.effect),
                     "ci_low": _num(v.ci_low), "ci_high": _num(v.ci_high), "seeds": v.seeds,
                     "verdict": v.verdict, "seeds_needed": v.seeds_needed, "figure": figure,
                     "margin": c.margin, "effect_measures": c.effect, "unit": ev.unit,
                     "summary": ev.summary, "p_support": _num(v.p_support),
                     "p_contradict": _num(v.p_contradict)})
    return rows


def table_rows(claims: list[Claim], verdicts: dict[str, Verdict]) -> list[dict]:
    return [{"claim": c.id, "paper": c.paper, "effect [95% interval]": _effect_text(verdicts[c.id]),
             "seeds": verdicts[c.id].seeds, "verdict": verdicts[c.id].verdict,
             "seeds needed": _needed(verdicts[c.id])} for c in claims]


def _markdown_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    return ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"] + \
        ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]


def _rule_text(scale: Scale, n: int) -> str:
    return (f"Scale {scale.name}, {scale.seeds} seeds. Each effect is the mean over seeds of a "
            f"per-seed effect oriented so that positive is what the paper claims, with its 95% "
            f"Student-t interval. Supported: the one-sided t-test of 'effect <= 0' rejects at "
            f"{ALPHA:g} after Holm's correction over the {n} claims judged together. Contradicted: "
            f"the one-sided test of 'effect >= margin' (the smallest effect that would count as "
            f"the claim holding) rejects likewise. Otherwise, and always with one seed, "
            f"inconclusive. Seeds needed: the seeds at which a test at {ALPHA:g}/{n} has 80% power "
            f"to decide, at the observed effect and spread.")


def write(out: Path, claims: list[Claim], scale: Scale, evidence: dict[str, Evidence],
          verdicts: dict[str, Verdict]) -> Path:
    """verdicts.json, report.md and report.html under `out`; returns report.html's path."""
    recs = records(out, claims, evidence, verdicts)
    write_bytes(paths.verdicts_file(out), (json.dumps(recs, indent=1) + "\n").encode())
    summary = table_rows(claims, verdicts)
    md = [f"# Claims of the papers, reproduced (scale {scale.name})", "",
          _rule_text(scale, len(claims)), ""] + _markdown_table(summary) + [""]
    sections: list = [pages.Text(_rule_text(scale, len(claims))),
                      pages.Table(summary, caption="verdicts")]
    for c, r in zip(claims, recs):
        ev = evidence[c.id]
        facts = [f"Paper: {c.paper}", f"Claim: {c.sentence}", f"Effect: {c.effect} "
                 f"(margin {c.margin:g})", f"Rule: {c.rule}", f"Found: {ev.summary}",
                 f"Verdict: {r['verdict']}; effect {_effect_text(verdicts[c.id])} over "
                 f"{r['seeds']} {ev.unit}s; Holm-adjusted p: {_fmt(r['p_support'])} (effect <= 0), "
                 f"{_fmt(r['p_contradict'])} (effect >= margin); seeds needed "
                 f"{_needed(verdicts[c.id])}",
                 f"Per-{ev.unit} effects: {', '.join(_fmt(e) for e in ev.effects) or 'none'}"]
        if r["verdict"] == "contradicted" and (r["p_support"] or 1) < ALPHA:
            facts.append("The effect is real (above zero) but smaller than the margin, the "
                         "smallest effect the claim implies: contradicted as to its size.")
        md += [f"## {c.id}", ""] + [f"- {f}" for f in facts] + [""]
        sections += [pages.Heading(c.id), pages.Text(facts)]
        if r["figure"]:
            md += [f"![{c.id}]({r['figure']})", ""]
            sections.append(pages.Image(out / r["figure"], caption=c.sentence))
        if ev.numbers:
            shown = list(ev.numbers)[:NUMBERS_SHOWN]
            sections.append(pages.Table(shown, caption=f"the numbers behind it ({len(shown)} of "
                                        f"{len(ev.numbers)} rows; all in claims/{c.id}.json)"))
    write_bytes(out / "report.md", "\n".join(md).encode())
    return pages.write_page(paths.report_page(out), "Claims of the papers, reproduced", sections)
