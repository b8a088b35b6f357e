"""Reading a built dataset's manifest, deciding whether a dataset is complete, and summarising it."""
from __future__ import annotations

import json
from pathlib import Path

from engine import paths
from engine.errors import EngineError


def read_manifest(dataset: Path) -> dict:
    path = paths.manifest_file(Path(dataset))
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"{dataset} is not a built dataset (no manifest.json); "
                          "build one with `engine build-data`") from None
    except ValueError as exc:
        raise EngineError(f"{path} is not valid JSON ({exc}); rebuild with --force") from None


def is_complete(dataset: Path, spec) -> bool:
    """True when the manifest exists, records `spec`, and every split file has its recorded size."""
    try:
        manifest = json.loads(paths.manifest_file(dataset).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("spec") != spec.to_dict():
        return False
    for split in manifest.get("splits", {}).values():
        f = Path(dataset) / split["file"]
        if not f.is_file() or f.stat().st_size != split["bytes"]:
            return False
    return bool(manifest.get("splits"))


def summary(manifest: dict) -> str:
    """Human-readable summary of a manifest (what `engine inspect` prints)."""
    spec, left, right = manifest["spec"], manifest["sources"]["left"], manifest["sources"]["right"]
    h, w, c = manifest["image_shape"]
    lines = [
        f"dataset      {manifest['key']}",
        f"pair         {spec['left']} (Alice, {len(left['classes'])} classes) : "
        f"{spec['right']} (Bob, {len(right['classes'])} classes)",
        f"beta         {spec['beta']:g}   seed {spec['seed']}   fit {spec['fit']}   pi: {manifest['pi']}",
        f"image        {h}x{w}x{c} uint8 (left {left['image_shape']} + right {right['image_shape']})"
        + (f", {spec['block_shuffle']}x{spec['block_shuffle']} blocks shuffled (seed {spec['seed']})"
           if spec.get("block_shuffle") else ""),
        f"built        {manifest['built_at']} in {manifest['build_seconds']:.2f} s "
        f"({manifest['samples_per_s']:,.0f} samples/s), engine {manifest['engine_version']}",
    ]
    for name, s in manifest["splits"].items():
        lines += [
            f"{name:<12} {s['samples']:,} samples, {s['bytes'] / 1e6:,.1f} MB, sha256 {s['sha256'][:16]}...",
            f"{'':<12} P(b = pi(a)) = {s['p_b_eq_pi_a']:.4f} (expected {s['expected_p_b_eq_pi_a']:.4f}); "
            f"Cramer's V = {s['cramers_v']:.4f} (bias-corrected {s['cramers_v_corrected']:.4f})",
            f"{'':<12} Alice histogram {s['alice_histogram']}",
            f"{'':<12} Bob histogram   {s['bob_histogram']}",
        ]
    return "\n".join(lines)
