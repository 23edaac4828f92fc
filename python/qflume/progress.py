"""A progress line for long work: drawn on a terminal, silent otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def _fmt_duration(s: float) -> str:
    if s != s or s == float("inf"):  # NaN or unknown
        return "--:--"
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """Counts documents and chunks; redraws at most `hz` times a second when the stream is a TTY."""

    def __init__(
        self, *, enabled: bool | None = None, stream: TextIO | None = None, hz: float = 4.0
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.docs_total = 0
        self.docs_done = 0
        self.chunks_done = 0
        self.chunks_total = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._period = 1.0 / hz
        self._lock = threading.Lock()
        self._drawn = False

    def set_total(self, documents: int) -> None:
        self.docs_total = documents
        self.update()

    def add_chunks_planned(self, n: int) -> None:
        with self._lock:
            self.chunks_total += n

    def advance(self, documents: int = 0, chunks: int = 0) -> None:
        with self._lock:
            self.docs_done += documents
            self.chunks_done += chunks
        self.update()

    def update(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self._period:
            return
        self._last_draw = now
        elapsed = now - self._start
        rate = self.chunks_done / elapsed if elapsed > 0 else 0.0
        left = self.chunks_total - self.chunks_done
        eta = left / rate if rate > 0 and left > 0 else float("nan")
        width = 24
        frac = self.docs_done / self.docs_total if self.docs_total else 0.0
        bar = "#" * int(frac * width)
        line = (
            f"\r[{bar:<{width}}] {self.docs_done}/{self.docs_total} docs  "
            f"{self.chunks_done} chunks  {rate:,.1f} chunks/s  ETA {_fmt_duration(eta)} "
        )
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.update(force=True)
            self.stream.write("\n")
            self.stream.flush()
