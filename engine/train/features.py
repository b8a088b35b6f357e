"""Frozen-prefix outputs shared between Bob runs: the members of batched groups
(engine.train.batched) and, through `shared_inputs`, the runs of a unit that train alone.

A member's frozen layers are a *source*'s first `depth` layers: Alice's, or the fresh draws of a
seed (`("seed", s)`, random-frozen). Layer i of a source is the same whatever the frozen depth
(Alice's layer i, or the seed's draw `models.layer_seed(s, i)`: engine.train.freeze), and frozen
layers run in eval mode without augmentation, so a source's output at depth d over a sample is
one fixed tensor. Two caches use that:

- `FeatureCache`, one per `train_group` call: per (source, split), the output at the call's depth
  over the rows its members use (the union of their training subsets; the whole test split),
  shared by all the call's groups and dropped when no member still to train uses it.
- `PrefixStore`, one per unit of work (the executor's `train_groups`): per (source, split), the
  deepest output computed so far, so that a call frozen at d continues from depth e < d (layers
  e..d-1 only) instead of recomputing layers 0..e-1. For the mlp sweep mix, whose frozen depths
  are 1..4, this skips 70% of the prefix arithmetic.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from engine.spec import BobSpec
from engine.train.device import (DeviceData, MemoryPlan, _autocast, _memory_format,
                                 draw_subset)
from engine.train.trainer import CHUNK, Runner, frozen_features

# Cached prefix outputs replace recomputing the prefix in a one-pass fit only when the prefix does
# at least this many FLOPs per byte of output. Measured on the 2-core CPU for the reference cnn's
# conv tails (one 2k-sample unit): at depth 2 (153 FLOP/byte) reading and recomputing cost about
# the same; at depths 3-4 reading saved 20-55% of a run. Its first layer alone (4.5 FLOP/byte)
# writes 200 kB per sample, more costly to stream back than to recompute. A rule of thumb, not a
# measured crossover.
MIN_FLOPS_PER_BYTE = 32


def source(spec: BobSpec, frozen: int):
    """Whose frozen layers a run has: Alice's, its seed's fresh ones (random-frozen), or none."""
    if frozen == 0:
        return None
    return ("seed", spec.seed) if spec.mode == "random-frozen" else ("alice", spec.alice_id)


def source_key(spec: BobSpec, input_shape, n_classes: int, frozen: int, data) -> tuple:
    """Runs with equal keys see the same frozen-prefix outputs: the prefix's layers (the
    architecture and the source) and the split; the depth is the caller's."""
    return (spec.arch, spec.depth, spec.width, spec.global_pool, tuple(input_shape), n_classes,
            source(spec, frozen), spec.precision, id(data))


_FLOPS: dict[tuple, float] = {}


