"""Label statistics recorded in a dataset's manifest: how correlated Alice's and Bob's labels are."""
from __future__ import annotations

import numpy as np


def contingency(alice: np.ndarray, bob: np.ndarray, n_alice: int, n_bob: int) -> np.ndarray:
    return np.bincount(alice * n_bob + bob, minlength=n_alice * n_bob).reshape(n_alice, n_bob)


def cramers_v(table: np.ndarray, corrected: bool = False) -> float:
    """Cramer's V of a contingency table (Cramer 1946). With `corrected`, Bergsma's (2013) bias
    correction, which removes most of the upward bias of the plain estimate at small n
    (e.g. ~0.037 for independent 10x10 labels at n = 60000)."""
    table = table[table.sum(1) > 0][:, table.sum(0) > 0].astype(np.float64)
    n = table.sum()
    r, k = table.shape
    if n <= 1 or min(r, k) < 2:
        return float("nan")
    expected = np.outer(table.sum(1), table.sum(0)) / n
    phi2 = float(((table - expected) ** 2 / expected).sum() / n)
    if not corrected:
        return float(np.sqrt(phi2 / (min(r, k) - 1)))
    phi2 = max(0.0, phi2 - (k - 1) * (r - 1) / (n - 1))
    r_c = r - (r - 1) ** 2 / (n - 1)
    k_c = k - (k - 1) ** 2 / (n - 1)
    return float(np.sqrt(phi2 / min(k_c - 1, r_c - 1)))


def label_stats(alice: np.ndarray, bob: np.ndarray, n_alice: int, n_bob: int, beta: float) -> dict:
    """Histograms, realised P(b = pi(a)) with pi(a) = a mod C_bob, and Cramer's V."""
    table = contingency(alice, bob, n_alice, n_bob)
    return {
        "alice_histogram": table.sum(1).tolist(),
        "bob_histogram": table.sum(0).tolist(),
        "p_b_eq_pi_a": float(np.mean(bob == alice % n_bob)) if len(alice) else float("nan"),
        "expected_p_b_eq_pi_a": beta + (1 - beta) / n_bob,
        "cramers_v": cramers_v(table),
        "cramers_v_corrected": cramers_v(table, corrected=True),
    }
