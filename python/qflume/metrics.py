"""Per-operation metrics, process gauges, exports (JSON, Prometheus text) and a health check.

A process-wide registry, thread-safe, cheap enough for hot paths (one lock, O(1) per event)::

    from qflume import metrics
    metrics.observe("search", 0.012, items=100)              # one call: latency, items, ok
    metrics.observe("ingest", 0.4, items=256, stage="embed")  # labels split an operation
    with metrics.timer("update_payload", items=n):            # errors counted if it raises
        ...
    metrics.gauge("queue_depth", 3, stage="embed")           # or value=3
    metrics.inc("qdrant_sent_bytes", 1024)                   # a counter (exported as *_total)
    metrics.REGISTRY.recent("search", 60)                    # the calls of the last minute
    metrics.to_json(); metrics.to_prometheus()

Latency percentiles (p50/p90/p95/p99) come from a sliding reservoir of the last `window`
observations per series (recent behaviour, bounded memory); counts, errors, items and total time
are cumulative; throughput is items per second over the last `rate_window_s` seconds. `recent()`
gives the same figures for the calls that ended in the last N seconds (what alerts judge).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qflume.exceptions import InvalidInputError, InvalidTypeError

if TYPE_CHECKING:
    from qflume.collection import Collection
    from qflume.pipeline import Pipeline
    from qflume.sinks.base import Sink

__all__ = [
    "REGISTRY",
    "Metrics",
    "collection_info",
    "gauge",
    "health",
    "inc",
    "memory_budget",
    "observe",
    "rss_bytes",
    "status_report",
    "timer",
    "to_json",
    "to_prometheus",
]

QUANTILES = (0.5, 0.9, 0.95, 0.99)
LabelKey = tuple[tuple[str, str], ...]
_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def rss_bytes() -> int:
    """Resident memory of this process, bytes (/proc/self/statm; else ru_maxrss, a peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if os.uname().sysname == "Darwin" else 1024)


def _total_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget(max_memory: int | None = None) -> int | None:
    """The resident memory a process may use: ``max_memory`` when given, else 90% of physical
    memory (None when that cannot be read). Health's memory check and the memory alerts use it."""
    if max_memory is not None:
        return int(max_memory)
    total = _total_memory()
    return int(total * 0.9) if total else None


