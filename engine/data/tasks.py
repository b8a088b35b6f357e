"""Tasks as data: a source, a selection of its classes and a labelling, built into single-image
`.beton` datasets that Alice and Bob train on like any pair dataset.

A task (`TaskSpec`) is
- a source (any `engine.datasets` name: `cifar10`, `npz:PATH`, `folder:PATH`, ...);
- `groups`: task class k is the union of the source classes in `groups[k]`, named `labels[k]`.
  One class per group selects classes (CIFAR-10 {cat, dog}, the four vehicles, all ten); several
  per group make a coarser labelling (animals vs vehicles). Samples of unselected classes are
  dropped; at least two task classes, each source class in at most one group;
- `noise`: each sample's label is, independently with probability `noise`, replaced by a label
  drawn uniformly from the task's K classes (it may draw the clean label again), seeded by `seed`,
  in every split (the noisy labelling *is* the task). So the label matches the clean class with
  probability 1 - noise (K - 1) / K: at noise 1 labels carry no information about the image. This
  is a dial for the semantic relation of a real task to another.
- images brought to `image_size x image_size x channels` (engine.kernels.single: centre crop and
  bilinear resize, or pad; grey replicated to RGB).

`build_task(spec)` writes `<out>/<name>-<hash>/{train,test}.beton` and `manifest.json` (last,
atomically), with the same fields as pair datasets (engine.data.build), so the engine's reader,
trainer and sweep use them unchanged: `image`, `alice_label` and `bob_label` (both the task label),
`left_index` and `right_index` (both the sample's index in the source split). A complete dataset
with the same spec is reused. The manifest records the task spec (`task`), its class names
(`classes`), the sources with sha256, per split the counts, label histograms (noisy and clean),
the realised noise fractions, and the keys the sweep reads from pair manifests: `key`, `pair`
(the task name), `spec` (source as `left` and `right`, `beta` 1.0 -- Bob's label equals Alice's --,
`n_train`, `n_test`, ...) and `sources.left/right.classes` (both the task's classes).
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine import __version__, paths
from engine import datasets as sources
from engine.atomic import staged, writable_dir, write_json
from engine.data import beton
from engine.data.checksums import sha256_file, source_checksums
from engine.data.manifest import is_complete as manifest_complete, read_manifest
from engine.data.stats import label_stats
from engine.errors import EngineError
from engine.kernels.single import FITS, fill_single, plan_single
from engine.spec import spec_hash

TASK_FORMAT_VERSION = 1  # bump when the bytes a TaskSpec produces change
SPLITS = ("train", "test")
SCALAR_FIELDS = ("alice_label", "bob_label", "left_index", "right_index")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "task"


@dataclass(frozen=True)
class TaskSpec:
    """Everything that determines the bytes of a task dataset (see the module docstring)."""
    name: str                               # readable name, the key's prefix, e.g. "cifar-cat-dog"
    source: str                             # canonical source, e.g. "npz:/abs/cifar10_test.npz"
    groups: tuple[tuple[str, ...], ...]     # task class k = the source classes groups[k]
    labels: tuple[str, ...]                 # task class names, one per group
    noise: float = 0.0                      # probability a label is redrawn uniformly
    seed: int = 0                           # seed of the noise draws
    image_size: int = 32
    channels: int = 3
    fit: str = "resize"                     # "resize" (centre crop + bilinear) or "pad"
    holdout_seed: int = 0                   # 80/20 hold-out of single-split sources
    source_classes: tuple[str, ...] | None = None  # names for a source's classes 0..C-1 when the
                                                   # source does not name them (npz without classes)
    format_version: int = TASK_FORMAT_VERSION

    @property
    def key(self) -> str:
        return f"{_slug(self.name)}-{spec_hash(self)}"

    @property
    def n_classes(self) -> int:
        return len(self.groups)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["groups"] = [list(g) for g in self.groups]
        d["labels"] = list(self.labels)
        d["source_classes"] = None if self.source_classes is None else list(self.source_classes)
        return d


def canonical_source(text: str) -> str:
    """"npz:rel/path.npz" -> "npz:/abs/path.npz"; names without a path unchanged."""
    name, arg = sources.parse_source(str(text))
    return f"{name}:{Path(arg).expanduser().resolve()}" if arg else name


def make_task(source: str, classes: Sequence[str] | None = None, *,
              groups: Sequence[Sequence[str]] | None = None, labels: Sequence[str] | None = None,
              name: str | None = None, noise: float = 0.0, seed: int = 0, image_size: int = 32,
              channels: int = 3, fit: str = "resize", holdout_seed: int = 0,
              source_classes: Sequence[str] | None = None) -> TaskSpec:
    """A validated TaskSpec. Give `classes` (one task class per source class, in this order) or
    `groups` (one task class per group of source classes; `labels` names them, default the
    members joined by '+'). Class names are checked against the source when the task is built
    (`check_task` does it earlier)."""
    if (classes is None) == (groups is None):
        raise EngineError("a task needs either classes or groups of classes (not both)")
    groups = [[c] for c in classes] if groups is None else groups
    groups = tuple(tuple(str(c).strip() for c in g) for g in groups)
    if any(not g for g in groups):
        raise EngineError("every group of a task needs at least one class")
    if len(groups) < 2:
        raise EngineError(f"a task needs at least two classes, got {[list(g) for g in groups]}; "
                          "add a class to tell apart")
    members = [c for g in groups for c in g]
    dup = sorted({c for c in members if members.count(c) > 1})
    if dup:
        raise EngineError(f"class(es) {', '.join(dup)} appear more than once in the task; each "
                          "source class belongs to at most one task class")
    labels = tuple("+".join(g) for g in groups) if labels is None else tuple(str(x) for x in labels)
    if len(labels) != len(groups) or len(set(labels)) != len(labels):
        raise EngineError(f"a task needs one distinct label per group: {len(groups)} groups, "
                          f"labels {list(labels)}")
    try:
        noise = float(noise)
    except (TypeError, ValueError):
        raise EngineError(f"label noise must be a number in [0, 1], got {noise!r}") from None
    if not (math.isfinite(noise) and 0.0 <= noise <= 1.0):
        raise EngineError(f"label noise must be a number in [0, 1], got {noise!r}")
    for what, value in (("seed", seed), ("hold-out seed", holdout_seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise EngineError(f"{what} must be a non-negative integer, got {value!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise EngineError(f"--image-size must be a positive integer, got {image_size!r}")
    if channels not in (1, 3):
        raise EngineError(f"channels must be 1 or 3, got {channels!r}")
    if fit not in FITS:
        raise EngineError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    source = canonical_source(source)
    if name is None:
        base = sources.parse_source(source)[1] or source
        name = f"{Path(base).stem if ':' in source else source}-{'-'.join(labels)}"
        if noise:
            name += f"-noise{noise:g}"
    return TaskSpec(name=str(name), source=source, groups=groups, labels=labels, noise=noise,
                    seed=int(seed), image_size=int(image_size), channels=int(channels), fit=fit,
                    holdout_seed=int(holdout_seed),
                    source_classes=None if source_classes is None else tuple(map(str, source_classes)))


# Loading and labelling ---------------------------------------------------------------------------

def _load(spec: TaskSpec, root: Path) -> dict:
    return {split: sources.load(spec.source, split, root=root, image_size=spec.image_size,
                                holdout_seed=spec.holdout_seed) for split in SPLITS}


def source_class_names(spec: TaskSpec, classes: Sequence[str]) -> list[str]:
    """The source's class names: `spec.source_classes` where given (same count), else its own."""
    if spec.source_classes is None:
        return list(classes)
    if len(spec.source_classes) != len(classes):
        raise EngineError(f"{spec.source} has {len(classes)} classes but the task names "
                          f"{len(spec.source_classes)} ({', '.join(spec.source_classes)})")
    return list(spec.source_classes)