def worth_sharing(runner: Runner, data: DeviceData) -> bool:
    """Whether `runner`'s prefix does MIN_FLOPS_PER_BYTE FLOPs per byte of its output (counted
    once per architecture, input shape and depth with torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode
    model = runner.model
    key = (tuple(type(m).__name__ for m in model.modules()), tuple(data.images.shape[1:]),
           runner.frozen_upto)
    if key not in _FLOPS:
        x = data.inputs(slice(0, 1))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = nn.Sequential(*model.layers[:runner.frozen_upto]).eval()(x)
        _FLOPS[key] = counter.get_total_flops() / max(1, out.numel() * out.element_size())
    return _FLOPS[key] >= MIN_FLOPS_PER_BYTE


def shared_inputs(runner: Runner, spec: BobSpec, train: DeviceData, test: DeviceData,
                  n_classes: int, budget: int, store: PrefixStore
                  ) -> tuple[Tensor, Tensor] | None:
    """Prefix outputs for one run on its training subset (in `DeviceData.subset`'s order) and on
    the whole test split, through `store`, which holds them for whole splits. None when the
    prefix is cheaper to recompute (`worth_sharing`), when the run uses under half of the
    training split (its own prefix pass is then cheaper than one over the whole split), or when
    the outputs would exceed `budget`."""
    frozen = runner.frozen_upto
    if (not frozen or (spec.n_bob is not None and 2 * spec.n_bob < len(train))
            or not worth_sharing(runner, train)):
        return None
    out = []
    for data in (train, test):
        key = source_key(spec, train.input_shape, n_classes, frozen, data)
        rows = torch.arange(len(data), device=data.device)
        feats = prefix_outputs(runner, data, rows, budget, store, key)
        if feats is None:
            return None
        out.append(feats)
    if spec.n_bob is not None:  # the subset's rows, in its order
        out[0] = out[0][draw_subset(len(train), spec.n_bob, spec.seed).to(train.device)]
    return out[0], out[1]


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class PrefixStore:
    """The deepest prefix output computed so far per (source, split), within `budget` bytes
    (default: the store's share of the device's `MemoryPlan`, beside the FeatureCache's and the
    groups' shares); the oldest entries make room for new ones."""

    def __init__(self, budget: int | None = None, device: str | torch.device = "cpu"):
        self.budget = MemoryPlan.of(torch.device(device)).store if budget is None else budget
        self.entries: dict[tuple, tuple[int, Tensor, Tensor]] = {}  # key -> depth, rows, output

    def start(self, key: tuple, rows: Tensor, depth: int) -> tuple[int, Tensor | None]:
        """(e, output at depth e over `rows`) for the deepest stored e <= depth, or (0, None)."""
        entry = self.entries.get(key)
        if entry is None or entry[0] > depth:
            return 0, None
        stored, have, out = entry
        if len(have) == len(rows) and torch.equal(have, rows):
            return stored, out
        pos = torch.searchsorted(have, rows).clamp(max=len(have) - 1)
        if not torch.equal(have[pos], rows):  # some rows were never computed
            return 0, None
        return stored, out[pos]

    def keep(self, key: tuple, rows: Tensor, depth: int, out: Tensor) -> None:
        self.entries.pop(key, None)
        if _nbytes(out) > self.budget:
            return
        while sum(_nbytes(o) for _, _, o in self.entries.values()) + _nbytes(out) > self.budget:
            del self.entries[next(iter(self.entries))]  # the oldest
        self.entries[key] = (depth, rows, out)


def prefix_outputs(runner: Runner, data: DeviceData, rows: Tensor, budget: int,
                   store: PrefixStore | None, key: tuple) -> Tensor | None:
    """The output of `runner`'s frozen layers over rows `rows` (sorted) of `data`, continuing
    from the store's deepest output of the same source and split when there is one; None when
    it would exceed `budget` bytes."""
    depth = runner.frozen_upto
    start, x = store.start(key, rows, depth) if store is not None else (0, None)
    if x is None:
        part = DeviceData(data.images[rows], {}, data.mean, data.std)
        out = frozen_features(runner, part, budget)
        if out is None:  # over budget
            return None
    elif start == depth:
        return x  # served as stored: keep the entry, which may hold more rows
    else:
        layers = nn.Sequential(*runner.model.layers[start:depth]).eval()
        if x.dim() == 4:  # the layout the whole prefix would have computed in
            x = x.contiguous(memory_format=_memory_format(x.device))
        with torch.no_grad(), _autocast(x.device, runner.precision):
            out = torch.cat([layers(x[i:i + CHUNK]) for i in range(0, len(x), CHUNK)])
    if store is not None:
        store.keep(key, rows, depth, out)
    return out


class FeatureCache:
    """Frozen-prefix outputs shared by every group of one `train_group` call: per (source,
    split), the output over the rows that call's members use (`wanted`), within `budget` bytes
    in all. An entry is dropped once none of its `users` is still to train."""

    def __init__(self, budget: int, wanted: dict[tuple, Tensor], users: dict[tuple, int],
                 store: PrefixStore | None, subsets: dict[int, Tensor]):
        self.budget, self.wanted, self.users, self.store = budget, wanted, users, store
        self.subsets = subsets  # id(member) -> its training subset's rows, drawn once
        self.entries: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}  # rows, feats, labels

    def bytes(self) -> int:
        return sum(_nbytes(f) for _, f, _ in self.entries.values())

    def fits(self, rows: int, sample_bytes: int) -> bool:
        return self.bytes() + rows * sample_bytes <= self.budget

    def done(self, keys) -> None:
        for key in keys:
            self.users[key] -= 1
            if not self.users[key]:
                self.entries.pop(key, None)