def _quantile(sorted_vals: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    n = len(sorted_vals)
    if n == 0:
        return math.nan
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


class _Series:
    __slots__ = ("count", "errors", "failed", "items", "last", "lat", "max_s", "recent", "total_s")

    def __init__(self, window: int) -> None:
        self.count = 0
        self.failed = 0  # calls with any error
        self.errors = 0  # failed items (or failed calls, for calls without item errors)
        self.items = 0
        self.total_s = 0.0
        self.max_s = 0.0
        self.lat: deque[float] = deque(maxlen=window)
        # (monotonic start, end, items, failed) of recent calls, for throughput and windows
        self.recent: deque[tuple[float, float, int, bool]] = deque(maxlen=window)
        self.last = 0.0


def _labels(labels: Mapping[str, Any]) -> LabelKey:
    out = []
    for k, v in labels.items():
        if v is None:
            continue
        if not _NAME_RE.match(k):
            raise InvalidInputError(
                f"metric label {k!r} is not a valid name ([a-zA-Z_][a-zA-Z0-9_]*)"
            )
        out.append((k, str(v)))
    return tuple(sorted(out))


class Metrics:
    """A registry of operation series (latency, counts, errors, items) and gauges."""

    def __init__(self, *, window: int = 2048, rate_window_s: float = 60.0) -> None:
        if window < 1:
            raise InvalidInputError(f"window must be >= 1, got {window}")
        self.window = window
        self.rate_window_s = float(rate_window_s)
        self._lock = threading.Lock()
        self._ops: dict[tuple[str, LabelKey], _Series] = {}
        self._gauges: dict[tuple[str, LabelKey], float] = {}
        self._counters: dict[tuple[str, LabelKey], float] = {}
        self._started = time.time()

    # --- recording ------------------------------------------------------------------------------

    def observe(
        self,
        op: str,
        seconds: float,
        *,
        items: int = 1,
        error: bool = False,
        errors: int | None = None,
        **labels: Any,
    ) -> None:
        """Record one call of `op` that took `seconds` and handled `items` items.

        `error=True` counts the call as failed; `errors=k` counts k failed items instead (a batch
        with partial failures). Labels (e.g. ``stage="embed"``) make separate series.
        """
        if not _NAME_RE.match(op):
            raise InvalidInputError(
                f"operation name {op!r} is not a valid name ([a-zA-Z_][a-zA-Z0-9_]*)"
            )
        key = (op, _labels(labels))
        now = time.monotonic()
        secs = max(0.0, float(seconds))
        n_err = int(errors) if errors is not None else int(bool(error))
        with self._lock:
            s = self._ops.get(key)
            if s is None:
                s = self._ops[key] = _Series(self.window)
            s.count += 1
            s.failed += int(n_err > 0 or error)
            s.errors += n_err
            s.items += int(items)
            s.total_s += secs
            s.max_s = max(s.max_s, secs)
            s.lat.append(secs)
            s.recent.append((now - secs, now, int(items), bool(n_err > 0 or error)))
            s.last = now

    @contextlib.contextmanager
    def timer(self, op: str, *, items: int = 1, **labels: Any) -> Iterator[None]:
        """Time a block as one call of `op`; an exception counts as an error (and propagates)."""
        t0 = time.perf_counter()
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            self.observe(op, time.perf_counter() - t0, items=items, error=failed, **labels)

    def gauge(self, name: str, value: float | None = None, **labels: Any) -> None:
        """Set gauge `name` (e.g. ``gauge("queue_depth", value=3, stage="embed")``)."""
        if value is None:
            raise InvalidInputError(f"gauge {name!r}: give a value")
        if not _NAME_RE.match(name):
            raise InvalidInputError(
                f"gauge name {name!r} is not a valid name ([a-zA-Z_][a-zA-Z0-9_]*)"
            )
        with self._lock:
            self._gauges[(name, _labels(labels))] = float(value)

    def inc(self, name: str, value: float = 1, **labels: Any) -> None:
        """Add `value` (>= 0) to counter `name` (exported as ``qflume_<name>_total``)."""
        if not _NAME_RE.match(name):
            raise InvalidInputError(
                f"counter name {name!r} is not a valid name ([a-zA-Z_][a-zA-Z0-9_]*)"
            )
        v = float(value)
        if not v >= 0 or math.isinf(v):
            raise InvalidInputError(f"counter {name!r}: add a finite value >= 0, not {value!r}")
        key = (name, _labels(labels))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + v

    def counter(self, name: str, **labels: Any) -> float:
        """Counter `name` summed over its series that carry `labels`."""
        want = set(_labels(labels))
        with self._lock:
            return sum(v for (n, lk), v in self._counters.items() if n == name and want <= set(lk))

    def gauges(self, name: str, **labels: Any) -> list[float]:
        """The values of gauge `name` over its series that carry `labels`."""
        want = set(_labels(labels))
        with self._lock:
            return [v for (n, lk), v in self._gauges.items() if n == name and want <= set(lk)]

    def recent(self, op: str, seconds: float, **labels: Any) -> dict[str, Any] | None:
        """The calls of `op` (``"*"``: every operation) over its series that carry `labels`
        that ended in the last `seconds`: count, failed, error_rate, mean_s, max_s and
        p50..p99_s; None when there were none (each series keeps its last `window` calls)."""
        want = set(_labels(labels))
        horizon = time.monotonic() - float(seconds)
        lat: list[float] = []
        failed = 0
        with self._lock:
            for (o, lk), s in self._ops.items():
                if (op != "*" and o != op) or not want <= set(lk):
                    continue
                for t0, t1, _, bad in reversed(s.recent):
                    if t1 < horizon:
                        break
                    lat.append(t1 - t0)
                    failed += bad
        if not lat:
            return None
        lat.sort()
        d: dict[str, Any] = {
            "count": len(lat),
            "failed": failed,
            "error_rate": failed / len(lat),
            "mean_s": sum(lat) / len(lat),
            "max_s": lat[-1],
        }
        for q in QUANTILES:
            d[f"p{round(q * 100)}_s"] = _quantile(lat, q)
        return d

    def items_total(self, op: str, **labels: Any) -> int:
        """Items recorded so far for `op` over its series that carry `labels` (cumulative)."""
        want = set(_labels(labels))
        with self._lock:
            return sum(s.items for (o, lk), s in self._ops.items() if o == op and want <= set(lk))

    def reset(self) -> None:
        with self._lock:
            self._ops.clear()
            self._gauges.clear()
            self._counters.clear()
            self._started = time.time()

    # --- reading --------------------------------------------------------------------------------

    def _series_dict(self, s: _Series, now: float) -> dict[str, Any]:
        lat = sorted(s.lat)
        horizon = now - self.rate_window_s
        recent = [(t0, n) for t0, t1, n, _ in s.recent if t1 >= horizon]
        rate = 0.0
        if recent:
            # Items finished in the window over the time since the first of them started.
            span = now - max(min(t0 for t0, _ in recent), horizon)
            rate = sum(n for _, n in recent) / max(span, 1e-6)
        d: dict[str, Any] = {
            "count": s.count,
            "failed": s.failed,
            "errors": s.errors,
            "error_rate": round(s.failed / s.count, 6) if s.count else 0.0,
            "item_error_rate": round(s.errors / s.items, 6) if s.items else 0.0,
            "items": s.items,
            "total_s": round(s.total_s, 6),
            "mean_s": round(s.total_s / s.count, 6) if s.count else 0.0,
            "max_s": round(s.max_s, 6),
            "items_per_s": round(rate, 3),
            "items_per_busy_s": round(s.items / s.total_s, 3) if s.total_s > 0 else 0.0,
        }
        for q in QUANTILES:
            d[f"p{round(q * 100)}_s"] = round(_quantile(lat, q), 6) if lat else None
        return d

    def snapshot(self) -> dict[str, Any]:
        """Everything as plain data: {"operations", "gauges", "counters", "process"}."""
        now = time.monotonic()
        with self._lock:
            ops = [
                {"op": op, "labels": dict(lk), **self._series_dict(s, now)}
                for (op, lk), s in sorted(self._ops.items())
            ]
            gauges = [
                {"name": n, "labels": dict(lk), "value": v}
                for (n, lk), v in sorted(self._gauges.items())
            ]
            counters = [
                {"name": n, "labels": dict(lk), "value": v}
                for (n, lk), v in sorted(self._counters.items())
            ]
        return {
            "operations": ops,
            "gauges": gauges,
            "counters": counters,
            "process": {
                "rss_bytes": rss_bytes(),
                "cpu_s": round(time.process_time(), 3),
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self._started, 3),
            },
        }

    def to_json(self) -> dict[str, Any]:
        """The snapshot, JSON-ready (`json.dumps(metrics.to_json())`)."""
        return self.snapshot()

    def to_prometheus(self, prefix: str = "qflume") -> str:
        """The metrics in Prometheus' text exposition format (version 0.0.4)."""
        snap = self.snapshot()
        lines: list[str] = []

        def fmt(labels: Mapping[str, str]) -> str:
            if not labels:
                return ""
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            return "{" + body + "}"

        def num(v: float) -> str:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return "NaN"
            return repr(float(v))

        ops = snap["operations"]
        name = f"{prefix}_operation_duration_seconds"
        lines.append(f"# HELP {name} Latency of qflume operations (recent window quantiles).")
        lines.append(f"# TYPE {name} summary")
        for o in ops:
            labels = {"op": o["op"], **o["labels"]}
            for q in QUANTILES:
                v = o[f"p{round(q * 100)}_s"]
                lines.append(f"{name}{fmt({**labels, 'quantile': str(q)})} {num(v)}")
            lines.append(f"{name}_sum{fmt(labels)} {num(o['total_s'])}")
            lines.append(f"{name}_count{fmt(labels)} {num(o['count'])}")

        def family(
            metric: str, help_: str, kind: str, samples: Iterable[tuple[Mapping[str, str], Any]]
        ) -> None:
            full = f"{prefix}_{metric}"
            lines.append(f"# HELP {full} {help_}")
            lines.append(f"# TYPE {full} {kind}")
            for labels, value in samples:
                lines.append(f"{full}{fmt(labels)} {num(value)}")

        for metric, field, help_ in (
            ("operation_errors_total", "errors", "Failed calls or items of qflume operations."),
            ("operation_items_total", "items", "Items handled by qflume operations."),
        ):
            family(
                metric, help_, "counter", (({"op": o["op"], **o["labels"]}, o[field]) for o in ops)
            )
        family(
            "operation_items_per_second",
            "Recent throughput of qflume operations, items per second.",
            "gauge",
            (({"op": o["op"], **o["labels"]}, o["items_per_s"]) for o in ops),
        )
        named: tuple[tuple[str, str, Callable[[str], str]], ...] = (
            ("gauges", "gauge", lambda n: n),
            ("counters", "counter", lambda n: f"{n.removesuffix('_total')}_total"),
        )
        for section, kind, metric_of in named:
            by_name: dict[str, list[dict[str, Any]]] = {}
            for row in snap[section]:
                by_name.setdefault(row["name"], []).append(row)
            for rname, rows in by_name.items():
                family(
                    metric_of(rname),
                    f"qflume {kind} {rname}.",
                    kind,
                    ((r["labels"], r["value"]) for r in rows),
                )
        process = snap["process"]
        family(
            "process_cpu_seconds_total",
            "CPU time (user and system) of the qflume process.",
            "counter",
            [({}, process["cpu_s"])],
        )
        family(
            "process_resident_memory_bytes",
            "Resident memory of the qflume process.",
            "gauge",
            [({}, process["rss_bytes"])],
        )
        return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


