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
   (prefix source, dataset) over the samples its members use, or, where they do not fit the
   memory plan, the frozen layers run inside the compiled step (engine.train.grouped).
3. Training: groups sized by one memory plan (engine.train.device.MemoryPlan), padded to the
   compiled group size with dummy members whose results are dropped, halved on CUDA
   out-of-memory; per-group timings in `GROUP_STATS`.
4. Evaluation.
"""
from __future__ import annotations

import collections
import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.errors import EngineError
from engine.spec import BobSpec, frozen_prefix, n_layers
from engine.threads import keep_freed_memory
from engine.train import grouped
from engine.train.device import (DeviceData, MemoryPlan, _autocast, _is_cuda, _memory_format,
                                 draw_subset, precision_used)
from engine.train.features import FeatureCache, PrefixStore, prefix_outputs, source, source_key
from engine.train.freeze import prepare_bob
from engine.train.models import build_model
from engine.train.trainer import CHUNK, epoch_batches, make_runner, run_epochs

LABEL = "bob_label"
ACTIVATION_COPIES = 4  # tensors kept per layer output for backward (conv, BN, ReLU, grad)
STATE_COPIES = 6  # param, grad, new param, 2 Adam moments, spare
# One dict per trained group, newest last (bench/gpu_check.py prints them): frozen, K, K_padded,
# n (samples per member), steps, compile_s, host_ms_per_step, gpu_ms_per_step (CUDA events),
# features ("cached", "in-step": the frozen layers ran inside the step, "inputs": nothing frozen
# and the inputs were not cached), peak_mem_gib (CUDA), wall_s.
GROUP_STATS: collections.deque = collections.deque(maxlen=4096)


# 1. Members and groups ---------------------------------------------------------------------------

@dataclass
class Member:
    """One run of a group. An Alice is a member too (engine.train.batched_alice): a scratch
    run on `alice_label` whose initial weights come from `init_seed` (else `spec.seed`, which
    always seeds the subset and the shuffling)."""
    spec: BobSpec
    train: DeviceData
    test: DeviceData
    alice_state: dict | None
    n_classes: int
    label: str = LABEL
    init_seed: int | None = None


def group_key(spec: BobSpec, input_shape, n_classes: int, n_train: int,
              label: str = LABEL) -> tuple:
    """Runs with equal keys can train together; `n_train` = spec.n_bob or the split's size.
    The label is part of it: a group's cached features carry one label per row."""
    L = n_layers(spec.arch, spec.depth, spec.width, spec.global_pool)
    return (spec.arch, spec.depth, spec.width, spec.global_pool, tuple(input_shape), n_classes,
            frozen_prefix(L, spec.retrain_from, spec.mode), spec.epochs, spec.optimizer, spec.lr,
            spec.batch_size, n_train, label, spec.precision)


def _key(m: Member) -> tuple:
    return group_key(m.spec, m.train.input_shape, m.n_classes, m.spec.n_bob or len(m.train),
                     m.label)


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
    (stacked tensors: `t.unflatten(0, (len(slots), -1))[k]` is slot k's)."""
    members: list[Member]
    slots: list[Member]  # the members, then dummies (member 0 again) up to the compiled size
    frozen: int
    program: tuple
    template: dict[str, Tensor]  # member 0's initial state dict: names and shapes
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]  # BN running statistics of the tail
    opt: dict[str, dict[str, Tensor]]  # "buf" (SGD) or "m", "v" (Adam) -> name -> stacked
    tracked: list[dict[str, Tensor]]  # per member: initial BN num_batches_tracked
    prefixes: dict  # source -> Runner over a model holding that source's frozen layers
    generators: list[torch.Generator]  # per slot: shuffling, as in `fit`
    rows: Tensor  # [slots, n]: slot k's j-th subset sample's row in `feats` (or in its split)
    labels: Tensor  # labels of `feats` rows (uncached: [slots, n], each slot's subset)
    feats: Tensor | None = None  # frozen-prefix outputs (or normalised inputs); None: per step
    prefix: tuple = ()  # uncached with frozen layers: their program, run inside the step
    frozen_state: dict[str, Tensor] = field(default_factory=dict)  # its stacked weights, BN stats
    steps: int = 0
    wall_s: float = 0.0
    train_metrics: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def _feature_key(m: Member, frozen: int, data: DeviceData) -> tuple:
    return source_key(m.spec, m.train.input_shape, m.n_classes, frozen, data)


