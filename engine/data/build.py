"""`engine build-data`: correlated, side-by-side image datasets written straight into `.beton` files.

Order of work: validate the request, load (cached) sources, resolve the spec, reuse a complete
dataset with the same spec whose files match the digests in its manifest (a damaged one gets a
one-line notice and is rebuilt), otherwise check that disk and memory can hold the build, take the
dataset's lock (engine.locks.path_lock: a concurrent build of the same spec waits, then reuses),
pair, compose and write each split to a temporary name (each page hashed by the worker that wrote
it, engine.data.digest), rename into place, and write the manifest last (its presence marks the
dataset complete). Temporary files of dead processes are removed.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from engine import __version__, paths
from engine.data import beton
from engine import datasets as sources
from engine.atomic import os_error, remove_stale_temps, staged, writable_dir, write_json
from engine.data.checksums import source_checksums
from engine.data.resources import dataset_estimate, require
from engine.errors import EngineError
from engine.kernels.compose import Layout, fill_composed, plan_layout
from engine.kernels.pairing import class_index, draw_pairing, pair
from engine.kernels.shuffle import block_index, block_permutation_draws, shuffle_page
from engine.data.manifest import is_complete, read_manifest, verify_dataset
from engine.locks import path_lock
from engine.spec import DataSpec
from engine.data.stats import label_stats

SPLITS = ("train", "test")
SCALAR_FIELDS = ("alice_label", "bob_label", "left_index", "right_index")


def parse_pair(text: str) -> tuple[str, str]:
    """"mnist:svhn" -> ("mnist", "svhn"); sources with an argument ("npz:PATH", "folder:PATH")
    take the next ':'-separated part, so "npz:/d/a.npz:mnist" works."""
    parts = str(text).split(":")
    halves, i = [], 0
    while i < len(parts):
        name = parts[i].strip().lower()
        if name in ("npz", "folder") and i + 1 < len(parts):
            halves.append(f"{name}:{parts[i + 1]}")
            i += 2
        else:
            halves.append(name)
            i += 1
    if len(halves) != 2 or not all(halves):
        raise EngineError(f"--pair must be LEFT:RIGHT (e.g. mnist:svhn), got {text!r}")
    for h in halves:
        sources.parse_source(h)  # raises with the list of valid names
    return halves[0], halves[1]


def _canonical_source(text: str) -> str:
    name, arg = sources.parse_source(text)
    return f"{name}:{Path(arg).expanduser().resolve()}" if arg else name


def _check_beta(beta) -> float:
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise EngineError(f"--beta must be a number in [0, 1], got {beta!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise EngineError(f"--beta must be a number in [0, 1], got {beta!r}")
    return value


def _check_count(name: str, value) -> int | None:
    if value is None:
        return None
    try:
        ok = not isinstance(value, bool) and int(value) == value and int(value) >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise EngineError(f"--{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_block_shuffle(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise EngineError(f"--block-shuffle must be a positive integer block size, got {value!r}")
    return int(value)


def shuffle_permutation(layout: Layout, block: int | None, seed: int) -> np.ndarray | None:
    """The fixed permutation of the composed image's blocks (seeded by the dataset seed), or None
    when unshuffled; never the identity (engine.kernels.shuffle.block_permutation_draws).
    EngineError when the block size does not divide the composed image or makes one block."""
    return shuffle_draw(layout, block, seed)[0]


def shuffle_draw(layout: Layout, block: int | None, seed: int) -> tuple[np.ndarray | None, int]:
    """(permutation or None, draws it took); see `shuffle_permutation`."""
    if block is None:
        return None, 0
    try:
        return block_permutation_draws(layout.height, layout.width, block, seed)
    except ValueError as exc:
        raise EngineError(f"--block-shuffle: {exc}") from None


def check_block_shuffles(pair: str, blocks, *, data_root=None, fit: str = "pad",
                         image_size: int = 32) -> None:
    """EngineError unless every block size in `blocks` (None = unshuffled) divides the composed
    image of `pair`: lets a sweep reject a bad size before it builds anything."""
    blocks = [_check_block_shuffle(b) for b in blocks]
    if all(b is None for b in blocks):
        return
    root = paths.data_root(data_root)
    left, right = (sources.load(_canonical_source(s), "train", root=root, image_size=image_size)
                   for s in parse_pair(pair))
    layout = plan_layout(left.images.shape[1:], right.images.shape[1:], fit)
    for b in blocks:
        shuffle_permutation(layout, b, 0)


def _plan(pair: str, beta, *, seed, n_train, n_test, data_root, fit, image_size, block_shuffle,
          load) -> tuple[DataSpec, dict]:
    """The DataSpec of `build_data`'s arguments, checked before any source is read, and the
    loaded sources {(side, split): ...} for the (side, split) pairs in `load` (it must hold
    ("left", "train") and ("left", "test"), whose sizes are the default counts)."""
    left, right = (_canonical_source(s) for s in parse_pair(pair))
    beta = _check_beta(beta)
    n_train, n_test = _check_count("n-train", n_train), _check_count("n-test", n_test)
    block_shuffle = _check_block_shuffle(block_shuffle)
    if fit not in ("pad", "resize"):
        raise EngineError(f"--fit must be 'pad' or 'resize', got {fit!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise EngineError(f"--seed must be a non-negative integer, got {seed!r}")
    image_size = _check_count("image-size", image_size)
    root = paths.data_root(data_root)
    names = {"left": left, "right": right}
    splits = {(side, split): sources.load(names[side], split, root=root, image_size=image_size)
              for side, split in load}
    for (side, split), s in splits.items():
        if len(s.classes) < 2:  # one class: nothing to learn, and Cramer's V is 0/0
            raise EngineError(f"{names[side]} has {len(s.classes)} class"
                              f"{'' if len(s.classes) == 1 else 'es'} "
                              f"({', '.join(map(str, s.classes))}); each side of a pair needs at "
                              "least two (for folder: sources, one sub-folder per class)")
    spec = DataSpec(left=left, right=right, beta=beta, seed=int(seed),
                    n_train=n_train or len(splits["left", "train"].labels),
                    n_test=n_test or len(splits["left", "test"].labels), fit=fit,
                    image_size=int(image_size), block_shuffle=block_shuffle)
    return spec, splits


def planned_dataset(pair: str, beta: float, *, seed: int = 0, n_train: int | None = None,
                    n_test: int | None = None, data_root=None, fit: str = "pad",
                    image_size: int = 32, block_shuffle: int | None = None
                    ) -> tuple[DataSpec, tuple[int, int, int]]:
    """The DataSpec `build_data` builds for these arguments and the (H, W, C) of its composed
    images, from the (cached) sources' shapes and sizes only: lets a sweep find what is built and
    size what is not before any work. Arguments are checked as `build_data` checks them."""
    spec, splits = _plan(pair, beta, seed=seed, n_train=n_train, n_test=n_test,
                         data_root=data_root, fit=fit, image_size=image_size,
                         block_shuffle=block_shuffle,
                         load=[("left", "train"), ("left", "test"), ("right", "train")])
    shape = plan_layout(splits["left", "train"].images.shape[1:],
                        splits["right", "train"].images.shape[1:], fit).shape
    return spec, shape


def build_data(pair: str, beta: float, *, seed: int = 0, n_train: int | None = None,
               n_test: int | None = None, data_root=None, out=None, force: bool = False,
               fit: str = "pad", image_size: int = 32, block_shuffle: int | None = None,
               log=None) -> Path:
    """Build (or reuse) a dataset and return its directory. See the module docstring.
    block_shuffle: shuffle every composed image's B x B blocks with one fixed permutation
    (engine.kernels.shuffle; 1 = pixel shuffle; None = off)."""
    log = log or (lambda msg: None)
    spec, splits = _plan(pair, beta, seed=seed, n_train=n_train, n_test=n_test,
                         data_root=data_root, fit=fit, image_size=image_size,
                         block_shuffle=block_shuffle,
                         load=[(side, split) for side in ("left", "right") for split in SPLITS])
    root = paths.data_root(data_root)
    target = paths.dataset_dir(paths.datasets_out(out), spec.key)
    layout = plan_layout(splits["left", "train"].images.shape[1:],
                         splits["right", "train"].images.shape[1:], fit)
    perm, draws = shuffle_draw(layout, spec.block_shuffle, spec.seed)
    if not force and _reusable(target, spec, perm) is True:
        log(f"reusing {target} (same spec, contents verified; --force rebuilds)")
        remove_stale_temps(target)  # e.g. a killed --force rebuild's
        return target
    for split in SPLITS:
        for side in ("left", "right"):
            shape = splits[side, split].images.shape[1:]
            if shape != splits[side, "train"].images.shape[1:]:
                raise EngineError(f"{spec.left if side == 'left' else spec.right}: {split} images are "
                                  f"{shape} but train images are {splits[side, 'train'].images.shape[1:]}")
        empty = np.flatnonzero(np.bincount(splits["right", split].labels,
                                           minlength=len(splits["right", split].classes)) == 0)
        if empty.size:
            raise EngineError(f"{spec.right} {split} split has no images of class(es) "
                              f"{empty.tolist()}; Bob's classes all need images")
    if target.parent.exists() and not target.parent.is_dir():
        raise EngineError(f"{target.parent} is a file, not a directory; pass a directory as --out")
    if target.exists() and not target.is_dir():
        raise EngineError(f"{target} is a file where the dataset directory goes; move it away")
    require(dataset_estimate(layout.shape, spec.n_train, spec.n_test), target.parent,
            f"build-data ({spec.n_train:,} + {spec.n_test:,} samples of {layout.shape[0]}x"
            f"{layout.shape[1]}x{layout.shape[2]})", "lower --n-train/--n-test or free some space")
    writable_dir(target.parent)
    with path_lock(target, log=log):
        # Another process may have built it while this one waited for the lock.
        state = _reusable(target, spec, perm) if not force else None
        if state is True:
            log(f"reusing {target} (built by another process meanwhile)")
            return target
        if isinstance(state, str):
            log(f"notice: {state}; rebuilding it")
        created = not target.exists()
        try:
            _build(target, spec, splits, layout, root, perm, draws, log)
        except OSError as exc:
            raise os_error(exc, "write", getattr(exc, "filename", None) or target) from None
        finally:
            if created and target.is_dir() and not any(target.iterdir()):
                target.rmdir()  # a failed first build leaves no empty directory
    return target


def _reusable(target: Path, spec: DataSpec, perm) -> bool | str | None:
    """True when `target` holds a complete dataset of `spec` whose files match their digests and
    whose block permutation is `perm`; a string saying what is wrong when it is complete but not
    usable; None when it is absent or incomplete."""
    if not is_complete(target, spec):
        return None
    try:
        manifest = verify_dataset(target)
    except EngineError as exc:
        return str(exc).split(";")[0]
    recorded = (manifest.get("block_shuffle") or {}).get("permutation")
    if (None if perm is None else perm.tolist()) != recorded:
        return (f"{target} was built with another block permutation (an identity draw, "
                "now redrawn)")
    return True


def _build(target: Path, spec: DataSpec, splits, layout: Layout, root: Path, perm, draws: int,
           log) -> None:
    writable_dir(target)
    remove_stale_temps(target, everyone=True)  # this process holds the dataset's lock
    started = time.perf_counter()
    results = {}
    finals = [paths.split_file(target, split) for split in SPLITS]
    with staged(finals, marker=paths.manifest_file(target)) as temps:
        # Both splits at once: their pages share the writer's pool, so one split's serial parts
        # (pairing, metadata, allocation table, label statistics) overlap the other's pages.
        with ThreadPoolExecutor(len(SPLITS), thread_name_prefix="build-split") as pool:
            futures = {split: pool.submit(_write_split, tmp, split, splits["left", split],
                                          splits["right", split], layout, spec,
                                          spec.n_train if split == "train" else spec.n_test)
                       for split, tmp in zip(SPLITS, temps)}
            for split, future in futures.items():
                results[split] = future.result()
                log(f"{split}: {results[split]['samples']} samples written in "
                    f"{results[split]['write_seconds']:.2f} s "
                    f"({_rate(results[split]['samples_per_s'])} samples/s)")

    total = time.perf_counter() - started
    manifest = _manifest(spec, splits, layout, results, root, total, perm, draws)
    write_json(paths.manifest_file(target), manifest)


def _rate(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


def write_split(path: Path, split: str, left, right, layout: Layout, spec: DataSpec, n: int):
    """The hot path: pair n samples and compose them straight into `path` as a `.beton`, each
    page's samples block-shuffled in place right after composing when the spec asks for it.
    Returns the layout facts and the label columns."""
    stream = np.random.SeedSequence(spec.seed, spawn_key=(SPLITS.index(split),))
    rng = np.random.Generator(np.random.PCG64(stream))
    draws = draw_pairing(rng, len(left.labels), n)
    offsets, members = class_index(right.labels, len(right.classes))
    alice, bob, right_idx = pair(left.labels, draws, spec.beta, offsets, members)
    left_idx = draws.left_order
    fields = {"image": beton.ndarray_field(np.uint8, layout.shape),
              **{name: beton.int_field() for name in SCALAR_FIELDS}}
    scalars = {"alice_label": alice, "bob_label": bob, "left_index": left_idx, "right_index": right_idx}

    perm = shuffle_permutation(layout, spec.block_shuffle, spec.seed)
    index = None if perm is None else block_index(layout.shape, spec.block_shuffle, perm)
    # Pages are hashed as they are written (engine.data.digest): the digest is in the returned facts
    # The page kernel reads the sources as flat bytes: copy a strided source once, not per page.
    left_images, right_images = (np.ascontiguousarray(s.images) for s in (left, right))

    def fill(buf, first, count):
        fill_composed(buf, first, count, left_images, right_images, left_idx, right_idx, layout)
        if index is not None:
            shuffle_page(buf, count, index)

    return beton.write(path, fields, scalars, n, fill), scalars


def _write_split(path: Path, split: str, left, right, layout: Layout, spec: DataSpec, n: int) -> dict:
    t0 = time.perf_counter()
    facts, scalars = write_split(path, split, left, right, layout, spec, n)
    seconds = time.perf_counter() - t0
    stats = label_stats(scalars["alice_label"], scalars["bob_label"], len(left.classes),
                        len(right.classes), spec.beta)
    return {"file": f"{split}.beton", "samples": n, **facts, **stats,
            "write_seconds": seconds, "samples_per_s": n / seconds if seconds > 0 else None}


def _half_box(plan) -> dict:
    src_h, src_w, _, out_w, col0, resize, top, left = (int(v) for v in plan.geo)
    return {"columns": [col0, col0 + out_w], "resized": bool(resize),
            "source_box": None if resize else [top, col0 + left, src_h, src_w]}


def _manifest(spec: DataSpec, splits, layout: Layout, results: dict, root: Path, seconds: float,
              perm: np.ndarray | None = None, draws: int = 1) -> dict:
    n = sum(r["samples"] for r in results.values())
    side = {}
    for name, src in (("left", spec.left), ("right", spec.right)):
        train = splits[name, "train"]
        side[name] = {"source": src, "classes": list(train.classes),
                      "image_shape": list(train.images.shape[1:]),
                      "split_sizes": {s: int(len(splits[name, s].labels)) for s in SPLITS},
                      "files": source_checksums([Path(f) for f in train.files + splits[name, "test"].files])}
    return {
        "format_version": spec.format_version,
        "engine_version": __version__,
        "key": spec.key,
        "spec": spec.to_dict(),
        "pair": spec.pair,
        "data_root": str(root.resolve()),
        "pi": "b = a mod C_right",
        "image_shape": list(layout.shape),
        "halves": {"left": _half_box(layout.left), "right": _half_box(layout.right)},
        # Output block j (row-major over the composed image) is input block permutation[j]; draws:
        # how many permutations the seeded generator drew (identity draws are redrawn).
        "block_shuffle": None if perm is None else {
            "block": spec.block_shuffle, "seed": spec.seed, "draws": int(draws),
            "grid": [layout.height // spec.block_shuffle, layout.width // spec.block_shuffle],
            "permutation": perm.tolist()},
        "fields": {"image": {"type": "NDArrayField", "dtype": "uint8", "shape": list(layout.shape)},
                   **{f: {"type": "IntField"} for f in SCALAR_FIELDS}},
        "sources": side,
        "splits": results,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": seconds,
        "samples_per_s": n / seconds if seconds > 0 else None,
    }


def load_manifest(dataset_dir) -> dict:
    return read_manifest(Path(dataset_dir))
