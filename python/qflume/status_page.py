"""The status page of `qflume serve` (GET /) and the data it polls (GET /status).

The page (``static/status.html``, ``status.js``, ``status.css``) holds no data, so it is served
without the bearer token; its script fetches everything from the token-protected JSON routes,
with the token the user gives once (kept in ``sessionStorage``; ``/#token=...`` is read once and
taken out of the address bar: a fragment never reaches the server or its logs).

What the service keeps for the page, bounded: a ring buffer of throughput samples (chunks
written per second, sampled every second from `qflume.metrics`) and the last skipped records of
store jobs with their reasons.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from typing import Any

from qflume._validate import redact_url
from qflume.jobs import Job

__all__ = ["PUBLIC_PATHS", "Monitor", "asset", "status"]

log = logging.getLogger("qflume.serve")

#: The page and its assets: no data in them, so no token needed to load them.
PUBLIC_PATHS = frozenset({"/", "/ui/status.js", "/ui/status.css"})

_ASSETS = {
    "status.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
}

#: Headers on the page and its assets: only this origin's own script and style, nothing framed,
#: no referrer (the address may still hold a token fragment when a link is followed).
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# The figures of a job's result the page shows (a result may also hold per-item lists).
_RESULT_FIELDS = (
    "documents_new",
    "documents_changed",
    "documents_unchanged",
    "documents_skipped",
    "chunks_embedded",
    "points_upserted",
    "points_deleted",
    "chunks_per_s",
    "elapsed_s",
    "ok",
    "failed",
    "deleted",
)


def asset(name: str) -> tuple[bytes, str] | None:
    """(the bytes, the media type) of a page asset, or None for a name that is not one."""
    media = _ASSETS.get(name)
    if media is None:
        return None
    return resources.files("qflume").joinpath("static").joinpath(name).read_bytes(), media


class Monitor:
    """What the service remembers for the page: throughput samples and recent skips (bounded).

    ``counter()`` returns a cumulative count (chunks written); a thread samples it every
    ``interval`` seconds into a ring buffer of ``keep`` samples ``(unix time, per second)``.
    """

    def __init__(
        self,
        counter: Callable[[], int] | None = None,
        *,
        interval: float = 1.0,
        keep: int = 600,
        keep_skips: int = 200,
    ) -> None:
        if counter is None:
            from qflume import metrics

            def counter() -> int:
                return metrics.REGISTRY.items_total("ingest_stage", stage="write")

        self._counter = counter
        self.interval = float(interval)
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(1, keep))
        self._skips: deque[dict[str, Any]] = deque(maxlen=max(1, keep_skips))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = (time.monotonic(), self._counter())

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="qflume-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # the page loses a sample, the service nothing
                log.exception("qflume serve: throughput sample failed")

    def sample(self) -> None:
        """Take one sample: the count's growth since the last sample, per second."""
        now, n = time.monotonic(), self._counter()
        t0, n0 = self._last
        self._last = (now, n)
        rate = (n - n0) / (now - t0) if n >= n0 and now > t0 else 0.0  # a reset counts as 0
        with self._lock:
            self._samples.append((round(time.time(), 3), round(rate, 2)))

    def samples(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._samples)

    def add_skips(self, job_id: str, skipped: Iterable[Mapping[str, Any]]) -> None:
        """Remember the skips of one step of a store job (newest kept, oldest dropped)."""
        now = round(time.time(), 3)
        with self._lock:
            for s in skipped:
                entry = {
                    "time": now,
                    "job": job_id,
                    "key": _clip(s.get("key", "")),
                    "reason": _clip(s.get("reason", "")),
                }
                if s.get("detail"):
                    entry["detail"] = _clip(s["detail"])
                self._skips.append(entry)

    def skips(self) -> list[dict[str, Any]]:
        """The recent skips, newest first."""
        with self._lock:
            return list(reversed(self._skips))


def _clip(value: Any, limit: int = 1000) -> str:
    """A skip's text in at most `limit` characters, its middle cut out (a record id may be
    megabytes long; a reason names the record first and says why at its end)."""
    text = str(value)
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return text[:half] + "…" + text[-half:]


def _job_view(job: Job) -> dict[str, Any]:
    d = job.as_dict()
    result = d.pop("result") or {}
    d["result"] = {k: result[k] for k in _RESULT_FIELDS if k in result}
    callback = d.pop("callback")
    d["callback"] = None if callback is None else callback.get("state")
    return d


def status(service: Any) -> dict[str, Any]:
    """Everything the page shows, as plain data (what GET /status answers)."""
    from qflume import metrics

    code, health = service.health()
    pipeline = service.pipeline
    try:
        info = metrics.collection_info(service.reader.sink)
    except Exception as e:  # the health problems say why
        info = {"error": str(e)}
    checks = health.get("checks", {})
    state = checks.get("state", {})
    collection = {
        "name": pipeline.collection,
        "target": redact_url(pipeline.url) if pipeline.url else str(pipeline.store),
        "documents": state.get("documents"),
        "chunks": state.get("chunks"),
        "points": checks.get("points"),
        "vector_size": info.get("vector_size"),
        "segments": info.get("segments"),
        "indexed_vectors": info.get("indexed_vectors"),
        "status": info.get("status"),
        "sparse": pipeline.sparse_kind,
        "disk_bytes": info.get("disk_bytes"),  # the embedded store
        "optimizer": info.get("optimizer"),  # a server's optimizer status
    }
    overview = service.jobs.overview()
    monitor: Monitor = service.monitor
    return {
        "time": time.time(),
        "collections": [collection],
        "health": {**health, "http_status": code},
        # The active alerts (qflume.alerts), most severe first, then the health problems.
        "alerts": [
            {
                "level": a["severity"],
                "source": "alert",
                "code": a["name"],
                "message": a["message"],
                "raised_at": a["raised_at"],
                "value": a["value"],
            }
            for a in health.get("alerts", [])
        ]
        + [{"level": "warning", "source": "health", **p} for p in health.get("problems", [])],
        # the last alerts raised or resolved, newest first
        "alert_history": list(reversed(service.alerts.alerts()[-20:]))
        if getattr(service, "alerts", None) is not None
        else [],
        "jobs": {
            "counts": health.get("jobs", {}),
            "active": [_job_view(j) for j in overview["active"]],
            "active_total": overview["active_total"],
            "finished": [_job_view(j) for j in overview["finished"]],
        },
        "throughput": {
            "unit": "chunks written/s",
            "interval_s": monitor.interval,
            "samples": monitor.samples(),
        },
        "skips": monitor.skips(),
    }


def dumps(doc: Any) -> bytes:
    """ASCII JSON: hostile keys (lone surrogates, control characters) travel as escapes."""
    return json.dumps(doc, ensure_ascii=True, allow_nan=False, default=str).encode()