def _setup(members: list[Member], cache: FeatureCache, size: int | None = None) -> Group:
    """The group of `members`, padded with dummies (member 0 again) to `size` slots."""
    m0 = members[0]
    device, spec = m0.train.device, m0.spec
    frozen = _key(m0)[6]
    model = build_model(spec.arch, m0.train.input_shape, m0.n_classes, depth=spec.depth,
                        width=spec.width, global_pool=spec.global_pool)
    model = model.to(device, memory_format=_memory_format(device))
    program = grouped.program(model, frozen)
    slots = members + [m0] * (max(size or 0, len(members)) - len(members))
    states, prefixes = [], {}
    for m in members:
        prepare_bob(model, m.alice_state, retrain_from=m.spec.retrain_from, mode=m.spec.mode,
                    seed=m.spec.seed if m.init_seed is None else m.init_seed)
        states.append({n: t.detach().clone() for n, t in model.state_dict().items()})
        src = _source(m, frozen)
        if src is not None and src not in prefixes:
            prefixes[src] = make_runner(copy.deepcopy(model).eval(), frozen,
                                        precision=spec.precision)
    states += [states[0]] * (len(slots) - len(members))
    layer = lambda n: int(n.split(".")[1])  # noqa: E731
    tail = [n for n in states[0] if layer(n) >= frozen]
    pnames = [n for n, _ in model.named_parameters() if n in tail]
    bnames = [n for n in tail if n not in pnames and not n.endswith("num_batches_tracked")]
    params = grouped.pack(program, states, pnames)
    subsets = [cache.subsets[id(m)] for m in slots]  # drawn once per train_group call
    group = Group(
        members=members, slots=slots, frozen=frozen, program=program, template=states[0],
        params=params, buffers=grouped.pack(program, states, bnames),
        opt={k: {n: torch.zeros_like(p) for n, p in params.items()}
             for k in (("buf",) if spec.optimizer == "sgd" else ("m", "v"))},
        tracked=[{n: t for n, t in s.items() if n.endswith("num_batches_tracked")}
                 for s in states[:len(members)]],
        prefixes=prefixes,
        generators=[torch.Generator().manual_seed(m.spec.seed) for m in slots],  # CPU draws
        rows=torch.stack(subsets),
        labels=torch.stack([m.train.labels[m.label][s] for m, s in zip(slots, subsets)]))
    _cache_features(group, subsets, cache)
    if group.feats is None and frozen:
        group.prefix = grouped.program(model, 0, upto=frozen)
        fnames = [n for n in states[0]
                  if layer(n) < frozen and not n.endswith("num_batches_tracked")]
        group.frozen_state = grouped.pack(group.prefix, states, fnames)
    return group


def _prefix_out(group: Group, m: Member, data: DeviceData, rows) -> Tensor:
    x = data.inputs(rows)
    src = _source(m, group.frozen)
    if src is None:
        return x
    with torch.no_grad(), _autocast(data.device, m.spec.precision):
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
                        data.labels[m.label][rows])


def _cache_features(group: Group, subsets: list[Tensor], cache: FeatureCache) -> None:
    """Point the group at its members' cached prefix outputs (computing the missing ones over
    every row any member of the call uses), all in one tensor `feats`, if they fit the cache's
    budget; else `feats` stays None (the frozen layers run inside the step)."""
    users: dict[tuple, list[int]] = {}
    for k, m in enumerate(group.slots):
        users.setdefault(_feature_key(m, group.frozen, m.train), []).append(k)
    first = _prefix_out(group, group.members[0], group.members[0].train, slice(0, 1))
    missing = [u for u in users if u not in cache.entries]
    sample_bytes = first[0].numel() * first.element_size()
    if not cache.fits(sum(len(cache.wanted[u]) for u in missing), sample_bytes):
        return
    for u in missing:
        m = group.slots[users[u][0]]
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
    """Step inputs [slots, B, ...] and labels [slots, B] at subset positions `pos`: cached tail
    inputs, or each slot's normalised images (the step runs the frozen layers on them)."""
    rows = group.rows.gather(1, pos)  # rows of `feats`, or (uncached) of its own split
    if group.feats is not None:  # index_select: 2-4x faster than feats[rows], 50 kB rows
        x = group.feats.index_select(0, rows.flatten())
        return x.unflatten(0, rows.shape), group.labels[rows]
    x = torch.stack([m.train.inputs(r) for m, r in zip(group.slots, rows)])
    return x, group.labels.gather(1, pos)


