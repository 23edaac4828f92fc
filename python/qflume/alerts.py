"""Performance alerts: thresholds on qflume's metrics, judged on a background thread.

A `Threshold` names what it watches and when it fires::

    Threshold("latency", "qdrant_rpc{method=Upsert}.p95", ">", 2.0, "high")
    Threshold.parse("error_rate:qdrant_rpc>5%:high")        # the same, as one string
    Threshold.parse("memory:budget>90%:high")

Kinds and their metrics:

- ``latency``: an operation of `qflume.metrics` (``search``, ``qdrant_rpc``, ``serve_request``,
  ``ingest_stage``), optionally with labels (``qdrant_rpc{method=Upsert}``) and a statistic
  (``.p50`` ``.p90`` ``.p95`` (default) ``.p99`` ``.mean`` ``.max``), in seconds, over the calls
  that ended in the last ``window`` seconds (at least ``min_count`` of them).
- ``error_rate``: the share of those calls that failed (``*``: every operation), 0..1.
- ``queue_depth``: the batches waiting for a stage of an ingest (``embed``, ``write``), the jobs
  waiting in ``qflume serve`` (``jobs``), or the deepest of them (``*``).
- ``memory``: resident memory in bytes (``rss``) or as a share of the memory budget
  (``budget``: ``max_memory``, else 90% of physical memory).

An `AlertMonitor` checks its thresholds every ``interval`` seconds. An alert is *raised* when its
condition holds at a check and *resolved* at the first check where it does not (no calls in the
window: nothing to judge, it resolves). Each change is delivered to ``on_alert`` (a dict, see
`Alert.as_dict`), else logged (logger ``qflume.alerts``: low as INFO, medium WARNING, high ERROR,
critical CRITICAL). When a memory alert is raised the monitor runs a garbage collection (and
``malloc_trim`` on glibc), and records the resident memory before and after. Running monitors
publish ``qflume_alerts{kind, severity}`` (active alerts) and ``qflume_alerts_raised_total``;
`active()` lists their active alerts (what `qflume.metrics.health` shows).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import operator
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qflume.exceptions import InvalidInputError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "KINDS",
    "SEVERITIES",
    "Alert",
    "AlertMonitor",
    "Threshold",
    "active",
    "during",
]

log = logging.getLogger("qflume.alerts")

SEVERITIES = ("low", "medium", "high", "critical")
KINDS = ("latency", "error_rate", "queue_depth", "memory")
_LEVELS = {
    "low": logging.INFO,
    "medium": logging.WARNING,
    "high": logging.ERROR,
    "critical": logging.CRITICAL,
}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_STATS = ("p50", "p90", "p95", "p99", "mean", "max")
_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_SELECTOR = re.compile(
    rf"^(?P<op>{_NAME}|\*)(?:\{{(?P<labels>{_NAME}=[^,{{}}=]+(?:,{_NAME}=[^,{{}}=]+)*)\}})?"
    rf"(?:\.(?P<stat>{'|'.join(_STATS)}))?$"
)
_QUEUES = ("embed", "write", "jobs", "*")
_MEMORY = ("rss", "budget")
_SPEC = re.compile(
    r"^(?P<kind>[a-z_]+):(?P<metric>.+?)(?P<op><=|>=|<|>)(?P<value>[^:]+)(?::(?P<sev>[a-z]+))?$"
)
_UNITS = {
    "": 1.0,
    "s": 1.0,
    "ms": 1e-3,
    "%": 0.01,
    "b": 1.0,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "kib": 1024.0,
    "mib": 1024.0**2,
    "gib": 1024.0**3,
}


def _number(text: str, where: str) -> float:
    m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z%]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise InvalidInputError(
            f"{where}: {text!r} is not a number (units: s, ms, %, KB, MB, GB, KiB, MiB, GiB)"
        )
    return float(m.group(1)) * _UNITS[unit]


@dataclass(frozen=True)
class Threshold:
    """When an alert fires: ``kind``'s ``metric`` compared (``op``: > >= < <=) with ``value``.

    ``window`` (seconds) and ``min_count`` apply to latency and error_rate: the calls that ended
    in the window are judged, and only when there are at least ``min_count`` of them (default 1
    for latency, 5 for error_rate).
    """

    kind: str
    metric: str
    op: str
    value: float
    severity: str = "medium"
    window: float = 60.0
    min_count: int | None = None

    def __post_init__(self) -> None:
        shown = f"alert threshold {self.kind}:{self.metric}"
        if self.kind not in KINDS:
            raise InvalidInputError(f"{shown}: kind must be one of {', '.join(KINDS)}")
        if not isinstance(self.op, str) or self.op not in _OPS:
            raise InvalidInputError(
                f"{shown}: op must be one of {', '.join(_OPS)}, not {self.op!r}"
            )
        if self.severity not in SEVERITIES:
            raise InvalidInputError(
                f"{shown}: severity must be one of {', '.join(SEVERITIES)}, not {self.severity!r}"
            )
        for name, v in (("value", self.value), ("window", self.window)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidInputError(f"{shown}: {name} must be a finite number, not {v!r}")
        if self.window <= 0:
            raise InvalidInputError(f"{shown}: window must be positive, not {self.window!r}")
        if self.min_count is not None and (
            isinstance(self.min_count, bool)
            or not isinstance(self.min_count, int)
            or self.min_count < 1
        ):
            raise InvalidInputError(f"{shown}: min_count must be an integer >= 1")
        if not isinstance(self.metric, str):
            raise InvalidInputError(f"{shown}: metric must be a string")
        if self.kind in ("latency", "error_rate"):
            m = _SELECTOR.match(self.metric)
            if m is None or (self.kind == "error_rate" and m.group("stat")):
                stat = "[.p95]" if self.kind == "latency" else ""
                raise InvalidInputError(
                    f"{shown}: metric must name an operation: OP, OP{{label=value,...}}{stat}"
                    + (f" (stats: {', '.join(_STATS)})" if stat else "")
                    + ", e.g. qdrant_rpc{method=Upsert}"
                )
            if self.kind == "latency" and m.group("op") == "*":
                raise InvalidInputError(f"{shown}: latency needs one operation, not '*'")
        elif self.kind == "queue_depth" and self.metric not in _QUEUES:
            raise InvalidInputError(f"{shown}: metric must be one of {', '.join(_QUEUES)}")
        elif self.kind == "memory" and self.metric not in _MEMORY:
            raise InvalidInputError(f"{shown}: metric must be one of {', '.join(_MEMORY)}")

    @classmethod
    def parse(cls, spec: str) -> Threshold:
        """``KIND:METRIC OP VALUE[:SEVERITY]``, e.g. ``latency:search.p99>500ms:high``,
        ``memory:rss>2GiB:critical``, ``error_rate:*>=10%`` (severity default medium)."""
        if not isinstance(spec, str):
            raise InvalidInputError(f"alert threshold must be a string, not {spec!r}")
        m = _SPEC.match(spec.strip())
        if m is None:
            raise InvalidInputError(
                f"alert threshold {spec!r}: write KIND:METRIC OP VALUE[:SEVERITY], e.g. "
                "latency:search.p95>1s:high or memory:budget>90%:critical"
            )
        return cls(
            m.group("kind"),
            m.group("metric").strip(),
            m.group("op"),
            _number(m.group("value"), f"alert threshold {spec!r}"),
            m.group("sev") or "medium",
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Threshold:
        """A threshold from a table: ``{"kind", "metric", "op", "value", "severity", "window",
        "min_count"}`` (``value`` may be a string with a unit, as in `parse`)."""
        known = ("kind", "metric", "op", "value", "severity", "window", "min_count")
        extra = sorted(set(d) - set(known))
        if extra:
            raise InvalidInputError(
                f"alert threshold: unknown key {extra[0]!r}; the keys are: {', '.join(known)}"
            )
        missing = [k for k in ("kind", "metric", "op", "value") if k not in d]
        if missing:
            raise InvalidInputError(f"alert threshold: {missing[0]!r} is missing")
        value = d["value"]
        if isinstance(value, str):
            value = _number(value, f"alert threshold {d['kind']}:{d['metric']}")
        return cls(**{**d, "value": value})

    @property
    def name(self) -> str:
        """The threshold as `parse` reads it (the alert's name)."""
        v = float(self.value)
        shown = str(int(v)) if v.is_integer() and abs(v) < 1e18 else repr(v)
        return f"{self.kind}:{self.metric}{self.op}{shown}:{self.severity}"

    def __str__(self) -> str:
        return self.name

    def _min_count(self) -> int:
        if self.min_count is not None:
            return self.min_count
        return 5 if self.kind == "error_rate" else 1


#: The thresholds a monitor uses by default (`qflume serve` adds one on its job queue).
DEFAULT_THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("latency", "search.p95", ">", 1.0, "medium"),
    Threshold("latency", "qdrant_rpc.p95", ">", 2.0, "medium"),
    Threshold("latency", "qdrant_rpc.p95", ">", 10.0, "high"),
    Threshold("error_rate", "qdrant_rpc", ">", 0.05, "high"),
    Threshold("error_rate", "serve_request", ">", 0.05, "high"),
    Threshold("memory", "budget", ">", 0.9, "high"),
    Threshold("memory", "budget", ">", 1.0, "critical"),
)


