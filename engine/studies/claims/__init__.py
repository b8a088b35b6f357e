"""The papers' claims as data, for `engine reproduce` (engine.studies.claims.runner).

Each paper's module holds `CLAIMS`, a tuple of `Claim` values (engine.studies.claims.base); a new
claim is one more value there, a new paper one module and one line in PAPERS. The claims' ids are
unique across papers (checked by `registry`).
"""
from __future__ import annotations

from engine.errors import EngineError
from engine.studies.claims.base import Claim

PAPERS = (  # module names under engine.studies.claims, in report order
    "mohamud_brink", "mb_studies", "gerace", "mehra", "neyshabur",
)


def registry() -> dict[str, Claim]:
    """Every claim by id, in the papers' order."""
    import importlib
    out: dict[str, Claim] = {}
    for name in PAPERS:
        for claim in importlib.import_module(f"engine.studies.claims.{name}").CLAIMS:
            if claim.id in out:
                raise EngineError(f"claim id {claim.id!r} is defined twice")
            out[claim.id] = claim
    return out


def select(ids=None) -> list[Claim]:
    """The claims named by `ids` (all when empty), in registry order; one line for an unknown id."""
    claims = registry()
    if not ids:
        return list(claims.values())
    unknown = [i for i in ids if i not in claims]
    if unknown:
        raise EngineError(f"unknown claim {unknown[0]!r}; `engine reproduce --list` shows the "
                          f"claims (e.g. {', '.join(list(claims)[:3])})")
    wanted = set(ids)
    return [c for c in claims.values() if c.id in wanted]
