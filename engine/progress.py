"""A progress bar with ETA on a terminal; plain lines (one per step) when the stream is not a TTY."""
from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24  # bar characters


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    def __init__(self, total: int, *, label: str = "runs", stream: TextIO | None = None):
        self.total, self.label = total, label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.start = time.monotonic()
        self._rate_from = (self.start, 0)  # (time, done) the ETA's rate is measured from

    def restart_eta(self) -> None:
        """Measure the ETA's rate from now on (e.g. after a set-up stage that is not per-step)."""
        self._rate_from = (time.monotonic(), self.done)

    def line(self, note: str = "") -> str:
        now = time.monotonic()
        elapsed = now - self.start
        since, done_then = self._rate_from
        steps = self.done - done_then
        eta = (now - since) / steps * (self.total - self.done) if steps > 0 else None
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * WIDTH) + "-" * (WIDTH - int(frac * WIDTH))
        text = (f"[{bar}] {self.done}/{self.total} {self.label} {frac:4.0%} "
                f"elapsed {_clock(elapsed)} ETA {'?' if eta is None else _clock(eta)}")
        return f"{text}  {note}" if note else text

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self.tty:
            self.stream.write("\r\033[K" + self.line(note))
        else:
            self.stream.write(self.line(note) + "\n")
        self.stream.flush()

    def write(self, message: str) -> None:
        """A log line that does not break the bar."""
        if self.tty:
            self.stream.write("\r\033[K" + message + "\n" + self.line())
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
