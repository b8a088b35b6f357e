"""Write-then-rename helpers: a reader never sees a half-written file, and a killed process leaves
at most a `.*.tmp-<pid>` file behind, never a truncated artefact under its final name; later runs
remove such files once their process is gone (`remove_stale_temps`). JSON is written strict (no
NaN or Infinity). OSErrors while writing become one-line EngineErrors (`os_error`)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

TEMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)$")


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.
    An OSError that names no file, or the temporary one (a full disk met by a writer such as
    pandas or matplotlib), is re-raised naming `path`, so its one-line message says which file
    and the free space of the right filesystem."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None or str(exc.filename) == str(tmp):
            exc.filename = str(path)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def dumps_strict(obj, **kwargs) -> str:
    """JSON text of `obj`; ValueError for NaN or Infinity (callers store None instead)."""
    return json.dumps(obj, allow_nan=False, **kwargs)


def write_json(path: Path, obj) -> None:
    write_bytes(path, (dumps_strict(obj, indent=2, sort_keys=False) + "\n").encode())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temps(directory: Path, *, everyone: bool = False, only: str = "") -> list[Path]:
    """Delete the `.<name>.tmp-<pid>` files in `directory` whose process is no longer alive (all of
    them with `everyone`, for a caller that holds the directory's lock), those whose name starts
    with `only` when given; returns what it removed. A live process's temporary file is never
    touched."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = TEMP_PATTERN.match(p.name)
        if not m or not p.name.startswith(only):
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or (not everyone and pid_alive(pid)):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def os_error(exc: OSError, action: str, path) -> "EngineError":
    """A one-line EngineError for an OSError met while `action` (e.g. "write") `path`."""
    from engine.errors import EngineError
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(Path(path))
        more = f" ({free / 2**20:,.1f} MiB free)" if free is not None else ""
        return EngineError(f"cannot {action} {path}: the disk is full{more}; nothing half-written "
                           "was kept; free some space and run the command again")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return EngineError(f"cannot {action} {path}: {reason}; pass a writable location")
    return EngineError(f"cannot {action} {path}: {reason}")


def writable_dir(path: Path) -> Path:
    """Create `path` if needed, prove it is writable, and clear temporaries a killed run left."""
    from engine.errors import EngineError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EngineError(f"{path} is a file, not a directory; pass a directory as --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = temp_name(path / "probe")
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:
        raise EngineError(f"cannot create output directory {path}: a file is in the way; "
                          "pass a directory as --out") from None
    except OSError as exc:
        raise EngineError(f"cannot write to output directory {path}: {exc.strerror or exc}; "
                          "pass a writable --out") from None
    remove_stale_temps(path)
    return path


@contextlib.contextmanager
def staged(finals: list[Path], *, marker: Path) -> Iterator[list[Path]]:
    """Temporary names for files that become valid together. The caller writes every one; then
    the completeness `marker` (e.g. a manifest, written by the caller afterwards) is removed and
    each temporary is renamed onto its final name. On failure the temporaries are removed and the
    final names are left as they were."""
    temps = [temp_name(Path(f)) for f in finals]
    for tmp in temps:  # a pid reused after a kill: its stale file is ours now
        tmp.unlink(missing_ok=True)
    try:
        yield temps
        Path(marker).unlink(missing_ok=True)
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
