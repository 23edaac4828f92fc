"""`qflume serve`: the HTTP service (FastAPI + uvicorn) over one collection.

    POST /batch/store    records -> a queued background job (202 + job id; ?wait=true waits)
    POST /batch/search   {"queries": [...], "limit", "mode", "filter"} -> {"results": [[hit...]...]}
    POST /batch/update   payload updates, per-item results (waits by default)
    POST /batch/delete   ids / sources / filter, per-item results (waits by default)
    GET  /jobs/{id}      queued | running | done | failed, the result report, the error
    GET  /health         problems, alerts and a score (503 when a fatal problem is found)
    GET  /metrics        Prometheus text (?format=json for JSON)
    GET  /               the status page (HTML + a script; its data comes from GET /status)
    GET  /status         what the status page shows: collection, jobs, throughput, health, skips
    GET  /openapi.json   the OpenAPI document

Writes run on one worker thread (the pipeline holds the state lock and runs one ingest at a time)
through the durable job queue of `qflume.jobs`: small updates and deletes go before large ones,
which go before stores, and a store runs in slices so that nothing waits behind a whole bulk load.
Searches never queue: they run concurrently in the server's thread pool on the same sink (Qdrant
Edge is safe for concurrent reads and writes; a server gets a separate read connection), and they
go first on the shared embedding model (background writes embed in short slices and yield to
waiting searches).

Every batch answer carries ``summary: {total, successful, failed}`` and ``errors: [{index, id |
key, reason, type}]`` (one entry per failed item; see `_error_entry`): a bad item fails alone. The
queue is bounded (``--max-queued``): past it a write is refused with 429 and ``Retry-After``. The
embedding model is loaded on first use, so deletes, health and the status page never need it.

A background monitor (`qflume.alerts`) checks alert thresholds every ``--alert-interval`` seconds:
latency, error rates, the job queue's depth and memory (``--max-memory`` is the budget; a memory
alert runs a garbage collection). Alerts are logged, POSTed to ``--alert-callback`` (a
``--callback-host`` target) and listed by /health, /status and /metrics (``qflume_alerts``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from qflume._validate import printable, redact_url, text_problem
from qflume.exceptions import InvalidInputError, QflumeError, SinkError
from qflume.jobs import (
    BULK,
    DONE,
    FAILED,
    NORMAL,
    URGENT,
    Job,
    JobQueue,
    QueueClosedError,
    QueueFullError,
    StepResult,
)
from qflume.settings import PipelineConfig, add_arguments
from qflume.settings import config_from_args as pipeline_config

try:
    from fastapi import FastAPI, Request
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
    from starlette.concurrency import run_in_threadpool
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("qflume serve needs FastAPI and uvicorn: pip install 'qflume[serve]'") from e

__all__ = ["ServeConfig", "Service", "create_app", "main"]

log = logging.getLogger("qflume.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ServeConfig:
    """Everything `qflume serve` is started with (the CLI flags, one to one): the collection's
    `PipelineConfig` (its ``max_memory`` is also health's and the memory alerts' budget), and
    the service's own settings."""

    pipeline: PipelineConfig
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 32 * 1024 * 1024
    max_items: int = 10_000  # records, updates, ids or sources per request
    max_queries: int = 256
    max_limit: int = 1000
    slice_records: int = 256  # records per step of a store job
    urgent_items: int = 1000  # updates/deletes up to this many items go first
    wait_timeout: float = 300.0  # ?wait=true gives up (202) after this
    drain: float = 0.0  # at shutdown, keep running jobs this long before persisting the rest
    callback_hosts: tuple[str, ...] = ()  # host:port pairs callback URLs may point to
    token: str | None = None  # bearer token every route but /health requires
    max_concurrent_searches: int = 8
    # jobs waiting (not started) that would run before or with a new one; past it: 429. A store
    # counts every waiting job, a small update or delete only the small ones (see qflume.jobs)
    max_queued: int = 100
    jobs_path: str | None = None  # default: beside the state, <collection>.jobs.sqlite
    # alert thresholds (qflume.alerts) besides the defaults (none with default_alerts=False),
    # checked every alert_interval s; each alert is logged and POSTed to alert_callback
    alerts: tuple[Any, ...] = ()
    default_alerts: bool = True
    alert_interval: float = 5.0
    alert_callback: str | None = None

    @classmethod
    def of(cls, collection: str, **options: Any) -> ServeConfig:
        """``ServeConfig.of("docs", store="s", port=8001)``: the pipeline's settings (the
        PipelineConfig fields) and the service's, in one call (the pipeline's progress off)."""
        from qflume.settings import CONFIG_FIELDS

        mine = {k: options.pop(k) for k in list(options) if k in CONFIG_FIELDS}
        mine.setdefault("progress", False)
        return cls(PipelineConfig(collection, **mine), **options)


# ---------------------------------------------------------------------------------------------
# Searches first on the shared model


class _Gate:
    """Lets urgent work (searches) overtake background embedding between its slices."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._urgent = 0

    @contextlib.contextmanager
    def urgent(self) -> Iterator[None]:
        with self._cond:
            self._urgent += 1
        try:
            yield
        finally:
            with self._cond:
                self._urgent -= 1
                if self._urgent == 0:
                    self._cond.notify_all()

    def wait_turn(self) -> None:
        with self._cond:
            while self._urgent:
                self._cond.wait()


class _LazyModel:
    """The shared embedding model, loaded on first use by one thread (a delete never loads it).
    A load that fails raises to that caller and is tried again by the next one."""

    def __init__(self, load: Callable[[], Any] | None = None, *, model: Any = None) -> None:
        self._load = load
        self._model = model
        self._lock = threading.Lock()
        self.error: str | None = None  # why the last load failed (health shows it)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    assert self._load is not None
                    try:
                        self._model = self._load()
                    except Exception as e:
                        self.error = f"{type(e).__name__}: {e}"
                        raise
                    self.error = None
        return self._model


class _EmbedderView:
    """The shared Embedder as one side sees it: searches embed at once (urgent); background
    writes embed in slices of `slice` texts and let waiting searches go between slices."""

    def __init__(self, model: _LazyModel, gate: _Gate, *, urgent: bool, slice: int = 8) -> None:
        self._model = model
        self._gate = gate
        self._urgent = urgent
        self._slice = max(1, slice)

    @property
    def _inner(self) -> Any:
        return self._model.get()

    def embed(self, texts: Any) -> np.ndarray:
        inner = self._inner
        if self._urgent:
            with self._gate.urgent():
                return np.asarray(inner.embed(texts))
        texts = list(texts)
        out = np.empty((len(texts), int(inner.dim)), np.float32)
        for lo in range(0, len(texts), self._slice):
            self._gate.wait_turn()
            out[lo : lo + self._slice] = inner.embed(texts[lo : lo + self._slice])
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return np.asarray(self.embed([text])[0])

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded (health reads its config otherwise, loading nothing)."""
        return bool(self._model.loaded)

    def close(self) -> None:
        """The service closes the real embedder (once), not its views."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._inner, name)


class _LockedSink:
    """A sink used by one thread at a time (a server connection for reads)."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self.collection = sink.collection

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sink, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            with self._lock:
                return attr(*args, **kw)

        return call


