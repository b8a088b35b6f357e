"""The trainer: one training run (Alice's, or one of Bob's fine-tunes) from data to metrics.

Data on the device (`DeviceData`) and the device helpers are engine.train.device.

Chapters, in order:
1. Batching: a seeded permutation per epoch, drawn on the CPU and moved to the device.
2. Runners: the model split at the frozen boundary into `prefix` and `tail`, compiled or not, and
   the `CompiledModelCache` that compiles each split once and reuses it across runs.
3. Frozen features: the prefix's output computed once per fit of two or more epochs, when it fits
   a memory budget.
4. The step.
5. Epochs: `fit`.
6. Evaluation: `evaluate`.

The same code runs on CPU and CUDA, with channels-last tensors on both. On the CPU, `fit` and
`evaluate` tell glibc to keep freed memory (`threads.keep_freed_memory`). On CUDA it adds bf16
autocast (on CPUs without native bf16 it is several times slower, so the CPU stays fp32);
`torch.compile` comes only through `CompiledModelCache` (on by default on CUDA, off on CPU).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import EngineError
from engine.spec import OPTIMIZERS
from engine.train.device import (DeviceData, _autocast, _is_cuda, _memory_format, precision_used,
                                 usable_memory)
from engine.train.freeze import set_train_mode
from engine.train.models import LayeredNet, build_model
from engine.threads import keep_freed_memory

SGD_MOMENTUM = 0.9
FEATURE_CACHE_SHARE = 0.5  # of the device's free memory a run's frozen features may take
CHUNK = 1024  # samples per forward pass when caching features
RECOMPILE_LIMIT = 256  # dynamo entries per code object: group shapes of a large sweep


# 1. Batching -------------------------------------------------------------------------------------
# Every draw is made on the CPU with a CPU generator and then moved, so a seed gives the same
# batch order on every device (a CUDA generator draws other permutations).

def epoch_batches(n: int, batch_size: int, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> list[Tensor]:
    """Index batches for one epoch on `device`: a fresh permutation from the CPU `generator`, cut
    into full batches.

    The ragged end is dropped (fixed shapes keep compiled graphs fixed); with n <= batch_size the
    epoch is one batch of all n.
    """
    perm = torch.randperm(n, generator=generator).to(device)
    if n <= batch_size:
        return [perm]
    return list(perm[: n - n % batch_size].view(-1, batch_size))


# 2. Runners --------------------------------------------------------------------------------------

@dataclass
class Runner:
    """`model` split at `frozen_upto`: `prefix` runs layers [0, k) and `tail` layers [k, L);
    `precision` is the run spec's (engine.spec.PRECISIONS; None: the device's default)."""
    model: LayeredNet
    frozen_upto: int
    prefix: Callable[[Tensor], Tensor]
    tail: Callable[[Tensor], Tensor]
    precision: str | None = None


def use_engine_inductor_cache() -> None:
    """Inductor's compiled graphs under the engine's cache directory, so a second sweep on this
    machine loads them instead of compiling (unless the user chose a directory). Called before
    every compile the engine makes: inductor fixes its directory (setting the variable to its
    default) at its first compile in a process."""
    from engine import paths
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(paths.cache_dir() / "inductor"))


def make_runner(model: LayeredNet, frozen_upto: int, *, compile: bool = False,
                backend: str = "inductor", precision: str | None = None) -> Runner:
    """Split `model`; the parts share its parameters, so in-place resets reach compiled code too."""
    prefix: Callable[[Tensor], Tensor] = nn.Sequential(*model.layers[:frozen_upto])
    tail: Callable[[Tensor], Tensor] = nn.Sequential(*model.layers[frozen_upto:])
    if compile:
        use_engine_inductor_cache()
        # Every split is an nn.Sequential, so all share Sequential.forward's code object and with
        # it one dynamo cache: allow an entry per (architecture, shape, frozen depth) of a sweep,
        # and no dynamic-shape recompiles (each split sees one batch shape for training).
        dynamo = torch._dynamo.config
        dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
        if frozen_upto > 0:
            prefix = torch.compile(prefix, backend=backend, dynamic=False)
        tail = torch.compile(tail, backend=backend, dynamic=False)
    return Runner(model, frozen_upto, prefix, tail, precision)


class CompiledModelCache:
    """One model and its (compiled) runner per architecture, input shape and frozen boundary.

    Compiling costs seconds to minutes and a sweep runs thousands of fine-tunes, so each entry is
    compiled once: later runs reset the same model's weights in place (`freeze.prepare_bob` copies
    into the existing parameters) and `fit` makes a fresh optimizer. The key holds `frozen_upto`
    (= retrain_from - 1, or 0 for scratch) because which parameters require grad is part of a graph.

        runner = cache.get("cnn", (28, 56, 1), 10, frozen_upto=l - 1)
        params = prepare_bob(runner.model, alice, retrain_from=l, mode="finetune", seed=s)
        fit(runner.model, params, data, "bob_label", ..., frozen_upto=l - 1, runner=runner)
    """

    def __init__(self, device: str | torch.device, *, compile: bool | None = None,
                 backend: str = "inductor"):
        self.device = torch.device(device)
        self.compile = _is_cuda(self.device) if compile is None else compile
        self.backend = backend
        self._runners: dict[tuple, Runner] = {}

    def get(self, arch: str, input_shape: tuple[int, int, int], n_classes: int, *,
            frozen_upto: int, depth: int | None = None, width: int | None = None,
            global_pool: bool = False, precision: str | None = None) -> Runner:
        key = (arch, tuple(input_shape), n_classes, frozen_upto, depth, width, global_pool,
               precision)
        if key not in self._runners:
            model = build_model(arch, input_shape, n_classes, depth=depth, width=width,
                                global_pool=global_pool)
            model = model.to(self.device, memory_format=_memory_format(self.device))
            self._runners[key] = make_runner(model, frozen_upto, compile=self.compile,
                                             backend=self.backend, precision=precision)
        return self._runners[key]

    def __len__(self) -> int:
        return len(self._runners)


# 3. Frozen features ------------------------------------------------------------------------------

def feature_budget(device: torch.device) -> int:
    """Bytes the frozen features of one fit may take: half the device's usable memory now
    (engine.train.device.usable_memory). For a full 60k-sample MNIST pair the reference cnn's
    l = 5 features take 3.0 GB, its l = 3 and 4 features 6.0 GB."""
    return int(usable_memory(device) * FEATURE_CACHE_SHARE)


def frozen_features(runner: Runner, data: DeviceData, budget_bytes: int) -> Tensor | None:
    """The frozen prefix's output for every sample, or None if nothing is frozen or it would need
    more than `budget_bytes`. Valid because frozen layers run in eval mode without augmentation,
    so their output per sample is constant for the whole fit."""
    if runner.frozen_upto == 0 or budget_bytes <= 0:
        return None
    n, device = len(data), data.device
    with torch.no_grad(), _autocast(device, runner.precision):
        first = runner.prefix(data.inputs(slice(0, CHUNK)))
        if n * first[0].numel() * first.element_size() > budget_bytes:
            return None
        fmt = _memory_format(device) if first.dim() == 4 else torch.contiguous_format
        feats = torch.empty((n, *first.shape[1:]), dtype=first.dtype, device=device,
                            memory_format=fmt)
        feats[:CHUNK] = first
        for start in range(CHUNK, n, CHUNK):
            feats[start:start + CHUNK] = runner.prefix(data.inputs(slice(start, start + CHUNK)))
    return feats


# 4. The step -------------------------------------------------------------------------------------

def train_step(runner: Runner, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, *,
               frozen_input: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """One SGD/Adam step; returns (summed loss, n correct) as device tensors (no host sync).

    `frozen_input`: x is already the prefix's output (cached features); otherwise x is images and
    the prefix runs here without building a graph.
    """
    with _autocast(device, runner.precision):
        if not frozen_input:
            with torch.no_grad():
                x = runner.prefix(x)
        logits = runner.tail(x)
        loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach() * len(y), (logits.argmax(1) == y).sum()


def make_optimizer(params: list[nn.Parameter], name: str, lr: float,
                   device: torch.device) -> torch.optim.Optimizer:
    fused = True if _is_cuda(device) else None
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, fused=fused)
    return torch.optim.Adam(params, lr=lr, fused=fused)


# 5. Epochs ---------------------------------------------------------------------------------------

def run_epochs(epochs: int, batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
               step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], *,
               on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """The epoch loop every trainer runs (`fit`, the streamed fit, Alice's pre-training and the
    batched trainer): `batches()` yields one epoch's (inputs, labels), `step(x, y)` trains on them
    and returns (summed loss, n correct) as device tensors, scalars or one per member of a batched
    group (labels [K, B]). Sums stay on the device: nothing here syncs with it.

    Returns the last epoch's {"loss_sum", "correct", "seen" (samples per member), "steps" (all
    epochs)}; `on_epoch(epoch, that dict)` is called after every epoch (1-based).

    A step's outputs are read only before the next step: the sums are new tensors from the
    first step on, never a step's own output (a compiled step may reuse its outputs' memory,
    as CUDA graphs do).
    """
    steps = 0
    last: dict = {}
    for epoch in range(1, epochs + 1):
        loss_sum = correct = None
        seen = 0
        for x, y in batches():
            loss, right = step(x, y)
            loss_sum = loss.clone() if loss_sum is None else loss_sum + loss
            correct = right.clone() if correct is None else correct + right
            seen += y.shape[-1]
            steps += 1
        last = {"loss_sum": loss_sum, "correct": correct, "seen": seen, "steps": steps}
        if on_epoch is not None:
            on_epoch(epoch, last)
    return last



def _check_fit_args(model: LayeredNet, params: list[nn.Parameter], data: DeviceData, label: str,
                    epochs: int, lr: float, optimizer: str, batch_size: int,
                    frozen_upto: int) -> None:
    if optimizer not in OPTIMIZERS:
        raise EngineError(f"unknown optimizer {optimizer!r}; "
                          f"choose one of: {', '.join(OPTIMIZERS)}")
    if label not in data.labels:
        raise EngineError(f"no label {label!r} in the data; it has: {', '.join(data.labels)}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise EngineError(f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, "
                          f"{batch_size}, {lr}")
    if not 0 <= frozen_upto < model.n_layers:
        raise ValueError(f"frozen_upto must be in 0..{model.n_layers - 1}, got {frozen_upto}")
    if any(p.requires_grad for p in model.layers[:frozen_upto].parameters()):
        raise ValueError("a parameter of a frozen layer requires grad; use freeze.prepare_bob")
    if not params or not all(p.requires_grad for p in params):
        raise ValueError("params must be a non-empty list of parameters that require grad")
    y = data.labels[label]
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= model.head.out_features:
        raise EngineError(f"label {label!r} spans {lo}..{hi}, but the network has "
                          f"{model.head.out_features} outputs")


def fit(model: LayeredNet, params: list[nn.Parameter], data: DeviceData, label: str, *,
        epochs: int, lr: float | None = None, optimizer: str = "sgd", batch_size: int = 128,
        seed: int, frozen_upto: int = 0, device: str | torch.device | None = None,
        runner: Runner | None = None, feature_cache_bytes: int | None = None,
        features: Tensor | None = None, precision: str | None = None) -> dict:
    """Train `params` of `model` on `data` to predict `label`; return last-epoch metrics.

    `frozen_upto` layers at the bottom are frozen (requires_grad False, eval mode); with two or more
    epochs their output is cached once when it fits in `feature_cache_bytes` (None: half the
    device's free memory, `feature_budget`; 0 disables). With one epoch each sample's prefix output
    is used once, so a cache would only add memory traffic (measured on the CPU: a 10k-sample,
    1-epoch round of l = 1..5 took 76-78 s with it, 62-64 s without). `seed` drives the shuffling
    only; initial weights are the caller's (see `freeze.prepare_bob`). `lr` None means the
    optimizer's default (SGD 0.01 with momentum 0.9, Adam 1e-3). `runner` comes from a
    `CompiledModelCache`; without one, the model runs uncompiled. `features`: the frozen
    prefix's outputs for every sample of `data`, computed by the caller (shared between runs:
    engine.train.features), used instead of running the prefix. `precision`: without a
    `runner` (engine.spec.PRECISIONS; None: the device's default); a runner carries its own.
    """
    lr = OPTIMIZERS.get(optimizer) if lr is None else lr
    _check_fit_args(model, params, data, label, epochs, lr, optimizer, batch_size, frozen_upto)
    device = data.device if device is None else torch.device(device)
    if device != data.device:
        raise ValueError(f"data lives on {data.device}, not {device}")
    if runner is None:
        model.to(device, memory_format=_memory_format(device))
        runner = make_runner(model, frozen_upto, precision=precision)
    elif runner.model is not model or runner.frozen_upto != frozen_upto:
        raise ValueError("runner was made for another model or frozen_upto")

    if device.type == "cpu":
        keep_freed_memory()
    start = time.perf_counter()
    set_train_mode(model, frozen_upto)
    opt = make_optimizer(params, optimizer, lr, device)
    generator = torch.Generator().manual_seed(int(seed))
    labels = data.labels[label]
    feats = features
    if feats is not None and (not frozen_upto or len(feats) != len(data)):
        raise ValueError("features must be the frozen prefix's outputs for every sample of data")
    if feats is None and epochs > 1:
        budget = feature_budget(device) if feature_cache_bytes is None else feature_cache_bytes
        feats = frozen_features(runner, data, budget)

    def batches():
        for idx in epoch_batches(len(data), batch_size, generator, device):
            yield (feats[idx] if feats is not None else data.inputs(idx)), labels[idx]

    step = lambda x, y: train_step(runner, opt, x, y, frozen_input=feats is not None,  # noqa: E731
                                   device=device)
    last = run_epochs(epochs, batches, step)
    wall = time.perf_counter() - start
    seen = last["seen"]
    return {
        "train_loss": last["loss_sum"].item() / seen,  # .item() syncs
        "train_acc": last["correct"].item() / seen,
        "epochs": epochs,
        "steps": last["steps"],
        "samples_per_epoch": seen,
        "wall_s": wall,
        "samples_per_s": epochs * seen / wall,
        "feature_cache": feats is not None,
        "precision": precision_used(runner.precision, device),
        "optimizer": optimizer,
        "lr": lr,
        "batch_size": batch_size,
    }


# 6. Evaluation -----------------------------------------------------------------------------------

def evaluate(model: LayeredNet, data: DeviceData, label: str, batch_size: int = 1024, *,
             runner: Runner | None = None, features: Tensor | None = None,
             precision: str | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on all of `data`, in eval mode. `features`: the
    runner's frozen-prefix outputs for every sample of `data` (only the tail then runs).

    Always eager: the test split's ragged last batch would add a compiled graph per dataset size,
    and evaluation is a small part of a run."""
    if label not in data.labels:
        raise EngineError(f"no label {label!r} in the data; it has: {', '.join(data.labels)}")
    if runner is None:
        runner = make_runner(model, 0, precision=precision)
    elif runner.model is not model:
        raise ValueError("runner was made for another model")
    if features is not None and (not runner.frozen_upto or len(features) != len(data)):
        raise ValueError("features must be the runner's prefix outputs for every sample of data")
    device = data.device
    if device.type == "cpu":
        keep_freed_memory()  # reference cnn, 1024-sample passes: 870 us/sample without, 410 with
    model.eval()
    labels = data.labels[label]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad(), _autocast(device, runner.precision):
        for start in range(0, len(data), batch_size):
            y = labels[start:start + batch_size]
            logits = (model(data.inputs(slice(start, start + batch_size))) if features is None
                      else runner.tail(features[start:start + batch_size]))
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    n = len(data)
    return correct.item() / n, loss_sum.item() / n
