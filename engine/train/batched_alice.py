"""Alices of one shape pre-trained together as one batched group (engine.train.batched).

An Alice is exactly a batched member with nothing frozen: a scratch run on `alice_label` over
the whole training split, her initial weights drawn from `alice.init_seed(seed)` and her batches
shuffled by `seed`, as `engine.train.alice.train_alice` does. She gets the same checkpoints
through the same `write(epoch, state_dict, model_spec, metrics)` (epoch None: final), with the
same metrics, so `pretrain`'s files, resume and verification do not change. Her weights and
metrics agree with `train_alice`'s up to floating-point reassociation (tests/test_batched_alice.py).

On the GPU an Alice costs as much as a whole-network Bob run, and a sweep has one per (pair,
beta, arch, seed): trained one at a time, eager, they were estimated at 55-75% of a paper sweep's
training time once Bob is batched (issue 16).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

import torch

from engine import __version__
from engine.spec import AliceSpec, BobSpec
from engine.train import batched
from engine.train.alice import LABEL, device_name, init_seed
from engine.train.device import DeviceData
from engine.train.models import build_model

Write = Callable[[AliceSpec, int | None, dict, dict, dict], None]


def as_member(spec: AliceSpec, train: DeviceData, test: DeviceData, n_classes: int
              ) -> batched.Member:
    """Alice `spec` as a batched member: the scratch run her pre-training is."""
    run = BobSpec(alice_id="", dataset=spec.dataset, arch=spec.arch, retrain_from=1,
                  mode="scratch", seed=spec.seed, epochs=spec.epochs, optimizer=spec.optimizer,
                  lr=spec.lr, batch_size=spec.batch_size, depth=spec.depth, width=spec.width,
                  global_pool=spec.global_pool, precision=spec.precision)
    return batched.Member(run, train, test, None, n_classes, label=LABEL,
                          init_seed=init_seed(spec.seed))


def batchable(spec: AliceSpec, device: torch.device) -> bool:
    """Whether Alice `spec` trains in a batched group on `device`: the architectures the
    batched trainer has, and on the CPU only the mlp (a cnn Alice trains every convolution,
    which oneDNN's grouped convolution does no faster than separately: engine.sweep.executors
    .batchable)."""
    return spec.arch == "mlp" or (spec.arch == "cnn" and device.type != "cpu")


def train_alices(specs: Iterable[AliceSpec], data: dict[str, tuple], device,
                 save_epochs: Iterable[int] = (), *, write: Write,
                 max_group: int | None = None, compile: bool | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Pre-train `specs`, those of one group shape together. `data`: dataset key -> (train,
    test, n_classes) on `device`. `write(spec, epoch, state, model_spec, metrics)` receives each
    epoch of `save_epochs` (0 = initial weights), then (epoch None) the final weights, as
    `train_alice`'s `write` does. Returns the final metrics per Alice ID."""
    log = log or (lambda msg: None)
    device = torch.device(device)
    save_epochs = sorted(set(save_epochs))
    buckets: dict[tuple, list[tuple[AliceSpec, batched.Member]]] = {}
    for spec in specs:
        train, test, classes = data[spec.dataset]
        m = as_member(spec, train, test, classes)
        buckets.setdefault(batched._key(m), []).append((spec, m))
    finals: dict[str, dict] = {}
    for pairs in buckets.values():
        finals.update(_train_bucket(pairs, device, save_epochs, write, max_group, compile, log))
    return finals


def _train_bucket(pairs: list[tuple[AliceSpec, batched.Member]], device: torch.device,
                  save_epochs: list[int], write: Write, max_group, compile, log) -> dict:
    m0 = pairs[0][1]
    model = build_model(m0.spec.arch, m0.train.input_shape, m0.n_classes, depth=m0.spec.depth,
                        width=m0.spec.width, global_pool=m0.spec.global_pool)
    by_member = {id(m): spec for spec, m in pairs}

    def model_spec(spec: AliceSpec, m: batched.Member) -> dict:
        return {"alice": spec.to_dict(), "id": spec.id, "model": model.spec,
                "stats": list(m.train.stats)}

    def on_save(epoch: int, group: batched.Group, metrics: list[dict]) -> None:
        for k, (m, mt) in enumerate(zip(group.members, metrics)):
            spec = by_member[id(m)]
            mt = {key: v for key, v in mt.items() if key != "seen"}
            write(spec, epoch, batched.member_state(group, k), model_spec(spec, m),
                  {"epoch": epoch, **mt})

    for spec, m in pairs:
        log(f"training Alice {spec.id}: {spec.arch} on {len(m.train)} samples, {spec.epochs} "
            f"epochs (batched, {len(pairs)} Alices of this shape)")
    start = time.perf_counter()
    members = [m for _, m in pairs]
    results = batched.train_group(members, device, max_group=max_group, compile=compile,
                                  return_state=True, log=log, save_epochs=save_epochs,
                                  on_save=on_save)
    finals = {}
    for (spec, m), r in zip(pairs, results):
        state = r.pop("state")
        metrics = {"train_loss": r["train_loss"], "train_acc": r["train_acc"],
                   "test_acc": r["test_acc"], "test_loss": r["test_loss"],
                   "epochs": spec.epochs, "n_train": len(m.train), "wall_s": r["wall_s"],
                   "samples_per_s": r["samples_per_s"], "device": device_name(device),
                   "precision": r["precision"],
                   "engine_version": __version__, "saved_epochs": save_epochs}
        write(spec, None, state, model_spec(spec, m), metrics)
        log(f"Alice {spec.id}: test accuracy {metrics['test_acc']:.4f} on alice_label")
        finals[spec.id] = metrics
    log(f"pre-trained {len(pairs)} Alices together in {time.perf_counter() - start:.1f}s")
    return finals
