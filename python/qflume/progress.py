"""Progress of an ingest, wherever the output goes: a bar on a terminal, plain lines in a log.

The pipeline's stages only count (documents, chunks, bytes planned); one background thread turns
the counts into a `ProgressEvent` and hands it to the outputs: a bar redrawn a few times a second
on a terminal, one line every few seconds otherwise (like pip and cargo in CI logs), and a
caller's callback at the same cadence. A final event closes every run.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from qflume.exceptions import InvalidInputError

__all__ = ["DEFAULT_INTERVAL", "MODES", "Progress", "ProgressEvent", "resolve_mode"]

log = logging.getLogger("qflume.progress")

#: What ``--progress`` / ``Pipeline(progress=...)`` accept.
MODES = ("auto", "bar", "lines", "none")
#: Seconds between two progress lines (and callback calls); QFLUME_PROGRESS_INTERVAL overrides.
DEFAULT_INTERVAL = 5.0
INTERVAL_ENV = "QFLUME_PROGRESS_INTERVAL"
#: The chunk rate is measured over about this many recent seconds (model loading and scanning
#: at the start weigh on it only for that long).
RATE_WINDOW_S = 30.0


def _fmt_duration(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "--:--"
    s = max(0, int(s + 0.5))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


@dataclass(frozen=True)
class ProgressEvent:
    """Where a run stands. ``phase`` is ``scan`` (walking and hashing, nothing counted yet),
    ``ingest``, then, in the final event (``final=True``), ``done``, ``stopped`` (Ctrl-C or
    `Pipeline.stop`) or ``failed`` (the run raised).

    ``docs_total`` is None while unknown (records are counted as they are read).
    ``chunks_total`` counts the chunks to send planned so far; while planning is still going it
    is extrapolated from the bytes planned (``chunks_estimated=True``). ``eta_s`` is None when
    there is no rate or total to go by.
    """

    phase: str
    docs_done: int
    docs_total: int | None
    chunks_done: int
    chunks_total: int | None
    chunks_estimated: bool
    chunks_per_s: float
    eta_s: float | None
    elapsed_s: float
    final: bool = False

    def line(self) -> str:
        """The event as one plain line, e.g. ``qflume: 120/900 docs  3,400/~25,000 chunks
        310.2 chunks/s  ETA 01:10``."""
        if self.phase == "scan" and not self.final:
            return f"qflume: scanning, {_fmt_duration(self.elapsed_s)} elapsed"
        docs = f"{self.docs_done:,}" + (
            f"/{self.docs_total:,}" if self.docs_total is not None else ""
        )
        chunks = f"{self.chunks_done:,}"
        if self.chunks_total is not None and not self.final:
            chunks += f"/{'~' if self.chunks_estimated else ''}{self.chunks_total:,}"
        body = f"{docs} docs  {chunks} chunks  {self.chunks_per_s:,.1f} chunks/s"
        if self.final:
            return f"qflume: {self.phase} in {_fmt_duration(self.elapsed_s)}: {body}"
        return f"qflume: {body}  ETA {_fmt_duration(self.eta_s)}"

    def fraction(self) -> float:
        """Share of the work done, by chunks when their total is known, else by documents."""
        if self.chunks_total:
            return min(1.0, self.chunks_done / self.chunks_total)
        if self.docs_total:
            return min(1.0, self.docs_done / self.docs_total)
        return 1.0 if self.final else 0.0


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def resolve_mode(progress: bool | str | None, stream: TextIO | None = None) -> str:
    """``progress`` as one of bar, lines, none. ``auto``: a bar on a terminal, lines otherwise;
    None (the Python API's default): a bar on a terminal, nothing otherwise; True: bar;
    False: none."""
    stream = stream if stream is not None else sys.stderr
    if progress is None:
        return "bar" if _isatty(stream) else "none"
    if progress is True:
        return "bar"
    if progress is False:
        return "none"
    if not isinstance(progress, str) or progress not in MODES:
        raise InvalidInputError(
            f"progress must be one of {', '.join(MODES)} (or True/False/None), not {progress!r}"
        )
    if progress == "auto":
        return "bar" if _isatty(stream) else "lines"
    return progress


def resolve_interval(interval: float | None) -> float:
    """Seconds between progress lines: ``interval``, else $QFLUME_PROGRESS_INTERVAL, else 5."""
    where = "progress_interval"
    if interval is None:
        raw = os.environ.get(INTERVAL_ENV)
        if raw is None or not raw.strip():
            return DEFAULT_INTERVAL
        where = f"${INTERVAL_ENV}"
        try:
            interval = float(raw)
        except ValueError:
            raise InvalidInputError(
                f"{where}={raw!r} is not a number of seconds (e.g. 5 or 0.5)"
            ) from None
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise InvalidInputError(f"{where} must be a number of seconds, not {interval!r}")
    if not math.isfinite(interval) or interval <= 0:
        raise InvalidInputError(f"{where} must be a positive number of seconds, not {interval!r}")
    return float(interval)


class Progress:
    """Counts documents and chunks for one run and reports them (see the module docstring).

    ``mode`` is bar, lines or none (see `resolve_mode`); ``callback`` receives every event,
    from a background thread, every ``interval`` seconds and once more at the end. A callback
    that raises is logged (logger ``qflume.progress``) and not called again; the run goes on.
    """

    def __init__(
        self,
        mode: str = "none",
        *,
        stream: TextIO | None = None,
        interval: float = DEFAULT_INTERVAL,
        callback: Callable[[ProgressEvent], object] | None = None,
        hz: float = 4.0,
    ) -> None:
        if mode not in ("bar", "lines", "none"):
            mode = resolve_mode(mode, stream)
        self.stream = stream if stream is not None else sys.stderr
        self.mode = mode
        self.interval = interval
        self.callback = callback
        self.docs_total: int | None = None
        self.docs_done = 0
        self.chunks_done = 0
        self.chunks_planned = 0
        self._bytes_total = 0
        self._bytes_planned = 0
        self._plan_finished = False
        self._phase = "scan"
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque([(self._start, 0)])
        self._drawn = False
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        periods = []
        if mode == "bar":
            periods.append(1.0 / hz)
        if mode == "lines" or callback is not None:
            periods.append(interval)
        self._next_line = self._start + interval
        self._next_callback = self._start + interval
        if periods:
            self._period = min(periods)
            self._thread = threading.Thread(
                target=self._tick_loop, name="qflume-progress", daemon=True
            )
            self._thread.start()

    # -- counting (called by the pipeline's stages) ---------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether anything is reported at all."""
        return self.mode != "none" or self.callback is not None

    def add_documents(self, n: int, *, bytes: int = 0) -> None:
        """``n`` more documents to go through, ``bytes`` of them to be chunked."""
        with self._lock:
            self.docs_total = (self.docs_total or 0) + n
            self._bytes_total += bytes
            self._phase = "ingest"

    def add_chunks_planned(self, n: int, *, bytes: int = 0) -> None:
        """``n`` more chunks to send, planned from ``bytes`` of documents."""
        with self._lock:
            self.chunks_planned += n
            self._bytes_planned += bytes
            self._phase = "ingest"

    def plan_finished(self) -> None:
        """Every chunk to send is planned: the chunk total is exact from now on."""
        with self._lock:
            self._plan_finished = True

    def advance(self, documents: int = 0, chunks: int = 0, *, dropped_bytes: int = 0) -> None:
        """``documents`` finished, ``chunks`` sent; ``dropped_bytes`` of documents counted by
        `add_documents` turned out to need no chunking (unchanged content, refused)."""
        with self._lock:
            self.docs_done += documents
            self.chunks_done += chunks
            self._bytes_total = max(0, self._bytes_total - dropped_bytes)
            self._phase = "ingest"

    # -- reporting -------------------------------------------------------------------------------

    def event(self, *, final: bool = False, phase: str | None = None) -> ProgressEvent:
        """The current state as an event."""
        now = time.monotonic()
        with self._lock:
            elapsed = now - self._start
            if final:
                rate = self.chunks_done / elapsed if elapsed > 0 else 0.0
            else:
                samples = self._samples
                samples.append((now, self.chunks_done))
                while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
                    samples.popleft()
                t0, c0 = samples[0]
                rate = (self.chunks_done - c0) / (now - t0) if now > t0 else 0.0
            total: int | None = self.chunks_planned
            estimated = False
            if not self._plan_finished and not final:
                if self._bytes_planned > 0 and self._bytes_total > self._bytes_planned:
                    total = round(self.chunks_planned * self._bytes_total / self._bytes_planned)
                    estimated = True
                elif self.docs_total is None:
                    total = None  # records: nothing to extrapolate from
            eta: float | None = None
            if total is not None and total <= self.chunks_done and self._plan_finished:
                eta = 0.0
            elif total is not None and rate > 0:
                eta = (total - self.chunks_done) / rate
            return ProgressEvent(
                phase=phase or self._phase,
                docs_done=self.docs_done,
                docs_total=self.docs_total,
                chunks_done=self.chunks_done,
                chunks_total=total,
                chunks_estimated=estimated,
                chunks_per_s=rate,
                eta_s=eta,
                elapsed_s=elapsed,
                final=final,
            )

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: stop drawing, keep ingesting
            self.mode = "none"

    def _draw_bar(self, ev: ProgressEvent) -> None:
        if ev.phase == "scan" and not ev.final:
            text = ev.line()
        else:
            width = 24
            bar = "#" * int(ev.fraction() * width)
            text = f"[{bar:<{width}}] {ev.line().removeprefix('qflume: ')}"
        self._write(f"\r{text}\x1b[K")
        self._drawn = True

    def _call(self, ev: ProgressEvent) -> None:
        callback = self.callback
        if callback is None:
            return
        try:
            callback(ev)
        except Exception:
            self.callback = None
            log.warning(
                "qflume: the progress callback %r raised; it is not called again (the ingest "
                "goes on)",
                callback,
                exc_info=True,
            )

    def _tick(self) -> None:
        ev = self.event()
        now = time.monotonic()
        if self.mode == "bar":
            self._draw_bar(ev)
        elif self.mode == "lines" and now >= self._next_line:
            self._next_line = now + self.interval
            self._write(ev.line() + "\n")
            self._drawn = True
        if self.callback is not None and now >= self._next_callback:
            self._next_callback = now + self.interval
            self._call(ev)

    def _tick_loop(self) -> None:
        while not self._stop.wait(self._period):
            self._tick()

    def close(self, phase: str = "done") -> ProgressEvent:
        """Stop reporting and report the final event (``phase``: done, stopped or failed)."""
        if self._closed:
            return self.event(final=True, phase=phase)
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        ev = self.event(final=True, phase=phase)
        # A run that fails before anything was shown leaves the error message alone
        quiet = phase == "failed" and not self._drawn
        if self.mode == "bar" and not quiet:
            self._draw_bar(ev)
            self._write("\n")
        elif self.mode == "lines" and not quiet:
            self._write(ev.line() + "\n")
        self._call(ev)
        return ev
