"""`Run`: what the stages of one ingest share (its report, progress, stop and abort events, the
reader processes). A runner makes one per run: the local threaded runner (qflume.runner), a Ray
task (qflume.ray), or a caller running the stages by hand."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from qflume._validate import printable
from qflume.progress import Progress
from qflume.report import IngestReport, StageStats

__all__ = ["Run", "read_workers"]

STAGES = ("plan", "embed", "write")


def read_workers(max_memory: int | None) -> int:
    """Reader processes: qflume's thread count (`qflume.set_threads`), at most 8, and one per
    256 MiB of ``max_memory``."""
    from qflume._core import get_threads

    n = min(get_threads(), os.cpu_count() or 1, 8)
    if max_memory is not None:
        n = min(n, max_memory // (256 << 20))
    return max(1, n)


@dataclass
class Run:
    """One run's shared context. ``stop``: finish what is in flight and commit; ``abort``: leave
    now (an error, or a second Ctrl-C)."""

    report: IngestReport = field(default_factory=IngestReport)
    progress: Progress = field(default_factory=lambda: Progress("none"))
    dry_run: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    abort: threading.Event = field(default_factory=threading.Event)
    workers: int = 1  # reader processes, started on the first document a reader reads
    _pool: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.report.dry_run = self.dry_run
        for name in STAGES:
            self.report.stages.setdefault(name, StageStats())

    def readers_pool(self) -> Any:
        """The reader processes (qflume.readers.pool), started on first use."""
        if self._pool is None:
            from qflume.readers.pool import ReaderPool

            self._pool = ReaderPool(self.workers)
        return self._pool

    def close_readers(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def skip(
        self, key: str, reason: str, detail: str = "", *, size: int = 0, advance: bool = True
    ) -> None:
        """Report a document skipped, with its reason; ``advance``: it counts as done for the
        progress display now (a streamed document counts when its last slice commits)."""
        self.report.documents_skipped += 1
        entry = {"key": printable(key), "reason": reason}
        if detail:
            entry["detail"] = printable(detail)
        self.report.skipped.append(entry)
        if advance:
            self.progress.advance(documents=1, dropped_bytes=size)