#: The process-wide registry that qflume's own operations record into.
REGISTRY = Metrics()


#: `REGISTRY.observe`: record one call of `op` (the registry's own method, same signature).
observe = REGISTRY.observe


def timer(op: str, *, items: int = 1, **labels: Any) -> contextlib.AbstractContextManager[None]:
    """`REGISTRY.timer`: time a block as one call of `op`."""
    return REGISTRY.timer(op, items=items, **labels)


def gauge(name: str, value: float | None = None, **labels: Any) -> None:
    """`REGISTRY.gauge`: set a gauge, e.g. ``gauge("queue_depth", value=3, stage="embed")``."""
    REGISTRY.gauge(name, value, **labels)


def inc(name: str, value: float = 1, **labels: Any) -> None:
    """`REGISTRY.inc`: add to a counter, e.g. ``inc("sink_retries", 3)``."""
    REGISTRY.inc(name, value, **labels)


def to_json() -> dict[str, Any]:
    return REGISTRY.to_json()


def to_prometheus() -> str:
    return REGISTRY.to_prometheus()


def reset() -> None:
    REGISTRY.reset()


# --- collection figures and health -------------------------------------------------------------


def disk_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes a folder (or file) takes on disk: allocated blocks, as ``du`` counts them, each
    file once; what vanishes or cannot be read while it is walked is left out."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [os.fspath(path)]
    while stack:
        top = stack.pop()
        try:
            st = os.lstat(top)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        blocks = getattr(st, "st_blocks", None)
        total += blocks * 512 if blocks is not None else st.st_size
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        try:
            with os.scandir(top) as it:
                stack.extend(e.path for e in it)
        except OSError:
            continue
    return total


