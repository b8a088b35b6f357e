"""Specs are frozen dataclasses; an artefact's ID is the hash of its spec.

This is the lowest layer: it imports neither torch nor numpy, so specs are importable anywhere (a
planner, a Ray driver, a notebook). `spec_hash` hashes the canonical JSON of a spec (sorted keys,
floats by repr), so the same spec gives the same ID on every machine and Python version.

- `DataSpec`: everything that determines the bytes of a built dataset.
- `Training`, `AliceSpec`, `BobSpec`: a pre-training and a fine-tune. Learning rates are resolved
  at construction (None = the optimizer's default), so a spec always records the rate used.
- `layer_plan`: where each of Bob's layers starts from and whether it trains, per (l, mode).

    mode           layers 1..l-1            layers l..L-1            head (layer L)
    finetune       Alice's, frozen          Alice's, trained         fresh, trained
    reinit         Alice's, frozen          fresh, trained           fresh, trained
    scratch        fresh, trained           fresh, trained           fresh, trained
    random-frozen  fresh, frozen            fresh, trained           fresh, trained
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import NamedTuple

from engine.errors import EngineError

DATA_FORMAT_VERSION = 1  # bump when the bytes a DataSpec produces change


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def spec_hash(spec, length: int = 12) -> str:
    fields = spec.to_dict() if hasattr(spec, "to_dict") else dataclasses.asdict(spec)
    return fields_hash(type(spec).__name__, fields, length)


def fields_hash(kind: str, fields: dict, length: int = 12) -> str:
    """The hash of `fields` (JSON-able) tagged with `kind`; `spec_hash` tags with the class name."""
    payload = canonical_json({"type": kind, **fields})
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24]


@dataclass(frozen=True)
class DataSpec:
    """Everything that determines the bytes of a built dataset."""
    left: str  # source, e.g. "mnist" or "npz:/abs/path.npz"
    right: str
    beta: float  # P(Bob's class follows pi(Alice's)) before the uniform draw; in [0, 1]
    seed: int
    n_train: int
    n_test: int
    fit: str = "pad"  # "pad" or "resize", see engine.kernels.compose
    image_size: int = 32  # side length for folder: sources, pixels
    format_version: int = DATA_FORMAT_VERSION
    block_shuffle: int | None = None  # block size B in pixels (1 = pixel shuffle); None = off

    @property
    def pair(self) -> str:
        return f"{self.left}:{self.right}"

    @property
    def key(self) -> str:
        """Directory name: readable prefix plus the spec hash."""
        left, right = (_slug(s.split(":", 1)[0] if s.startswith(("npz:", "folder:")) else s)
                       for s in (self.left, self.right))
        shuffle = "" if self.block_shuffle is None else f"-blk{self.block_shuffle}"
        return f"{left}-{right}-b{self.beta:g}-s{self.seed}{shuffle}-{spec_hash(self)}"

    def to_dict(self) -> dict:
        """The fields; block_shuffle only when set, so unshuffled datasets keep the keys (and
        manifests) they had before the field existed."""
        d = dataclasses.asdict(self)
        if d["block_shuffle"] is None:
            del d["block_shuffle"]
        return d


# Layer plans -------------------------------------------------------------------------------------

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


# Run specs ---------------------------------------------------------------------------------------

ARCHS = ("mlp", "cnn", "resnet18")  # engine.train.models.ARCHS builds them
# Arithmetic of a run: "fp32", or "bf16" autocast. A spec's None is the device's default before
# the option existed (bf16 autocast on CUDA, fp32 on the CPU) and is left out of the spec's hash,
# so stores written before keep their run IDs; engine.train.device.spec_precision resolves a
# request (auto, fp32, bf16) to what a spec records, and rows record the precision used.
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = {"sgd": 0.01, "adam": 1e-3}  # name -> default learning rate
TRANSFER_MODES = ("finetune", "reinit")
BASELINES = ("scratch", "random-frozen")


def _check_training(epochs, optimizer, lr, batch_size) -> float:
    """Validate training options; return the resolved learning rate."""
    if optimizer not in OPTIMIZERS:
        raise EngineError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    for name, value in (("epochs", epochs), ("batch size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EngineError(f"{name} must be a positive integer, got {value!r}")
    lr = OPTIMIZERS[optimizer] if lr is None else lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise EngineError(f"learning rate must be a positive number, got {lr!r}")
    return float(lr)


def _check_arch(arch, depth, width, global_pool) -> None:
    if arch not in ARCHS:
        raise EngineError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    n_layers(arch, depth, width, global_pool)  # raises on options the arch does not take


def _check_precision(precision) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; choose one of: auto, "
                          f"{', '.join(PRECISIONS)}")


def _without_default_precision(d: dict) -> dict:
    if d.get("precision", 0) is None:
        del d["precision"]
    return d


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise EngineError(f"seed must be a non-negative integer, got {seed!r}")


@dataclass(frozen=True)
class Training:
    """Optimisation options shared by a group of runs (lr None = the optimizer's default)."""
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float | None = None
    batch_size: int = 128


@dataclass(frozen=True)
class AliceSpec:
    """Alice's pre-training on `dataset`'s alice_label (the whole training split)."""
    dataset: str  # dataset key (engine.spec.DataSpec.key)
    arch: str
    optimizer: str = "sgd"
    epochs: int = 10
    lr: float | None = None
    batch_size: int = 128
    seed: int = 0
    depth: int | None = None
    width: int | None = None
    global_pool: bool = False
    precision: str | None = None  # PRECISIONS; None: the device's default (see PRECISIONS)

    def __post_init__(self):
        object.__setattr__(self, "lr", _check_training(self.epochs, self.optimizer, self.lr,
                                                       self.batch_size))
        _check_arch(self.arch, self.depth, self.width, self.global_pool)
        _check_seed(self.seed)
        _check_precision(self.precision)

    @property
    def id(self) -> str:
        return spec_hash(self)

    def to_dict(self) -> dict:
        return _without_default_precision(dataclasses.asdict(self))


@dataclass(frozen=True)
class BobSpec:
    """One of Bob's runs: layers 1..retrain_from-1 set up per `mode` (engine.train.freeze), the rest
    trained on bob_label using `n_bob` training samples (None = all)."""
    alice_id: str  # "" for the baselines, which use no Alice
    dataset: str
    arch: str
    retrain_from: int
    mode: str
    n_bob: int | None = None
    seed: int = 0
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float | None = None
    batch_size: int = 128
    depth: int | None = None
    width: int | None = None
    global_pool: bool = False
    precision: str | None = None  # PRECISIONS; None: the device's default (see PRECISIONS)

    def __post_init__(self):
        object.__setattr__(self, "lr", _check_training(self.epochs, self.optimizer, self.lr,
                                                       self.batch_size))
        _check_precision(self.precision)
        if self.mode not in TRANSFER_MODES + BASELINES:
            raise EngineError(f"unknown mode {self.mode!r}; choose one of: "
                              f"{', '.join(TRANSFER_MODES + BASELINES)}")
        if (self.mode in TRANSFER_MODES) != bool(self.alice_id):
            raise EngineError(f"mode {self.mode} {'needs' if self.mode in TRANSFER_MODES else 'takes no'}"
                              " Alice")
        _check_seed(self.seed)
        _check_n_bob(self.n_bob)

    @property
    def run_id(self) -> str:
        return spec_hash(self)

    @property
    def computation_id(self) -> str:
        """The hash of what the run computes: its spec with (retrain_from, mode) replaced by the
        layer plan they give (engine.train.freeze.layer_plan), and without Alice when no layer comes from
        her. Runs with equal computation IDs start from the same weights, freeze the same layers
        and train on the same samples in the same order, so they give the same results."""
        plan = layer_plan(n_layers(self.arch, self.depth, self.width, self.global_pool),
                          self.retrain_from, self.mode)
        d = self.to_dict()
        del d["retrain_from"], d["mode"]
        d["plan"] = [[p.source, p.trainable] for p in plan]
        if all(p.source == "fresh" for p in plan):
            d["alice_id"] = ""
        return fields_hash("BobComputation", d)

    def to_dict(self) -> dict:
        return _without_default_precision(dataclasses.asdict(self))


def _check_n_bob(n) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise EngineError(f"n-bob must be a positive integer or 'all', got {n!r}")


def n_layers(arch: str, depth: int | None = None, width: int | None = None,
             global_pool: bool = False) -> int:
    """L for `arch` with these options (it does not depend on the input shape); the same checks
    and count as engine.train.models.build_model (a test compares them)."""
    if arch not in ARCHS:
        raise EngineError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    for name, value in (("depth", depth), ("width", width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise EngineError(f"{name} must be a positive integer, got {value!r}")
    if arch == "mlp" and global_pool:
        raise EngineError("global_pool applies to the cnn only; the mlp flattens its input")
    if arch == "resnet18":
        if depth is not None or width is not None:
            raise EngineError("resnet18 has a fixed depth and width; drop --depth/--width")
        return 6  # stem, four stages, head
    return (4 if depth is None else depth) + 1  # hidden blocks + head
