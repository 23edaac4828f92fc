"""The local runner: the stages of qflume.stages in three threads joined by bounded queues (so
memory is set by queue sizes, never by corpus size):

    plan   scan -> diff against the state -> read -> chunk + hash + ids (Rust) -> what to send
    embed  embedding cache lookup -> model for the misses -> cache put -> sparse vectors
    write  write-ahead in the state -> upsert / delete / payload updates -> sink barrier -> commit

The state advances only for what the sink acknowledged (see qflume.state), so a run killed at any
moment is repaired by the next one: no duplicates, no orphans, nothing lost.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from qflume import alerts, analysis, metrics
from qflume.report import IngestReport, record
from qflume.stages.batch import Batch
from qflume.stages.chunk import batches
from qflume.stages.context import Run
from qflume.stages.embed import embed_batch
from qflume.stages.plan import Planned
from qflume.stages.write import write_batches

if TYPE_CHECKING:
    from qflume.collection import Collection

__all__ = ["run_local"]

_STOP = object()
Planner = Callable[[Run], Iterator[Planned]]


def run_local(col: Collection, planner: Planner, run: Run) -> IngestReport:
    """One ingest of what ``planner`` plans, on this machine: the stages in three threads (a
    dry run plans and counts only). Records the report as the state's ``last_run``."""
    t0, cpu0, since = time.perf_counter(), time.process_time(), time.time()
    report = run.report
    if col.version is not None:
        from qflume.versions import check_settings

        check_settings(col)
    restore = _install_sigint(run)
    outcome = "failed"
    try:
        if run.dry_run:
            _dry(col, planner, run)
        else:
            _stream(col, planner, run)
        outcome = "stopped" if run.stop.is_set() else "done"
    finally:
        restore()
        run.close_readers()
        run.progress.close(outcome)
        report.elapsed_s = time.perf_counter() - t0
        report.cpu_s = time.process_time() - cpu0
    finish_report(col, run, since)
    return report


def finish_report(col: Collection, run: Run, since: float) -> None:
    """Complete a run's report (alerts, setup, storage) and record it as ``last_run``."""
    report = run.report
    report.interrupted = run.stop.is_set()
    report.alerts = alerts.during(since, time.time())
    report.setup = _setup(col, report)
    if run.dry_run:
        return
    try:
        report.storage = metrics.collection_info(col.sink)
    except Exception as e:  # the run is done; its report says why this is missing
        report.storage = {"error": str(e)}
    d = report.as_dict()
    analysis.publish(d, col.collection)
    col.state.set_meta("last_run", d)


def _setup(col: Collection, report: IngestReport) -> dict[str, Any]:
    """The settings the report's suggestions are judged against."""
    c = col.config
    sink, emb = col.loaded_sink, col.loaded_embedder
    adaptive = getattr(sink, "adaptive", None)
    out: dict[str, Any] = {
        "target": "server" if c.url is not None else "embedded",
        "wait": c.wait,
        "chunking": "tokens" if c.chunk_tokens is not None else "chars",
        "cores": analysis.cores(),
        "adaptive": adaptive is not None,
        "in_flight": getattr(adaptive, "in_flight", getattr(sink, "max_in_flight", None)),
        "in_flight_max": getattr(adaptive, "hi", None),
    }
    if emb is not None and report.chunks_embedded:  # a model that ran (reading it loads none)
        out["batch_tokens"] = getattr(emb, "batch_tokens", None)
        out["per_text"] = getattr(emb, "per_text", None)
    return out


