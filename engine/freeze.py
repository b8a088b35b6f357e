"""Setting up Bob's network from Alice's: which layers come from Alice, are fresh, or train.

Layers are numbered 1..L as in the experiments; `retrain_from` = l. Every function here is a pure
function of (model, Alice's state dict, l, mode, seed) and touches nothing else, so a batched
many-fine-tunes step can reuse `layer_plan` directly.

    mode           layers 1..l-1            layers l..L-1            head (layer L)
    finetune       Alice's, frozen          Alice's, trained         fresh, trained
    reinit         Alice's, frozen          fresh, trained           fresh, trained
    scratch        fresh, trained           fresh, trained           fresh, trained
    random-frozen  fresh, frozen            fresh, trained           fresh, trained

"Fresh" layer i under seed s is always the same draw (`models.layer_seed(s, i)`), whatever the mode
and l, so runs that differ only in mode or l share their fresh weights. Frozen layers have
requires_grad False and must run in eval mode (`set_train_mode`), so BatchNorm statistics stay put.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from engine.errors import EngineError
from engine.models import LayeredNet, layer_seed, reset_parameters

MODES = ("finetune", "reinit", "scratch", "random-frozen")


class LayerPlan(NamedTuple):
    source: str      # "alice" or "fresh"
    trainable: bool


def check_args(n_layers: int, retrain_from: int, mode: str) -> None:
    if mode not in MODES:
        raise EngineError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if not 1 <= retrain_from <= n_layers:
        raise EngineError(f"retrain_from must be in 1..{n_layers} for this network "
                          f"(L = {n_layers} layers), got {retrain_from}")


def layer_plan(n_layers: int, retrain_from: int, mode: str) -> list[LayerPlan]:
    """Where each layer's starting weights come from and whether it trains, layer 1 first."""
    check_args(n_layers, retrain_from, mode)
    plan = []
    for i in range(n_layers):  # 0-based: layer i + 1
        below = i < retrain_from - 1
        is_head = i == n_layers - 1
        if mode == "scratch":
            plan.append(LayerPlan("fresh", True))
        elif mode == "random-frozen":
            plan.append(LayerPlan("fresh", not below))
        elif mode == "reinit":
            plan.append(LayerPlan("alice", False) if below else LayerPlan("fresh", True))
        else:  # finetune
            plan.append(LayerPlan("fresh" if is_head else "alice", not below))
    return plan


def frozen_prefix(n_layers: int, retrain_from: int, mode: str) -> int:
    """How many leading layers are frozen (0 for scratch): the trainer's `frozen_upto`."""
    plan = layer_plan(n_layers, retrain_from, mode)
    return next((i for i, p in enumerate(plan) if p.trainable), n_layers)


def load_layer(model: LayeredNet, index: int, state: dict[str, Tensor]) -> None:
    """Copy layer `index` (0-based) of `state` (a whole `model.state_dict()`) into `model`."""
    prefix = f"layers.{index}."
    with torch.no_grad():
        for name, t in model.layers[index].state_dict().items():
            key = prefix + name
            if key not in state:
                raise EngineError(f"Alice's weights lack {key!r}; were they trained with this "
                                  f"architecture ({model.spec.get('arch')})?")
            src = state[key]
            if tuple(src.shape) != tuple(t.shape):
                raise EngineError(f"Alice's {key!r} has shape {tuple(src.shape)}, this network "
                                  f"needs {tuple(t.shape)}; were they trained on the same inputs?")
            t.copy_(src)


def prepare_bob(model: LayeredNet, alice_state: dict[str, Tensor] | None, *, retrain_from: int,
                mode: str, seed: int) -> list[nn.Parameter]:
    """Set every layer of `model` in place per `layer_plan`; return the parameters to train.

    Every layer is overwritten (from Alice or freshly drawn), so a model reused across runs carries
    nothing over. Alice's head is never read: Bob's task may have a different number of classes.
    """
    plan = layer_plan(model.n_layers, retrain_from, mode)
    if alice_state is None and any(p.source == "alice" for p in plan):
        raise EngineError(f"mode {mode!r} starts from Alice's weights, but none were given")
    trainable: list[nn.Parameter] = []
    for i, (layer, p) in enumerate(zip(model.layers, plan)):
        if p.source == "alice":
            load_layer(model, i, alice_state)
        else:
            reset_parameters(layer, layer_seed(seed, i))
        for param in layer.parameters():
            param.requires_grad_(p.trainable)
            if p.trainable:
                trainable.append(param)
    return trainable


def set_train_mode(model: LayeredNet, frozen_upto: int) -> None:
    """Train mode for the model except its first `frozen_upto` layers, which stay in eval mode."""
    model.train()
    for layer in model.layers[:frozen_upto]:
        layer.eval()
