"""Checkpoints: a model's state dict as safetensors, with its spec and metrics as JSON metadata.

The file is written whole and renamed into place (`engine.atomic`), so it is either absent or
complete. Loading never unpickles anything.
"""
from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from engine.atomic import write_bytes
from engine.errors import EngineError

FORMAT = "engine-checkpoint-1"


def save_checkpoint(path: str | Path, model_state: dict[str, Tensor], spec: dict,
                    metrics: dict) -> None:
    """Write `model_state` (tensors, any device) plus JSON-encodable `spec` and `metrics`."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    metadata = {"format": FORMAT, "spec": json.dumps(spec), "metrics": json.dumps(metrics)}
    data = safetensors.torch.save(tensors, metadata=metadata)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, data)
    except OSError as e:
        raise EngineError(f"cannot write checkpoint {path}: {e.strerror or e}") from e


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict, dict]:
    """(state, spec, metrics) from a file written by `save_checkpoint`; tensors on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            state = {k: f.get_tensor(k) for k in f.keys()}
        spec, metrics = json.loads(meta["spec"]), json.loads(meta["metrics"])
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise EngineError(f"corrupt or unreadable checkpoint {path} ({e}); delete it and "
                          "re-run the training that wrote it") from e
    return state, spec, metrics
