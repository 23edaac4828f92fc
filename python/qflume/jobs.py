"""A durable, prioritized job queue with one worker thread (the writes of `qflume serve`).

Every job is written to a SQLite file (WAL) when it is submitted, so a job is never lost: a
shutdown stops after the step in progress and leaves the rest queued on disk, a crash leaves it
there too, and the next start resumes it from its last finished step. Jobs run in steps (a bulk
store runs one slice of records per step); between steps the worker picks the most urgent job, so
a small update submitted while a bulk store runs goes next, not after the whole store.

Priorities: lower runs first (URGENT < NORMAL < BULK); equal priorities run in submission order.
With ``max_queued``, a job is refused (`QueueFullError`, with a retry-after estimate) while that
many jobs wait (not started) that would run before or with it: a new job of priority p counts the
waiting jobs of priority <= p, so a queue full of bulk stores still takes urgent updates (which
wait only behind urgent ones), and the jobs waiting never exceed 2 x max_queued.
When a job finishes (done or failed) and has a callback URL, its document is POSTed there by a
separate delivery thread, with retries; undelivered callbacks are redelivered after a restart.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qflume._sqlite import open_wal
from qflume._validate import redact_url
from qflume.exceptions import InvalidInputError, QflumeError, StateError, is_rust_panic

__all__ = [
    "BULK",
    "NORMAL",
    "URGENT",
    "Job",
    "JobQueue",
    "QueueClosedError",
    "QueueFullError",
    "StepResult",
    "job_error",
]

log = logging.getLogger("qflume.jobs")

URGENT = 0  # small updates and deletes
NORMAL = 1  # large updates and deletes
BULK = 2  # stores

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    status TEXT NOT NULL,
    items INTEGER NOT NULL,
    items_done INTEGER NOT NULL DEFAULT 0,
    payload TEXT,
    result TEXT,
    error TEXT,
    callback_url TEXT,
    callback TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
"""


class QueueClosedError(QflumeError):
    """The queue is shutting down and takes no new jobs."""


class QueueFullError(QflumeError):
    """The queue holds `limit` waiting jobs that would run before or with this one: try again in
    `retry_after` seconds (an estimate from recent job durations, at least 1)."""

    def __init__(self, message: str, *, waiting: int, limit: int, retry_after: int) -> None:
        super().__init__(message)
        self.waiting = waiting
        self.limit = limit
        self.retry_after = retry_after


def job_error(e: BaseException) -> str:
    """What a failed job's ``error`` says about the exception that failed it."""
    kind = "RustPanicError" if is_rust_panic(e) else type(e).__name__
    return f"{kind}: {e}"


@dataclass
class StepResult:
    """What one step of a job did: items now done in total, the result so far, and whether the
    job is finished."""

    items_done: int
    result: dict[str, Any]
    finished: bool


@dataclass
class Job:
    """A unit of queued work; `as_dict()` is what GET /jobs/{id} returns."""

    id: str
    seq: int
    kind: str
    priority: int
    items: int
    status: str = QUEUED
    items_done: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    callback_url: str | None = None
    callback: dict[str, Any] | None = None  # {"state": pending|delivered|failed, ...}
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    resumed: bool = False  # loaded from the file at start (queued or interrupted before)
    payload: Any = None  # loaded from the file when the job first runs, dropped when it ends
    busy_s: float = 0.0  # time its steps took in this process (the retry-after estimate)
    future: concurrent.futures.Future[Job] = field(
        default_factory=concurrent.futures.Future, repr=False
    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "priority": self.priority,
            "items": self.items,
            "items_done": self.items_done,
            "result": self.result,
            "error": self.error,
            "callback": None
            if self.callback_url is None
            else {
                **(self.callback or {"state": "pending"}),
                "url": redact_url(self.callback_url),
            },
            "created_at": self.created,
            "started_at": self.started,
            "finished_at": self.finished,
            "resumed": self.resumed,
        }

    @property
    def final(self) -> bool:
        return self.status in (DONE, FAILED)


