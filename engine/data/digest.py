"""Integrity digests of the engine's artefacts: cheap to compute while writing, cheap to verify.

A file's digest is XXH3-128 of each `chunk`-byte piece of it (8 MiB by default, the `.beton`
page size), combined as XXH3-128 over the file size and the concatenated piece digests, written
`xxh3-128/<chunk>:<32 hex digits>`. The `.beton` writer hashes each data page in the worker that
filled it, while it is still in the CPU's cache, so the digest costs ~1% of a build; verifying
reads the file once at memory speed (~30 GB/s of hashing). XXH3 detects corruption (a flipped bit
or byte, a torn or truncated write), not deliberate tampering: it is a checksum, not a signature.

Older manifests recorded a SHA-256 of the file; `verify_file` still checks those.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import xxhash

ALGORITHM = "xxh3-128"
CHUNK = 8 << 20


def chunk_digest(data) -> bytes:
    """The 16-byte digest of one piece (any buffer: bytes, memoryview, uint8 array)."""
    return xxhash.xxh3_128_digest(data)


def hasher():
    """An incremental hasher of one piece: `update` it with the piece's bytes in order, then
    `digest()` equals `chunk_digest` of the whole piece."""
    return xxhash.xxh3_128()


_ZEROS = memoryview(bytes(1 << 20))


def update_zeros(h, count: int) -> None:
    """Feed `count` zero bytes to the hasher `h` (e.g. a page's unused tail, left as a hole)."""
    while count > 0:
        step = min(count, len(_ZEROS))
        h.update(_ZEROS[:step])
        count -= step


def combine(size: int, digests: list[bytes], chunk: int = CHUNK) -> str:
    """The file digest from its size and the digests of its pieces, in order."""
    h = xxhash.xxh3_128()
    h.update(int(size).to_bytes(8, "little"))
    for d in digests:
        h.update(d)
    return f"{ALGORITHM}/{int(chunk)}:{h.hexdigest()}"


def buffer_digests(data, chunk: int = CHUNK) -> list[bytes]:
    """Piece digests of an in-memory region whose start is a multiple of `chunk` in its file."""
    view = memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1) if isinstance(data, np.ndarray)
                      else data).cast("B")
    return [chunk_digest(view[i:i + chunk]) for i in range(0, len(view), chunk)]


def padded_digests(data: bytes, length: int, chunk: int = CHUNK) -> list[bytes]:
    """Piece digests of `data` followed by zeros up to `length` bytes (a region at a multiple of
    `chunk` in its file), without building the padded copy."""
    view = memoryview(data).cast("B")
    zeros = memoryview(bytes(min(chunk, max(length - len(view), 0))))
    out = []
    for start in range(0, length, chunk):
        end = min(start + chunk, length)
        h = xxhash.xxh3_128()
        if start < len(view):
            h.update(view[start:min(end, len(view))])
        pad = end - max(start, len(view))
        if pad > 0:
            h.update(zeros[:pad])
        out.append(h.digest())
    return out


def parse(digest: str) -> tuple[str, int, str]:
    """("xxh3-128", chunk, hex) from a digest string; ValueError when it is not one."""
    algo, _, rest = str(digest).partition("/")
    chunk, _, value = rest.partition(":")
    if algo != ALGORITHM or not chunk.isdigit() or int(chunk) < 1 or len(value) != 32:
        raise ValueError(f"not an engine digest: {digest!r}")
    int(value, 16)
    return algo, int(chunk), value


def file_digest(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """The digest of a file, read once in `chunk`-byte pieces through one reused buffer."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    digests, size = [], 0
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(view)
            if not got:
                break
            while got < chunk:  # a short read before the end: fill the piece
                more = f.readinto(view[got:])
                if not more:
                    break
                got += more
            digests.append(chunk_digest(view[:got]))
            size += got
            if got < chunk:
                break
    return combine(size, digests, chunk)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def matches(path: Path, *, digest: str | None = None, sha256: str | None = None) -> bool:
    """Whether `path` has the recorded digest (or, for older manifests, SHA-256)."""
    if digest is not None:
        _, chunk, _ = parse(digest)
        return file_digest(path, chunk) == digest
    if sha256 is not None:
        return sha256_file(path) == sha256
    raise ValueError("no digest recorded")
