"""One writer per output: exclusive locks on output directories and datasets.

`output_lock(dir)` takes an exclusive `filelock` lock on `<dir>/.lock` (`flock(2)`: the kernel
releases it when the holder exits or is killed, so a lock left by a killed process is simply free
again) and writes who holds it beside it, in `<dir>/.lock.json` (pid, host, since). A second
process on the same directory waits, saying once who holds the lock, or with `wait=False` refuses
in one line. `path_lock(file)` does the same for one artefact (e.g. a dataset being built), with the
lock file `<parent>/.<name>.lock`.

Lock files are never deleted (deleting a lock file that another process is waiting on would let
two processes hold "the" lock). Locks are advisory: they keep engine processes apart.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import filelock

from engine.errors import EngineError

POLL_S = 0.5  # how often a waiting process retries


def holder_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def read_holder(info_file: Path) -> dict | None:
    try:
        info = json.loads(Path(info_file).read_text())
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def describe_holder(info: dict | None) -> str:
    if not info:
        return "another process"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} "
            f"since {info.get('since', '?')}")


def _write_holder(info_file: Path) -> None:
    """`info_file` with this process as the holder; the lock holds without it (it only informs),
    so a failure (a full disk) leaves the old file, never a temporary one."""
    from engine.atomic import remove_stale_temps, temp_name
    remove_stale_temps(info_file.parent, only=f".{info_file.name}.tmp-")  # of dead processes
    tmp = temp_name(info_file)  # renamed into place; no fsync (it only informs)
    try:
        tmp.write_text(json.dumps(holder_info()) + "\n")
        os.replace(tmp, info_file)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def _locked(lock_file: Path, info_file: Path, what: str, *, wait: bool,
            log: Callable[[str], None] | None, timeout: float | None = None,
            no_wait_hint: str = "") -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(lock_file))
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            holder = describe_holder(read_holder(info_file))
            if not wait:
                raise EngineError(f"{what} is in use by {holder} (lock {lock_file}); "
                                  f"wait for it to finish{no_wait_hint}") from None
            if log:
                log(f"waiting for {what}: locked by {holder}")
            started = time.monotonic()
            while True:
                try:
                    lock.acquire(timeout=POLL_S)
                    break
                except filelock.Timeout:
                    if timeout is not None and time.monotonic() - started > timeout:
                        raise EngineError(f"{what} is still locked by "
                                          f"{describe_holder(read_holder(info_file))} after "
                                          f"{timeout:g} s") from None
    except OSError as exc:
        raise EngineError(f"cannot lock {what} ({lock_file}): {exc.strerror or exc}") from None
    try:
        _write_holder(info_file)
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def output_lock(out_dir, *, wait: bool = True, log: Callable[[str], None] | None = print,
                timeout: float | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on the output directory `out_dir` (created if needed) for the
    duration of the block; yields the directory. While another process holds it: with `wait`,
    log one line naming the holder and wait (at most `timeout` seconds when given); without,
    raise EngineError naming the holder."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EngineError(f"{out_dir} is a file, not a directory; pass a directory as --out") from None
    except OSError as exc:
        raise EngineError(f"cannot create output directory {out_dir}: {exc.strerror or exc}") from None
    with _locked(out_dir / ".lock", out_dir / ".lock.json", str(out_dir), wait=wait, log=log,
                 timeout=timeout, no_wait_hint=", or drop --no-wait to wait"):
        yield out_dir


@contextlib.contextmanager
def path_lock(path, *, wait: bool = True, log: Callable[[str], None] | None = None,
              timeout: float | None = None) -> Iterator[None]:
    """Exclusive lock on one artefact `path` (file or directory, which need not exist yet): the
    lock file is `<parent>/.<name>.lock`; the parent directory must exist or be creatable."""
    path = Path(path)
    with _locked(path.parent / f".{path.name}.lock", path.parent / f".{path.name}.lock.json",
                 str(path), wait=wait, log=log, timeout=timeout):
        yield


def _flock_held(lock_file: Path) -> bool | None:
    """Whether some process holds a flock(2) lock on `lock_file`, read from /proc/locks (Linux)
    without taking it; None where that table is not readable."""
    try:
        st = lock_file.stat()
        table = Path("/proc/locks").read_text()
    except FileNotFoundError:
        return False if Path("/proc/locks").exists() else None
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in table.splitlines():
        fields = line.split()
        if "FLOCK" not in fields or "->" in fields:  # "->": a process waiting, not holding
            continue
        try:
            major, minor, inode = fields[fields.index("FLOCK") + 4].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                return True
        except (ValueError, IndexError):
            continue
    return False


def output_holder(out_dir) -> dict | None:
    """Who holds `output_lock(out_dir)` now, without taking the lock (so a watcher never delays
    a sweep): the holder's `.lock.json` ({"pid", "host", "since"}, or {} when unreadable) while
    the lock is held, else None. Read from /proc/locks; where that is not readable, the recorded
    pid is checked when it ran on this host."""
    out_dir = Path(out_dir)
    info = read_holder(out_dir / ".lock.json")
    held = _flock_held(out_dir / ".lock")
    if held is None:
        from engine.atomic import pid_alive
        held = bool(info) and info.get("host") == socket.gethostname() and \
            isinstance(info.get("pid"), int) and pid_alive(info["pid"])
    return (info or {}) if held else None


LOCK_NAMES = (".lock", ".lock.json")


def is_lock_file(path: Path) -> bool:
    """Whether `path` is one of the files this module leaves behind (for tidiness checks)."""
    name = Path(path).name
    return name in LOCK_NAMES or (name.startswith(".") and (name.endswith(".lock")
                                                           or name.endswith(".lock.json")))