# ---------------------------------------------------------------------------------------------
# Request and response bodies (also the OpenAPI document)


class Record(BaseModel):
    """A document to store: its id (the document key), its text and optional metadata."""

    model_config = ConfigDict(extra="forbid")
    id: StrictStr | StrictInt
    text: StrictStr
    metadata: dict[str, Any] | None = None


class StoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # each record is checked on its own (Record): a bad one is skipped with its index and reason,
    # its neighbours are stored
    records: list[Record | Any] = Field(description="Record objects: {id, text, metadata?}")
    callback_url: str | None = Field(
        None, description="POSTed the job document when the job finishes (loopback or allowed)"
    )


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[StrictStr]
    limit: int = Field(10, ge=1)
    mode: Literal["dense", "sparse", "hybrid"] = "dense"
    filter: dict[str, Any] | None = Field(
        None,
        description='{"source": ..., "source_prefix": ..., "metadata": {...}} or a Qdrant filter',
    )


class UpdateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    updates: list[dict[str, Any]] = Field(
        description='each {"id" | "source", "set" | "merge" | "increment" | "set_now"}; '
        "see qflume.ops.update_payload"
    )
    callback_url: str | None = None


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[StrictStr] | None = None
    sources: list[StrictStr] | None = None
    filter: dict[str, Any] | None = None
    callback_url: str | None = None


class HitModel(BaseModel):
    id: str
    score: float
    page_content: str
    source: str | None
    start: int | None
    end: int | None
    metadata: dict[str, Any]


class Summary(BaseModel):
    """How the items of one batch request fared (successful + failed == total once it is done)."""

    total: int = Field(
        description="items in the request: records, updates, ids + sources + filter, queries"
    )
    successful: int
    failed: int = Field(description="== len(errors)")


class ItemError(BaseModel):
    """One failed item of a batch request."""

    index: int = Field(
        description="its position in the request's list (for deletes: in the list named by kind)"
    )
    kind: Literal["id", "source", "filter"] | None = Field(None, description="deletes only")
    id: str | None = Field(None, description="the point id, when the item names one")
    key: str | None = Field(None, description="the document key (record id or source), if known")
    reason: str
    type: Literal["invalid", "not_found", "conflict", "target_error", "job_failed"] = Field(
        description="invalid: fix the item; not_found: no such point or document; conflict: the "
        "key belongs to another root; target_error: Qdrant failed (retry); job_failed: the job "
        "failed before this item was confirmed (resend it: writes are idempotent)"
    )


class SearchResponse(BaseModel):
    results: list[list[HitModel]] = Field(
        description="one list of hits per query, in order (empty for a query that failed)"
    )
    summary: Summary
    errors: list[ItemError]


class BatchResult(BaseModel):
    """A store, update or delete job's result: the kind's report plus `summary` and `errors`.
    Store: the ingest report (documents_new, ..., skipped with index, key and reason); update:
    results (one per update), ok, failed; delete: results (kind, index, ok, deleted), ok,
    failed, deleted."""

    model_config = ConfigDict(extra="allow")
    summary: Summary
    errors: list[ItemError]


class JobModel(BaseModel):
    id: str
    kind: Literal["store", "update", "delete"]
    status: Literal["queued", "running", "done", "failed"]
    priority: int
    items: int
    items_done: int
    result: BatchResult | None = Field(description="None until the first step ends")
    error: str | None
    callback: dict[str, Any] | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    resumed: bool


class ErrorModel(BaseModel):
    error: str
    detail: list[dict[str, Any]] | None = None


class HealthModel(BaseModel):
    ok: bool
    score: int
    problems: list[dict[str, Any]]
    checks: dict[str, Any]
    jobs: dict[str, Any]


