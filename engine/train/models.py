"""The networks Alice trains and Bob reuses, all as a `LayeredNet`: an ordered list of L blocks.

The block is the unit of freezing: Bob keeps blocks 1..l-1 and retrains blocks l..L. `layers[-1]`
is always the output head, a `Head` (an `nn.Linear` that may pool and flatten its input first).
Inputs are float NCHW, already normalised (the trainer does that on the device).
"""
from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

from engine.errors import EngineError


class Head(nn.Linear):
    """The output layer: optional global average pool, flatten, then Linear."""

    def __init__(self, in_features: int, out_features: int, *, pool: bool = False):
        super().__init__(in_features, out_features)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        if self.pool:
            x = x.mean(dim=(2, 3))
        return super().forward(x.flatten(1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pool={self.pool}"


class LayeredNet(nn.Module):
    """L blocks applied in order; `spec` holds the `build_model` arguments that rebuild it."""

    def __init__(self, layers: list[nn.Module], spec: dict):
        super().__init__()
        if not isinstance(layers[-1], Head):
            raise TypeError("the last layer of a LayeredNet must be a Head")
        self.layers = nn.ModuleList(layers)
        self.spec = dict(spec)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def head(self) -> Head:
        return self.layers[-1]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def activations(self, x: Tensor) -> list[Tensor]:
        """The output of each of the L layers, in order (the last is the logits)."""
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


# Architectures. Each builder returns the list of blocks; `build_model` wraps and initialises them.

def _mlp(shape: tuple[int, int, int], n_classes: int, depth: int | None, width: int | None,
         global_pool: bool) -> list[nn.Module]:
    if global_pool:
        raise EngineError("global_pool applies to the cnn only; the mlp flattens its input")
    h, w, c = shape
    depth = 4 if depth is None else depth
    width = 256 if width is None else width
    layers: list[nn.Module] = [nn.Sequential(nn.Flatten(), nn.Linear(h * w * c, width), nn.ReLU())]
    layers += [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth - 1)]
    return layers + [Head(width, n_classes)]


def _cnn(shape: tuple[int, int, int], n_classes: int, depth: int | None, width: int | None,
         global_pool: bool) -> list[nn.Module]:
    h, w, c = shape
    depth = 4 if depth is None else depth
    width = 32 if width is None else width
    layers: list[nn.Module] = []
    channels = c
    for i in range(depth):
        out = width * 2 ** ((i + 1) // 2)  # width x 1, 2, 2, 4, 4, ...: 32, 64, 64, 128 by default
        stride = 2 if i % 2 == 1 and min(h, w) >= 4 else 1
        layers.append(nn.Sequential(
            nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(),
        ))
        channels = out
        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
    # No pooling by default: pooling would mix the left (Alice's) and right (Bob's) halves.
    in_features = channels if global_pool else channels * h * w
    return layers + [Head(in_features, n_classes, pool=global_pool)]


def _resnet18(shape: tuple[int, int, int], n_classes: int, depth: int | None, width: int | None,
              global_pool: bool) -> list[nn.Module]:
    if depth is not None or width is not None:
        raise EngineError("resnet18 has a fixed depth and width; drop --depth/--width")
    net = torchvision.models.resnet18(weights=None)
    # Small-input stem (as for CIFAR): 3x3 stride-1 conv and no max-pool, so 28x56 stays 28x56.
    conv1 = nn.Conv2d(shape[2], 64, 3, stride=1, padding=1, bias=False)
    stem = nn.Sequential(conv1, net.bn1, net.relu)
    # torchvision's head is avgpool + flatten + fc; it always pools (global_pool is implied).
    return [stem, net.layer1, net.layer2, net.layer3, net.layer4, Head(512, n_classes, pool=True)]


ARCHS: dict[str, Callable[..., list[nn.Module]]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet18": _resnet18,
}


def build_model(arch: str, input_shape: tuple[int, int, int], n_classes: int, *,
                depth: int | None = None, width: int | None = None,
                global_pool: bool = False) -> LayeredNet:
    """A freshly initialised network (drawn from torch's global RNG) for (H, W, C) inputs."""
    if arch not in ARCHS:
        raise EngineError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise EngineError(f"input shape must be three positive sizes (H, W, C), "
                          f"got {input_shape!r}")
    if n_classes < 1:
        raise EngineError(f"n_classes must be at least 1, got {n_classes}")
    for name, value in (("depth", depth), ("width", width)):
        if value is not None and value < 1:
            raise EngineError(f"{name} must be at least 1, got {value}")
    layers = ARCHS[arch](shape, n_classes, depth, width, global_pool)
    spec = {"arch": arch, "input_shape": list(shape), "n_classes": int(n_classes),
            "depth": depth, "width": width, "global_pool": bool(global_pool)}
    model = LayeredNet(layers, spec)
    init_parameters_(model)
    return model


# Initialisation. One rule for building and for resetting, so a "fresh" layer is always drawn from
# the distribution the network started from.

def _init_leaf_(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        # torchvision's ResNet rule (He et al. 2015, fan_out), used for every conv here.
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.Linear, nn.modules.batchnorm._BatchNorm)):
        m.reset_parameters()  # PyTorch's defaults; BatchNorm also resets its running statistics
    elif list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)):
        raise TypeError(f"no initialisation rule for {type(m).__name__}")


def init_parameters_(module: nn.Module) -> None:
    """Re-initialise every submodule in place from torch's global RNG."""
    for m in module.modules():
        _init_leaf_(m)


def reset_parameters(module: nn.Module, seed: int) -> None:
    """Re-initialise every submodule of `module` in place, deterministically under `seed`.

    Values are drawn on the CPU (so they do not depend on the device) from a forked RNG (so torch's
    global RNG is untouched), then copied into the existing tensors (so parameter identity, memory
    format and anything compiled against them survive). The initialisers fill a tensor in memory
    order, so 4-D weights are drawn channels-last (the format every trainer uses) whatever the
    module's format: otherwise a contiguous and a channels-last model got different weights from
    one seed (a conv of more than one input channel).
    """
    tensors = [*module.parameters(), *module.buffers()]
    in_place = all(t.device.type == "cpu" and (
        t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last)) for t in tensors)
    src = module if in_place else copy.deepcopy(module).cpu().to(memory_format=torch.channels_last)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(seed))
        init_parameters_(src)
    if src is not module:
        module.load_state_dict(src.state_dict())


def layer_seed(seed: int, index: int) -> int:
    """An independent seed for layer `index` (0-based) of a run seeded `seed` (both >= 0)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)