# 3. Training -------------------------------------------------------------------------------------

def _run(group: Group, compile: bool, on_step: Callable | None = None,
         backend: str = "inductor", on_epoch: Callable | None = None) -> None:
    """Train the group's epochs; `on_epoch(epoch, [{"train_loss", "train_acc"}] per member)`
    after each."""
    spec, device = group.members[0].spec, group.rows.device
    K = len(group.members)
    n = group.rows.shape[1]
    step_fn = grouped.step_fn(group.program, group.prefix, spec.optimizer, device, compile,
                              backend, spec.precision)
    n_steps = spec.epochs * max(1, n // spec.batch_size)
    hyper = grouped.hyper_table(spec.optimizer, spec.lr, n_steps, device)
    cuda = _is_cuda(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    host = []  # seconds per step, host side (on CUDA: launching, unless the queue is full)

    def batches():  # one epoch: every slot's own order, as `fit` draws it
        order = torch.stack([torch.stack(epoch_batches(n, spec.batch_size, g, device))
                             for g in group.generators])  # [slots, steps, B] subset positions
        for s in range(order.shape[1]):
            yield _inputs(group, order[:, s])

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        t = time.perf_counter()
        group.params, group.buffers, group.opt, loss, right = step_fn(
            group.params, group.buffers, group.opt, group.frozen_state, x, y,
            hyper[group.steps])
        host.append(time.perf_counter() - t)
        if cuda and group.steps == 0:
            events[0].record()
        group.steps += 1
        if on_step is not None:
            on_step(group.steps - 1, loss[:K], group)
        return loss[:K] * y.shape[1], right[:K]  # as `fit`: summed loss over the samples seen

    def per_member(totals: dict) -> list[dict]:
        seen = totals["seen"]
        return [dict(train_loss=ls, train_acc=c, seen=seen) for ls, c in
                zip((totals["loss_sum"] / seen).tolist(), (totals["correct"] / seen).tolist())]

    start = time.perf_counter()
    last = run_epochs(spec.epochs, batches, step, on_epoch=None if on_epoch is None else
                      lambda epoch, totals: on_epoch(epoch, per_member(totals)))
    if cuda:
        events[1].record()
        torch.cuda.synchronize(device)
    group.wall_s = time.perf_counter() - start
    group.train_metrics = per_member(last)
    rest = sorted(host[1:]) or [0.0]
    group.stats = dict(
        frozen=group.frozen, K=K, K_padded=len(group.slots), n=n, steps=group.steps,
        # The first step compiles (when it is the program's first at this size); the others
        # only run.
        compile_s=round(max(0.0, host[0] - rest[len(rest) // 2]), 3),
        host_ms_per_step=round(1e3 * sum(host[1:]) / max(1, len(host) - 1), 3),
        gpu_ms_per_step=(round(events[0].elapsed_time(events[1]) / max(1, group.steps - 1), 3)
                         if cuda and group.steps > 1 else None),
        features=("cached" if group.feats is not None
                  else "in-step" if group.prefix else "inputs"),
        peak_mem_gib=(round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                      if cuda else None),
        wall_s=round(group.wall_s, 3))
    GROUP_STATS.append(group.stats)


def member_state(group: Group, k: int) -> dict[str, Tensor]:
    """Member k's whole state dict, as the serial path's model.state_dict() would be."""
    slots, m = len(group.slots), group.members[k]
    src = _source(m, group.frozen)
    out = dict(group.prefixes[src].model.state_dict()) if src is not None else {}
    for n, t in {**group.params, **group.buffers}.items():
        out[n] = t.unflatten(0, (slots, -1))[k].reshape(group.template[n].shape)
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


def _sizes(m: Member, frozen: int) -> tuple[int, int, int]:
    """Bytes of one member's tail weights with their gradient and optimizer state; of its
    activations per training sample (float32; the frozen layers', which run without gradient
    when not cached, once); of its frozen-prefix output per sample as cached (bf16 under bf16
    autocast, else float32)."""
    spec = m.spec
    model = build_model(spec.arch, m.train.input_shape, m.n_classes, depth=spec.depth,
                        width=spec.width, global_pool=spec.global_pool).eval()
    x = m.train.inputs(slice(0, 1)).cpu()
    with torch.no_grad():
        acts = [x] + model.activations(x)  # acts[i]: the input of layer i
    weights = sum(p.numel() for p in model.layers[frozen:].parameters()) * 4 * STATE_COPIES
    act = (sum(a.numel() for a in acts[frozen:]) * 4 * ACTIVATION_COPIES
           + sum(a.numel() for a in acts[1:frozen + 1]) * 4)
    bf16 = precision_used(spec.precision, m.train.device) == "bf16"
    feature = acts[frozen].numel() * (2 if frozen and bf16 else 4)
    return weights, act, feature


def _plan(members: list[Member], plan: MemoryPlan, cache: FeatureCache,
          max_group: int | None, compile: bool) -> list[tuple[list[int], int]]:
    """(consecutive member indices, slots) per group. A group is closed when one more member
    would pass the groups' share of the memory plan or `max_group`, or when the frozen features
    its members add would pass the features' share (members come sorted by source, so a
    closed group's features are dropped before the next group's are computed). A compiled
    group is padded to `grouped.padded_size` slots, within the same share."""
    m0 = members[0]
    frozen = _key(m0)[6]
    weights, act, feature = _sizes(m0, frozen)
    per_member = weights + act * m0.spec.batch_size
    cap = max(1, plan.groups // per_member)
    cap = min(cap, max_group or cap)
    pad = compile and cap >= grouped.K_MULTIPLE
    if pad:  # a group's padded slots stay within the cap
        cap -= cap % grouped.K_MULTIPLE
    groups: list[list[int]] = []
    current: list[int] = []
    keys: set = set()
    nbytes = 0
    for i, m in enumerate(members):
        mine = {_feature_key(m, frozen, d) for d in (m.train, m.test)}
        add = sum(len(cache.wanted[u]) for u in mine - keys) * feature
        if current and (len(current) >= cap or nbytes + add > plan.features):
            groups.append(current)
            current, keys, nbytes = [], set(), 0
            add = sum(len(cache.wanted[u]) for u in mine) * feature
        current.append(i)
        keys |= mine
        nbytes += add
    groups.append(current)
    return [(g, grouped.padded_size(len(g)) if pad else len(g)) for g in groups]


def train_group(members: list[Member], device, *, max_group: int | None = None,
                compile: bool | None = None, on_step: Callable | None = None,
                return_state: bool = False, store: PrefixStore | None = None,
                backend: str = "inductor", log: Callable[[str], None] | None = None,
                save_epochs: Iterable[int] = (), on_save: Callable | None = None) -> list[dict]:
    """Train and evaluate `members` (one `group_key`); metrics per member as `run_bob` returns,
    in order. Members are sorted so those sharing frozen features train together; groups are
    sized by the device's `MemoryPlan` (taken once per call) and halved on CUDA out-of-memory.
    `compile` None: on CUDA (`backend`: torch.compile's). `on_step(step, loss [K], group)` runs
    after each step; `return_state` adds "state" (`member_state`). `store`: prefix outputs kept
    across calls (engine.train.features.PrefixStore). `log` gets a line per group that compiled
    for a second or more. At each epoch of `save_epochs` (0: before training),
    `on_save(epoch, group, metrics)` gets per member {"test_acc", "test_loss"} and, after epoch
    0, that epoch's {"train_loss", "train_acc"} (Alice's checkpoints, engine.train.batched_alice;
    `member_state(group, k)` gives member k's weights then)."""
    if not members:
        return []
    device = torch.device(device)
    keys = {_key(m) for m in members}
    if len(keys) != 1:
        raise EngineError(f"members of one group must share a group_key; got {len(keys)} keys")
    compile = _is_cuda(device) if compile is None else compile
    if device.type == "cpu":
        keep_freed_memory()  # each step gathers K batches of features: no page faults per step
    else:
        # Grouped convolutions: cuDNN's default heuristics pick slow kernels for some shapes;
        # benchmarking picks one per shape, once per process (static shapes: few of them).
        torch.backends.cudnn.benchmark = True
    frozen = _key(members[0])[6]
    order = sorted(range(len(members)), key=lambda k: (
        str(_source(members[k], frozen)), id(members[k].train), k))
    plan = MemoryPlan.of(device)
    cache = _feature_cache(members, frozen, plan.features, device, store)
    results: dict[int, dict] = {}

    def run(idx: list[int], size: int) -> None:
        try:
            group = _setup([members[order[i]] for i in idx], cache, size)
            save = set(save_epochs) if on_save is not None else set()

            def saved(epoch: int, train: list[dict]) -> None:
                if epoch in save:
                    test = _test_metrics(group, plan.groups, cache)
                    on_save(epoch, group, [{**t, "test_acc": a, "test_loss": ls}
                                           for t, (a, ls) in zip(train, test)])

            saved(0, [{} for _ in idx])
            _run(group, compile, on_step, backend, saved if save else None)
            out = _evaluate(group, plan.groups, cache)
        except torch.cuda.OutOfMemoryError:
            if len(idx) == 1:
                raise
            cache.entries.clear()
            torch.cuda.empty_cache()
            half = [idx[: len(idx) // 2], idx[len(idx) // 2:]]
            for part in half:  # members are deterministic: retrying loses nothing
                run(part, grouped.padded_size(len(part)) if size > len(idx) else len(part))
            return
        for k, (i, metrics) in enumerate(zip(idx, out)):
            if return_state:
                metrics["state"] = member_state(group, k)
            results[order[i]] = metrics
        if log is not None and group.stats["compile_s"] >= 1:
            st = group.stats
            log(f"compiled the batched step ({members[0].spec.arch}, frozen {frozen}, "
                f"{st['K_padded']} slots): {st['compile_s']:.1f}s")
        cache.done(_feature_key(m, frozen, d) for m in group.members for d in (m.train, m.test))

    for idx, size in _plan([members[i] for i in order], plan, cache, max_group, compile):
        run(idx, size)
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


def _test_metrics(group: Group, budget: int, cache: FeatureCache) -> list[tuple[float, float]]:
    """(test accuracy, mean cross-entropy) per member, all layers in eval mode; members whose
    test splits differ in length are evaluated in separate passes. Test-split prefix outputs go
    to the cache when they fit (the next group of the same source reuses them)."""
    K, device = len(group.members), group.rows.device
    if group.frozen and group.feats is not None:
        sample_bytes = group.feats[0].numel() * group.feats.element_size()
        for m in group.members:
            u = _feature_key(m, group.frozen, m.test)
            if u not in cache.entries and cache.fits(len(m.test), sample_bytes):
                _fill(group, cache, u, m, m.test)
    slots = len(group.slots)
    per_sample = _sizes(group.members[0], 0)[1]
    chunk = max(1, min(CHUNK, budget // (per_sample * K)))  # samples per pass
    loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
    correct = torch.zeros(K, dtype=torch.int64, device=device)
    n_test = [len(m.test) for m in group.members]
    for length in set(n_test):
        ks = [k for k in range(K) if n_test[k] == length]
        sel = torch.tensor(ks, device=device)
        params = {n: t.unflatten(0, (slots, -1))[sel].flatten(0, 1)
                  if grouped.is_grouped(group.program, n) else t[sel]
                  for n, t in group.params.items()}
        buffers = {n: t.unflatten(0, (slots, -1))[sel].flatten(0, 1)
                   for n, t in group.buffers.items()}
        with torch.no_grad(), _autocast(device, group.members[0].spec.precision):
            for lo in range(0, length, chunk):
                x = _test_inputs(group, cache, ks, lo, lo + chunk)
                y = torch.stack([group.members[k].test.labels[group.members[k].label]
                                 [lo:lo + chunk] for k in ks])
                logits, _ = grouped.forward(group.program, params, buffers,
                                            grouped.arrange(x, group.program[0][0]), len(ks),
                                            False)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                       reduction="none").view(len(ks), -1).sum(1)
                loss_sum[sel] += loss.double()
                correct[sel] += (logits.argmax(-1) == y).sum(1)
    return [(c / n, s / n) for c, s, n in zip(correct.tolist(), loss_sum.tolist(), n_test)]


def _evaluate(group: Group, budget: int, cache: FeatureCache) -> list[dict]:
    """`run_bob`'s metrics per member: `_test_metrics` and the last epoch's training metrics."""
    start = time.perf_counter()
    K = len(group.members)
    test = _test_metrics(group, budget, cache)
    wall = group.wall_s + time.perf_counter() - start
    out = []
    for k, m in enumerate(group.members):
        tm = group.train_metrics[k]
        out.append({"n_layers": n_layers(m.spec.arch, m.spec.depth, m.spec.width,
                                         m.spec.global_pool),
                    "n_bob": group.rows.shape[1], "test_acc": test[k][0],
                    "test_loss": test[k][1], "train_acc": tm["train_acc"],
                    "train_loss": tm["train_loss"], "wall_s": wall / K,
                    "samples_per_s": m.spec.epochs * tm["seen"] * K / group.wall_s,
                    "precision": precision_used(m.spec.precision, group.rows.device)})
    return out
