"""Batched Bob fine-tunes: K runs ("members") of one group trained as one grouped network.

Members of a group share everything that fixes the step's shapes and arithmetic (`group_key`):
architecture and options, input shape, n_classes, frozen depth, epochs, optimizer, lr, batch size
and training-sample count, so they take the same number of equal-shaped steps in lock-step. They
may differ in seed (weights, subset, shuffling), mode, Alice and dataset. Each member gets exactly
the serial path's computation (`engine.sweep.executors.run_bob`): `prepare_bob`'s weights, the
subset of `DeviceData.subset`, `fit`'s batch order, its own optimizer state and BatchNorm
statistics; results agree with the serial path up to floating-point reassociation.

The grouped network and its step are engine.train.grouped. On the 2-core CPU, single-threaded,
oneDNN's grouped convolutions take 1.0-1.8x the time of K separate ones, so cnn groups with early
trainable convolutions gain nothing there; groups whose tail is linear layers (head-only, the
mlp's last layers) are where batching gains (100 head-only cnn runs: 24x serial, bench/RESULTS.md).

Chapters, in order:
1. Members and groups.
2. Data: each member's subset and batch order; frozen-prefix outputs computed once per
   (prefix source, dataset) over the samples its members use.
3. Training: memory-sized groups, halved on CUDA out-of-memory.
4. Evaluation.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.errors import EngineError
from engine.spec import BobSpec, frozen_prefix, n_layers
from engine.threads import keep_freed_memory
from engine.train import grouped
from engine.train.device import DeviceData, _autocast, _is_cuda, _memory_format, draw_subset
from engine.train.features import FeatureCache, PrefixStore, prefix_outputs, source, source_key
from engine.train.freeze import prepare_bob
from engine.train.models import build_model
from engine.train.trainer import CHUNK, epoch_batches, feature_budget, make_runner, run_epochs

LABEL = "bob_label"
ACTIVATION_COPIES = 4  # tensors kept per layer output for backward (conv, BN, ReLU, grad)
STATE_COPIES = 6  # param, grad, new param, 2 Adam moments, spare


# 1. Members and groups ---------------------------------------------------------------------------

@dataclass
class Member:
    spec: BobSpec
    train: DeviceData
    test: DeviceData
    alice_state: dict | None
    n_classes: int


def group_key(spec: BobSpec, input_shape, n_classes: int, n_train: int) -> tuple:
    """Runs with equal keys can train together; `n_train` = spec.n_bob or the split's size."""
    L = n_layers(spec.arch, spec.depth, spec.width, spec.global_pool)
    return (spec.arch, spec.depth, spec.width, spec.global_pool, tuple(input_shape), n_classes,
            frozen_prefix(L, spec.retrain_from, spec.mode), spec.epochs, spec.optimizer, spec.lr,
            spec.batch_size, n_train)


def _key(m: Member) -> tuple:
    return group_key(m.spec, m.train.input_shape, m.n_classes, m.spec.n_bob or len(m.train))


def _source(m: Member, frozen: int):
    return source(m.spec, frozen)


# 2. Data -----------------------------------------------------------------------------------------

def subset_positions(n_data: int, n: int | None, seed: int, device) -> Tensor:
    """The rows `DeviceData.subset(n, seed)` takes, in its order (the same CPU draw)."""
    if n is None:
        return torch.arange(n_data, device=device)
    return draw_subset(n_data, n, seed).to(device)


@dataclass
class Group:
    """A group's live state; `on_step` hooks and tests may read or swap members' slices
    (stacked tensors: `t.unflatten(0, (K, -1))[k]` is member k's)."""
    members: list[Member]
    frozen: int
    program: tuple
    template: dict[str, Tensor]  # member 0's initial state dict: names and shapes
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]  # BN running statistics of the tail
    opt: dict[str, dict[str, Tensor]]  # "buf" (SGD) or "m", "v" (Adam) -> name -> stacked
    tracked: list[dict[str, Tensor]]  # per member: initial BN num_batches_tracked
    prefixes: dict  # source -> Runner over a model holding that source's frozen layers
    generators: list[torch.Generator]  # per member: shuffling, as in `fit`
    rows: Tensor  # [K, n]: member k's j-th subset sample's row in `feats` (or in its split)
    labels: Tensor  # labels of `feats` rows (uncached: [K, n], each member's subset)
    feats: Tensor | None = None  # frozen-prefix outputs (or normalised inputs); None: per step
    steps: int = 0
    wall_s: float = 0.0
    train_metrics: list[dict] = field(default_factory=list)


