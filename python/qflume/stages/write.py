"""The write stage: write-ahead in the state, Rust-packed upserts, deletes of lost chunks and
batched payload updates of moved ones, then a barrier and the commit of what the sink
acknowledged.

`send_slice` sends one batch (the local runner and qflume.ray's datasink both use it);
`write_batches` is the whole stage as the local runner runs it: documents are committed in
groups (every ``4 * batch_chunks`` points or 2 s) once `Sink.barrier` says the server has
everything sent so far; groups sent while the server was unreachable (held in the sink's
outbox) are committed in order once it has acknowledged them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from qflume.payload import METADATA
from qflume.report import record
from qflume.sinks.base import PointBatch, Sink
from qflume.stages.batch import Batch
from qflume.stages.context import Run
from qflume.state import DocUpdate

if TYPE_CHECKING:
    from qflume.collection import Collection

__all__ = ["send_slice", "write_ahead", "write_batches"]

#: Seconds between two commits at most.
COMMIT_EVERY_S = 2.0


def send_slice(sink: Sink, batch: Batch) -> tuple[int, int, int]:
    """One slice to the sink: its upserts, then (with the last slice of its documents, after
    every slice of their new chunks was sent) the deletes of lost chunks and the payload
    updates of moved and restated ones, in a bounded number of requests. Returns (points
    upserted, points deleted, payload updates)."""
    n = len(batch.texts)
    if n:
        sink.upsert_batch(
            PointBatch(
                ids=batch.ids,
                dense=batch.dense,
                sparse=batch.sparse,
                texts=batch.texts,
                doc_index=batch.doc_index,
                doc_metadata=[p.doc.meta for p in batch.plans],
                chunk_index=batch.chunk_index,
                start=batch.start,
                end=batch.end,
                chunk_hash=batch.hashes,
                chunk_metadata=batch.extra_meta or None,
                chunk_meta_index=batch.extra_index if batch.extra_meta else None,
            )
        )
    if not batch.final:
        return n, 0, 0
    lost = [pid for p in batch.plans for pid in p.lost_ids]
    for _, ids in batch.deleted:
        lost.extend(ids)
    if lost:
        sink.delete(lost)
    moved = [item for p in batch.plans for item in p.moved]
    sink.set_payloads(moved, key=METADATA)
    # the whole metadata: a page key may go
    restated = [(pid, {METADATA: m}) for p in batch.plans for pid, m in p.restated]
    sink.set_payloads(restated)
    return n, len(lost), len(moved) + len(restated)


def write_ahead(col: Collection, batch: Batch) -> None:
    """Record in the state what of ``batch`` may land in the collection, before it is sent
    (once per batch: with its first slice; a streamed document's blocks carry their own)."""
    if batch.ahead is not None:
        col.state.write_ahead(batch.ahead)
    elif batch.first:
        ahead = {p.doc.key: (p.doc.root, p.upsert_hashes) for p in batch.plans}
        col.state.write_ahead({k: v for k, v in ahead.items() if v[1]})


def ensure_collection(col: Collection) -> None:
    """Create the collection if needed (and record its version and sparse vector)."""
    col.sink.ensure_collection(col.collection_spec())
    if col.config.versioned:
        from qflume.versions import after_ensure

        after_ensure(col)
    col.record_sparse()


_COUNTERS = ("retried", "spooled", "outages", "outage_s")


def _counters(sink: Sink) -> dict[str, float]:
    """The sink's retry and outage counters (a sink without them counts none)."""
    return {k: getattr(sink, k, 0) for k in _COUNTERS}


def _traffic(sink: Sink) -> dict[str, Any] | None:
    """The sink's bytes and errors so far (`qflume.metrics.RpcMeter`), None without a meter."""
    meter = getattr(sink, "meter", None)
    return None if meter is None else meter.snapshot()


class _Groups:
    """Documents written and not yet committed, in groups; a group commits once the sink
    acknowledged it (held groups wait for the end of an outage, in order)."""

    def __init__(self, col: Collection, run: Run) -> None:
        self.col, self.run = col, run
        self.updates: list[DocUpdate] = []
        self.deleted: list[str] = []
        self.points = 0
        self.docs = 0  # documents finished in this group (for progress: abandoned ones too)
        self.last = time.perf_counter()
        self.held: list[tuple[list[DocUpdate], list[str]]] = []

    def add(self, batch: Batch, points: int) -> None:
        if batch.final:
            self.updates.extend(p.update for p in batch.plans if p.update is not None)
            self.docs += len(batch.plans)
            self.deleted.extend(k for k, _ in batch.deleted)
        self.points += points

    def due(self, batch_chunks: int) -> bool:
        return self.points >= 4 * batch_chunks or time.perf_counter() - self.last > COMMIT_EVERY_S

    def commit(self, final: bool = False) -> None:
        sink = self.col.sink
        if self.updates or self.deleted or (final and self.held):
            if self.updates or self.deleted:
                self.held.append((self.updates, self.deleted))
            if final:
                sink.flush()  # waits out an outage (up to the sink's deadline)
                acked = True
            else:  # everything sent is acknowledged and searchable, or held back
                acked = sink.barrier()
            if acked:
                for ups, dels in self.held:
                    self.col.state.commit(ups, dels)
                self.held.clear()
        self.run.progress.advance(documents=self.docs)
        self.updates, self.deleted, self.points, self.docs = [], [], 0, 0
        self.last = time.perf_counter()


def write_batches(col: Collection, run: Run, batches: Iterable[Batch]) -> None:
    """The write stage over ``batches`` (embedded): see the module's docstring. Stops early,
    committing nothing more, when the run is aborted."""
    report = run.report
    stats = report.stages["write"]
    sink = col.sink
    ensured = False
    groups = _Groups(col, run)
    before = _counters(sink)
    traffic = _traffic(sink)
    cpu = time.thread_time()
    try:
        for batch in batches:
            t = time.perf_counter()
            if not ensured and (len(batch.texts) or batch.plans):
                ensure_collection(col)
                ensured = True
            write_ahead(col, batch)
            n, lost_n, updates = send_slice(sink, batch)
            report.points_upserted += n
            report.points_deleted += lost_n
            report.payload_updates += updates
            groups.add(batch, n + lost_n)
            run.progress.advance(chunks=n)
            record(report, "write", time.perf_counter() - t, n)
            if groups.due(col.config.batch_chunks):
                t = time.perf_counter()
                groups.commit()
                stats.busy_s += time.perf_counter() - t
        if not run.abort.is_set():
            t = time.perf_counter()
            groups.commit(final=True)
            stats.busy_s += time.perf_counter() - t
    finally:
        stats.cpu_s += time.thread_time() - cpu
        after = _counters(sink)
        report.retried += int(after["retried"] - before["retried"])
        report.spooled_requests += int(after["spooled"] - before["spooled"])
        report.outages += int(after["outages"] - before["outages"])
        report.outage_s += after["outage_s"] - before["outage_s"]
        if traffic is not None:
            now = _traffic(sink)
            assert now is not None
            report.bytes_sent += now["bytes_sent"] - traffic["bytes_sent"]
            report.bytes_received += now["bytes_received"] - traffic["bytes_received"]
            for code, k in now["errors"].items():
                grew = k - traffic["errors"].get(code, 0)
                if grew > 0:
                    report.sink_errors[code] = report.sink_errors.get(code, 0) + grew