def label_table(spec: TaskSpec, names: Sequence[str]) -> np.ndarray:
    """int64 [C]: the task label of each source class, -1 for classes the task drops.
    EngineError naming the valid classes for a class the source does not have."""
    lut = np.full(len(names), -1, np.int64)
    index = {n: i for i, n in enumerate(names)}
    for k, group in enumerate(spec.groups):
        for c in group:
            if c not in index:
                raise EngineError(f"task {spec.name}: unknown class {c!r} in {spec.source}; "
                                  f"its classes are: {', '.join(names)}")
            lut[index[c]] = k
    return lut


def select(source_labels: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices into the source split of the samples the task keeps, in source order; their clean
    task labels)."""
    mapped = lut[np.asarray(source_labels, np.int64)]
    keep = np.flatnonzero(mapped >= 0)
    return keep, mapped[keep]


def noisy_labels(clean: np.ndarray, n_classes: int, noise: float, seed: int,
                 split: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, replaced): each label independently with probability `noise` redrawn uniformly
    from 0..n_classes-1. Both draws are made for every sample, so the stream does not depend on
    `noise`; each split has its own stream."""
    stream = np.random.SeedSequence(int(seed), spawn_key=(SPLITS.index(split), 7))
    rng = np.random.Generator(np.random.PCG64(stream))
    u = rng.random(len(clean))
    redraw = rng.integers(0, n_classes, len(clean))
    replaced = u < noise
    return np.where(replaced, redraw, clean).astype(np.int64), replaced


