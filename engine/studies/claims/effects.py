"""Small helpers the claims share to turn tables into per-seed effects and Evidence rows."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from engine.errors import EngineError


def per_seed(table: pd.DataFrame, column: str, seeds) -> tuple[float, ...]:
    """Mean of `column` per seed in `seeds` (over archs or other rows), NaN for a seed with no
    finite value: one effect per seed, in the order of `seeds`."""
    out = []
    for s in seeds:
        v = (table.loc[table["seed"] == s, column].astype(float) if len(table)
             else pd.Series([], dtype=float))
        v = v[np.isfinite(v)]
        out.append(float(v.mean()) if len(v) else math.nan)
    return tuple(out)


def require(rows: pd.DataFrame, what: str) -> pd.DataFrame:
    """`rows`, or EngineError (the runner reports the claim as not evaluated) when it is empty."""
    if rows is None or len(rows) == 0:
        raise EngineError(f"no stored runs for {what}; run engine reproduce without --report-only "
                          "to train them")
    return rows


def rank_correlation(x, y) -> float:
    """Spearman's rho (average ranks; +inf ranks highest); 0 when `y` is constant (it orders
    nothing); NaN with fewer than two pairs, a NaN, or a constant `x`."""
    from scipy.stats import rankdata
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(y) < 2 or len(x) != len(y) or np.isnan(x).any() or np.isnan(y).any():
        return math.nan
    if np.all(x == x[0]):
        return math.nan
    if np.all(y == y[0]):
        return 0.0
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def plain(v):
    """`v` as a JSON-friendly value: int, float (infinities as "inf"/"-inf") or str."""
    if isinstance(v, (bool, np.bool_, int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else v
    return v if isinstance(v, str) else str(v)


def records(df: pd.DataFrame) -> tuple[dict, ...]:
    """The rows of `df` as plain dicts (Evidence.numbers)."""
    return tuple({k: plain(v) for k, v in r.items()} for r in df.to_dict("records"))
