"""Setting up Bob's network from Alice's: which layers come from Alice, are fresh, or train.

Layers are numbered 1..L as in the experiments; `retrain_from` = l. The plan (which layers come
from Alice, which are fresh, which train) is `engine.spec.layer_plan`, a pure function without
torch; this module applies it to a network. Every function here is a pure function of (model,
Alice's state dict, l, mode, seed) and touches nothing else.

"Fresh" layer i under seed s is always the same draw (`models.layer_seed(s, i)`), whatever the mode
and l, so runs that differ only in mode or l share their fresh weights. Frozen layers have
requires_grad False and must run in eval mode (`set_train_mode`), so BatchNorm statistics stay put.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.errors import EngineError
from engine.spec import MODES, LayerPlan, check_args, frozen_prefix, layer_plan  # noqa: F401 (re-exported)
from engine.train.models import LayeredNet, layer_seed, reset_parameters

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
