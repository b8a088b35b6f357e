"""Loss-landscape probes: performance barriers between two solutions, and module criticality.

Sources: B. Neyshabur, H. Sedghi, C. Zhang, "What is being transferred in transfer learning?"
(NeurIPS 2020), Sec. 3.3 (performance barriers) and Sec. 3.5 (module criticality), which takes the
measure from N. Chatterji, B. Neyshabur, H. Sedghi, "The intriguing role of module criticality in
the generalization of deep networks" (ICLR 2020), eq. 2.

Layers are the `LayeredNet` blocks, reported 1..L as in `engine.train.freeze`. States are whole
`model.state_dict()`s (e.g. from `checkpoint.load_checkpoint`); every function copies the states it
is given before loading anything into the model (a `model.state_dict()` shares storage with the
model, so without the copy the first load would overwrite that end point), and restores the model's
own state before returning. Evaluation is `train.evaluate` (eval mode: BatchNorm uses its running
statistics).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from engine.errors import EngineError
from engine.train.models import LayeredNet
from engine.train.device import DeviceData
from engine.train.trainer import evaluate


def snapshot(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A copy of `state` that shares no storage with any model (safe to use as an end point)."""
    return {k: v.detach().clone() for k, v in state.items()}


def _blend(a: Tensor, b: Tensor, t: float) -> Tensor:
    """(1 - t) a + t b for floating tensors; otherwise (BatchNorm's num_batches_tracked) the nearer
    end point's value, so t = 0 and t = 1 give a and b exactly."""
    if not torch.is_floating_point(a):
        return a if t < 0.5 else b
    return torch.lerp(a, b.to(a.device, a.dtype), float(t))


def interpolate_state(state_a: dict[str, Tensor], state_b: dict[str, Tensor],
                      t: float) -> dict[str, Tensor]:
    """The point (1 - t) a + t b on the straight line between two states, for every floating tensor:
    parameters and buffers alike, so BatchNorm's running mean and variance are interpolated too
    (not re-estimated for the interpolated weights). Integer tensors come from the nearer end."""
    if state_a.keys() != state_b.keys():
        raise EngineError("the two states hold different tensors; were they saved from the same "
                          "architecture?")
    return {k: _blend(state_a[k], state_b[k], t) for k in state_a}


def barrier_height(losses) -> float:
    """max_t [loss(t) - ((1 - t) loss(0) + t loss(1))] for losses at evenly spaced t in [0, 1]:
    how far the path rises above the chord between its end points (Neyshabur et al. Sec. 3.3).
    Never negative (the end points give 0); 0 for a path that is convex or flat."""
    values = np.asarray(losses, dtype=np.float64)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError("need the losses at two or more evenly spaced points")
    t = np.linspace(0.0, 1.0, len(values))
    return float(np.max(values - ((1 - t) * values[0] + t * values[-1])))


def interpolate(model: LayeredNet, state_a: dict[str, Tensor], state_b: dict[str, Tensor],
                data: DeviceData, label: str, k: int = 11, batch_size: int = 1024,
                precision: str | None = None) -> dict:
    """Accuracy and mean cross-entropy of `model` at `k` evenly spaced points t = 0 .. 1 on the
    straight line between `state_a` (t = 0) and `state_b` (t = 1); see `interpolate_state`.

    Returns numpy arrays `t`, `acc`, `loss`, `error` (1 - acc) and floats `loss_barrier` and
    `error_barrier` (`barrier_height` of each curve). `precision`: the runs' (engine.spec
    .PRECISIONS), so the end points give their stored accuracies.
    """
    if k < 2:
        raise EngineError(f"k must be at least 2 (the two end points), got {k}")
    saved = snapshot(model.state_dict())
    state_a, state_b = snapshot(state_a), snapshot(state_b)
    ts = np.linspace(0.0, 1.0, k)
    acc, loss = np.empty(k), np.empty(k)
    try:
        for i, t in enumerate(ts):
            model.load_state_dict(interpolate_state(state_a, state_b, t))
            acc[i], loss[i] = evaluate(model, data, label, batch_size, precision=precision)
    finally:
        model.load_state_dict(saved)
    return {"t": ts, "acc": acc, "loss": loss, "error": 1 - acc,
            "loss_barrier": barrier_height(loss), "error_barrier": barrier_height(1 - acc)}


def _layer_tensors(model: LayeredNet, i: int, state: dict[str, Tensor]) -> dict[str, Tensor]:
    prefix = f"layers.{i}."
    out = {}
    for name in model.layers[i].state_dict():
        if prefix + name not in state:
            raise EngineError(f"the state lacks {prefix + name!r}; was it saved from this "
                              "architecture?")
        out[name] = state[prefix + name]
    return out