def _install_sigint(run: Run) -> Callable[[], None]:
    """Ctrl-C stops the run (what is in flight is committed); a second one aborts it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        if run.stop.is_set():
            run.abort.set()
            raise KeyboardInterrupt
        run.stop.set()
        print(
            "\nqflume: stopping: finishing what is in flight (Ctrl-C again to abort now)",
            file=sys.stderr,
        )

    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:
        return lambda: None

    def restore() -> None:
        signal.signal(signal.SIGINT, old)

    return restore


def _dry(col: Collection, planner: Planner, run: Run) -> None:
    """Plan and count: what would be embedded (cache hits looked up), upserted and deleted."""
    report, progress = run.report, run.progress
    for batch in batches(col, run, planner(run)):
        n = len(batch.texts)
        if n:
            found = np.zeros(n, bool)
            if col.cache_path.exists():
                found, _ = col.cache.get_many(col.model_id(), batch.hashes)
                found = np.asarray(found, bool)
            report.cache_hits += int(found.sum())
            todo = [t for t, f in zip(batch.texts, found, strict=True) if not f]
            report.chunks_embedded += len(todo)
            if todo:
                report.tokens_embedded += int(np.sum(col.embedder.count_tokens(todo)))
        report.points_upserted += n
        planned = sum(p.doc.size for p in batch.plans) if batch.first else 0
        progress.add_chunks_planned(n, bytes=planned)
        progress.advance(documents=len(batch.plans) if batch.final else 0, chunks=n)
        if batch.final:  # the plans of a sliced batch count once
            report.points_deleted += sum(len(p.lost_ids) for p in batch.plans)
            report.points_deleted += sum(len(ids) for _, ids in batch.deleted)
            report.payload_updates += sum(len(p.moved) + len(p.restated) for p in batch.plans)


def _stream(col: Collection, planner: Planner, run: Run) -> None:
    """The three stages, plan and embed in their threads, write in this one."""
    report, abort = run.report, run.abort
    q_embed: queue.Queue[Any] = queue.Queue(col.config.queue_batches)
    q_write: queue.Queue[Any] = queue.Queue(col.config.queue_batches)
    errors: list[BaseException] = []

    def put(q: queue.Queue[Any], item: Any) -> bool:
        while not abort.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def drain(q: queue.Queue[Any], name: str) -> Iterator[Batch]:
        while not abort.is_set():
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            metrics.gauge("queue_depth", value=q.qsize(), stage=name)
            yield item

    def stage(
        body: Callable[[], None], downstream: queue.Queue[Any], name: str
    ) -> threading.Thread:
        """A stage thread: an error stops the whole run; downstream always hears the end."""

        def target() -> None:
            cpu = time.thread_time()
            try:
                body()
            except BaseException as e:
                errors.append(e)
                abort.set()
            finally:
                report.stages[name].cpu_s += time.thread_time() - cpu
                put(downstream, _STOP)

        return threading.Thread(target=target, name=f"qflume-{name}", daemon=True)

    def plan() -> None:
        for batch in batches(col, run, planner(run)):
            planned = sum(p.doc.size for p in batch.plans) if batch.first else 0
            run.progress.add_chunks_planned(len(batch.texts), bytes=planned)
            if not put(q_embed, batch):
                return
        run.progress.plan_finished()

    def embed() -> None:
        kind = col.config.sparse_kind
        for batch in drain(q_embed, "embed"):
            t = time.perf_counter()
            if batch.texts:  # a batch of deletions needs no model
                encoder = col.sparse_encoder
                embed_batch(
                    batch, col.embedder, report, cache=col.cache,
                    sparse=None if encoder is None else (kind, encoder),
                )  # fmt: skip
            record(report, "embed", time.perf_counter() - t, len(batch.texts))
            if not put(q_write, batch):
                return

    threads = [stage(plan, q_embed, "plan"), stage(embed, q_write, "embed")]
    for th in threads:
        th.start()
    try:
        write_batches(col, run, drain(q_write, "write"))
    except BaseException as e:
        abort.set()
        errors.append(e)
    finally:
        for th in threads:
            while th.is_alive():
                th.join(0.1)
        for name in ("embed", "write"):  # nothing waits once the run is over
            metrics.gauge("queue_depth", value=0, stage=name)
    if errors:
        raise errors[0]