def check_task(spec: TaskSpec, *, data_root=None) -> list[str]:
    """Load the source (cached after the first time) and check the task against it; returns the
    source's class names."""
    root = paths.data_root(data_root)
    train = sources.load(spec.source, "train", root=root, image_size=spec.image_size,
                         holdout_seed=spec.holdout_seed)
    names = source_class_names(spec, train.classes)
    label_table(spec, names)
    return names


# Building ----------------------------------------------------------------------------------------

def is_complete(dataset: Path, spec: TaskSpec) -> bool:
    """The manifest exists, records `spec`, and every split file has its recorded size."""
    return manifest_complete(dataset, spec, field="task")


def build_task(spec: TaskSpec, *, data_root=None, out=None, force: bool = False,
               log: Callable[[str], None] | None = None) -> Path:
    """Build (or reuse) the task's dataset and return its directory (`<out>/<spec.key>`)."""
    log = log or (lambda msg: None)
    if not isinstance(spec, TaskSpec):
        raise TypeError("build_task takes a TaskSpec (see make_task)")
    target = paths.dataset_dir(paths.datasets_out(out), spec.key)
    if not force and is_complete(target, spec):
        log(f"reusing {target} (task {spec.name})")
        return target
    root = paths.data_root(data_root)
    splits = _load(spec, root)
    names = source_class_names(spec, splits["train"].classes)
    lut = label_table(spec, names)
    plans, picks = {}, {}
    for split, data in splits.items():
        try:
            plans[split] = plan_single(data.images.shape[1:], spec.image_size, spec.channels, spec.fit)
        except ValueError as exc:
            raise EngineError(f"task {spec.name}: {spec.source} {split} images "
                              f"{list(data.images.shape[1:])}: {exc}") from None
        keep, clean = select(data.labels, lut)
        counts = np.bincount(clean, minlength=spec.n_classes)
        if not counts.all():
            missing = [spec.labels[k] for k in np.flatnonzero(counts == 0)]
            raise EngineError(f"task {spec.name}: no {split} images of class(es) "
                              f"{', '.join(missing)} in {spec.source}; every task class needs images")
        labels, replaced = noisy_labels(clean, spec.n_classes, spec.noise, spec.seed, split)
        picks[split] = (keep, clean, labels, replaced)

    writable_dir(target)
    started = time.perf_counter()
    results = {}
    finals = [paths.split_file(target, split) for split in SPLITS]
    with staged(finals, marker=paths.manifest_file(target)) as temps:
        for split, tmp in zip(SPLITS, temps):
            results[split] = _write_split(tmp, split, splits[split].images, plans[split],
                                          *picks[split], spec)
            log(f"task {spec.name} {split}: {results[split]['samples']} samples written in "
                f"{results[split]['write_seconds']:.2f} s")
    seconds = time.perf_counter() - started
    write_json(paths.manifest_file(target), _manifest(spec, names, splits, results, root, seconds))
    return target


