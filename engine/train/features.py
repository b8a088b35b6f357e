"""Frozen-prefix outputs shared between batched Bob runs (engine.train.batched).

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

from engine.train.trainer import (CHUNK, DeviceData, Runner, _autocast, _memory_format,
                                  frozen_features)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class PrefixStore:
    """The deepest prefix output computed so far per (source, split), within `budget` bytes."""

    def __init__(self, budget: int):
        self.budget = budget
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
        others = sum(_nbytes(o) for k, (_, _, o) in self.entries.items() if k != key)
        if others + _nbytes(out) <= self.budget:
            self.entries[key] = (depth, rows, out)


def prefix_outputs(runner: Runner, data: DeviceData, rows: Tensor, budget: int,
                   store: PrefixStore | None, key: tuple) -> Tensor:
    """The output of `runner`'s frozen layers over rows `rows` (sorted) of `data`, continuing
    from the store's deepest output of the same source and split when there is one."""
    depth = runner.frozen_upto
    start, x = store.start(key, rows, depth) if store is not None else (0, None)
    if x is None:
        part = DeviceData(data.images[rows], {}, data.mean, data.std)
        out = frozen_features(runner, part, budget)
    elif start == depth:
        out = x
    else:
        layers = nn.Sequential(*runner.model.layers[start:depth]).eval()
        if x.dim() == 4:  # the layout the whole prefix would have computed in
            x = x.contiguous(memory_format=_memory_format(x.device))
        with torch.no_grad(), _autocast(x.device):
            out = torch.cat([layers(x[i:i + CHUNK]) for i in range(0, len(x), CHUNK)])
    if store is not None:
        store.keep(key, rows, depth, out)
    return out


class FeatureCache:
    """Frozen-prefix outputs shared by every group of one `train_group` call: per (source,
    split), the output over the rows that call's members use (`wanted`), within `budget` bytes
    in all. An entry is dropped once none of its `users` is still to train."""

    def __init__(self, budget: int, wanted: dict[tuple, Tensor], users: dict[tuple, int],
                 store: PrefixStore | None = None):
        self.budget, self.wanted, self.users, self.store = budget, wanted, users, store
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