Runner = Callable[[Job, Any], StepResult]
Deliver = Callable[[str, dict[str, Any]], None]
#: ``(job, payload or None, error) -> result``: what a failed job's result becomes (None: as is).
OnFailure = Callable[[Job, Any, str], "dict[str, Any] | None"]


# The columns `_job_from_row` reads, in its order.
_JOB_COLUMNS = (
    "id, seq, kind, priority, status, items, items_done, result, error, callback_url, callback,"
    " created, started, finished"
)


def _job_from_row(row: Sequence[Any]) -> Job:
    """A Job from a `SELECT {_JOB_COLUMNS}` row."""
    (jid, seq, kind, prio, status, items, done, result, error, cb_url, cb, created, st, fin) = row
    return Job(
        id=jid,
        seq=seq,
        kind=kind,
        priority=prio,
        items=items,
        status=status,
        items_done=done,
        result=json.loads(result) if result else None,
        error=error,
        callback_url=cb_url,
        callback=json.loads(cb) if cb else None,
        created=created,
        started=st,
        finished=fin,
    )


class JobQueue:
    """Durable prioritized jobs run by one worker thread.

    ``runners`` maps a job kind to a function ``(job, payload) -> StepResult`` that does one step
    (it reads ``job.items_done`` to know where to go on). ``deliver(url, document)`` POSTs a
    finished job's document to its callback URL (raises on failure). ``keep_finished`` bounds how
    many finished jobs the file remembers (oldest forgotten first). ``max_queued`` bounds the
    waiting jobs (see the module doc; None: no bound). ``on_failure`` gives a failed job its final
    result (a runner's per-item view of the failure), from the job, its payload and its error.
    """

    def __init__(
        self,
        path: str | Path,
        runners: dict[str, Runner],
        *,
        deliver: Deliver | None = None,
        keep_finished: int = 10_000,
        callback_attempts: int = 3,
        callback_backoff: float = 0.5,
        max_queued: int | None = None,
        on_failure: OnFailure | None = None,
    ) -> None:
        if max_queued is not None and max_queued < 1:
            raise InvalidInputError(f"max_queued must be >= 1 (or None), got {max_queued}")
        self.path = Path(path)
        self.max_queued = max_queued
        self.on_failure = on_failure
        self.runners = dict(runners)
        self.deliver = deliver
        self.keep_finished = keep_finished
        self.callback_attempts = max(1, callback_attempts)
        self.callback_backoff = callback_backoff
        try:
            self._db = open_wal(self.path, _SCHEMA)
        except sqlite3.Error as e:
            raise StateError(f"cannot open the job file {self.path}: {e}") from e
        self._db_lock = threading.Lock()
        self._cond = threading.Condition()
        self._heap: list[tuple[int, int, str]] = []  # (priority, seq, id)
        self._jobs: dict[str, Job] = {}  # jobs of this process and resumed ones
        self._current: Job | None = None
        self._stopping = False
        self._drain_until = 0.0
        self._worker: threading.Thread | None = None
        self._callbacks: list[Job] = []
        self._cb_cond = threading.Condition()
        self._cb_thread: threading.Thread | None = None
        self._cb_stop = False
        # busy time of the last jobs finished here, per priority (the retry-after estimate)
        self._durations: dict[int, deque[float]] = {}
        row = self._db.execute("SELECT MAX(seq) FROM jobs").fetchone()
        self._seq = int(row[0] or 0)
        self.resumed = self._load_unfinished()

    # -- persistence --------------------------------------------------------------------------

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        with self._db_lock:
            try:
                self._db.execute(sql, args)
            except sqlite3.Error as e:
                raise StateError(f"job file {self.path}: {e}") from e

    def _load_unfinished(self) -> int:
        """Queue again what a previous process left queued or running (resumed from its step)."""
        rows = self._db.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN (?, ?) ORDER BY seq",
            (QUEUED, RUNNING),
        ).fetchall()
        for row in rows:
            # Unfinished: no error, callback or finish time yet; a running one starts again.
            job = _job_from_row(row)
            job.status = QUEUED
            job.resumed = True
            self._jobs[job.id] = job
            heapq.heappush(self._heap, (job.priority, job.seq, job.id))
        self._exec("UPDATE jobs SET status=? WHERE status=?", (QUEUED, RUNNING))
        # Finished jobs whose callback was not delivered yet: deliver them again.
        for jid, cb in self._db.execute(
            "SELECT id, callback FROM jobs WHERE callback_url IS NOT NULL AND status IN (?, ?)"
            " AND (callback IS NULL OR json_extract(callback, '$.state') = 'pending')",
            (DONE, FAILED),
        ).fetchall():
            finished = self._read(jid)
            if finished is not None:
                finished.callback = json.loads(cb) if cb else None
                self._callbacks.append(finished)
        return len(rows)

    def _read(self, jid: str) -> Job | None:
        with self._db_lock:
            row = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id=?", (jid,)).fetchone()
        if row is None:
            return None
        job = _job_from_row(row)
        if job.final:
            job.future.set_result(job)
        return job

    def _payload(self, job: Job) -> Any:
        if job.payload is None:
            with self._db_lock:
                row = self._db.execute("SELECT payload FROM jobs WHERE id=?", (job.id,)).fetchone()
            if row is None or row[0] is None:
                raise StateError(f"job {job.id}: its payload is missing from {self.path}")
            job.payload = json.loads(row[0])
        return job.payload

    def _save_progress(self, job: Job) -> None:
        self._exec(
            "UPDATE jobs SET status=?, items_done=?, result=?, started=? WHERE id=?",
            (job.status, job.items_done, _dumps(job.result), job.started, job.id),
        )

    def _save_final(self, job: Job) -> None:
        self._exec(
            "UPDATE jobs SET status=?, items_done=?, result=?, error=?, finished=?, started=?,"
            " payload=NULL, callback=? WHERE id=?",
            (
                job.status,
                job.items_done,
                _dumps(job.result),
                job.error,
                job.finished,
                job.started,
                _dumps(job.callback),
                job.id,
            ),
        )
        if self.keep_finished >= 0:
            self._exec(
                "DELETE FROM jobs WHERE status IN (?, ?) AND seq <= (SELECT seq FROM jobs"
                " WHERE status IN (?, ?) ORDER BY seq DESC LIMIT 1 OFFSET ?)"
                " AND (callback_url IS NULL OR json_extract(callback, '$.state') != 'pending')",
                (DONE, FAILED, DONE, FAILED, self.keep_finished),
            )

    # -- public API --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (and the callback delivery) threads."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="qflume-jobs", daemon=True)
            self._worker.start()
        if self._cb_thread is None and self.deliver is not None:
            self._cb_thread = threading.Thread(
                target=self._deliver_loop, name="qflume-callbacks", daemon=True
            )
            self._cb_thread.start()

    def submit(
        self,
        kind: str,
        payload: Any,
        *,
        items: int,
        priority: int = BULK,
        callback_url: str | None = None,
    ) -> Job:
        """Queue a job (written to the file before this returns)."""
        if kind not in self.runners:
            raise InvalidInputError(
                f"unknown job kind {kind!r}: this queue runs {', '.join(sorted(self.runners))}"
            )
        with self._cond:
            if self._stopping:
                raise QueueClosedError(f"the job queue {self.path} is shutting down: no new jobs")
            if self.max_queued is not None:
                ahead = self._waiting(priority)
                if ahead >= self.max_queued:
                    wait = self.retry_after(priority)
                    raise QueueFullError(
                        f"the job queue is full: {ahead} job(s) wait that would run before or "
                        f"with this {kind} job (the limit is {self.max_queued}); "
                        f"retry in {wait} s",
                        waiting=ahead,
                        limit=self.max_queued,
                        retry_after=wait,
                    )
            self._seq += 1
            job = Job(
                id=uuid.uuid4().hex,
                seq=self._seq,
                kind=kind,
                priority=priority,
                items=items,
                callback_url=callback_url,
            )  # the payload stays on disk until the job runs: queued jobs hold no memory
            self._exec(
                "INSERT INTO jobs (id, seq, kind, priority, status, items, payload, callback_url,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.seq,
                    kind,
                    priority,
                    QUEUED,
                    items,
                    _dumps(payload),
                    callback_url,
                    job.created,
                ),
            )
            self._jobs[job.id] = job
            heapq.heappush(self._heap, (priority, job.seq, job.id))
            self._cond.notify_all()
        return job

    def get(self, jid: str) -> Job | None:
        """The job with this id (from this process, or remembered in the file)."""
        job = self._jobs.get(jid)
        if job is not None:
            return job
        return self._read(jid)

    def counts(self) -> dict[str, int]:
        """Jobs by status (queued ones include those resumed from the file)."""
        with self._db_lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        out = {QUEUED: 0, RUNNING: 0, DONE: 0, FAILED: 0}
        out.update({s: int(n) for s, n in rows})
        return out

    def depth(self) -> int:
        """Jobs waiting to run (not counting the one running)."""
        with self._cond:
            return len(self._heap)

    def _waiting(self, priority: int) -> int:
        """Jobs not started yet that would run before or with a new job of `priority` (a job
        between two of its steps has started: it does not count). Call with `_cond` held."""
        return sum(
            1
            for prio, _, jid in self._heap
            if prio <= priority and self._jobs[jid].status == QUEUED
        )

    def waiting(self, priority: int = BULK) -> int:
        """Jobs not started yet that would run before or with a new job of `priority` (what
        ``max_queued`` bounds); with the default, every job not started yet."""
        with self._cond:
            return self._waiting(priority)

    def retry_after(self, priority: int = BULK) -> int:
        """Seconds until a job of `priority` likely finds room: the mean busy time of the last
        jobs finished at that priority or more urgent ones (what runs ahead of it), else of any,
        rounded up; at least 1."""
        with self._cond:
            ahead = [d for p, ds in self._durations.items() if p <= priority for d in ds]
            times = ahead or [d for ds in self._durations.values() for d in ds]
        if not times:
            return 1
        return max(1, min(3600, math.ceil(sum(times) / len(times))))

    @property
    def running(self) -> Job | None:
        return self._current

    def overview(self, *, active: int = 50, finished: int = 5) -> dict[str, Any]:
        """What the status page lists: up to `active` unfinished jobs in the order they run (the
        one in its step first), how many are unfinished in all, and the last `finished` ones."""
        with self._cond:
            current = self._current
            waiting = heapq.nsmallest(active, self._heap)
            total = len(self._heap) + (current is not None)
            jobs = [current] if current is not None else []
            jobs += [self._jobs[jid] for _, _, jid in waiting]
        with self._db_lock:
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN (?, ?)"
                " ORDER BY finished DESC LIMIT ?",
                (DONE, FAILED, max(0, finished)),
            ).fetchall()
        return {
            "active": jobs[: max(0, active)],
            "active_total": total,
            "finished": [_job_from_row(r) for r in rows],
        }

    def stop(self, *, drain: float = 0.0, timeout: float | None = None) -> int:
        """Stop the worker: keep running jobs for up to `drain` seconds, then stop after the step in
        progress. Jobs not finished stay queued in the file (resumed by the next start). Returns
        how many jobs were left queued."""
        with self._cond:
            self._stopping = True
            self._drain_until = time.monotonic() + max(0.0, drain)
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
        with self._cb_cond:
            self._cb_stop = True
            self._cb_cond.notify_all()
        if self._cb_thread is not None:
            self._cb_thread.join(timeout if timeout is not None else 30)
        with self._cond:
            left = [j for j in self._jobs.values() if not j.final]
        for job in left:
            if job.status == RUNNING:
                job.status = QUEUED
            self._save_progress(job)
        if left:
            log.warning(
                "qflume: %d job(s) left queued in %s; the next start resumes them",
                len(left),
                self.path,
            )
        return len(left)

    def close(self) -> None:
        with self._db_lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()

    # -- the worker ---------------------------------------------------------------------------

    def _next(self) -> Job | None:
        with self._cond:
            while True:
                if self._stopping and (not self._heap or time.monotonic() >= self._drain_until):
                    return None
                if self._heap:
                    _, _, jid = heapq.heappop(self._heap)
                    job = self._jobs[jid]
                    self._current = job
                    return job
                self._cond.wait(0.5 if self._stopping else None)

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                self._step(job)
            finally:
                with self._cond:
                    self._current = None
                    if not job.final:
                        heapq.heappush(self._heap, (job.priority, job.seq, job.id))

    def _step(self, job: Job) -> None:
        if job.started is None:
            job.started = time.time()
        job.status = RUNNING
        t0 = time.perf_counter()
        try:
            payload = self._payload(job)
            step = self.runners[job.kind](job, payload)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a Rust PanicException is a BaseException: the worker lives on
            job.busy_s += time.perf_counter() - t0
            job.status = FAILED
            job.error = job_error(e)
            log.warning("qflume: job %s (%s) failed: %s", job.id, job.kind, job.error)
            if self.on_failure is not None:
                try:
                    final = self.on_failure(job, job.payload, job.error)
                except Exception:
                    log.exception("qflume: job %s: on_failure raised", job.id)
                else:
                    if final is not None:
                        job.result = final
            self._finish(job)
            return
        job.busy_s += time.perf_counter() - t0
        job.items_done = step.items_done
        job.result = step.result
        if step.finished:
            job.status = DONE
            self._finish(job)
        else:
            self._save_progress(job)

    def _finish(self, job: Job) -> None:
        job.finished = time.time()
        job.payload = None
        with self._cond:
            self._durations.setdefault(job.priority, deque(maxlen=32)).append(job.busy_s)
        if job.callback_url is not None:
            job.callback = {"state": "pending", "attempts": 0}
        self._save_final(job)
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            job.future.set_result(job)
        if job.callback_url is not None and self.deliver is not None:
            with self._cb_cond:
                self._callbacks.append(job)
                self._cb_cond.notify_all()

    # -- callbacks ----------------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        assert self.deliver is not None
        while True:
            with self._cb_cond:
                while not self._callbacks and not self._cb_stop:
                    self._cb_cond.wait()
                if not self._callbacks:
                    return
                job = self._callbacks.pop(0)
            cb = dict(job.callback or {"state": "pending", "attempts": 0})
            assert job.callback_url is not None
            for attempt in range(self.callback_attempts):
                cb["attempts"] = int(cb.get("attempts", 0)) + 1
                try:
                    self.deliver(job.callback_url, job.as_dict())
                except Exception as e:
                    cb["error"] = _scrub(f"{type(e).__name__}: {e}", job.callback_url)
                    if self._cb_stop:
                        break  # shutting down: leave it pending, the next start redelivers
                    if attempt + 1 < self.callback_attempts:
                        time.sleep(self.callback_backoff * 2**attempt)
                    else:
                        cb["state"] = "failed"
                else:
                    cb["state"] = "delivered"
                    cb.pop("error", None)
                    break
            job.callback = cb
            self._exec("UPDATE jobs SET callback=? WHERE id=?", (_dumps(cb), job.id))


def _scrub(text: str, url: str) -> str:
    """``text`` with the user:password of ``url`` (if any) taken out."""
    from urllib.parse import urlsplit

    with contextlib.suppress(ValueError):
        netloc = urlsplit(url).netloc
        if "@" in netloc:
            text = text.replace(netloc.rsplit("@", 1)[0] + "@", "***@")
    return text


def _dumps(obj: Any) -> str | None:
    # ASCII JSON: a lone surrogate from a request ("\\ud800") is stored as its escape and read
    # back as it came, where UTF-8 text could not hold it; the record is then refused by name.
    return None if obj is None else json.dumps(obj, ensure_ascii=True)