def _feature_key(m: Member, frozen: int, data: DeviceData) -> tuple:
    return source_key(m.spec, m.train.input_shape, m.n_classes, frozen, data)


def _setup(members: list[Member], cache: FeatureCache) -> Group:
    m0 = members[0]
    device, spec = m0.train.device, m0.spec
    frozen = _key(m0)[6]
    model = build_model(spec.arch, m0.train.input_shape, m0.n_classes, depth=spec.depth,
                        width=spec.width, global_pool=spec.global_pool)
    model = model.to(device, memory_format=_memory_format(device))
    program = grouped.program(model, frozen)
    states, prefixes = [], {}
    for m in members:
        prepare_bob(model, m.alice_state, retrain_from=m.spec.retrain_from, mode=m.spec.mode,
                    seed=m.spec.seed)
        states.append({n: t.detach().clone() for n, t in model.state_dict().items()})
        src = _source(m, frozen)
        if src is not None and src not in prefixes:
            prefixes[src] = make_runner(copy.deepcopy(model).eval(), frozen)
    tail = [n for n in states[0] if int(n.split(".")[1]) >= frozen]
    pnames = [n for n, _ in model.named_parameters() if n in tail]
    bnames = [n for n in tail if n not in pnames and not n.endswith("num_batches_tracked")]
    params = grouped.pack(program, states, pnames)
    subsets = [cache.subsets[id(m)] for m in members]  # drawn once per train_group call
    group = Group(
        members=members, frozen=frozen, program=program, template=states[0], params=params,
        buffers=grouped.pack(program, states, bnames),
        opt={k: {n: torch.zeros_like(p) for n, p in params.items()}
             for k in (("buf",) if spec.optimizer == "sgd" else ("m", "v"))},
        tracked=[{n: t for n, t in s.items() if n.endswith("num_batches_tracked")} for s in states],
        prefixes=prefixes,
        generators=[torch.Generator().manual_seed(m.spec.seed) for m in members],  # CPU draws
        rows=torch.stack(subsets),
        labels=torch.stack([m.train.labels[LABEL][s] for m, s in zip(members, subsets)]))
    _cache_features(group, subsets, cache)
    return group


def _prefix_out(group: Group, m: Member, data: DeviceData, rows) -> Tensor:
    x = data.inputs(rows)
    src = _source(m, group.frozen)
    if src is None:
        return x
    with torch.no_grad(), _autocast(data.device):
        return group.prefixes[src].prefix(x)


def _prefix_all(group: Group, m: Member, data: DeviceData, idx: Tensor, budget: int,
                store: PrefixStore | None) -> Tensor:
    """The tail's inputs for rows `idx` of `data` (prefix outputs, or normalised inputs when
    nothing is frozen), in NCHW order unless the tail starts with a convolution: the tail
    flattens them, so a gathered batch is then a view, not a copy (copying channels-last rows
    took 4.6 s of a 20 s profile of 100 head-only members on the CPU)."""
    src = _source(m, group.frozen)
    if src is None:
        x = data.inputs(idx)
    else:
        x = prefix_outputs(group.prefixes[src], data, idx, budget, store,
                           _feature_key(m, group.frozen, data))
    return x if group.program[0][0] == "conv" else x.contiguous()


def _fill(group: Group, cache: FeatureCache, u: tuple, m: Member, data: DeviceData) -> None:
    """Compute the cache's entry `u`: member m's prefix outputs on the rows of `data` wanted."""
    rows = cache.wanted[u]
    cache.entries[u] = (rows, _prefix_all(group, m, data, rows, cache.budget, cache.store),
                        data.labels[LABEL][rows])