def module_criticality(model: LayeredNet, state_init: dict[str, Tensor],
                       state_final: dict[str, Tensor], data: DeviceData, label: str,
                       alphas, sigmas, threshold: float, n_noise: int = 3, seed: int = 0,
                       batch_size: int = 1024, precision: str | None = None) -> dict:
    """Module criticality (Chatterji et al. eq. 2) of each layer, on a grid of (alpha, sigma),
    e.g. alphas = np.linspace(0, 1, 11), sigmas = (0, 0.05, 0.1, 0.2), threshold = 0.05.

    For layer i, with every other layer at its final value:
        theta_i = (1 - alpha) theta_final + alpha theta_init + u,  u ~ N(0, s^2 I),
        s = sigma * ||theta_final_i|| / sqrt(k_i)
    alpha is how far the layer is rewound towards its initial value (0: trained, 1: initial). The
    noise convention: its expected norm is sigma times the norm of the layer's final weights (s is
    sigma times their root-mean-square entry). theta_i is the layer's parameters (weights, biases,
    BatchNorm scale and shift), k_i their count; BatchNorm running statistics are interpolated the
    same way and get no noise.

    `error[i, a, s]` is the 0-1 error on `data` (pass the training set: the paper's measure is
    training error), averaged over `n_noise` draws of u (one draw when sigma = 0). A cell is
    feasible when its error is <= `threshold`. The criticality of layer i is the paper's
        mu_i = min over feasible cells of (1 - alpha)^2 ||theta_final_i - theta_init_i||^2 / s^2,
    i.e. the squared distance from the initial value that the layer must keep, in units of the
    noise it tolerates there ((1 - alpha) is the paper's alpha). mu_i = 0 when the layer can be
    rewound all the way (alpha = 1) and still meet the threshold: it is not critical. A cell with
    s = 0 and alpha < 1 counts as infinite; no feasible cell gives inf.

    Returns `layers` (1..L), `alphas`, `sigmas`, `threshold`, `error` [L, n_alpha, n_sigma],
    `criticality` [L], `max_alpha` [L, n_sigma] (the largest feasible alpha per sigma, nan if none),
    `distance` [L] (||theta_final_i - theta_init_i||) and `noise_std` [L, n_sigma] (s).
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if alphas.ndim != 1 or len(alphas) == 0 or (alphas < 0).any() or (alphas > 1).any():
        raise EngineError("alphas must be a non-empty list of numbers in [0, 1]")
    if sigmas.ndim != 1 or len(sigmas) == 0 or (sigmas < 0).any():
        raise EngineError("sigmas must be a non-empty list of non-negative numbers")
    if not 0 <= threshold <= 1 or n_noise < 1:
        raise EngineError(f"need 0 <= threshold <= 1 and n_noise >= 1, got {threshold}, {n_noise}")

    n_layers = model.n_layers
    error = np.zeros((n_layers, len(alphas), len(sigmas)))
    distance, noise_std = np.zeros(n_layers), np.zeros((n_layers, len(sigmas)))
    gen = torch.Generator().manual_seed(int(seed))  # noise drawn on the CPU: same on every device
    saved = snapshot(model.state_dict())
    state_init, state_final = snapshot(state_init), snapshot(state_final)
    try:
        model.load_state_dict(state_final)
        for i, layer in enumerate(model.layers):
            init = _layer_tensors(model, i, state_init)
            final = _layer_tensors(model, i, state_final)
            params = [n for n, _ in layer.named_parameters()]
            k = sum(final[n].numel() for n in params)
            norm = math.sqrt(sum(float(final[n].double().square().sum()) for n in params))
            distance[i] = math.sqrt(sum(float((final[n].double() - init[n].double()).square().sum())
                                        for n in params))
            noise_std[i] = sigmas * norm / math.sqrt(max(k, 1))
            for a, alpha in enumerate(alphas):
                rewound = {n: _blend(final[n], init[n], alpha) for n in final}
                for s, std in enumerate(noise_std[i]):
                    draws = 1 if std == 0 else n_noise
                    for _ in range(draws):
                        noisy = {n: v + std * torch.randn(v.shape, generator=gen).to(v)
                                 if n in params else v for n, v in rewound.items()}
                        layer.load_state_dict(noisy)
                        acc, _ = evaluate(model, data, label, batch_size,
                                          precision=precision)
                        error[i, a, s] += (1 - acc) / draws
            layer.load_state_dict(final)
    finally:
        model.load_state_dict(saved)

    feasible = error <= threshold
    keep = (1 - alphas)[None, :, None] * distance[:, None, None]  # distance kept from init
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(keep == 0, 0.0, keep ** 2 / noise_std[:, None, :] ** 2)
    criticality = np.where(feasible, ratio, np.inf).min(axis=(1, 2))
    max_alpha = np.where(feasible, alphas[None, :, None], -np.inf).max(axis=1)
    max_alpha[np.isinf(max_alpha)] = np.nan
    return {"layers": list(range(1, n_layers + 1)), "alphas": alphas, "sigmas": sigmas,
            "threshold": float(threshold), "error": error, "criticality": criticality,
            "max_alpha": max_alpha, "distance": distance, "noise_std": noise_std}
