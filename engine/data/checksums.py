"""SHA-256 of files, memoised for source files by (path, size, mtime) so that a build does not
re-read its sources to checksum them. One small file per source file under the cache directory:
a single JSON of every file ever seen grew with every test's temporary sources (500 kB, parsed
by every build)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from engine import paths
from engine.atomic import write_bytes

CHUNK = 8 << 20  # bytes per read


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _memoised(tag: str) -> str | None:
    try:
        stored_tag, _, value = paths.checksum_entry(tag).read_text().partition("\n")
    except (OSError, UnicodeDecodeError):
        return None
    value = value.strip()
    ok = stored_tag == tag and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    return value if ok else None


def source_checksums(files: list[Path]) -> list[dict]:
    """[{path, bytes, sha256}] for source files."""
    out = []
    for f in files:
        f = Path(f).resolve()
        st = f.stat()
        tag = f"{f}|{st.st_size}|{st.st_mtime_ns}"
        value = _memoised(tag)
        if value is None:
            value = sha256_file(f)
            entry = paths.checksum_entry(tag)
            try:
                entry.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(entry, f"{tag}\n{value}\n".encode())
            except OSError:
                pass  # a read-only cache only costs a re-hash next time
        out.append({"path": str(f), "bytes": st.st_size, "sha256": value})
    return out