def _cache_features(group: Group, subsets: list[Tensor], cache: FeatureCache) -> None:
    """Point the group at its members' cached prefix outputs (computing the missing ones over
    every row any member of the call uses), all in one tensor `feats`, if they fit the cache's
    budget; else `feats` stays None (prefix per step)."""
    users: dict[tuple, list[int]] = {}
    for k, m in enumerate(group.members):
        users.setdefault(_feature_key(m, group.frozen, m.train), []).append(k)
    first = _prefix_out(group, group.members[0], group.members[0].train, slice(0, 1))
    missing = [u for u in users if u not in cache.entries]
    sample_bytes = first[0].numel() * first.element_size()
    if not cache.fits(sum(len(cache.wanted[u]) for u in missing), sample_bytes):
        return
    for u in missing:
        m = group.members[users[u][0]]
        _fill(group, cache, u, m, m.train)
    feats, labels, rows, offset = [], [], [None] * len(subsets), 0
    for u, ks in users.items():
        idx, f, y = cache.entries[u]
        feats.append(f)
        labels.append(y)
        for k in ks:
            rows[k] = offset + torch.searchsorted(idx, subsets[k])
        offset += len(idx)
    one = len(feats) == 1  # the common case (members sorted by source): no copy
    group.feats = feats[0] if one else torch.cat(feats)
    group.labels = labels[0] if one else torch.cat(labels)
    group.rows = torch.stack(rows)


def _inputs(group: Group, pos: Tensor) -> tuple[Tensor, Tensor]:
    """Tail inputs [K, B, ...] and labels [K, B] at subset positions `pos` [K, B]."""
    rows = group.rows.gather(1, pos)  # rows of `feats`, or (uncached) of its own split
    if group.feats is not None:  # index_select: 2-4x faster than feats[rows], 50 kB rows
        x = group.feats.index_select(0, rows.flatten())
        return x.unflatten(0, rows.shape), group.labels[rows]
    x = torch.stack([_prefix_out(group, m, m.train, r) for m, r in zip(group.members, rows)])
    return x, group.labels.gather(1, pos)


# 3. Training -------------------------------------------------------------------------------------

