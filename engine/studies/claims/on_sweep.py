"""The claims one sweep's own runs can test, judged by `engine reproduce`'s rule
(engine.studies.claims.stats): `engine report` (and so `make demo`) states these verdicts
instead of describing the curves. Only unshuffled datasets are read; the Holm correction runs
over the claims judged here.
"""
from __future__ import annotations

import pandas as pd

from engine.studies.claims import mohamud_brink as mb
from engine.studies.claims import registry, stats


def _effects(df: pd.DataFrame) -> dict[str, dict]:
    """Per claim id, its per-seed effects where the sweep has what the claim reads."""
    present = set(df["mode"])
    found = {}
    if df["beta"].nunique() > 1 and present & set(mb.TRANSFER):
        found["mb-monotone-beta"] = mb.monotone_effects(df)[0]
        if "reinit" in present:
            found["mb-shallow-when-uncorrelated"] = mb.shallow_effects(df)
    if (df["beta"] == 0).any():
        if "finetune" in present:
            found["mb-above-chance"] = mb.above_chance_effects(df, "finetune")
        if "random-frozen" in present:
            found["mb-chance-from-architecture"] = mb.above_chance_effects(df, "random-frozen")
    return {k: v for k, v in found.items() if v}


def verdicts(df: pd.DataFrame) -> list[dict]:
    """One row per claim this sweep tests: id, sentence, effect, interval, seeds, verdict."""
    df = df[df["block_shuffle"] == 0]
    effects = _effects(df)
    if not effects:
        return []
    claims = registry()
    judged = stats.judge({k: [e[s] for s in sorted(e)] for k, e in effects.items()},
                         {k: claims[k].margin for k in effects})
    return [{"claim": k, "sentence": claims[k].sentence, "effect": v.effect, "ci_low": v.ci_low,
             "ci_high": v.ci_high, "seeds": v.seeds, "verdict": v.verdict,
             "seeds_needed": v.seeds_needed, "measures": claims[k].effect}
            for k, v in judged.items()]


def lines(df: pd.DataFrame) -> list[str]:
    """The verdicts as sentences for summary.md and report.html."""
    out = []
    for r in verdicts(df):
        ci = ("no interval (one seed)" if r["seeds"] < 2
              else f"95% interval [{r['ci_low']:.3g}, {r['ci_high']:.3g}]")
        needed = "" if r["seeds_needed"] is None else f"; {r['seeds_needed']} seeds would decide it"
        out.append(f"{r['claim']} ({r['sentence']}): {r['verdict']}; {r['measures']} = "
                   f"{r['effect']:.3g}, {ci}, {r['seeds']} seeds{needed}")
    return out
