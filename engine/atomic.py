"""Write-then-rename helpers: a reader never sees a half-written file, and a killed process leaves
at most a `*.tmp-<pid>` file behind, never a truncated artefact under its final name."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def writable_dir(path: Path) -> Path:
    """Create `path` if needed, prove it is writable, and clear temporaries a killed run left."""
    from engine.errors import EngineError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = temp_name(path / "probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise EngineError(f"cannot write to output directory {path}: {exc.strerror or exc}; "
                          "pass a writable --out") from None
    for stale in path.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def staged(finals: list[Path], *, marker: Path) -> Iterator[list[Path]]:
    """Temporary names for files that become valid together. The caller writes every one; then
    the completeness `marker` (e.g. a manifest, written by the caller afterwards) is removed and
    each temporary is renamed onto its final name. On failure the temporaries are removed and the
    final names are left as they were."""
    temps = [temp_name(Path(f)) for f in finals]
    try:
        yield temps
        Path(marker).unlink(missing_ok=True)
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