def collection_info(sink: Any) -> dict[str, Any]:
    """The collection's own figures (`Sink.info`): points, indexed vectors, segments, status,
    vector size, distance and sparse vectors, and storage: the embedded store's size on disk
    (``disk_bytes``), a server's optimizer status (``optimizer``: "ok" or its error), pending
    updates (``update_queue``) and warnings. ``{"exists": False}`` before it is created."""
    if not callable(getattr(sink, "info", None)):  # a stand-in that only counts
        return {"exists": None, "points": sink.count()}
    info = sink.info()
    return {"exists": False} if info is None else info.as_dict()


def _expected_dim(target: Collection) -> int | None:
    """The embedder's vector size, from the loaded embedder (``target.loaded_embedder``) or the
    model's config (no load)."""
    emb = target.loaded_embedder
    if emb is not None and getattr(emb, "dim", None):
        return int(emb.dim)
    import json

    model = target.model
    try:
        if model is None:
            from qflume.model import default_source

            folder = default_source()
        else:
            folder = Path(model).expanduser()
        for cfg, field in (
            (folder / "1_Pooling" / "config.json", "word_embedding_dimension"),
            (folder / "config.json", "hidden_size"),
        ):
            if cfg.is_file():
                v = json.loads(cfg.read_text("utf-8")).get(field)
                if isinstance(v, int) and v > 0:
                    return v
    except Exception:  # no model to look at: the check is skipped, not failed
        return None
    return None


