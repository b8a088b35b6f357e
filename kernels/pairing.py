"""Pairing: which right image goes with each left image, with label correlation `beta`.

For sample i the left image is `left_order[i]` (a seeded permutation of the left split, cycled) and
its label is Alice's label `a`. With probability `beta` Bob's class is `pi(a) = a mod C_right`,
otherwise it is uniform over the C_right classes; the right image is uniform among the right split's
images of Bob's class. Hence P(b = pi(a)) = beta + (1 - beta) / C_right, and for equal class counts
Cramer's V between a and b equals beta.

All randomness is drawn in NumPy (`draw_pairing`) and handed to the kernels as uniforms in [0, 1),
so the Numba kernel and its NumPy twin compute the same function bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit


@dataclass(frozen=True)
class PairingDraws:
    left_order: np.ndarray  # int64 [n], indices into the left split
    coin: np.ndarray  # float64 [n], U[0,1): b = pi(a) when coin < beta
    u_class: np.ndarray  # float64 [n], U[0,1): Bob's class when the coin says "uniform"
    u_pick: np.ndarray  # float64 [n], U[0,1): which image of Bob's class


def draw_pairing(rng: np.random.Generator, n_left: int, n: int) -> PairingDraws:
    cycles = -(-n // n_left) if n else 0
    order = np.concatenate([rng.permutation(n_left) for _ in range(cycles)]) if cycles else np.zeros(0)
    return PairingDraws(
        left_order=order[:n].astype(np.int64),
        coin=rng.random(n),
        u_class=rng.random(n),
        u_pick=rng.random(n),
    )


def class_index(labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR grouping of a split by class: images of class c are members[offsets[c]:offsets[c+1]],
    in ascending index order."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_classes)
    offsets = np.zeros(n_classes + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    members = np.argsort(labels, kind="stable").astype(np.int64)
    return offsets, members


@njit(cache=True, nogil=True)
def pair_numba(left_labels, left_order, coin, u_class, u_pick, beta, offsets, members,
               out_alice, out_bob, out_right):
    n_classes = offsets.shape[0] - 1
    for i in range(left_order.shape[0]):
        a = left_labels[left_order[i]]
        if coin[i] < beta:
            b = a % n_classes
        else:
            b = min(np.int64(u_class[i] * n_classes), n_classes - 1)
        start = offsets[b]
        count = offsets[b + 1] - start
        j = min(np.int64(u_pick[i] * count), count - 1)
        out_alice[i] = a
        out_bob[i] = b
        out_right[i] = members[start + j]


def pair_numpy(left_labels, left_order, coin, u_class, u_pick, beta, offsets, members):
    """Reference twin of `pair_numba`; returns (alice, bob, right_index)."""
    n_classes = offsets.shape[0] - 1
    a = np.asarray(left_labels, dtype=np.int64)[left_order]
    uniform = np.minimum((u_class * n_classes).astype(np.int64), n_classes - 1)
    b = np.where(coin < beta, a % n_classes, uniform)
    start = offsets[b]
    count = offsets[b + 1] - start
    j = np.minimum((u_pick * count).astype(np.int64), count - 1)
    return a, b, members[start + j]


def pair(left_labels: np.ndarray, draws: PairingDraws, beta: float, offsets: np.ndarray,
         members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the kernel; returns (alice_label, bob_label, right_index), each int64 [n].
    Every right class must have at least one image (the caller checks)."""
    n = draws.left_order.shape[0]
    alice = np.empty(n, np.int64)
    bob = np.empty(n, np.int64)
    right = np.empty(n, np.int64)
    pair_numba(np.ascontiguousarray(left_labels, dtype=np.int64), draws.left_order, draws.coin,
               draws.u_class, draws.u_pick, float(beta), offsets, members, alice, bob, right)
    return alice, bob, right
