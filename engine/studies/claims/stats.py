"""Verdicts from effects: one rule for every claim (`engine reproduce`, the case study).

Each claim gives one effect per independent unit (a seed), oriented so that a positive effect is
what the paper claims, and a margin: the smallest effect that would count as the claim holding.
- The effect is the mean over units with its two-sided 95% Student-t interval (n - 1 degrees of
  freedom).
- *supported*: the one-sided t-test of "mean <= 0" rejects at 5% after Holm's step-down
  correction over the claims judged together (Holm 1979).
- *contradicted*: the one-sided t-test of "mean >= margin" rejects at 5% after Holm's correction
  over the same claims: the interval excludes the claimed effect (a reverse effect is the extreme
  case). Merely including zero is not enough.
- *inconclusive*: neither, and always with fewer than two units (one seed has no spread).
- *seeds needed*: the fewest units (2..1000) at which a one-sided t-test at the strictest level
  Holm applies (0.05 / number of claims) reaches 80% power (noncentral t) to decide the claim
  either way, taking the observed mean and standard deviation as the truth. None when the spread
  is unknown (one unit) or no count up to 1000 would do.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000
VERDICTS = ("supported", "contradicted", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    effect: float        # mean over units (NaN with none)
    ci_low: float        # 95% Student-t interval (NaN with fewer than 2 units)
    ci_high: float
    seeds: int           # units with a finite effect
    verdict: str
    seeds_needed: int | None
    p_support: float     # Holm-adjusted p of "mean <= 0"
    p_contradict: float  # Holm-adjusted p of "mean >= margin"

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(effects: Sequence[float]) -> np.ndarray:
    x = np.asarray(list(effects), dtype=float)
    return x[np.isfinite(x)]


def interval(effects: Sequence[float]) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the mean and its two-sided 95% t-interval over the finite effects."""
    from scipy.stats import t
    x = _finite(effects)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(t.ppf(1 - ALPHA / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def one_sided_p(effects: Sequence[float], null: float, greater: bool) -> float:
    """p of the one-sided t-test of H0: mean <= null (greater=True) or mean >= null (False); 1.0
    with fewer than two units. A zero spread gives 0 or 1 by which side the mean lies."""
    from scipy.stats import t
    x = _finite(effects)
    if x.size < 2:
        return 1.0
    d = (x.mean() - null) if greater else (null - x.mean())
    sd = float(x.std(ddof=1))
    if sd == 0 or not math.isfinite(sd):
        return 0.0 if d > 0 else 1.0
    return float(t.sf(d / (sd / math.sqrt(x.size)), x.size - 1))


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (each <= 1, monotone in the raw order)."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(order), 0.0, {}
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[k]))
        out[k] = running
    return out


def _power(n: int, d: float, alpha: float) -> float:
    from scipy.stats import nct, t
    df = n - 1
    return float(nct.sf(t.ppf(1 - alpha, df), df, d * math.sqrt(n)))


def seeds_needed(mean: float, sd: float, margin: float, n_claims: int = 1) -> int | None:
    """Units a decisive verdict needs at this mean and spread (module docstring)."""
    if not (math.isfinite(mean) and math.isfinite(sd)):
        return None
    distances = [d for d in (mean, margin - mean) if d > 0]  # to "supported", to "contradicted"
    if not distances:
        return None
    alpha = ALPHA / max(1, n_claims)
    d = max(distances) / sd if sd > 0 else math.inf
    if d > 50:  # two seeds have all the power there is (the noncentral t turns NaN far out)
        return 2
    lo, hi = 2, MAX_SEEDS
    if _power(hi, d, alpha) < POWER:
        return None
    while lo < hi:  # power rises with n
        mid = (lo + hi) // 2
        if _power(mid, d, alpha) >= POWER:
            hi = mid
        else:
            lo = mid + 1
    return lo


def judge(effects: Mapping[str, Sequence[float]], margins: Mapping[str, float]) -> dict[str, Verdict]:
    """The verdict of every claim judged together (Holm's correction runs over all of them)."""
    for k, m in margins.items():
        if not (math.isfinite(m) and m > 0):
            raise ValueError(f"claim {k}: margin must be a positive number, got {m!r}")
    p_s = holm({k: one_sided_p(e, 0.0, True) for k, e in effects.items()})
    p_c = holm({k: one_sided_p(e, margins[k], False) for k, e in effects.items()})
    out = {}
    for k, e in effects.items():
        mean, low, high, n = interval(e)
        x = _finite(e)
        sd = float(x.std(ddof=1)) if n > 1 else math.nan
        if n < 2:
            verdict = "inconclusive"
        elif p_c[k] < ALPHA:
            verdict = "contradicted"
        elif p_s[k] < ALPHA:
            verdict = "supported"
        else:
            verdict = "inconclusive"
        out[k] = Verdict(mean, low, high, n, verdict, seeds_needed(mean, sd, margins[k], len(effects)),
                         p_s[k], p_c[k])
    return out
