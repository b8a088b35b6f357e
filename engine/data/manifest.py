"""Reading a built dataset's manifest, deciding whether a dataset is complete, verifying its files
against the digests recorded when they were written, and summarising it."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from engine import paths
from engine.data import digest as dig
from engine.errors import EngineError


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in strict JSON")


def loads_strict(text: str):
    """json.loads that refuses NaN and +-Infinity (the engine writes strict JSON only)."""
    return json.loads(text, parse_constant=_reject_constant)


def _malformed(path: Path, what: str) -> EngineError:
    return EngineError(f"{path} is malformed ({what}); rebuild the dataset with --force")


def validate_manifest(m, path: Path) -> dict:
    """`m` checked for the structure every reader relies on; EngineError (one line) otherwise."""
    if not isinstance(m, dict):
        raise _malformed(path, "not a JSON object")
    for key, kind in (("key", str), ("spec", dict), ("splits", dict)):
        if not isinstance(m.get(key), kind):
            raise _malformed(path, f"{key!r} missing or not a {kind.__name__}")
    if not m["splits"]:
        raise _malformed(path, "no splits")
    for name, s in m["splits"].items():
        if not isinstance(s, dict):
            raise _malformed(path, f"split {name!r} is not an object")
        f = s.get("file")
        if not isinstance(f, str) or not f or "/" in f or f.startswith("."):
            raise _malformed(path, f"split {name!r} has no valid file name")
        for key in ("samples", "bytes"):
            v = s.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise _malformed(path, f"split {name!r}: {key!r} is not a non-negative integer")
        if not isinstance(s.get("digest", s.get("sha256")), str):
            raise _malformed(path, f"split {name!r} records no digest")
    if m.get("kind") == "manifold":
        if isinstance(m.get("classes"), bool) or not isinstance(m.get("classes"), int) or m["classes"] < 1:
            raise _malformed(path, "'classes' is not a positive integer")
    else:
        sources = m.get("sources")
        if not isinstance(sources, dict):
            raise _malformed(path, "'sources' missing")
        for side in ("left", "right"):
            side_info = sources.get(side)
            if not isinstance(side_info, dict) or not isinstance(side_info.get("classes"), list) \
                    or not side_info["classes"]:
                raise _malformed(path, f"sources.{side}.classes missing or empty")
    return m


def read_manifest(dataset: Path) -> dict:
    dataset = Path(dataset)
    path = paths.manifest_file(dataset)
    if dataset.exists() and not dataset.is_dir():
        raise EngineError(f"{dataset} is a file, not a dataset directory; pass the directory "
                          "`engine build-data` printed")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise EngineError(f"{dataset} is not a built dataset (no manifest.json); "
                          "build one with `engine build-data`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineError(f"cannot read {path} ({getattr(exc, 'strerror', None) or exc}); "
                          "rebuild the dataset with --force") from None
    try:
        manifest = loads_strict(text)
    except (ValueError, RecursionError) as exc:
        raise EngineError(f"{path} is not valid JSON ({exc}); rebuild the dataset with --force") from None
    return validate_manifest(manifest, path)


def is_complete(dataset: Path, spec, field: str = "spec") -> bool:
    """True when the manifest exists, records `spec` under `field` ("task" for single-image task
    datasets), and every split file has its recorded size. (Cheap; `verify_dataset` checks the
    contents.)"""
    try:
        manifest = read_manifest(dataset)
    except EngineError:
        return False
    if manifest.get(field) != spec.to_dict() or not manifest.get("splits"):
        return False
    for split in manifest["splits"].values():
        f = Path(dataset) / split["file"]
        if not f.is_file() or f.stat().st_size != split["bytes"]:
            return False
    return True


def rebuild_hint(manifest: dict, dataset: Path) -> str:
    """The command that rebuilds `dataset` (build-data datasets), or a generic instruction."""
    spec = manifest.get("spec", {})
    if manifest.get("kind") == "manifold" or "left" not in spec:
        return "delete the dataset directory and re-run the command that built it"
    parts = [f"engine build-data --pair {spec['left']}:{spec['right']} --beta {spec.get('beta'):g}",
             f"--seed {spec.get('seed', 0)}", f"--n-train {spec.get('n_train')}",
             f"--n-test {spec.get('n_test')}", f"--out {Path(dataset).parent}"]
    if spec.get("fit", "pad") != "pad":
        parts.append(f"--fit {spec['fit']}")
    if spec.get("block_shuffle"):
        parts.append(f"--block-shuffle {spec['block_shuffle']}")
    return "rebuild it with `" + " ".join(parts) + " --force`"


# Files already verified by this process: (path, device, inode, size, mtime_ns, digest).
_VERIFIED: set[tuple] = set()
_VERIFIED_LOCK = threading.Lock()


def _stat_key(path: Path, recorded: str) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, recorded)


def verify_file(path: Path, info: dict, *, hint: str = "") -> None:
    """EngineError unless `path` exists with the size and digest that `info` (a manifest's split
    entry) records. Each unchanged file is hashed once per process."""
    path = Path(path)
    hint = f"; {hint}" if hint else ""
    if not path.is_file():
        raise EngineError(f"{path} is missing{hint}")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise EngineError(f"{path} has {size} bytes, its manifest records {info['bytes']} "
                          f"(truncated or replaced){hint}")
    recorded = info.get("digest") or info.get("sha256")
    key = _stat_key(path, recorded)
    if key in _VERIFIED:
        return
    try:
        ok = dig.matches(path, digest=info.get("digest"), sha256=info.get("sha256"))
    except ValueError as exc:
        raise EngineError(f"{path}: its manifest's digest is unreadable ({exc}){hint}") from None
    except OSError as exc:
        raise EngineError(f"cannot read {path} ({exc.strerror or exc}){hint}") from None
    if not ok:
        raise EngineError(f"{path} is corrupt: its contents do not match the digest recorded in "
                          f"manifest.json when it was built{hint}")
    with _VERIFIED_LOCK:
        _VERIFIED.add(key)


def label_ranges(manifest: dict) -> dict[str, int]:
    """{label field: number of classes} that every split's labels must lie below."""
    if manifest.get("kind") == "manifold":
        return {"alice_label": int(manifest["classes"]), "bob_label": int(manifest["classes"])}
    return {"alice_label": len(manifest["sources"]["left"]["classes"]),
            "bob_label": len(manifest["sources"]["right"]["classes"])}


