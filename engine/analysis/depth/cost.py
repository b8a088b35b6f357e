"""Compute accounting for depth predictors and for the sweep they stand in for.

FLOPs are counted, not estimated from time: each layer's forward FLOPs per sample are measured once
with torch's FlopCounterMode on one input (a multiply-add counts 2), and every cost is built from
them and from the sizes of the dense linear algebra (formulas at each `count` call). Training one
sample through trained layers costs 3x their forward (forward + backward for activations and
weights; Kaplan et al. 2020's rule), a frozen layer costs its forward once per sample when its
output is cached (the sweep caches it whenever a run has two or more epochs, README "Trainer").
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

EIGH_FLOPS = 9.0  # FLOPs per d^3 of a symmetric eigendecomposition (Golub & Van Loan, ~9 d^3)


@dataclass
class Cost:
    wall_s: float = 0.0
    flops: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.wall_s + other.wall_s, self.flops + other.flops)


class Meter:
    """Wall time of a `with` block plus the FLOPs `count`ed inside it."""

    def __init__(self):
        self.cost = Cost()
        self._start = 0.0

    def count(self, flops: float) -> None:
        self.cost.flops += float(flops)

    def __enter__(self) -> "Meter":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.cost.wall_s += time.perf_counter() - self._start


def layer_flops(model, input_shape) -> list[float]:
    """Forward FLOPs per sample of each of `model`'s L layers, for (H, W, C) inputs."""
    from torch.utils.flop_counter import FlopCounterMode
    h, w, c = input_shape
    x = torch.zeros(1, c, h, w)
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for layer in model.layers:
            with FlopCounterMode(display=False) as counter:
                y = layer(x)
            # elementwise work (ReLU, BatchNorm) is left out: it is < 1% of a layer's matmuls
            out.append(float(counter.get_total_flops()))
            x = y
    model.train(was_training)
    return out


def run_flops(fwd: list[float], retrain_from: int, n_train: int, epochs: int,
              n_eval: int) -> float:
    """FLOPs of one fine-tune from depth `retrain_from` (1-based): the frozen layers' forward once
    per training sample (cached over epochs), 3x the trained layers' forward per sample and
    epoch, and a forward pass of all layers over `n_eval` evaluation samples."""
    frozen, trained = sum(fwd[:retrain_from - 1]), sum(fwd[retrain_from - 1:])
    once = frozen if epochs >= 2 else frozen * epochs
    return n_train * once + 3.0 * epochs * n_train * trained + n_eval * sum(fwd)


def sweep_flops(fwd: list[float], n_bob: int, epochs: int, n_test: int) -> float:
    """FLOPs of one group of the sweep: a fine-tune from every depth l = 1..L, each tested on
    the whole test split."""
    return sum(run_flops(fwd, l, n_bob, epochs, n_test) for l in range(1, len(fwd) + 1))


def gram_flops(n: int, d: int) -> float:
    """F^T F for F [n, d]: n d^2 (syrk, half of a gemm's 2 n d^2)."""
    return float(n) * d * d