def _run(group: Group, compile: bool, on_step: Callable | None = None) -> None:
    spec, device = group.members[0].spec, group.rows.device
    K, n = group.rows.shape
    step_fn = grouped.step_fn(group.program, spec.optimizer, device, compile)
    n_steps = spec.epochs * max(1, n // spec.batch_size)
    hyper = grouped.hyper_table(spec.optimizer, spec.lr, n_steps, device)

    def batches():  # one epoch: every member's own order, as `fit` draws it
        order = torch.stack([torch.stack(epoch_batches(n, spec.batch_size, g, device))
                             for g in group.generators])  # [K, steps, B] subset positions
        for s in range(order.shape[1]):
            yield _inputs(group, order[:, s])

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if compile and _is_cuda(device):
            torch.compiler.cudagraph_mark_step_begin()
        group.params, group.buffers, group.opt, loss, right = step_fn(
            group.params, group.buffers, group.opt, x, y, hyper[group.steps])
        group.steps += 1
        if on_step is not None:
            on_step(group.steps - 1, loss, group)
        return loss * y.shape[1], right  # as `fit`: summed loss over the samples seen

    start = time.perf_counter()
    last = run_epochs(spec.epochs, batches, step)
    group.wall_s = time.perf_counter() - start
    seen = last["seen"]
    for ls, c in zip((last["loss_sum"] / seen).tolist(), (last["correct"] / seen).tolist()):
        group.train_metrics.append(dict(train_loss=ls, train_acc=c, seen=seen))
    # Own copies: under CUDA graphs the step's outputs live in memory the next replay reuses.
    group.params = {n: t.clone() for n, t in group.params.items()}
    group.buffers = {n: t.clone() for n, t in group.buffers.items()}


def member_state(group: Group, k: int) -> dict[str, Tensor]:
    """Member k's whole state dict, as the serial path's model.state_dict() would be."""
    K, m = len(group.members), group.members[k]
    src = _source(m, group.frozen)
    out = dict(group.prefixes[src].model.state_dict()) if src is not None else {}
    for n, t in {**group.params, **group.buffers}.items():
        out[n] = t.unflatten(0, (K, -1))[k].reshape(group.template[n].shape)
    for n, t in group.tracked[k].items():
        if int(n.split(".")[1]) >= group.frozen:
            t = t + group.steps  # one per step in train mode
        out[n] = t
    return {n: out[n] for n in group.template}


def _feature_cache(members: list[Member], frozen: int, budget: int, device,
                   store: PrefixStore | None = None) -> FeatureCache:
    """A FeatureCache for `members`: the rows each (source, split) is wanted for, and by how many
    members."""
    wanted: dict[tuple, list[Tensor]] = {}
    users: dict[tuple, int] = {}
    subsets = {id(m): subset_positions(len(m.train), m.spec.n_bob, m.spec.seed, device)
               for m in members}
    for m in members:
        for data in (m.train, m.test):
            key = _feature_key(m, frozen, data)
            users[key] = users.get(key, 0) + 1
            rows = (subsets[id(m)] if data is m.train
                    else torch.arange(len(m.test), device=device))
            wanted.setdefault(key, []).append(rows)
    return FeatureCache(budget, {k: torch.cat(v).unique() for k, v in wanted.items()}, users,
                        store, subsets)


def _sizes(m: Member, frozen: int) -> tuple[int, int]:
    """Bytes of one member's tail weights with their gradient and optimizer state, and of its
    activations per sample (float32)."""
    spec = m.spec
    model = build_model(spec.arch, m.train.input_shape, m.n_classes, depth=spec.depth,
                        width=spec.width, global_pool=spec.global_pool).eval()
    x = m.train.inputs(slice(0, 1)).cpu()
    with torch.no_grad():
        acts = [x] + model.activations(x)  # acts[i]: the input of layer i
    weights = sum(p.numel() for p in model.layers[frozen:].parameters()) * 4 * STATE_COPIES
    act = sum(a.numel() for a in acts[frozen:]) * 4 * ACTIVATION_COPIES
    return weights, act


def _plan(members: list[Member], budget: int, max_group: int | None) -> list[list[int]]:
    """Consecutive member indices per group, each within `budget` bytes and `max_group` members.
    Frozen features are not counted: the FeatureCache holds them within its own budget."""
    m0 = members[0]
    weights, act = _sizes(m0, _key(m0)[6])
    per_member = weights + act * m0.spec.batch_size
    cap = max(1, min(budget // per_member, max_group or len(members)))
    return [list(range(i, min(i + cap, len(members)))) for i in range(0, len(members), cap)]


def train_group(members: list[Member], device, *, max_group: int | None = None,
                compile: bool | None = None, on_step: Callable | None = None,
                return_state: bool = False, store: PrefixStore | None = None) -> list[dict]:
    """Train and evaluate `members` (one `group_key`); metrics per member as `run_bob` returns,
    in order. Members are sorted so those sharing frozen features train together; groups are
    sized to `feature_budget(device)` and halved on CUDA out-of-memory. `compile` None: on CUDA.
    `on_step(step, loss [K], group)` runs after each step (read `loss` at once: under CUDA
    graphs the next step reuses its memory); `return_state` adds "state" (`member_state`).
    `store`: prefix outputs kept across calls (engine.train.features.PrefixStore)."""
    if not members:
        return []
    device = torch.device(device)
    keys = {_key(m) for m in members}
    if len(keys) != 1:
        raise EngineError(f"members of one group must share a group_key; got {len(keys)} keys")
    compile = _is_cuda(device) if compile is None else compile
    if device.type == "cpu":
        keep_freed_memory()  # each step gathers K batches of features: no page faults per step
    frozen = _key(members[0])[6]
    order = sorted(range(len(members)), key=lambda k: (
        str(_source(members[k], frozen)), id(members[k].train), k))
    budget = feature_budget(device)
    cache = _feature_cache(members, frozen, budget, device, store)
    results: dict[int, dict] = {}

    def run(idx: list[int]) -> None:
        try:
            group = _setup([members[order[i]] for i in idx], cache)
            _run(group, compile, on_step)
            out = _evaluate(group, budget, cache)
        except torch.cuda.OutOfMemoryError:
            if len(idx) == 1:
                raise
            cache.entries.clear()
            torch.cuda.empty_cache()
            run(idx[: len(idx) // 2])  # members are deterministic: retrying loses nothing
            run(idx[len(idx) // 2:])
            return
        for k, (i, metrics) in enumerate(zip(idx, out)):
            if return_state:
                metrics["state"] = member_state(group, k)
            results[order[i]] = metrics
        cache.done(_feature_key(m, frozen, d) for m in group.members for d in (m.train, m.test))

    for idx in _plan([members[i] for i in order], budget, max_group):
        run(idx)
    return [results[k] for k in range(len(members))]


# 4. Evaluation -----------------------------------------------------------------------------------

def _test_inputs(group: Group, cache: FeatureCache, ks: list[int], lo: int, hi: int) -> Tensor:
    """Tail inputs [len(ks), hi - lo, ...] of test rows lo..hi-1 for members `ks`: from the
    cache, else the prefix now, once per (source, test split); members that share one are given
    one tensor expanded over them (`_forward` then runs one matmul for all)."""
    keys = [_feature_key(group.members[k], group.frozen, group.members[k].test) for k in ks]
    x = {}
    for k, u in zip(ks, keys):
        if u not in x:
            m = group.members[k]
            x[u] = (cache.entries[u][1][lo:hi] if u in cache.entries
                    else _prefix_out(group, m, m.test, slice(lo, hi)))
    if len(x) == 1:
        one = next(iter(x.values()))
        return one.unsqueeze(0).expand(len(ks), *one.shape)
    return torch.stack([x[u] for u in keys])


def _evaluate(group: Group, budget: int, cache: FeatureCache) -> list[dict]:
    """Test accuracy and mean cross-entropy per member, all layers in eval mode; members whose
    test splits differ in length are evaluated in separate passes. Test-split prefix outputs go
    to the cache when they fit (the next group of the same source reuses them)."""
    start = time.perf_counter()
    K, device = len(group.members), group.rows.device
    if group.frozen and group.feats is not None:
        sample_bytes = group.feats[0].numel() * group.feats.element_size()
        for m in group.members:
            u = _feature_key(m, group.frozen, m.test)
            if u not in cache.entries and cache.fits(len(m.test), sample_bytes):
                _fill(group, cache, u, m, m.test)
    per_sample = _sizes(group.members[0], 0)[1]
    chunk = max(1, min(CHUNK, budget // (per_sample * K)))  # samples per pass
    loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
    correct = torch.zeros(K, dtype=torch.int64, device=device)
    n_test = [len(m.test) for m in group.members]
    for length in set(n_test):
        ks = [k for k in range(K) if n_test[k] == length]
        sel = torch.tensor(ks, device=device)
        params = {n: t.unflatten(0, (K, -1))[sel].flatten(0, 1)
                  if grouped.is_grouped(group.program, n) else t[sel]
                  for n, t in group.params.items()}
        buffers = {n: t.unflatten(0, (K, -1))[sel].flatten(0, 1)
                   for n, t in group.buffers.items()}
        with torch.no_grad(), _autocast(device):
            for lo in range(0, length, chunk):
                x = _test_inputs(group, cache, ks, lo, lo + chunk)
                y = torch.stack([group.members[k].test.labels[LABEL][lo:lo + chunk] for k in ks])
                logits, _ = grouped.forward(group.program, params, buffers,
                                            grouped.arrange(x, group.program[0][0]), len(ks),
                                            False)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                       reduction="none").view(len(ks), -1).sum(1)
                loss_sum[sel] += loss.double()
                correct[sel] += (logits.argmax(-1) == y).sum(1)
    wall = group.wall_s + time.perf_counter() - start
    out = []
    for k, m in enumerate(group.members):
        tm = group.train_metrics[k]
        out.append({"n_layers": n_layers(m.spec.arch, m.spec.depth, m.spec.width,
                                         m.spec.global_pool),
                    "n_bob": group.rows.shape[1], "test_acc": correct[k].item() / n_test[k],
                    "test_loss": loss_sum[k].item() / n_test[k], "train_acc": tm["train_acc"],
                    "train_loss": tm["train_loss"], "wall_s": wall / K,
                    "samples_per_s": m.spec.epochs * tm["seen"] * K / group.wall_s})
    return out
