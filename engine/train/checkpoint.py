"""Checkpoints: a model's state dict as safetensors, with its spec and metrics as JSON metadata.

The file is written whole and renamed into place (`engine.atomic`), so it is either absent or
complete. Loading never unpickles anything. The metadata also records a digest of the tensors (names,
dtypes, shapes, bytes) and of the spec and metrics (`digest`, XXH3-128, engine.data.digest), taken
when the file is written and checked on every load: a flipped byte anywhere that matters is an
EngineError naming the file, never a silently different network.
"""
from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
import xxhash
from safetensors import SafetensorError, safe_open
from torch import Tensor

from engine.atomic import write_bytes
from engine.errors import EngineError

FORMAT = "engine-checkpoint-1"
DIGEST = "xxh3-128"


def state_digest(tensors: dict[str, Tensor], spec_json: str, metrics_json: str) -> str:
    """XXH3-128 over every tensor's name, dtype, shape and bytes (sorted by name), then the spec
    and metrics JSON exactly as stored."""
    h = xxhash.xxh3_128()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(b"\0spec\0" + spec_json.encode() + b"\0metrics\0" + metrics_json.encode())
    return f"{DIGEST}:{h.hexdigest()}"


def save_checkpoint(path: str | Path, model_state: dict[str, Tensor], spec: dict,
                    metrics: dict) -> None:
    """Write `model_state` (tensors, any device) plus JSON-encodable `spec` and `metrics`."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    metadata = {"format": FORMAT, "spec": json.dumps(spec), "metrics": json.dumps(metrics)}
    metadata["digest"] = state_digest(tensors, metadata["spec"], metadata["metrics"])
    data = safetensors.torch.save(tensors, metadata=metadata)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, data)
    except OSError as e:
        from engine.atomic import os_error
        raise os_error(e, "write checkpoint", path) from None


def load_checkpoint(path: str | Path, *, verify: bool = True,
                    require_digest: bool = False) -> tuple[dict[str, Tensor], dict, dict]:
    """(state, spec, metrics) from a file written by `save_checkpoint`; tensors on the CPU.

    verify: check the recorded digest (EngineError naming the file on a mismatch). A file from an
    engine that recorded no digest loads unless `require_digest` (then it is an EngineError too,
    so that callers that can re-create it do)."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"checkpoint not found: {path}")
    advice = "delete it and re-run the training that wrote it"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            state = {k: f.get_tensor(k) for k in f.keys()}
        spec, metrics = json.loads(meta["spec"]), json.loads(meta["metrics"])
        if not isinstance(spec, dict) or not isinstance(metrics, dict):
            raise ValueError("spec and metrics must be JSON objects")
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
        reason = " ".join(str(e).split())[:200]
        raise EngineError(f"corrupt or unreadable checkpoint {path} ({reason}); {advice}") from None
    if verify:
        recorded = meta.get("digest")
        if recorded is None:
            if require_digest:
                raise EngineError(f"checkpoint {path} records no digest (written by an older "
                                  f"engine), so it cannot be verified; {advice}")
        elif state_digest(state, meta["spec"], meta["metrics"]) != recorded:
            raise EngineError(f"checkpoint {path} is corrupt: its contents do not match the digest "
                              f"recorded when it was written; {advice}")
    return state, spec, metrics
