"""Alice's pre-training: the network trained on (image, alice_label) whose layers Bob reuses.

`<out>/alice/<alice_id>/` holds `model.safetensors` (final weights; spec and metrics, including
test accuracy on Alice's task, as metadata) and `epoch-<k>.safetensors` for each requested epoch
(0 = at initialisation). `model.safetensors` is written last, so a directory whose model file
exists and lists every requested epoch is complete and is reused; anything else is retrained.

Alice's initial weights come from a seed stream of their own, so Bob's fresh layers under the same
seed (engine.train.freeze) are independent of Alice's starting point.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from engine import __version__, paths
from engine.data.beton import read_beton
from engine.train.checkpoint import load_checkpoint, save_checkpoint
from engine.errors import EngineError
from engine.train.freeze import prepare_bob, set_train_mode
from engine.data.manifest import read_manifest
from engine.train.models import build_model
from engine.threads import keep_freed_memory
from engine.spec import AliceSpec
from engine.train.stream import StreamData, evaluate_stream
from engine.train.device import DeviceData, _memory_format, precision_used
from engine.train.trainer import (CompiledModelCache, epoch_batches, evaluate, make_optimizer,
                                  make_runner, run_epochs, train_step)

LABEL = "alice_label"
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in DEVICES:
        raise EngineError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise EngineError("--device cuda, but PyTorch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """For results rows: "cpu", or "cuda:<GPU name>" so timings can be compared per GPU."""
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def load_data(dataset_dir: Path, device: torch.device, *, stream: bool = False):
    """(train, test) of a built dataset: DeviceData held on `device`, or StreamData read from disk
    per batch. The test split is normalised with the training split's statistics."""
    dataset_dir = Path(dataset_dir)
    if stream:
        train = StreamData(paths.split_file(dataset_dir, "train"))
        return train, StreamData(paths.split_file(dataset_dir, "test"), stats=train.stats)
    fields = ["image", "alice_label", "bob_label"]
    tr = read_beton(paths.split_file(dataset_dir, "train"), fields)
    train = DeviceData.from_arrays(tr.pop("image"), tr, device)
    te = read_beton(paths.split_file(dataset_dir, "test"), fields)
    return train, DeviceData.from_arrays(te.pop("image"), te, device, stats=train.stats)


def init_seed(seed: int) -> int:
    """The seed of Alice's initial weights: a stream apart from Bob's fresh layers' `seed`."""
    return int(np.random.SeedSequence(int(seed), spawn_key=(1,)).generate_state(1, np.uint64)[0] >> 1)


def is_complete(out: Path, spec: AliceSpec, save_epochs: Iterable[int] = (),
                log: Callable[[str], None] | None = None) -> bool:
    """Whether Alice `spec` is trained under `out` with every epoch in `save_epochs` saved, each
    checkpoint verified against its recorded digest. A damaged (or unverifiable, pre-digest)
    checkpoint counts as absent: with `log`, one notice line says so, and the caller retrains."""
    path = paths.alice_checkpoint(out, spec.id)
    if not path.is_file():
        return False
    epochs = [paths.alice_epoch_checkpoint(out, spec.id, k) for k in save_epochs]
    try:
        _, saved_spec, metrics = load_checkpoint(path, require_digest=True)
        if not (saved_spec.get("alice") == spec.to_dict()
                and set(save_epochs) <= set(metrics.get("saved_epochs", []))
                and all(p.is_file() for p in epochs)):
            return False
        for p in epochs:
            load_checkpoint(p, require_digest=True)
    except EngineError as exc:
        if log:
            log(f"notice: {str(exc).split('; delete it')[0]}; retraining Alice {spec.id}")
        return False
    return True


def _check_save_epochs(save_epochs: Iterable[int], epochs: int) -> list[int]:
    out = sorted(set(save_epochs))
    for k in out:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= epochs:
            raise EngineError(f"save-epochs must be integers in 0..{epochs} (0 = initial weights), "
                              f"got {k!r}")
    return [int(k) for k in out]


def pretrain(dataset_dir: str | os.PathLike, spec: AliceSpec, out: str | os.PathLike,
             save_epochs: Iterable[int] = (), device: str | torch.device = "auto", *,
             data=None, cache: CompiledModelCache | None = None,
             log: Callable[[str], None] | None = None) -> Path:
    """Train Alice per `spec` (or reuse a complete earlier run); return `model.safetensors`.

    `data` is (train, test) from `load_data`, when the caller holds it already; `cache` shares
    compiled models with the caller's other runs.
    """
    log = log or (lambda msg: None)
    dataset_dir, out = Path(dataset_dir), Path(out)
    device = resolve_device(device)
    save_epochs = _check_save_epochs(save_epochs, spec.epochs)
    manifest = read_manifest(dataset_dir)
    if manifest["key"] != spec.dataset:
        raise EngineError(f"Alice spec is for dataset {spec.dataset}, but {dataset_dir} holds "
                          f"{manifest['key']}")
    final = paths.alice_checkpoint(out, spec.id)
    if is_complete(out, spec, save_epochs, log=log):
        log(f"reusing Alice {spec.id} ({final}, verified)")
        return final

    train, test = data if data is not None else load_data(dataset_dir, device)

    def write_checkpoint(epoch: int | None, state: dict, model_spec: dict, metrics: dict) -> None:
        path = final if epoch is None else paths.alice_epoch_checkpoint(out, spec.id, epoch)
        save_checkpoint(path, state, model_spec, metrics)

    train_alice(spec, train, test, len(manifest["sources"]["left"]["classes"]), save_epochs,
                device, cache=cache, log=log, write=write_checkpoint)
    return final