# Severity weights: how much a problem takes off the score (100 = healthy).
_WEIGHTS = {
    "server_unreachable": 100,
    "vector_size_mismatch": 60,
    "disk_full": 50,
    "state_behind": 25,
    "collection_behind": 25,
    "state_pending": 10,
    "disk_near_full": 25,
    "memory_over_budget": 30,
}
_FATAL = ("server_unreachable", "vector_size_mismatch", "disk_full")


#: What an active alert takes off the health score, by severity (never below 21: only a fatal
#: problem makes the score 20 or less, which is GET /health's 503).
ALERT_WEIGHTS = {"low": 0, "medium": 5, "high": 15, "critical": 30}


def health(
    target: Collection | Sink,
    *,
    max_rss: int | None = None,
    min_free_ratio: float = 0.05,
    min_free_bytes: int = 512 * 1024 * 1024,
    alerts: Any = None,
) -> dict[str, Any]:
    """Check a Pipeline: ``{"ok", "score": 0..100, "problems": [{"code", "message"}], ...}``.

    Problems: server_unreachable (the sink cannot count), vector_size_mismatch (collection vs
    embedder, read from the model's config without loading it), state_behind / collection_behind
    (the state's chunk count vs the collection's points), state_pending (documents left half
    written by a crash: the next ingest repairs them), disk_near_full / disk_full (the store or
    state folder), memory_over_budget (RSS vs `max_rss`, default: the pipeline's max_memory, else
    90% of physical memory). `ok` is False when any problem is found.

    ``alerts`` lists the active alerts of `alerts` (a `qflume.alerts.AlertMonitor`; default:
    every monitor running in this process): each takes `ALERT_WEIGHTS` off the score, and a high
    or critical one makes `ok` False.
    """
    problems: list[dict[str, Any]] = []

    def problem(code: str, message: str) -> None:
        problems.append({"code": code, "message": message})

    from qflume.collection import Collection
    from qflume.sinks.base import Sink

    checks: dict[str, Any] = {}
    col = target if isinstance(target, Collection) else None
    if col is None and not isinstance(target, Sink):
        raise InvalidTypeError(
            f"health() takes a Collection (a Pipeline) or a Sink, not {type(target).__name__}"
        )
    sink = col.sink if col is not None else target
    assert isinstance(sink, Sink)
    points: int | None = None
    try:
        points = int(sink.count())
        checks["points"] = points
    except Exception as e:
        problem("server_unreachable", f"cannot reach collection {sink.collection!r}: {e}")

    if points is not None:
        try:
            have = collection_info(sink).get("vector_size")
        except Exception:
            have = None
        want = _expected_dim(col) if col is not None else None
        checks["vector_size"] = {"collection": have, "embedder": want}
        if have is not None and want is not None and have != want:
            problem(
                "vector_size_mismatch",
                f"collection {sink.collection!r} holds vectors of size {have}, but the model "
                f"makes vectors of size {want}: use the model it was built with or another "
                "collection",
            )

    state = col.state if col is not None else None
    if state is not None:
        try:
            st = state.stats()
            checks["state"] = {"documents": st.documents, "chunks": st.chunks}
            if points is not None and points > st.chunks:
                problem(
                    "state_behind",
                    f"the collection holds {points} points but the state knows {st.chunks} "
                    "chunks: another writer, or orphans (run `qflume verify --repair`)",
                )
            elif points is not None and points < st.chunks:
                problem(
                    "collection_behind",
                    f"the state expects {st.chunks} chunks but the collection holds {points} "
                    "points (run `qflume verify --repair`, then ingest again)",
                )
            if st.pending_documents:
                problem(
                    "state_pending",
                    f"{st.pending_documents} documents were left half written by an interrupted "
                    "run; the next ingest repairs them",
                )
        except Exception as e:
            problem("state_behind", f"cannot read the state {state.path}: {e}")

    folder = None if col is None else (col.store or col.state_path.parent)
    if folder is not None:
        path = Path(folder)
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            du = shutil.disk_usage(path)
            free_ratio = du.free / du.total if du.total else 1.0
            checks["disk"] = {"path": str(path), "free_bytes": du.free, "total_bytes": du.total}
            if du.free < min_free_bytes // 8 or free_ratio < min_free_ratio / 5:
                problem("disk_full", f"{path}: only {du.free >> 20} MiB free")
            elif du.free < min_free_bytes or free_ratio < min_free_ratio:
                problem(
                    "disk_near_full",
                    f"{path}: {du.free >> 20} MiB free ({free_ratio:.1%} of {du.total >> 30} GiB)",
                )
        except OSError as e:
            problem("disk_near_full", f"cannot check free space of {path}: {e}")

    rss = rss_bytes()
    budget = memory_budget(max_rss or (col.config.max_memory if col is not None else None))
    checks["memory"] = {"rss_bytes": rss, "budget_bytes": budget}
    if budget is not None and rss > budget:
        problem(
            "memory_over_budget",
            f"resident memory {rss >> 20} MiB is above the budget of {budget >> 20} MiB",
        )

    from qflume import alerts as _alerts

    active = alerts.active() if alerts is not None else _alerts.active()
    score = 100
    for p in problems:
        score -= _WEIGHTS.get(p["code"], 20)
    if any(p["code"] in _FATAL for p in problems):
        score = min(score, 20)
    else:
        score = max(min(score, 21), score - sum(ALERT_WEIGHTS[a["severity"]] for a in active))
    ok = not problems and not any(a["severity"] in ("high", "critical") for a in active)
    return {
        "ok": ok,
        "score": max(0, score),
        "problems": problems,
        "alerts": active,
        "checks": checks,
    }


def status_report(target: Pipeline, *, registry: Metrics | None = None) -> dict[str, Any]:
    """What `qflume status` prints: the pipeline's status, the collection's figures (storage
    included), the cache, health (with its score, problems and alerts), the alerts active now in
    this process and those of the last run, and the operation metrics of this process."""
    out: dict[str, Any] = {}
    try:
        out.update(target.status())
    except Exception as e:
        out["status_error"] = str(e)
    sink = target.sink
    try:
        out["collection_info"] = collection_info(sink)
    except Exception as e:
        out["collection_info"] = {"error": str(e)}
    out["health"] = health(target)
    last_run = out.get("last_run")
    last = last_run if isinstance(last_run, dict) else {}
    out["alerts"] = {"active": out["health"]["alerts"], "last_run": last.get("alerts", [])}
    out["metrics"] = (registry or REGISTRY).to_json()
    return out