@dataclass
class Alert:
    """One alert: raised when its threshold's condition held, resolved when it stopped."""

    threshold: Threshold
    value: float
    raised_at: float
    peak: float
    resolved_at: float | None = None
    message: str = ""
    collection: dict[str, Any] | None = None  # the garbage collection a memory alert ran
    id: int = 0

    @property
    def state(self) -> str:
        return "raised" if self.resolved_at is None else "resolved"

    def as_dict(self) -> dict[str, Any]:
        t = self.threshold
        d: dict[str, Any] = {
            "id": self.id,
            "name": t.name,
            "kind": t.kind,
            "metric": t.metric,
            "op": t.op,
            "threshold": t.value,
            "severity": t.severity,
            "state": self.state,
            "value": _round(self.value),
            "peak": _round(self.peak),
            "raised_at": round(self.raised_at, 3),
            "resolved_at": None if self.resolved_at is None else round(self.resolved_at, 3),
            "message": self.message,
        }
        if self.collection is not None:
            d["collection"] = dict(self.collection)
        return d


def _round(v: float) -> float:
    return float(f"{v:.6g}")


def _show(kind: str, metric: str, v: float) -> str:
    if kind == "latency":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    if kind == "error_rate" or (kind == "memory" and metric == "budget"):
        return f"{v:.1%}"
    if kind == "memory":
        return f"{v / (1 << 20):.0f} MiB"
    return f"{v:g}"