def train_alice(spec: AliceSpec, train, test, n_classes: int, save_epochs: Iterable[int] = (),
                device: str | torch.device = "auto", *, cache: CompiledModelCache | None = None,
                log: Callable[[str], None] | None = None,
                write: Callable[[int | None, dict, dict, dict], None]) -> dict:
    """Train Alice per `spec` on `train` (from `load_data`, or DeviceData built from arrays) and
    evaluate on `test`, writing nothing itself: `write(epoch, state_dict, model_spec, metrics)`
    receives each epoch in `save_epochs`, then (epoch None) the final weights. Returns the final
    metrics. `pretrain` writes checkpoints with it; the Ray executor ships them to its driver."""
    log = log or (lambda msg: None)
    device = resolve_device(device)
    save_epochs = _check_save_epochs(save_epochs, spec.epochs)
    streaming = isinstance(train, StreamData)
    arch = {"depth": spec.depth, "width": spec.width, "global_pool": spec.global_pool}
    if cache is not None:
        runner = cache.get(spec.arch, train.input_shape, n_classes, frozen_upto=0,
                           precision=spec.precision, **arch)
        model = runner.model
    else:
        model = build_model(spec.arch, train.input_shape, n_classes, **arch)
        model = model.to(device, memory_format=_memory_format(device))  # as every trainer
        runner = make_runner(model, 0, precision=spec.precision)
    params = prepare_bob(model, None, retrain_from=1, mode="scratch", seed=init_seed(spec.seed))
    model_spec = {"alice": spec.to_dict(), "id": spec.id, "model": model.spec,
                  "stats": list(train.stats)}

    def test_metrics() -> dict:
        if streaming:
            acc, loss = evaluate_stream(model, test, LABEL, device=device, runner=runner)
        else:
            acc, loss = evaluate(model, test, LABEL, runner=runner)
        return {"test_acc": acc, "test_loss": loss}

    def save(epoch: int, metrics: dict) -> None:
        write(epoch, model.state_dict(), model_spec, {"epoch": epoch, **metrics, **test_metrics()})

    if streaming:
        loader = train.loader(spec.batch_size, shuffle=True, seed=spec.seed)
        batches = lambda: train.batches(loader, LABEL, device)  # noqa: E731
    else:
        generator = torch.Generator().manual_seed(spec.seed)  # CPU: the same order on every device
        labels = train.labels[LABEL]
        batches = lambda: ((train.inputs(idx), labels[idx])  # noqa: E731
                           for idx in epoch_batches(len(train), spec.batch_size, generator, device))

    def epoch_metrics(totals: dict) -> dict:
        return {"train_loss": totals["loss_sum"].item() / totals["seen"],
                "train_acc": totals["correct"].item() / totals["seen"]}

    def after_epoch(epoch: int, totals: dict) -> None:
        if epoch in save_epochs:
            save(epoch, epoch_metrics(totals))
        set_train_mode(model, 0)  # `save` evaluated the model

    log(f"training Alice {spec.id}: {spec.arch} on {len(train)} samples, {spec.epochs} epochs")
    if 0 in save_epochs:
        save(0, {})
    if device.type == "cpu":
        keep_freed_memory()  # as `fit`: no page faults re-allocating each step's activations
    t0 = time.perf_counter()
    opt = make_optimizer(params, spec.optimizer, spec.lr, device)
    set_train_mode(model, 0)
    last = run_epochs(spec.epochs, batches,
                      lambda x, y: train_step(runner, opt, x, y, frozen_input=False, device=device),
                      on_epoch=after_epoch)
    train_metrics, seen = epoch_metrics(last), last["seen"]
    wall = time.perf_counter() - t0
    metrics = {**train_metrics, **test_metrics(), "epochs": spec.epochs, "n_train": len(train),
               "wall_s": wall, "samples_per_s": spec.epochs * seen / wall,
               "device": device_name(device), "precision": precision_used(spec.precision, device),
               "engine_version": __version__,
               "saved_epochs": save_epochs}
    write(None, model.state_dict(), model_spec, metrics)
    log(f"Alice {spec.id}: test accuracy {metrics['test_acc']:.4f} on alice_label")
    return metrics
