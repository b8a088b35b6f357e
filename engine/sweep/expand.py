"""Expanding a sweep into Bob runs (pure: no torch), in the order described in `expand_sweep`.

Order: for each beta, arch, seed (in the order given), first the transfer runs (l, then mode, then
n_bob), then the baselines:
- scratch: every layer fresh and trained, once per (beta, arch, seed, n_bob), recorded with
  retrain_from = 1 (l does not apply).
- random-frozen: layers 1..l-1 fresh and frozen, l..L fresh and trained, for each l >= 2 only: at
  l = 1 nothing is frozen and the run would be scratch again.
reinit at l = 1 also starts every layer fresh (the same draws as scratch, see engine.train.freeze),
so it reproduces scratch; it is kept so every mode's curve covers l = 1..L. Likewise finetune and
reinit at l = L both train a fresh head on Alice's frozen layers. Such runs share a
`computation_id`, and a sweep trains each computation once (engine.sweep.plan).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

from engine.errors import EngineError
from engine.spec import (BASELINES, TRANSFER_MODES, AliceSpec, BobSpec, Training, _check_arch,
                         _check_n_bob, _check_seed, _check_training, n_layers)


def alice_spec(dataset: str, arch: str, seed: int, alice: Training, *, depth=None, width=None,
               global_pool=False, precision: str | None = None) -> AliceSpec:
    return AliceSpec(dataset=dataset, arch=arch, optimizer=alice.optimizer, epochs=alice.epochs,
                     lr=alice.lr, batch_size=alice.batch_size, seed=seed, depth=depth, width=width,
                     global_pool=global_pool, precision=precision)


def _unique(values: Iterable, name: str) -> list:
    out = list(dict.fromkeys(values))
    if not out:
        raise EngineError(f"{name} must list at least one value")
    return out


def check_betas(betas: Iterable) -> list[float]:
    out = []
    for b in _unique(betas, "betas"):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b <= 1:
            raise EngineError(f"beta must be a number in [0, 1], got {b!r}")
        out.append(float(b))
    return list(dict.fromkeys(out))


def expand_sweep(betas: Sequence[float], archs: Sequence[str], seeds: Sequence[int],
                 layers: str | Sequence[int] = "all", modes: Sequence[str] = TRANSFER_MODES,
                 baselines: Sequence[str] = BASELINES, n_bobs: Sequence[int | None] = (None,), *,
                 datasets: Mapping[float, str] | None = None,
                 alice_datasets: Mapping[float, str] | None = None, bob: Training = Training(),
                 alice: Training = Training(), depth: int | None = None,
                 width: int | None = None, global_pool: bool = False,
                 precision: str | None = None) -> list[BobSpec]:
    """Every Bob run of a sweep, in the order described in the module docstring.

    `layers` is "all" (1..L of each arch) or retrain_from values valid for every arch.
    `datasets` maps beta to dataset key; without it keys are placeholders "beta-<b>" (dry runs).
    `alice_datasets` maps beta to the dataset Alice pre-trains on (default: Bob's, `datasets`).
    `precision`: what every spec records (engine.spec.PRECISIONS; None: the device's default).
    """
    betas = check_betas(betas)
    archs, seeds = _unique(archs, "archs"), _unique(seeds, "seeds")
    modes, baselines = list(dict.fromkeys(modes)), list(dict.fromkeys(baselines))
    n_bobs = _unique(n_bobs, "n-bob")
    if not modes and not baselines:
        raise EngineError("nothing to run: no modes and no baselines")
    for m in modes:
        if m not in TRANSFER_MODES:
            raise EngineError(f"unknown mode {m!r}; choose from: {', '.join(TRANSFER_MODES)} "
                              "(baselines are chosen with --baselines)")
    for b in baselines:
        if b not in BASELINES:
            raise EngineError(f"unknown baseline {b!r}; choose from: {', '.join(BASELINES)}, or none")
    for s in seeds:
        _check_seed(s)
    for n in n_bobs:
        _check_n_bob(n)
    if layers != "all":
        layers = _unique(layers, "layers")
        for l in layers:
            if isinstance(l, bool) or not isinstance(l, int) or l < 1:
                raise EngineError(f"layers must be 'all' or positive integers, got {l!r}")
    sizes = {}
    for arch in archs:
        _check_arch(arch, depth, width, global_pool)
        sizes[arch] = n_layers(arch, depth, width, global_pool)
        if layers != "all" and max(layers) > sizes[arch]:
            raise EngineError(f"layer {max(layers)} is out of range for {arch} "
                              f"(L = {sizes[arch]}); use 1..{sizes[arch]} or 'all'")
    _check_training(bob.epochs, bob.optimizer, bob.lr, bob.batch_size)
    if datasets is None:
        datasets = {b: f"beta-{b:g}" for b in betas}
    arch_opts = {"depth": depth, "width": width, "global_pool": global_pool,
                 "precision": precision}
    train_opts = dataclasses.asdict(bob)

    specs: list[BobSpec] = []
    for beta in betas:
        key = datasets[beta]
        for arch in archs:
            ls = range(1, sizes[arch] + 1) if layers == "all" else layers
            for seed in seeds:
                a_key = alice_datasets[beta] if alice_datasets else key
                a_id = alice_spec(a_key, arch, seed, alice, **arch_opts).id if modes else ""
                common = dict(dataset=key, arch=arch, seed=seed, **train_opts, **arch_opts)
                specs += [BobSpec(alice_id=a_id, retrain_from=l, mode=m, n_bob=n, **common)
                          for l in ls for m in modes for n in n_bobs]
                if "scratch" in baselines:
                    specs += [BobSpec(alice_id="", retrain_from=1, mode="scratch", n_bob=n, **common)
                              for n in n_bobs]
                if "random-frozen" in baselines:
                    specs += [BobSpec(alice_id="", retrain_from=l, mode="random-frozen", n_bob=n,
                                      **common) for l in ls if l >= 2 for n in n_bobs]
    return list({s.run_id: s for s in specs}.values())


def describe(spec: BobSpec, *, with_id: bool = True) -> str:
    """One line for logs and dry runs."""
    n = "all" if spec.n_bob is None else spec.n_bob
    text = (f"{spec.dataset} {spec.arch} seed={spec.seed} l={spec.retrain_from} {spec.mode} "
            f"n_bob={n} epochs={spec.epochs} {spec.optimizer} lr={spec.lr:g}")
    return f"{spec.run_id} {text}" if with_id else text