_RUNNING: weakref.WeakSet[AlertMonitor] = weakref.WeakSet()
_RUNNING_LOCK = threading.Lock()


def _running() -> list[AlertMonitor]:
    with _RUNNING_LOCK:
        return list(_RUNNING)


def active() -> list[dict[str, Any]]:
    """The active alerts of every monitor running in this process, most severe first."""
    out = [a for m in _running() for a in m.active()]
    out.sort(key=lambda a: (-SEVERITIES.index(a["severity"]), a["raised_at"]))
    return out


def during(start: float, end: float) -> list[dict[str, Any]]:
    """The alerts (of the running monitors) that were active at some moment between the unix
    times `start` and `end`, oldest first: what an ingest report lists."""
    out = [a for m in _running() for a in m.alerts(since=start) if a["raised_at"] <= end]
    out.sort(key=lambda a: a["raised_at"])
    return out


def _malloc_trim() -> None:
    """Give freed heap memory back to the system (glibc); a no-op elsewhere."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(Exception):
        name = ctypes.util.find_library("c")
        if name and "libc" in name:
            ctypes.CDLL(name).malloc_trim(0)


class AlertMonitor:
    """Checks ``thresholds`` (default `DEFAULT_THRESHOLDS`) against ``registry`` (default the
    process-wide `qflume.metrics.REGISTRY`) every ``interval`` seconds on a background thread
    (`start` / `stop`, or ``with``), or now with `check`.

    ``on_alert(alert_dict)`` gets each raised and resolved alert (from the monitor's thread:
    keep it quick; one that raises is logged and the monitor goes on); without it, alerts are
    logged. ``memory_budget`` (bytes) is what ``memory:budget`` compares with (default: 90% of
    physical memory). ``hooks`` run before each check (e.g. to refresh gauges). ``keep`` bounds
    the alerts and collections remembered.
    """

    def __init__(
        self,
        thresholds: Iterable[Threshold | str] | None = None,
        *,
        interval: float = 5.0,
        registry: Any = None,
        on_alert: Callable[[dict[str, Any]], object] | None = None,
        memory_budget: int | None = None,
        collect_memory: bool = True,
        hooks: Sequence[Callable[[], object]] = (),
        keep: int = 200,
    ) -> None:
        from qflume import metrics

        items = DEFAULT_THRESHOLDS if thresholds is None else tuple(thresholds)
        self.thresholds: tuple[Threshold, ...] = tuple(
            Threshold.parse(t) if isinstance(t, str) else t for t in items
        )
        for t in self.thresholds:
            if not isinstance(t, Threshold):
                raise InvalidInputError(f"AlertMonitor: {t!r} is not a Threshold or a string")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise InvalidInputError(f"AlertMonitor: interval must be seconds, not {interval!r}")
        if not 0 < interval < math.inf:
            raise InvalidInputError(f"AlertMonitor: interval must be positive, not {interval!r}")
        if on_alert is not None and not callable(on_alert):
            raise InvalidInputError(f"AlertMonitor: on_alert must be callable, not {on_alert!r}")
        if memory_budget is not None and (
            isinstance(memory_budget, bool)
            or not isinstance(memory_budget, int)
            or memory_budget < 1
        ):
            raise InvalidInputError(
                f"AlertMonitor: memory_budget must be a positive int, not {memory_budget!r}"
            )
        self.interval = float(interval)
        self.registry = registry if registry is not None else metrics.REGISTRY
        self.on_alert = on_alert
        self.collect_memory = collect_memory
        self.hooks = tuple(hooks)
        self.memory_budget = metrics.memory_budget(memory_budget)
        self._lock = threading.Lock()
        self._active: dict[Threshold, Alert] = {}
        self._alerts: deque[Alert] = deque(maxlen=max(1, keep))
        self._collections: deque[dict[str, Any]] = deque(maxlen=max(1, keep))
        self._next_id = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self._stopped = False
        self.checks = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> AlertMonitor:
        """Check on a background thread every `interval` seconds until `stop`."""
        if self._thread is None:
            self._stop.clear()
            self._stopped = False
            with _RUNNING_LOCK:
                _RUNNING.add(self)
            self._thread = threading.Thread(target=self._run, name="qflume-alerts", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop checking; its alerts leave `active()` and the gauges."""
        self._stop.set()
        self._stopped = True
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        self._publish()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def __enter__(self) -> AlertMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a check that fails loses one sample, never the process
                log.exception("qflume: an alert check failed")

    # -- checking ----------------------------------------------------------------------------

    def measure(self, t: Threshold) -> float | None:
        """The current value of `t`'s metric (None: nothing to judge)."""
        from qflume import metrics

        reg = self.registry
        if t.kind in ("latency", "error_rate"):
            m = _SELECTOR.match(t.metric)
            assert m is not None  # checked by Threshold
            labels = dict(kv.split("=", 1) for kv in (m.group("labels") or "").split(",") if kv)
            w = reg.recent(m.group("op"), t.window, **labels)
            if w is None or w["count"] < t._min_count():
                return None
            if t.kind == "error_rate":
                return float(w["error_rate"])
            stat = m.group("stat") or "p95"
            return float(w[f"{stat}_s"])
        if t.kind == "queue_depth":
            if t.metric == "jobs":
                vals = reg.gauges("serve_jobs_waiting")
            elif t.metric == "*":
                vals = reg.gauges("queue_depth") + reg.gauges("serve_jobs_waiting")
            else:
                vals = reg.gauges("queue_depth", stage=t.metric)
            return max(vals) if vals else None
        rss = metrics.rss_bytes()
        if t.metric == "rss":
            return float(rss)
        return rss / self.memory_budget if self.memory_budget else None

    def check(self) -> list[dict[str, Any]]:
        """Judge every threshold now; returns the alerts raised or resolved by this check."""
        for hook in self.hooks:
            try:
                hook()
            except Exception as e:  # a hook that fails leaves its gauges as they were
                self._warn_once(f"hook {hook!r}", f"qflume: an alert hook failed: {e}")
        now = time.time()
        changed: list[Alert] = []
        for t in self.thresholds:
            value = self.measure(t)
            firing = value is not None and _OPS[t.op](value, t.value)
            with self._lock:
                current = self._active.get(t)
                if firing and current is None:
                    assert value is not None
                    alert = Alert(t, value, now, value, id=self._next_id)
                    self._next_id += 1
                    alert.message = self._message(t, value, raised=True)
                    self._active[t] = alert
                    self._alerts.append(alert)
                    changed.append(alert)
                elif firing and current is not None:
                    assert value is not None
                    current.value = value
                    worse = value > current.peak if t.op in (">", ">=") else value < current.peak
                    if worse:
                        current.peak = value
                elif not firing and current is not None:
                    current.resolved_at = now
                    if value is not None:
                        current.value = value
                    current.message = self._message(t, value, raised=False)
                    del self._active[t]
                    changed.append(current)
        self.checks += 1
        for alert in changed:
            if alert.state == "raised":
                self.registry.inc(
                    "alerts_raised", kind=alert.threshold.kind, severity=alert.threshold.severity
                )
                if alert.threshold.kind == "memory" and self.collect_memory:
                    alert.collection = self._collect(alert)
        self._publish()
        events = [a.as_dict() for a in changed]
        for event in events:
            self._deliver(event)
        return events

    def _message(self, t: Threshold, value: float | None, *, raised: bool) -> str:
        if t.kind == "latency":
            m = _SELECTOR.match(t.metric)
            stat = (m.group("stat") if m else None) or ""
            base = t.metric[: -len(stat) - 1] if stat else t.metric
            what = f"{stat or 'p95'} latency of {base} over the last {t.window:g} s"
        elif t.kind == "error_rate":
            what = f"error rate of {t.metric} over the last {t.window:g} s"
        elif t.kind == "queue_depth":
            what = f"queue depth of {t.metric}"
        else:
            what = "memory (share of the budget)" if t.metric == "budget" else "resident memory"
        limit = _show(t.kind, t.metric, t.value)
        if raised:
            assert value is not None
            return f"{what} is {_show(t.kind, t.metric, value)} ({t.op} {limit})"
        now = "no calls to judge" if value is None else _show(t.kind, t.metric, value)
        return f"{what} is back: {now} (the alert fired at {t.op} {limit})"

    def _collect(self, alert: Alert) -> dict[str, Any]:
        """A garbage collection (and malloc_trim), with the resident memory around it."""
        from qflume import metrics

        before = metrics.rss_bytes()
        t0 = time.perf_counter()
        freed_objects = gc.collect()
        _malloc_trim()
        after = metrics.rss_bytes()
        rec = {
            "time": round(time.time(), 3),
            "alert": alert.threshold.name,
            "rss_before": before,
            "rss_after": after,
            "freed_bytes": max(0, before - after),
            "objects_collected": freed_objects,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        with self._lock:
            self._collections.append(rec)
        self.registry.inc("memory_collections")
        log.debug(
            "qflume: memory alert %s: garbage collected, resident memory %d -> %d MiB",
            alert.threshold.name,
            before >> 20,
            after >> 20,
        )
        return rec

    def _publish(self) -> None:
        """``alerts{kind, severity}`` in each registry: the active alerts of the monitors that
        record into it (running ones, and this one until stopped), zeros included."""
        monitors = set(_running())
        if not self._stopped:
            monitors.add(self)
        registries = {id(m.registry): m.registry for m in monitors}
        registries[id(self.registry)] = self.registry
        for reg in registries.values():
            counts = {(k, s): 0 for k in KINDS for s in SEVERITIES}
            for m in monitors:
                if m.registry is reg:
                    for a in m.active():
                        counts[(a["kind"], a["severity"])] += 1
            for (k, s), n in counts.items():
                reg.gauge("alerts", n, kind=k, severity=s)

    def _deliver(self, event: dict[str, Any]) -> None:
        if self.on_alert is None:
            level = _LEVELS[event["severity"]] if event["state"] == "raised" else logging.INFO
            log.log(level, "qflume: alert %s [%s] %s", event["state"], event["severity"],
                    event["message"])  # fmt: skip
            return
        try:
            self.on_alert(event)
        except Exception as e:
            log.error(
                "qflume: the alert callback failed (%s); the alert was: %s [%s] %s",
                e,
                event["state"],
                event["severity"],
                event["message"],
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    # -- reading -----------------------------------------------------------------------------

    def active(self) -> list[dict[str, Any]]:
        """The alerts raised and not resolved, most severe first."""
        with self._lock:
            out = [a.as_dict() for a in self._active.values()]
        out.sort(key=lambda a: (-SEVERITIES.index(a["severity"]), a["raised_at"]))
        return out

    def alerts(self, since: float | None = None) -> list[dict[str, Any]]:
        """The alerts remembered (the last `keep`), oldest first; with ``since`` (unix time)
        only those still active then or raised after."""
        with self._lock:
            rows = [a.as_dict() for a in self._alerts]
        if since is not None:
            rows = [a for a in rows if a["resolved_at"] is None or a["resolved_at"] >= since]
        return rows

    def collections(self) -> list[dict[str, Any]]:
        """The garbage collections memory alerts ran, oldest first."""
        with self._lock:
            return list(self._collections)

    def __repr__(self) -> str:
        return (
            f"AlertMonitor({len(self.thresholds)} thresholds, interval={self.interval:g}, "
            f"{len(self._active)} active)"
        )


@dataclass(frozen=True)
class AlertSettings:
    """The ``[alerts]`` table of a config file, or ``qflume serve``'s flags."""

    interval: float = 5.0
    defaults: bool = True  # the built-in thresholds too
    thresholds: tuple[Threshold, ...] = field(default_factory=tuple)

    def all_thresholds(self, extra: Iterable[Threshold] = ()) -> tuple[Threshold, ...]:
        """The thresholds to check: the defaults (unless turned off), `extra`, then the given
        ones; a repeated one is kept once."""
        items = [*(DEFAULT_THRESHOLDS if self.defaults else ()), *extra, *self.thresholds]
        return tuple(dict.fromkeys(items))
