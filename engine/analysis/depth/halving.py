"""Short fine-tunes with successive halving over the depths (Jamieson & Talwalkar 2016; the
standard early-stopping baseline). Bob's samples are split 80/20 (seeded) into a fitting and a
validation part. Round r fine-tunes each surviving depth from Alice's weights, exactly as the
sweep does (the sweep's code and settings) but on fewer sample passes, scores it by validation
accuracy, and keeps the better half (rounded up) for the next round, whose members get twice the
passes. The passes of all rounds together are FRACTION of the sweep group's (L depths x epochs x
n_bob), fixed in advance. Score: the last round a depth reached plus its accuracy there, so later
survivors rank higher."""
from __future__ import annotations

import math

import numpy as np
import torch

from engine.analysis.depth.cost import run_flops
from engine.spec import BobSpec
from engine.train.device import DeviceData

FRACTION = 0.1      # of the sweep group's training sample passes
VALIDATION = 0.2    # share of Bob's samples held out for scoring
CPU = torch.device("cpu")


def _split(data: DeviceData, seed: int) -> tuple[DeviceData, DeviceData]:
    n = len(data)
    n_val = max(1, int(round(VALIDATION * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    part = lambda idx: DeviceData(data.images[idx], {k: v[idx] for k, v in data.labels.items()},  # noqa: E731
                                  data.mean, data.std)
    return part(perm[n_val:]), part(perm[:n_val])


def _rounds(L: int) -> list[int]:
    sizes = [L]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes[:-1] or [1]


def _train(task, depths: list[int], n: int, epochs: int, fit: DeviceData,
           val: DeviceData) -> list[float]:
    """Validation accuracy of a fine-tune from each depth, on `n` fitting samples for `epochs`."""
    from engine.sweep.executors import batchable, run_bob, train_groups
    from engine.train.batched import Member
    from engine.train.trainer import CompiledModelCache
    s, b = task.alice.spec, task.budget
    specs = [BobSpec(alice_id=task.alice_id, dataset=task.dataset_key, arch=s["arch"],
                     retrain_from=l, mode="finetune", n_bob=n, seed=task.seed, epochs=epochs,
                     optimizer=b.optimizer, lr=b.lr, batch_size=b.batch_size, depth=s["depth"],
                     width=s["width"], global_pool=s["global_pool"]) for l in depths]
    state = task.alice.state_dict()
    acc: dict[int, float] = {}
    grouped = [sp for sp in specs if batchable(sp, CPU)]
    members = [Member(sp, fit, val, state, task.n_classes) for sp in grouped]
    for sp, m in train_groups(members, CPU, None):
        acc[sp.retrain_from] = m["test_acc"]
    cache = CompiledModelCache(CPU, compile=False)
    for sp in specs:
        if sp not in grouped:
            acc[sp.retrain_from] = run_bob(sp, fit, val, n_classes=task.n_classes,
                                           alice_state=state, cache=cache,
                                           device=CPU)["test_acc"]
    return [acc[l] for l in depths]


def predict(task) -> np.ndarray:
    fit, val = _split(task.data, task.seed)
    L, sizes = task.L, _rounds(task.L)
    passes = FRACTION * L * task.budget.epochs * task.n
    base = passes / sum(k * 2 ** r for r, k in enumerate(sizes))  # round 0's passes per depth
    scores = np.zeros(L)
    alive = list(range(1, L + 1))
    for r, _ in enumerate(sizes):
        want = max(1.0, base * 2 ** r)
        n = int(min(len(fit), max(1, round(want))))
        epochs = max(1, int(round(want / n)))
        accs = _train(task, alive, n, epochs, fit, val)
        for l, a in zip(alive, accs):
            scores[l - 1] = r + a
            task.count(run_flops(task.fwd, l, n, epochs, len(val)))
        keep = math.ceil(len(alive) / 2)
        order = sorted(zip(accs, alive), key=lambda t: (-t[0], -t[1]))  # ties: deeper first
        alive = sorted(l for _, l in order[:keep])
    return scores
