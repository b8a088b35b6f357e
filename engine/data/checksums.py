"""SHA-256 of files, with a cache for source files keyed by (path, size, mtime) so that a second
build does not re-read the sources to checksum them."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engine import paths
from engine.atomic import write_json

CHUNK = 8 << 20  # bytes per read


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def source_checksums(files: list[Path]) -> list[dict]:
    """[{path, bytes, sha256}] for source files, memoised in the engine's cache directory."""
    store = paths.cache_dir() / "checksums.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    out, changed = [], False
    for f in files:
        f = Path(f).resolve()
        st = f.stat()
        tag = f"{f}|{st.st_size}|{st.st_mtime_ns}"
        if tag not in known:
            known[tag] = sha256_file(f)
            changed = True
        out.append({"path": str(f), "bytes": st.st_size, "sha256": known[tag]})
    if changed:
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            write_json(store, known)
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    return out
