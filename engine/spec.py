"""Specs are frozen dataclasses; an artefact's ID is the hash of its spec.

`spec_hash` hashes the canonical JSON of a spec (sorted keys, floats by repr), so the same spec gives
the same ID on every machine and Python version.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass

DATA_FORMAT_VERSION = 1  # bump when the bytes a DataSpec produces change


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def spec_hash(spec, length: int = 12) -> str:
    fields = spec.to_dict() if hasattr(spec, "to_dict") else dataclasses.asdict(spec)
    return fields_hash(type(spec).__name__, fields, length)


def fields_hash(kind: str, fields: dict, length: int = 12) -> str:
    """The hash of `fields` (JSON-able) tagged with `kind`; `spec_hash` tags with the class name."""
    payload = canonical_json({"type": kind, **fields})
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24]


@dataclass(frozen=True)
class DataSpec:
    """Everything that determines the bytes of a built dataset."""
    left: str  # source, e.g. "mnist" or "npz:/abs/path.npz"
    right: str
    beta: float  # P(Bob's class follows pi(Alice's)) before the uniform draw; in [0, 1]
    seed: int
    n_train: int
    n_test: int
    fit: str = "pad"  # "pad" or "resize", see engine.kernels.compose
    image_size: int = 32  # side length for folder: sources, pixels
    format_version: int = DATA_FORMAT_VERSION
    block_shuffle: int | None = None  # block size B in pixels (1 = pixel shuffle); None = off

    @property
    def pair(self) -> str:
        return f"{self.left}:{self.right}"

    @property
    def key(self) -> str:
        """Directory name: readable prefix plus the spec hash."""
        left, right = (_slug(s.split(":", 1)[0] if s.startswith(("npz:", "folder:")) else s)
                       for s in (self.left, self.right))
        shuffle = "" if self.block_shuffle is None else f"-blk{self.block_shuffle}"
        return f"{left}-{right}-b{self.beta:g}-s{self.seed}{shuffle}-{spec_hash(self)}"

    def to_dict(self) -> dict:
        """The fields; block_shuffle only when set, so unshuffled datasets keep the keys (and
        manifests) they had before the field existed."""
        d = dataclasses.asdict(self)
        if d["block_shuffle"] is None:
            del d["block_shuffle"]
        return d