class ApiError(Exception):
    """An HTTP error with a message that names the bad input."""

    def __init__(self, status: int, message: str, detail: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


def _loc(loc: Any) -> str:
    out = ""
    for part in loc:
        if part == "body":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _validation_error(e: ValidationError) -> ApiError:
    errors = e.errors(include_url=False, include_context=False, include_input=False)
    detail = [{"loc": _loc(x["loc"]), "msg": x["msg"], "type": x["type"]} for x in errors[:20]]
    shown = "; ".join(f"{d['loc']}: {d['msg']}" for d in detail[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return ApiError(422, f"invalid request: {shown}{more}", detail)


def _record_problem(i: int, raw: Any) -> str | None:
    """Why ``records[i]`` is not a storable Record (None when it is)."""
    try:
        rec = Record.model_validate(raw)
    except ValidationError as e:
        err = e.errors(include_url=False, include_context=False, include_input=False)[0]
        where = _loc(("records", i, *err["loc"]))
        return printable(f"{where}: {err['msg']}")
    except RecursionError:
        return f"records[{i}]: nested too deeply to read"
    if isinstance(rec.id, str) and not rec.id.strip():
        return f"records[{i}].id: id is empty"
    if isinstance(rec.id, str) and (bad := text_problem(rec.id, f"records[{i}].id")):
        return printable(bad)
    if not rec.text.strip():
        return f"records[{i}].text: text is empty"
    return None


def _parse(body: bytes, model: type[BaseModel]) -> tuple[Any, BaseModel]:
    """(the JSON object, the validated model) of a request body; ApiError 400/422 otherwise."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to read") from None
    if not isinstance(obj, dict):
        raise ApiError(422, f"request body must be a JSON object, not {type(obj).__name__}")
    try:
        return obj, model.model_validate(obj)
    except ValidationError as e:
        raise _validation_error(e) from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to read") from None


# ---------------------------------------------------------------------------------------------
# The service (everything but HTTP)


def _deliver(url: str, doc: dict[str, Any]) -> None:
    import httpx

    r = httpx.post(url, json=doc, timeout=10.0)
    if r.status_code >= 300:
        raise QflumeError(f"callback {url} answered HTTP {r.status_code}")


class Service:
    """One collection served: the pipeline, its job queue, and the shared model.

    ``pipeline`` may be given (the service then does not close it); otherwise one is built from
    the config. ``embedder`` is the model to share (default: the pipeline's, or the config's
    model, loaded when a store or search first needs it).
    """

    def __init__(
        self,
        config: ServeConfig,
        *,
        pipeline: Any = None,
        embedder: Any = None,
        deliver: Callable[[str, dict[str, Any]], None] | None = _deliver,
    ) -> None:
        from qflume.pipeline import Pipeline

        self.config = config
        if config.alert_callback is not None:
            try:
                self.check_callback(config.alert_callback)
            except ApiError as e:
                raise InvalidInputError(f"--alert-callback: {e.message}") from None
        self._deliver = deliver
        self._gate = _Gate()
        self._own_pipeline = pipeline is None
        self._own_embedder = False
        if embedder is not None:
            self._model = _LazyModel(model=embedder)
        elif pipeline is not None:
            self._model = _LazyModel(lambda: pipeline.embedder)
        else:

            def load() -> Any:
                from qflume.embed import Embedder

                return Embedder(config.pipeline.model)

            self._model = _LazyModel(load)
            self._own_embedder = True
        if pipeline is None:
            pipeline = Pipeline(
                config.pipeline, embedder=_EmbedderView(self._model, self._gate, urgent=False)
            )
        self.pipeline = pipeline
        try:
            # Build the sink now, on this thread: built lazily, two threads could race to it.
            sink = pipeline.sink
            read_sink: Any = sink
            self._read_sink_own = None
            if pipeline.url is not None:
                from qflume.sinks.grpc import GrpcSink

                self._read_sink_own = GrpcSink(
                    # the version the pipeline writes (its physical name; qflume.versions)
                    pipeline.url,
                    sink.collection,
                    api_key=pipeline.config.api_key,
                )
                read_sink = _LockedSink(self._read_sink_own)
            # what searches and health use: the collection with the urgent embedder and the
            # read connection
            self.reader = pipeline.with_components(
                embedder=_EmbedderView(self._model, self._gate, urgent=True), sink=read_sink
            )
            jobs_path = config.jobs_path or pipeline.state_path.with_name(
                f"{pipeline.collection}.jobs.sqlite"
            )
            self.jobs = JobQueue(
                jobs_path,
                {"store": self._run_store, "update": self._run_update, "delete": self._run_delete},
                deliver=deliver,
                max_queued=config.max_queued,
                on_failure=_failed_result,
            )
        except BaseException:
            if self._own_pipeline:
                pipeline.close()
            raise
        from qflume.status_page import Monitor

        self.monitor = Monitor()  # throughput samples and recent skips, for the status page
        self.alerts = self._alert_monitor()
        self._alert_posts: Any = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    def _alert_monitor(self) -> Any:
        from qflume.alerts import AlertMonitor, AlertSettings, Threshold

        c = self.config
        # the job queue nearly full: writes are about to be refused with 429
        queue = Threshold("queue_depth", "jobs", ">=", max(1, int(c.max_queued * 0.8)), "high")
        settings = AlertSettings(defaults=c.default_alerts, thresholds=tuple(c.alerts))
        budget = c.pipeline.max_memory or self.pipeline.config.max_memory
        return AlertMonitor(
            settings.all_thresholds(extra=[queue] if c.default_alerts else []),
            interval=c.alert_interval,
            on_alert=self._on_alert,
            memory_budget=budget,
            hooks=[self.update_gauges],
        )

    def _on_alert(self, event: dict[str, Any]) -> None:
        """An alert raised or resolved: logged, and POSTed to --alert-callback (off this thread,
        so a slow receiver never delays the checks)."""
        from qflume.alerts import log as alert_log

        level = logging.INFO
        if event["state"] == "raised":
            level = {"low": 20, "medium": 30, "high": 40, "critical": 50}[event["severity"]]
        alert_log.log(
            level, "qflume serve: alert %s [%s] %s", event["state"], event["severity"],
            event["message"],
        )  # fmt: skip
        url = self.config.alert_callback
        if url is None or self._deliver is None:
            return
        if self._alert_posts is None:
            import queue as queue_mod

            self._alert_posts = queue_mod.Queue(maxsize=100)
            threading.Thread(
                target=self._post_alerts, args=(url,), name="qflume-alert-posts", daemon=True
            ).start()
        try:
            self._alert_posts.put_nowait({"alert": event, "collection": self.pipeline.collection})
        except Exception:  # a receiver 100 alerts behind: this one is only logged
            log.warning("qflume serve: alert callback queue full, alert %s not sent", event["id"])

    def _post_alerts(self, url: str) -> None:
        assert self._deliver is not None
        while (doc := self._alert_posts.get()) is not None:
            try:
                self._deliver(url, doc)
            except Exception as e:
                log.warning(
                    "qflume serve: alert callback %s failed: %s", redact_url(url), printable(str(e))
                )

    def start(self) -> None:
        self.jobs.start()
        self.monitor.start()
        self.alerts.start()
        if not self._model.loaded:  # load it now, off the request path; deletes never wait on it
            threading.Thread(target=self._load_model, name="qflume-model", daemon=True).start()

    def _load_model(self) -> None:
        try:
            self._model.get()
        except Exception as e:
            log.warning(
                "qflume serve: the embedding model cannot be loaded (%s); stores and searches "
                "fail until it can, deletes work",
                e,
            )

    def close(self, *, drain: float | None = None) -> int:
        """Stop the worker (drain for up to `drain` seconds, default the config's), persist what is
        left, close the pipeline. Returns how many jobs were left queued for the next start."""
        if self._closed:
            return 0
        self._closed = True
        left = self.jobs.stop(drain=self.config.drain if drain is None else drain)
        self.monitor.stop()
        self.alerts.stop()
        if self._alert_posts is not None:
            with contextlib.suppress(Exception):  # full: the thread ends with the process
                self._alert_posts.put_nowait(None)
        self.jobs.close()
        if self._read_sink_own is not None:
            with contextlib.suppress(Exception):
                self._read_sink_own.close()
        if self._own_pipeline:
            self.pipeline.close()
            if self._own_embedder and self._model.loaded:
                with contextlib.suppress(Exception):
                    self._model.get().close()
        return left

    # -- jobs (run on the worker thread) -----------------------------------------------------

    def _run_store(self, job: Job, payload: Any) -> StepResult:
        records = payload["records"]
        lo = job.items_done
        hi = min(len(records), lo + max(1, self.config.slice_records))
        report = self.pipeline.ingest_records(records[lo:hi]).as_dict()
        rejected = payload.get("rejected") or []
        # the pipeline's skips of this slice, by the record's index in the request
        where = _store_indices(payload)
        at = {str(r["id"]): where[lo + j] for j, r in enumerate(records[lo:hi])}
        at.update({f"#{j}": where[lo + j] for j in range(hi - lo) if f"#{j}" not in at})
        errors = [
            _error_entry(
                at.get(str(s["key"])),
                s["reason"],
                "conflict" if str(s["reason"]).startswith("key-conflict") else "invalid",
                key=printable(str(s["key"])),
            )
            for s in report.get("skipped", [])
        ]
        for s in report.get("skipped", []):
            s.setdefault("index", at.get(str(s["key"])))
        if lo == 0 and rejected:  # records refused on arrival count with the first slice
            report["documents_seen"] = report.get("documents_seen", 0) + len(rejected)
            report["documents_skipped"] = report.get("documents_skipped", 0) + len(rejected)
            report["skipped"] = list(rejected) + list(report.get("skipped", []))
            errors = [_rejected_error(r) for r in rejected] + errors
        self.monitor.add_skips(job.id, report.get("skipped", ()))
        merged = _merge_reports(job.result, report)
        merged["errors"] = sorted(
            list((job.result or {}).get("errors", [])) + errors,
            key=lambda e: (e["index"] is None, e["index"] or 0),
        )
        merged["summary"] = _summary(len(records) + len(rejected), merged["errors"])
        if hi < len(records):  # not all seen yet: what is neither stored nor failed yet
            merged["summary"]["successful"] -= len(records) - hi
        return StepResult(hi, merged, hi >= len(records))

    def _run_update(self, job: Job, payload: Any) -> StepResult:
        from qflume import ops

        updates = payload["updates"]
        results = ops.update_payload(self.pipeline, updates)
        failed = sum(not r["ok"] for r in results)
        out = {"results": results, "ok": len(results) - failed, "failed": failed}
        errors = [
            _error_entry(r["index"], r["error"], r.get("type", "invalid"), **_names(updates[i]))
            for i, r in enumerate(results)
            if not r["ok"]
        ]
        out.update(summary=_summary(len(results), errors), errors=errors)
        return StepResult(len(results), out, True)

    def _run_delete(self, job: Job, payload: Any) -> StepResult:
        from qflume import ops

        results = ops.delete(
            self.pipeline,
            ids=payload.get("ids"),
            sources=payload.get("sources"),
            filter=payload.get("filter"),
        )
        failed = sum(not r["ok"] for r in results)
        deleted = sum(int(r.get("deleted", 0)) for r in results)
        out = {"results": results, "ok": len(results) - failed, "failed": failed}
        out["deleted"] = deleted
        errors = [
            _error_entry(
                r["index"],
                r["error"],
                r.get("type", "invalid"),
                kind=r["kind"],
                **_delete_names(payload, r["kind"], r["index"]),
            )
            for r in results
            if not r["ok"]
        ]
        out.update(summary=_summary(len(results), errors), errors=errors)
        return StepResult(len(results), out, True)

    # -- requests ----------------------------------------------------------------------------

    def check_callback(self, url: str | None) -> None:
        """Callbacks go only to the ``host:port`` pairs the service was started with
        (``--callback-host``): a callback is a POST this process makes, and without the list any
        local service (Qdrant's own REST port, ...) would be a target."""
        if url is None:
            return
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as e:
            raise ApiError(422, f"callback_url {shown!r} is not a URL: {e}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(422, f"callback_url {shown!r} must be an http(s) URL with a host")
        host = parts.hostname
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if target not in self.config.callback_hosts:
            raise ApiError(
                422,
                f"callback_url {shown!r}: {target} is not an allowed callback target; start "
                f"qflume serve with --callback-host {target} to allow it",
            )

    def _check_items(self, what: str, n: int) -> None:
        if n > self.config.max_items:
            raise ApiError(
                413,
                f"{n} {what} in one request; the limit is {self.config.max_items} "
                "(--max-items): split the request",
            )

    def submit_store(self, body: bytes) -> Job:
        """A store job of the request's valid records. A record that is not a valid Record (a
        missing or mistyped field, an empty id or text) is skipped with its index and reason in
        the job's result, and the others are stored; repeated ids refuse the request (which copy
        should win is not for the server to guess), as does a malformed body."""
        obj, req = _parse(body, StoreRequest)
        assert isinstance(req, StoreRequest)
        self._check_items("records", len(req.records))
        good: list[Any] = []
        rejected: list[dict[str, Any]] = []
        dup = []
        first: dict[str, int] = {}
        for i, raw in enumerate(obj["records"]):
            problem = _record_problem(i, raw)
            rid = raw.get("id") if isinstance(raw, dict) else None
            key = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None
            if problem is not None:
                shown = printable(key) if key else f"records[{i}]"
                rejected.append({"index": i, "key": shown, "reason": problem})
                continue
            assert key is not None
            if key in first:  # slices would otherwise decide which copy wins
                msg = f"id {printable(key)!r} repeats records[{first[key]}].id"
                dup.append({"loc": f"records[{i}].id", "msg": msg, "type": "duplicate"})
            first.setdefault(key, i)
            good.append(raw)
        if dup:
            shown = "; ".join(f"{d['loc']}: {d['msg']}" for d in dup[:5])
            raise ApiError(422, f"invalid request: {shown}", dup[:20])
        self.check_callback(req.callback_url)
        return self.jobs.submit(
            "store",
            {"records": good, "rejected": rejected},
            items=len(good),
            priority=BULK,
            callback_url=req.callback_url,
        )

    def submit_update(self, body: bytes) -> Job:
        obj, req = _parse(body, UpdateRequest)
        assert isinstance(req, UpdateRequest)
        self._check_items("updates", len(req.updates))
        self.check_callback(req.callback_url)
        n = len(req.updates)
        return self.jobs.submit(
            "update",
            {"updates": obj["updates"]},
            items=n,
            priority=URGENT if n <= self.config.urgent_items else NORMAL,
            callback_url=req.callback_url,
        )

    def submit_delete(self, body: bytes) -> Job:
        obj, req = _parse(body, DeleteRequest)
        assert isinstance(req, DeleteRequest)
        if req.ids is None and req.sources is None and req.filter is None:
            raise ApiError(422, "invalid request: give ids, sources or filter (or several)")
        n = len(req.ids or ()) + len(req.sources or ())
        self._check_items("ids and sources", n)
        if req.filter is not None:
            from qflume.search import qdrant_filter

            try:
                if not qdrant_filter(req.filter):
                    raise InvalidInputError("an empty filter would delete everything: refused")
            except InvalidInputError as e:
                raise ApiError(422, f"invalid request: filter: {e}") from None
        self.check_callback(req.callback_url)
        payload = {k: obj[k] for k in ("ids", "sources", "filter") if obj.get(k) is not None}
        urgent = req.filter is None and n <= self.config.urgent_items
        return self.jobs.submit(
            "delete",
            payload,
            items=n + (req.filter is not None),
            priority=URGENT if urgent else NORMAL,
            callback_url=req.callback_url,
        )

    def search(self, body: bytes) -> dict[str, Any]:
        from qflume.search import search

        _, req = _parse(body, SearchRequest)
        assert isinstance(req, SearchRequest)
        cfg = self.config
        if len(req.queries) > cfg.max_queries:
            raise ApiError(
                413,
                f"{len(req.queries)} queries in one request; the limit is {cfg.max_queries} "
                "(--max-queries)",
            )
        if req.limit > cfg.max_limit:
            raise ApiError(422, f"invalid request: limit {req.limit} is above {cfg.max_limit}")
        # A query that cannot be searched (empty, or not valid Unicode) fails alone: its row of
        # results is empty and `errors` says why; the request's own settings fail it whole.
        errors = []
        for i, q in enumerate(req.queries):
            problem = (
                f"queries[{i}] is empty"
                if not q.strip()
                else text_problem(q, f"queries[{i}] '{printable(q)}'")
            )
            if problem is not None:
                errors.append(_error_entry(i, problem, "invalid"))
        failed = {e["index"] for e in errors}
        good = [q for i, q in enumerate(req.queries) if i not in failed]
        if req.mode != "dense" and self.pipeline.sparse_kind == "none":
            raise ApiError(
                422,
                f"mode {req.mode!r} needs sparse vectors in collection "
                f"{self.pipeline.collection!r}: start qflume serve with --sparse bm25 (or "
                "--sparse splade --sparse-model DIR)",
            )
        try:
            found = iter(
                search(self.reader, good, limit=req.limit, filter=req.filter, mode=req.mode)
                if good
                else []
            )
            if not good and req.filter is not None:
                from qflume.search import qdrant_filter

                qdrant_filter(req.filter)  # a bad filter is still the request's error
        except InvalidInputError as e:
            raise ApiError(422, f"invalid request: {e}") from None
        rows = [[] if i in failed else next(found) for i in range(len(req.queries))]
        return {
            "results": [[h.as_dict() for h in row] for row in rows],
            "summary": _summary(len(req.queries), errors),
            "errors": errors,
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        from qflume import metrics

        report = metrics.health(self.reader, alerts=self.alerts)
        worker = self.jobs._worker
        report["jobs"] = {
            **self.jobs.counts(),
            "depth": self.jobs.depth(),
            "waiting": self.jobs.waiting(),  # not started yet (what --max-queued bounds)
            "max_queued": self.jobs.max_queued,
            "worker_alive": bool(worker is not None and worker.is_alive()),
        }
        if self._model.error is not None and not self._model.loaded:
            report["problems"].append(
                {
                    "code": "model_unavailable",
                    "message": f"the embedding model cannot be loaded ({self._model.error}): "
                    "stores and searches fail, deletes work",
                }
            )
            report["ok"] = False
            report["score"] = min(report["score"], 50)
        if not report["jobs"]["worker_alive"] and not self._closed:
            report["problems"].append(
                {"code": "worker_stopped", "message": "the job worker thread is not running"}
            )
            report["ok"] = False
            report["score"] = min(report["score"], 20)
        fatal = report["score"] <= 20
        return (503 if fatal else 200), report

    def update_gauges(self) -> None:
        from qflume import metrics

        for status, n in self.jobs.counts().items():
            metrics.gauge("serve_jobs", n, status=status)
        metrics.gauge("serve_job_queue_depth", self.jobs.depth())
        metrics.gauge("serve_jobs_waiting", self.jobs.waiting())  # what --max-queued bounds


# ---------------------------------------------------------------------------------------------
# Per-item results: summary and errors, the same for every batch route


def _error_entry(
    index: int | None,
    reason: str,
    type: str,
    *,
    kind: str | None = None,
    id: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """One failed item: ``{index, [kind], [id], [key], reason, type}`` (see `ItemError`)."""
    out: dict[str, Any] = {"index": index}
    if kind is not None:
        out["kind"] = kind
    if id is not None:
        out["id"] = id
    if key is not None:
        out["key"] = key
    out["reason"] = reason
    out["type"] = type
    return out


def _summary(total: int, errors: list[dict[str, Any]]) -> dict[str, int]:
    return {"total": total, "successful": total - len(errors), "failed": len(errors)}


def _rejected_error(r: dict[str, Any]) -> dict[str, Any]:
    """The error entry of a record refused on arrival (its key only when it has a usable id)."""
    key = r.get("key")
    known = isinstance(key, str) and key != f"records[{r['index']}]"
    return _error_entry(r["index"], r["reason"], "invalid", key=key if known else None)


def _store_indices(payload: dict[str, Any]) -> list[int]:
    """The request index of each record a store job stores: the request's records, in order,
    less those refused on arrival (whose indices the payload keeps)."""
    refused = {int(r["index"]) for r in payload.get("rejected") or ()}
    n = len(payload["records"]) + len(refused)
    return [i for i in range(n) if i not in refused]


def _names(item: Any) -> dict[str, str]:
    """The id and/or key an update item names, as given (printable), when it names them."""
    out: dict[str, str] = {}
    if isinstance(item, dict):
        if isinstance(item.get("id"), str):
            out["id"] = printable(item["id"])
        if isinstance(item.get("source"), str):
            out["key"] = printable(item["source"])
    return out


def _delete_names(payload: dict[str, Any], kind: str, index: int) -> dict[str, str]:
    items = payload.get("ids" if kind == "id" else "sources") if kind != "filter" else None
    if not items or not 0 <= index < len(items) or not isinstance(items[index], str):
        return {}
    return {"id" if kind == "id" else "key": printable(items[index])}


def _failed_result(job: Job, payload: Any, error: str) -> dict[str, Any]:
    """A failed job's result: what its finished steps did, and every item it did not confirm
    as an error of type ``job_failed`` (sending those again is safe: writes are idempotent)."""
    out = dict(job.result or {})
    errors: list[dict[str, Any]] = list(out.get("errors") or [])
    reason = f"not confirmed: the job failed ({error}); send it again"
    if not isinstance(payload, dict):  # the payload could not be read back
        errors = [_error_entry(i, reason, "job_failed") for i in range(job.items)]
        total = job.items
    elif job.kind == "store":
        records, rejected = payload["records"], payload.get("rejected") or []
        where = _store_indices(payload)
        if job.result is None:  # the first step failed: its refusals were not counted yet
            errors = [_rejected_error(r) for r in rejected]
        for j in range(job.items_done, len(records)):
            rid = records[j].get("id") if isinstance(records[j], dict) else None
            errors.append(_error_entry(where[j], reason, "job_failed", key=printable(str(rid))))
        errors.sort(key=lambda e: e["index"])
        total = len(records) + len(rejected)
    elif job.kind == "update":
        updates = payload.get("updates") or []
        errors = [_error_entry(i, reason, "job_failed", **_names(u)) for i, u in enumerate(updates)]
        total = len(updates)
        out["results"] = [
            {"index": i, "ok": False, "error": reason, "type": "job_failed"} for i in range(total)
        ]
        out.update(ok=0, failed=total)
    else:
        errors = []
        for kind, name in (("id", "ids"), ("source", "sources")):
            for i in range(len(payload.get(name) or ())):
                names = _delete_names(payload, kind, i)
                errors.append(_error_entry(i, reason, "job_failed", kind=kind, **names))
        if payload.get("filter") is not None:
            errors.append(_error_entry(0, reason, "job_failed", kind="filter"))
        total = len(errors)
        out["results"] = [
            {
                "kind": e["kind"],
                "index": e["index"],
                "ok": False,
                "error": reason,
                "type": e["type"],
            }
            for e in errors
        ]
        out.update(ok=0, failed=total, deleted=0)
    out["errors"] = errors
    out["summary"] = _summary(total, errors)
    return out


def _merge_reports(acc: dict[str, Any] | None, rep: dict[str, Any]) -> dict[str, Any]:
    """Sum the reports of the slices of one store job."""
    if acc is None:
        out = dict(rep)
        out.pop("stages", None)
        out.pop("bottleneck", None)  # per run: a job's slices are short runs of their own
        out.pop("suggestions", None)
        out["skipped"] = list(rep.get("skipped", []))[:1000]
        return out
    from qflume import analysis

    out = dict(acc)
    for k, v in rep.items():
        if k == "stages" or k in analysis.DERIVED:
            continue
        if k == "skipped":
            out[k] = (list(acc.get(k, [])) + list(v))[:1000]
        elif k == "alerts":  # one entry per alert, its latest state
            by_id = {a.get("id"): a for a in [*acc.get(k, []), *v]}
            out[k] = list(by_id.values())[-100:]
        elif isinstance(v, bool):
            out[k] = bool(acc.get(k)) or v
        elif isinstance(v, (int, float)):
            out[k] = acc.get(k, 0) + v
        elif isinstance(v, dict) and all(isinstance(n, int) for n in v.values()):
            counts = dict(acc.get(k) or {})  # counts by key (sink_errors)
            for key, n in v.items():
                counts[key] = counts.get(key, 0) + n
            out[k] = counts
        elif isinstance(v, dict):  # the state after the last slice (storage)
            out[k] = v
    out["elapsed_s"] = round(out.get("elapsed_s", 0.0), 3)
    out.update(analysis.kpis(out))
    return out


# ---------------------------------------------------------------------------------------------
# HTTP


_ROUTES = ("/batch/store", "/batch/search", "/batch/update", "/batch/delete", "/health", "/metrics")
_PAGE_ROUTES = ("/", "/status", "/ui/status.js", "/ui/status.css")


def _route_of(path: str) -> str:
    if path in _ROUTES or path in _PAGE_ROUTES or path in ("/openapi.json", "/docs"):
        return path
    if path.startswith("/jobs/"):
        return "/jobs/{id}"
    return "other"


class _Guard:
    """ASGI middleware: the request body size limit (413 before the app sees the body) and
    per-route request metrics (latency, count, 5xx errors) in qflume.metrics."""

    def __init__(self, app: FastAPI, max_body_bytes: int, token: str | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._token = None if token is None else f"Bearer {token}".encode()

    def _authorized(self, scope: Scope) -> bool:
        from qflume.status_page import PUBLIC_PATHS

        path = scope.get("path")
        if self._token is None or path == "/health":
            return True
        if path in PUBLIC_PATHS and scope.get("method") in ("GET", "HEAD"):
            return True  # the status page and its assets hold no data
        import hmac

        given = b""
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                given = value
        return hmac.compare_digest(given, self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        if not self._authorized(scope):
            status = 401
            denied = _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
            denied.headers["WWW-Authenticate"] = "Bearer"
            await denied(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            first, refusal = await self._read(scope, receive)
            if refusal is not None:
                await refusal(scope, receive, send_wrapper)
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return first
                return await receive()

            await self.app(scope, replay, send_wrapper)
        finally:
            from qflume import metrics

            metrics.observe(
                "serve_request",
                time.perf_counter() - t0,
                route=_route_of(scope.get("path", "")),
                code=f"{status // 100}xx",
                error=status >= 500,
            )

    async def _read(self, scope: Scope, receive: Receive) -> tuple[Message, Response | None]:
        """The whole body as one message (read up to the limit), or a 413 response."""
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return {}, _error(400, f"Content-Length {declared!r} is not a number")
            if n > limit:
                return {}, _error(413, _too_big_message(n, limit))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return message, None
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return {}, _error(413, _too_big_message(size, limit, at_least=True))
            chunks.append(body)
            if not message.get("more_body", False):
                break
        return {"type": "http.request", "body": b"".join(chunks), "more_body": False}, None


def _too_big_message(n: int, limit: int, *, at_least: bool = False) -> str:
    size = f"at least {n}" if at_least else str(n)
    return (
        f"request body is {size} bytes; the limit is {limit} bytes (--max-body-bytes): "
        "split the request"
    )


def _error(status: int, message: str, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


def _job_response(job: Job) -> JSONResponse:
    doc = job.as_dict()
    if job.status == DONE:
        return JSONResponse(doc, status_code=200)
    if job.status == FAILED:
        return JSONResponse(doc, status_code=500)
    return JSONResponse(doc, status_code=202, headers={"Location": f"/jobs/{job.id}"})


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorModel, "description": "the body is not JSON"},
    413: {"model": ErrorModel, "description": "over the size or item limits"},
    422: {"model": ErrorModel, "description": "invalid input (the message names the item)"},
}
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    429: {
        "model": ErrorModel,
        "description": "the job queue is full (--max-queued): retry after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    },
}


def create_app(service: Service, *, manage: bool = True) -> FastAPI:
    """The FastAPI app over `service`. With `manage`, the app's lifespan starts the job worker and,
    at shutdown, drains/persists the queue and closes the service."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage:
            service.start()
        try:
            yield
        finally:
            if manage:
                await run_in_threadpool(service.close)  # logs what it left queued

    app = FastAPI(
        title="qflume",
        version=_version(),
        description="Batch store, search, update and delete over one Qdrant collection.",
        lifespan=lifespan,
    )
    searches = asyncio.Semaphore(max(1, service.config.max_concurrent_searches))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.detail)

    @app.exception_handler(QueueClosedError)
    async def closing(request: Request, exc: QueueClosedError) -> JSONResponse:
        return _error(503, f"shutting down: {exc}")

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        msg = (
            f"the job queue is full: {exc.waiting} job(s) wait that would run before or with "
            f"this one (--max-queued {exc.limit}); retry in {exc.retry_after} s"
        )
        resp = _error(429, msg)
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp

    @app.exception_handler(SinkError)
    async def sink_error(request: Request, exc: SinkError) -> JSONResponse:
        return _error(503, f"the Qdrant target failed: {exc}")

    @app.exception_handler(QflumeError)
    async def qflume_error(request: Request, exc: QflumeError) -> JSONResponse:
        return _error(500, f"{type(exc).__name__}: {exc}")

    async def submit(
        submit_job: Callable[[bytes], Job], request: Request, wait: bool
    ) -> JSONResponse:
        """Queue the request body as a job; with `wait`, answer once it ends (or times out)."""
        body = await request.body()
        job = await run_in_threadpool(submit_job, body)
        if wait and not job.final:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(job.future)),
                    service.config.wait_timeout,
                )
        return _job_response(job)

    @app.post(
        "/batch/store",
        summary="Store records (a background job)",
        openapi_extra=_body_doc(StoreRequest),
        responses={202: {"model": JobModel}, 200: {"model": JobModel}, **_JOB_ERRORS},
        status_code=202,
    )
    async def batch_store(request: Request, wait: bool = False) -> JSONResponse:
        """Queue the records as a store job; poll GET /jobs/{id} (or `wait=true`)."""
        return await submit(service.submit_store, request, wait)

    @app.post(
        "/batch/search",
        summary="Search with several queries at once",
        openapi_extra=_body_doc(SearchRequest),
        responses={200: {"model": SearchResponse}, **_ERRORS},
    )
    async def batch_search(request: Request) -> JSONResponse:
        """One list of hits per query, in order (never queued behind writes)."""
        body = await request.body()
        async with searches:
            out = await run_in_threadpool(service.search, body)
        return JSONResponse(out)

    @app.post(
        "/batch/update",
        summary="Update payloads (per-item results)",
        openapi_extra=_body_doc(UpdateRequest),
        responses={200: {"model": JobModel}, 202: {"model": JobModel}, **_JOB_ERRORS},
    )
    async def batch_update(request: Request, wait: bool = True) -> JSONResponse:
        """Set / merge / increment / set_now payload fields by point id or source."""
        return await submit(service.submit_update, request, wait)

    @app.post(
        "/batch/delete",
        summary="Delete by ids, sources or filter (per-item results)",
        openapi_extra=_body_doc(DeleteRequest),
        responses={200: {"model": JobModel}, 202: {"model": JobModel}, **_JOB_ERRORS},
    )
    async def batch_delete(request: Request, wait: bool = True) -> JSONResponse:
        return await submit(service.submit_delete, request, wait)

    @app.get(
        "/jobs/{job_id}",
        summary="A job's status, result and error",
        responses={200: {"model": JobModel}, 404: {"model": ErrorModel}},
    )
    async def get_job(job_id: str) -> JSONResponse:
        job = await run_in_threadpool(service.jobs.get, job_id)
        if job is None:
            return _error(404, f"no job with id {job_id!r}")
        return JSONResponse(job.as_dict())

    @app.get(
        "/health",
        summary="Health check: problems and a score",
        responses={200: {"model": HealthModel}, 503: {"model": HealthModel}},
    )
    async def health() -> JSONResponse:
        status, report = await run_in_threadpool(service.health)
        return JSONResponse(report, status_code=status)

    @app.get(
        "/metrics",
        summary="Metrics (Prometheus text, or JSON with format=json)",
        responses={200: {"content": {"text/plain": {}, "application/json": {}}}},
    )
    async def get_metrics(format: Literal["prometheus", "json"] = "prometheus") -> Response:
        from qflume import metrics

        service.update_gauges()
        if format == "json":
            return JSONResponse(metrics.to_json())
        return PlainTextResponse(
            metrics.to_prometheus(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    _status_page_routes(app, service)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("qflume serve: unexpected error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (StoreRequest, SearchRequest, UpdateRequest, DeleteRequest):
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                comps.update(js.pop("$defs", {}))
                comps[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    return app


def _status_page_routes(app: FastAPI, service: Service) -> None:
    """GET / (the page), its two assets, and GET /status (its data) from qflume.status_page."""
    from qflume import status_page

    def asset(name: str) -> Response:
        found = status_page.asset(name)
        if found is None:
            return _error(404, f"no page asset {name!r}")
        return Response(found[0], media_type=found[1], headers=status_page.HEADERS)

    @app.get("/", summary="The status page (HTML; its data comes from GET /status)")
    async def page() -> Response:
        return asset("status.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def page_asset(name: str) -> Response:
        return asset(name)

    @app.get(
        "/status",
        summary="What the status page shows: collection, jobs, throughput, health, skips",
        responses={200: {"content": {"application/json": {}}}},
    )
    async def get_status() -> Response:
        doc = await run_in_threadpool(status_page.status, service)
        return Response(
            status_page.dumps(doc),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )


def asgi(service: Service, *, manage: bool = True) -> _Guard:
    """What to run: the FastAPI app (``.app``) behind the body size limit and request metrics."""
    return _Guard(
        create_app(service, manage=manage), service.config.max_body_bytes, service.config.token
    )


def _version() -> str:
    try:
        from qflume._core import __version__

        return str(__version__)
    except Exception:  # pragma: no cover
        return "0"


# ---------------------------------------------------------------------------------------------
# The command


def _parser() -> argparse.ArgumentParser:
    d = ServeConfig(PipelineConfig("defaults"))
    ap = argparse.ArgumentParser(
        prog="qflume serve", description="Serve one collection over HTTP (batch store/search)."
    )
    add_arguments(
        ap,
        "sparse",
        "sparse_model",
        "chunking",
        "limits",
        collection_required=True,
        api_key_default=os.environ.get("QDRANT_API_KEY"),
        helps={
            "state_dir": "where state, cache and jobs live for --url",
            "sparse": "sparse vectors of stored records, for hybrid search (default none)",
            "max_memory": "memory budget in bytes: the pipeline's queues, health's memory check "
            "and the memory alerts (default 90%% of physical memory; [limits] max_memory of the "
            "config)",
        },
    )
    ap.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
    ap.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port})")
    ap.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    ap.add_argument("--max-items", type=int, default=d.max_items, help="items per request")
    ap.add_argument("--max-queries", type=int, default=d.max_queries, help="queries per search")
    ap.add_argument("--slice-records", type=int, default=d.slice_records)
    ap.add_argument(
        "--max-queued",
        type=int,
        default=d.max_queued,
        help=f"jobs that may wait ahead of a new one; past it a write gets 429 with Retry-After "
        f"(default {d.max_queued}; small updates and deletes count only the small ones ahead)",
    )
    ap.add_argument(
        "--drain",
        type=float,
        default=d.drain,
        help="at shutdown, keep running jobs up to this many seconds; the rest is persisted",
    )
    ap.add_argument(
        "--token",
        default=os.environ.get("QFLUME_TOKEN"),
        help="bearer token every route but /health requires (default $QFLUME_TOKEN); "
        "required to listen on a non-loopback --host",
    )
    ap.add_argument(
        "--callback-host",
        action="append",
        default=[],
        help="a host callback URLs may point to besides loopback (repeatable)",
    )
    ap.add_argument(
        "--alert",
        action="append",
        default=[],
        metavar="SPEC",
        help="an alert threshold KIND:METRIC OP VALUE[:SEVERITY], e.g. "
        "'latency:search.p95>500ms:high' (repeatable; see qflume.alerts)",
    )
    ap.add_argument(
        "--no-default-alerts",
        action="store_true",
        help="check only the --alert thresholds (and the config's), not the built-in ones",
    )
    ap.add_argument(
        "--alert-interval",
        type=float,
        help="seconds between alert checks (default 5; [alerts] interval of the config)",
    )
    ap.add_argument(
        "--alert-callback",
        metavar="URL",
        help="POST each raised and resolved alert here as JSON (its host:port must be a "
        "--callback-host)",
    )
    ap.add_argument(
        "--config",
        metavar="FILE",
        help="config file for [alerts] and [limits] max_memory (default ./qflume.toml, else "
        "[tool.qflume] in ./pyproject.toml)",
    )
    ap.add_argument("--log-level", default="info")
    return ap


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _callback_target(value: str) -> str:
    """``--callback-host HOST:PORT`` as the service compares it."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(f"--callback-host {value!r}: give HOST:PORT, e.g. 10.0.0.5:8080")
    return f"{host.lower()}:{int(port)}"


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    for name in (
        "max_body_bytes",
        "max_items",
        "max_queries",
        "slice_records",
        "max_queued",
        "port",
    ):
        if getattr(args, name) < (0 if name == "port" else 1):
            raise InvalidInputError(f"--{name.replace('_', '-')} must be positive")
    if not _is_loopback(args.host) and not args.token:
        raise InvalidInputError(
            f"--host {args.host} would let anyone on the network store, search and delete: "
            "give a --token (or QFLUME_TOKEN) too, or listen on 127.0.0.1"
        )
    from qflume.alerts import AlertSettings, Threshold
    from qflume.config import load_config

    cfg = load_config(getattr(args, "config", None))
    file_alerts = cfg.options.get("alerts") if cfg is not None else None
    file_alerts = file_alerts or AlertSettings()
    max_memory = args.max_memory
    if max_memory is None and cfg is not None:
        max_memory = cfg.options.get("max_memory")
    if max_memory is not None and max_memory < 1:
        raise InvalidInputError("--max-memory must be positive")
    interval = args.alert_interval if args.alert_interval is not None else file_alerts.interval
    if not 0 < interval < float("inf"):
        raise InvalidInputError("--alert-interval must be a positive number of seconds")
    thresholds = [*file_alerts.thresholds]
    for spec in args.alert:
        try:
            thresholds.append(Threshold.parse(spec))
        except InvalidInputError as e:
            raise InvalidInputError(f"--alert: {e}") from None
    return ServeConfig(
        pipeline_config(args, max_memory=max_memory, progress=False),
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        max_items=args.max_items,
        max_queries=args.max_queries,
        slice_records=args.slice_records,
        max_queued=args.max_queued,
        drain=args.drain,
        callback_hosts=tuple(_callback_target(h) for h in args.callback_host),
        token=args.token or None,
        alerts=tuple(thresholds),
        default_alerts=file_alerts.defaults and not args.no_default_alerts,
        alert_interval=float(interval),
        alert_callback=args.alert_callback,
    )


def main(argv: list[str] | None = None) -> int:
    """`qflume serve ...`: run the service until SIGINT/SIGTERM, then persist unfinished jobs."""
    import sys

    import uvicorn

    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
        service = Service(config)
    except QflumeError as e:
        print(f"qflume serve: {e}", file=sys.stderr)
        return 2
    if service.jobs.resumed:
        print(
            f"qflume serve: resuming {service.jobs.resumed} job(s) from {service.jobs.path}",
            file=sys.stderr,
        )
    try:
        uvicorn.run(asgi(service), host=config.host, port=config.port, log_level=args.log_level)
    finally:
        service.close()  # no-op when the lifespan already closed it
    return 0
