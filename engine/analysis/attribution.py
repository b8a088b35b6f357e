"""Which half of the side-by-side image a network looks at: input attribution mass per half.

The measurement is the one this project takes from Mohamud & Brink (2025): the share of a
network's absolute input attribution that falls on each half of the two-image input. Attribution
methods: gradient saliency (Simonyan et al. 2014), gradient x input (Shrikumar et al. 2016),
integrated gradients (Sundararajan et al. 2017, "Axiomatic attribution for deep networks").

Attributions are taken with respect to the normalised input the network sees (`DeviceData.inputs`),
for the logit of one class per sample, in eval mode. A pixel's attribution is the absolute value
summed over channels; a half's mass is the sum over its columns (from the dataset manifest:
`manifest["halves"][side]["columns"] = [first, end)`) divided by the sum over the whole image, so
the two shares add up to 1 unless some columns (padding between halves) belong to neither.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from engine.errors import EngineError
from engine.train.device import DeviceData

METHODS = ("saliency", "grad_x_input", "integrated_gradients")
SIDES = ("left", "right")


def half_columns(halves: dict) -> dict[str, tuple[int, int]]:
    """{"left": (c0, c1), "right": (c0, c1)}, column ranges [c0, c1), from `manifest["halves"]`,
    a whole manifest, or a plain {"left": [c0, c1], "right": [c0, c1]}."""
    halves = halves.get("halves", halves)
    out = {}
    for side in SIDES:
        if side not in halves:
            raise EngineError(f"no {side!r} half given; pass manifest['halves'] of a built dataset")
        cols = halves[side]["columns"] if isinstance(halves[side], dict) else halves[side]
        c0, c1 = int(cols[0]), int(cols[1])
        if not 0 <= c0 < c1:
            raise EngineError(f"the {side} half's columns must be [first, end) with first < end, "
                              f"got {list(cols)}")
        out[side] = (c0, c1)
    return out


def _target_gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """d logit_target / d x for each sample (samples do not interact in eval mode)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    return grad


def attributions(model: nn.Module, x: Tensor, target: Tensor, method: str = "saliency",
                 steps: int = 32) -> Tensor:
    """Signed per-input attributions [N, C, H, W] of logit `target` at normalised inputs `x`:

        saliency              d logit / d x
        grad_x_input          x * d logit / d x
        integrated_gradients  x * integral_0^1 d logit / d x (a x) da, baseline 0 (the training
                              mean image, in normalised units), trapezoid rule on `steps` intervals
    """
    if method == "saliency":
        return _target_gradient(model, x, target)
    if method == "grad_x_input":
        return x * _target_gradient(model, x, target)
    if method != "integrated_gradients":
        raise EngineError(f"unknown attribution method {method!r}; choose one of: "
                          f"{', '.join(METHODS)}")
    if steps < 1:
        raise EngineError(f"integrated gradients need steps >= 1, got {steps}")
    path_sum = torch.zeros_like(x)
    for k in range(steps + 1):
        weight = 0.5 if k in (0, steps) else 1.0  # trapezoid: half weight at both ends
        path_sum += weight * _target_gradient(model, x * (k / steps), target)
    return x * path_sum / steps


def attribution_mass(model: nn.Module, data: DeviceData, halves: dict,
                     method: str = "saliency", target: str = "pred", steps: int = 32,
                     batch_size: int = 256) -> dict:
    """Share of absolute attribution on the left and right half, per sample and averaged.

    `target` is "pred" (the class the model predicts for the sample) or a label name of `data`
    (e.g. "alice_label"): whose logit is attributed. Returns floats `left`, `right` (means over
    samples with any attribution at all), arrays `left_per_sample`, `right_per_sample` [N] (nan
    where a sample's attribution is exactly zero everywhere), and `method`, `target`, `n`.
    """
    cols = half_columns(halves)
    width = data.images.shape[3]
    for side, (c0, c1) in cols.items():
        if c1 > width:
            raise EngineError(f"the {side} half's columns end at {c1}, but the images are "
                              f"{width} wide; is this the manifest of this dataset?")
    if target != "pred" and target not in data.labels:
        raise EngineError(f"target must be 'pred' or a label of the data ({', '.join(data.labels)})"
                          f", got {target!r}")
    if method not in METHODS:
        raise EngineError(f"unknown attribution method {method!r}; choose one of: "
                          f"{', '.join(METHODS)}")
    was_training = model.training
    model.eval()
    shares = {side: [] for side in SIDES}
    try:
        for start in range(0, len(data), batch_size):
            idx = slice(start, start + batch_size)
            x = data.inputs(idx)
            if target == "pred":
                with torch.no_grad():
                    y = model(x).argmax(1)
            else:
                y = data.labels[target][idx]
            mass = attributions(model, x, y, method, steps).detach().abs().sum(dim=1)  # [N, H, W]
            per_column = mass.double().sum(dim=1)  # [N, W]
            total = per_column.sum(dim=1)
            for side, (c0, c1) in cols.items():
                share = per_column[:, c0:c1].sum(dim=1) / total  # nan where total is 0
                shares[side].append(share.cpu().numpy())
    finally:
        model.train(was_training)
    out = {"method": method, "target": target, "n": len(data)}
    for side in SIDES:
        per_sample = np.concatenate(shares[side])
        out[side] = float(np.nanmean(per_sample)) if np.isfinite(per_sample).any() else float("nan")
        out[f"{side}_per_sample"] = per_sample
    return out