def write_task_split(path: Path, images: np.ndarray, plan, keep: np.ndarray,
                     labels: np.ndarray) -> dict:
    """Write the samples `images[keep]` (through `plan`) with task labels `labels` as a `.beton`."""
    fields = {"image": beton.ndarray_field(np.uint8, plan.shape),
              **{name: beton.int_field() for name in SCALAR_FIELDS}}
    keep = np.ascontiguousarray(keep, np.int64)
    scalars = {"alice_label": labels, "bob_label": labels, "left_index": keep, "right_index": keep}
    return beton.write(path, fields, scalars, len(keep),
                       lambda buf, first, count: fill_single(buf, first, count, images, keep, plan))


def _write_split(path: Path, split: str, images: np.ndarray, plan, keep, clean, labels, replaced,
                 spec: TaskSpec) -> dict:
    t0 = time.perf_counter()
    facts = write_task_split(path, images, plan, keep, labels)
    seconds = time.perf_counter() - t0
    n, k = len(keep), spec.n_classes
    stats = label_stats(labels, labels, k, k, 1.0)
    return {
        "file": f"{split}.beton", "samples": int(n), **facts, "sha256": sha256_file(path), **stats,
        "label_histogram": np.bincount(labels, minlength=k).tolist(),
        "clean_histogram": np.bincount(clean, minlength=k).tolist(),
        "noise": {
            "p": spec.noise,
            "replaced_fraction": float(replaced.mean()) if n else 0.0,
            "changed_fraction": float(np.mean(labels != clean)) if n else 0.0,
            "expected_changed_fraction": spec.noise * (k - 1) / k,
        },
        "write_seconds": seconds, "samples_per_s": n / seconds if seconds > 0 else float("inf"),
    }


def _manifest(spec: TaskSpec, names: list[str], splits: dict, results: dict, root: Path,
              seconds: float) -> dict:
    train = splits["train"]
    shape = [spec.image_size, spec.image_size, spec.channels]
    files = dict.fromkeys(Path(f) for s in splits.values() for f in s.files)
    side = {"source": spec.source, "classes": list(spec.labels),
            "source_classes": names, "image_shape": list(train.images.shape[1:]),
            "split_sizes": {s: int(len(splits[s].labels)) for s in SPLITS},
            "files": source_checksums(list(files))}
    n = sum(r["samples"] for r in results.values())
    return {
        "format_version": spec.format_version,
        "engine_version": __version__,
        "kind": "task",
        "key": spec.key,
        "task": spec.to_dict(),
        "pair": spec.name,
        "classes": list(spec.labels),
        "groups": {label: list(g) for label, g in zip(spec.labels, spec.groups)},
        # What the sweep, `engine inspect` and the trainer read from pair datasets' manifests.
        "spec": {"left": spec.source, "right": spec.source, "beta": 1.0, "seed": spec.seed,
                 "n_train": results["train"]["samples"], "n_test": results["test"]["samples"],
                 "fit": spec.fit, "image_size": spec.image_size,
                 "format_version": spec.format_version},
        "pi": "b = a (one task: Bob's label is Alice's)",
        "image_shape": shape,
        "fields": {"image": {"type": "NDArrayField", "dtype": "uint8", "shape": shape},
                   **{f: {"type": "IntField"} for f in SCALAR_FIELDS}},
        "sources": {"left": side, "right": side},
        "splits": results,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": seconds,
        "samples_per_s": n / seconds if seconds > 0 else float("inf"),
    }


def image_shape(dataset: Path) -> tuple[int, ...]:
    return tuple(read_manifest(Path(dataset))["image_shape"])


def check_same_shape(alice: Path, bob: Path) -> tuple[int, ...]:
    """EngineError unless Alice's and Bob's datasets have images of one shape; returns it."""
    a, b = image_shape(alice), image_shape(bob)
    if a != b:
        raise EngineError(f"Alice's dataset {Path(alice).name} has {'x'.join(map(str, a))} images but "
                          f"Bob's {Path(bob).name} has {'x'.join(map(str, b))}; build both at the "
                          "same --image-size and channels")
    return a