def check_labels(labels: np.ndarray, n_classes: int, *, where: str, field: str, hint: str = "") -> None:
    """EngineError unless every label lies in 0..n_classes-1."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_classes:
        bad = lo if lo < 0 else hi
        raise EngineError(f"{where}: {field} {bad} is outside the manifest's {n_classes} classes "
                          f"(0..{n_classes - 1}); the file is corrupt" + (f"; {hint}" if hint else ""))


def verify_dataset(dataset: str | os.PathLike, *, labels: bool = True,
                   splits: list[str] | None = None) -> dict:
    """Check a built dataset before use and return its manifest: every split file (or those in
    `splits`) has its recorded size and digest, and (`labels`) every label lies in the range of
    classes the manifest records. EngineError (one line, naming the file and how to rebuild it)
    otherwise. Hashing runs at memory speed and each unchanged file is hashed once per process."""
    from engine.data.beton import BetonFile

    dataset = Path(dataset)
    manifest = read_manifest(dataset)
    hint = rebuild_hint(manifest, dataset)
    ranges = label_ranges(manifest) if labels else {}
    for name, info in manifest["splits"].items():
        if splits is not None and name not in splits:
            continue
        path = dataset / info["file"]
        verify_file(path, info, hint=hint)
        if ranges:
            f = BetonFile(path)
            if len(f) != info["samples"]:
                raise EngineError(f"{path} holds {len(f)} samples, its manifest records "
                                  f"{info['samples']}; {hint}")
            for field, n_classes in ranges.items():
                if field in f.fields:
                    check_labels(f.read(field), n_classes, where=str(path), field=field, hint=hint)
    return manifest


def summary(manifest: dict) -> str:
    """Human-readable summary of a manifest (what `engine inspect` prints)."""
    try:
        return _summary(manifest)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise EngineError(f"manifest of {manifest.get('key', '?')} is malformed ({exc!r}); "
                          "rebuild the dataset with --force") from None


def _summary(manifest: dict) -> str:
    spec, left, right = manifest["spec"], manifest["sources"]["left"], manifest["sources"]["right"]
    h, w, c = manifest["image_shape"]
    rate = manifest.get("samples_per_s")
    lines = [
        f"dataset      {manifest['key']}",
        f"pair         {spec['left']} (Alice, {len(left['classes'])} classes) : "
        f"{spec['right']} (Bob, {len(right['classes'])} classes)",
        f"beta         {spec['beta']:g}   seed {spec['seed']}   fit {spec['fit']}   pi: {manifest['pi']}",
        f"image        {h}x{w}x{c} uint8 (left {left['image_shape']} + right {right['image_shape']})"
        + (f", {spec['block_shuffle']}x{spec['block_shuffle']} blocks shuffled (seed {spec['seed']})"
           if spec.get("block_shuffle") else ""),
        f"built        {manifest['built_at']} in {manifest['build_seconds']:.2f} s "
        + (f"({rate:,.0f} samples/s), " if isinstance(rate, (int, float)) else "")
        + f"engine {manifest['engine_version']}",
    ]
    for name, s in manifest["splits"].items():
        recorded = s.get("digest") or f"sha256 {s.get('sha256', '')}"
        lines += [
            f"{name:<12} {s['samples']:,} samples, {s['bytes'] / 1e6:,.1f} MB, {recorded[:44]}...",
            f"{'':<12} P(b = pi(a)) = {s['p_b_eq_pi_a']:.4f} (expected {s['expected_p_b_eq_pi_a']:.4f}); "
            f"Cramer's V = {s['cramers_v']:.4f} (bias-corrected {s['cramers_v_corrected']:.4f})",
            f"{'':<12} Alice histogram {s['alice_histogram']}",
            f"{'':<12} Bob histogram   {s['bob_histogram']}",
        ]
    return "\n".join(lines)
