"""The grouped network: a Bob group's trainable tail as a tuple of ops over stacked weights (K
members), its forward pass, and one optimizer step for all members as a pure function.

Convolutions run as one grouped convolution over [B, K*C, H, W] channels-last activations
(BatchNorm is per channel, so over K*C channels it is per member); linear layers as one batched
matmul over [K, B, D]. (torch.func.vmap over the module gives grouped convolutions too, but in
NCHW: 3.3x slower than serial for the cnn on the 2-core CPU.) The step takes (params, buffers, opt
state, x, y, hyper) and returns new ones with loss[K] and correct[K]; gradients by torch.func,
SGD/Adam written out with torch.optim's formulas. It compiles whole (fullgraph) with inductor.
engine.train.batched owns members, data, training and evaluation around it.

When a group's frozen-prefix outputs are not cached, the frozen layers run inside the same step,
grouped over members like the trained ones (eval-mode BatchNorm, no gradient), from per-member
stacked copies of each member's frozen weights.

Compilation is static: `fullgraph=True, dynamic=False`, one graph per (program, optimizer, group
size); the batched trainer pads group sizes to a multiple of `K_MULTIPLE` so that a sweep meets few
sizes. No CUDA graphs: CUDA-graph trees free a generation's outputs when the next one starts, and
this step's outputs (params, buffers, optimizer state) are the next step's inputs (torch
2.11-2.14; pytorch issues 152887, 170604). They would need a persistent workspace updated in place.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import EngineError
from engine.train.models import Head
from engine.train.device import _autocast
from engine.train.trainer import SGD_MOMENTUM, use_engine_inductor_cache

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as `fit` uses


# 1. The grouped network --------------------------------------------------------------------------

K_MULTIPLE = 8  # group sizes are padded to a multiple of this when compiled


def program(model: nn.Module, frozen: int, upto: int | None = None) -> tuple:
    """Layers frozen..upto-1 (default: the whole tail, frozen..L-1) as a flat tuple of ops; names
    are state-dict prefixes."""
    ops = []
    for i in range(frozen, len(model.layers) if upto is None else upto):
        layer = model.layers[i]
        leaves = [(f"layers.{i}", layer)] if isinstance(layer, Head) else \
            [(f"layers.{i}.{j}", m) for j, m in enumerate(layer)]
        for name, m in leaves:
            if isinstance(m, Head):
                ops.append(("head", name, m.pool))
            elif isinstance(m, nn.Linear):
                ops.append(("linear", name))
            elif isinstance(m, nn.Conv2d):
                ops.append(("conv", name, m.stride, m.padding, m.dilation))
            elif isinstance(m, nn.BatchNorm2d):
                ops.append(("bn", name, m.momentum, m.eps))
            elif isinstance(m, (nn.ReLU, nn.Flatten)):
                ops.append((type(m).__name__.lower(), name))
            else:
                raise EngineError(f"batched training has no rule for {type(m).__name__}; "
                                  "train this architecture one run at a time")
    return tuple(ops)


def is_grouped(program: tuple, name: str) -> bool:
    """Conv and BN tensors are concatenated over members ([K*O, ...]), linear ones stacked."""
    return any(op[0] in ("conv", "bn") and name.startswith(op[1] + ".") for op in program)


def pack(program, states: list[dict], names: list[str]) -> dict[str, Tensor]:
    """Members' tensors concatenated or stacked, with canonical (contiguous) strides: a
    1-input-channel conv weight keeps a channels-last stride under `.contiguous()`, the step
    returns it contiguous, and the next step would recompile for the new stride."""
    join = lambda n, ts: torch.cat(ts) if is_grouped(program, n) else torch.stack(ts)  # noqa: E731
    return {n: join(n, [s[n] for s in states]).clone(memory_format=torch.contiguous_format)
            for n in names}


def padded_size(K: int) -> int:
    """The group size a compiled step runs: K rounded up to a multiple of K_MULTIPLE."""
    return -(-K // K_MULTIPLE) * K_MULTIPLE


def arrange(x: Tensor, first_op: str) -> Tensor:
    """Per-member inputs [K, B, ...] into the tail's layout: [B, K*C, H, W] channels-last for a
    convolution, [K, B, ...] otherwise."""
    if first_op != "conv":
        return x
    K, B, C, H, W = x.shape
    x = x.permute(1, 3, 4, 0, 2).reshape(B, H, W, K * C)  # memory order B, H, W, K, C
    return x.permute(0, 3, 1, 2)


def forward(program, params, buffers, x: Tensor, K: int, train: bool):
    """Logits [K, B, n_classes] and (train) the updated BN running statistics."""
    new_buffers = {}
    for op in program:
        kind, name = op[0], op[1]
        if kind == "conv":
            x = F.conv2d(x, params[name + ".weight"], params.get(name + ".bias"), op[2], op[3],
                         op[4], groups=K)
        elif kind == "bn":
            rm, rv = buffers[name + ".running_mean"], buffers[name + ".running_var"]
            if train:  # F.batch_norm updates the statistics in place: update fresh copies
                rm, rv = rm.clone(), rv.clone()
                new_buffers.update({name + ".running_mean": rm, name + ".running_var": rv})
            x = F.batch_norm(x, rm, rv, params[name + ".weight"], params[name + ".bias"], train,
                             op[2], op[3])
        elif kind == "relu":
            x = F.relu(x)
        elif kind == "flatten":  # [K, B, C, H, W] -> [K, B, C*H*W], as nn.Flatten per member
            x = x.flatten(2)
        else:  # linear or head
            if kind == "head":
                if x.dim() == 4:  # [B, K*C, h, w] -> [K, B, C, h, w]
                    x = x.unflatten(1, (K, -1)).transpose(0, 1)
                x = x.mean(dim=(3, 4)) if op[2] else x.flatten(2)
            # As W x^T, transposed back: autograd's weight gradient is then grad^T x, which
            # MKL runs 2.4x faster than x^T grad for a head's [10 x 12544] weights (fwd + bwd of
            # the reference cnn's head, K = 16: 18.6 ms instead of 40.7; square layers: equal).
            w, b = params[name + ".weight"], params[name + ".bias"]
            if x.stride(0) == 0:  # one input for all members (evaluation): one matmul
                out = torch.addmm(b.flatten().unsqueeze(1), w.flatten(0, 1), x[0].t())
                x = out.unflatten(0, (K, -1)).transpose(1, 2)
            else:
                x = torch.baddbmm(b.unsqueeze(2), w, x.transpose(1, 2)).transpose(1, 2)
    return x, new_buffers


# 2. The step -------------------------------------------------------------------------------------

def _step(program, prefix, optimizer, precision, params, buffers, opt, frozen, x, y, hyper):
    """One SGD/Adam step for every member. x [K, B, ...]: the tail's inputs, or with a `prefix`
    program the network's inputs, which the frozen layers (`frozen`: their stacked weights and
    BN statistics) turn into the tail's inputs first; y [K, B]; hyper (float32): [lr, Adam step
    size lr / (1 - beta1^t), sqrt(1 - beta2^t)]. Returns (params, buffers, opt, mean loss [K],
    n correct [K]), all new tensors."""
    K = y.shape[0]
    if prefix:
        with torch.no_grad(), _autocast(x.device, precision):
            x, _ = forward(prefix, frozen, frozen, arrange(x, prefix[0][0]), K, False)
    else:
        x = arrange(x, program[0][0])

    def total_loss(p):
        with _autocast(x.device, precision):
            logits, new_buffers = forward(program, p, buffers, x, K, True)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        loss = loss.view(K, -1).mean(1)
        # Members are independent, so the gradient of the sum is each member's own gradient.
        return loss.sum(), (loss.detach(), (logits.argmax(-1) == y).sum(1), new_buffers)

    grads, (_, (loss, correct, new_buffers)) = torch.func.grad_and_value(
        total_loss, has_aux=True)(params)
    lr, step_size, bc2_sqrt = hyper[0], hyper[1], hyper[2]
    if optimizer == "sgd":  # torch.optim.SGD: buf = momentum * buf + g; p -= lr * buf
        bufs = {n: opt["buf"][n].mul(SGD_MOMENTUM).add(g) for n, g in grads.items()}
        new = {n: params[n] - lr * bufs[n] for n in params}
        return new, {**buffers, **new_buffers}, {"buf": bufs}, loss, correct
    b1, b2 = ADAM_BETAS  # torch.optim.Adam (single-tensor): lerp, addcmul, addcdiv
    m = {n: torch.lerp(opt["m"][n], g, 1 - b1) for n, g in grads.items()}
    v = {n: torch.addcmul(opt["v"][n].mul(b2), g, g, value=1 - b2) for n, g in grads.items()}
    new = {n: params[n] - step_size * (m[n] / (v[n].sqrt() / bc2_sqrt + ADAM_EPS)) for n in params}
    return new, {**buffers, **new_buffers}, {"m": m, "v": v}, loss, correct


_STEPS: dict[tuple, Callable] = {}


def step_fn(program, prefix: tuple, optimizer: str, device: torch.device, compile: bool,
            backend: str = "inductor", precision: str | None = None) -> Callable:
    """The step for one (tail program, in-step prefix program), compiled once per optimizer,
    precision (engine.spec.PRECISIONS) and device type: dynamo then compiles one graph per
    group shape, static (no symbolic sizes)."""
    key = (program, prefix, optimizer, precision, device.type, compile, backend)
    if key not in _STEPS:
        fn = lambda *a: _step(program, prefix, optimizer, precision, *a)  # noqa: E731
        if compile:
            use_engine_inductor_cache()
            # Every program and group shape is one more entry on the same code object.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            fn = torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)
        _STEPS[key] = fn
    return _STEPS[key]


def hyper_table(optimizer: str, lr: float, steps: int, device) -> Tensor:
    """[steps, 3] float32 rows of `_step`'s hyper, computed in float64 as torch.optim does."""
    rows = []
    for t in range(1, steps + 1):
        b1, b2 = ADAM_BETAS
        rows.append([lr, lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t)])
    return torch.tensor(rows, dtype=torch.float32, device=device)
