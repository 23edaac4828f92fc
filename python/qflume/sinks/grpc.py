"""A Qdrant server over gRPC: Rust-packed request bytes, streamed with bounded concurrency.

Update requests (upsert, delete, set payload) are packed by `qflume._core` into serialized
`qdrant.*` messages and sent as raw bytes to `/qdrant.Points/...`; up to `max_in_flight` of them
are on the wire at once. A request failing with UNAVAILABLE, DEADLINE_EXCEEDED,
RESOURCE_EXHAUSTED or ABORTED is sent again after an exponential, jittered backoff (safe: point
ids are deterministic, so a repeated upsert or delete changes nothing); once `retries` are spent
a `SinkError` names the server, the collection and the status.

Ordering: requests of one kind (say upserts) run concurrently; before a request of another kind
(a delete after upserts) is sent, every earlier request is acknowledged, so a delete never
overtakes the upsert it follows.

`wait=False` (the default) streams: Qdrant acknowledges an update once it is in its write-ahead
log and applies it in the background. `flush()` is the barrier that makes everything searchable:
it waits for every acknowledgement, then sends one empty `wait=True` update (a delete whose
filter matches only the nil UUID, which no qflume point has). Qdrant applies the updates of a
shard in order, and a filter delete goes to every shard, so when that request returns, everything
sent before it has been applied. `wait=True` makes every request wait instead.

Reads (count, retrieve, scroll, query_batch) flush first, so they see every write made before
them. `query_batch` sends all its searches as one `QueryBatch` request (Qdrant's Query API: dense,
sparse, or hybrid with RRF fusion on the server). A sink is meant to be used from one thread at a
time.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np
import numpy.typing as npt
from qdrant_client import grpc as qg

from qflume import _core
from qflume import payload as layout
from qflume._validate import url_problem
from qflume.exceptions import InvalidInputError, ShapeError, SinkError
from qflume.ids import NIL_ID, id_array, id_strings
from qflume.sinks._common import (
    SparseArrays,
    chunked,
    dense_array,
    int64_array,
    payload_to_py,
    sparse_arrays,
    vectors_to_py,
)
from qflume.sinks._grpc_query import grpc_filter, query_points, scored_points
from qflume.sinks.base import (
    CollectionInfo,
    CollectionSpec,
    Ids,
    PointBatch,
    PointRecord,
    QueryRequest,
    ScoredPoint,
    Sink,
    SparseBatch,
)
from qflume.sinks.meter import RpcMeter
from qflume.sinks.outbox import Outbox

__all__ = ["GrpcSink"]

DEFAULT_PORT = 6334
# Every call qflume makes is idempotent (deterministic ids), so a call the server cancelled
# (e.g. it shut down mid-request: a dropped connection) is retried like an unavailable one.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid", "manhattan": "Manhattan"}
_HARD_LIMIT = 32 * 1024 * 1024


def _response_of(method: str) -> Any:
    """The response message of an update method qflume sends."""
    if method == "/qdrant.Points/UpdateBatch":
        return qg.UpdateBatchResponse
    return qg.PointsOperationResponse


def _parse_url(url: str) -> tuple[str, bool]:
    """(host:port target, https?) of a Qdrant gRPC URL such as http://localhost:6334."""
    problem = url_problem(url)
    if problem:
        raise InvalidInputError(problem)
    parts = urlsplit(url if "://" in url else f"//{url}")
    if parts.scheme not in ("", "http", "https", "grpc", "grpcs"):
        raise InvalidInputError(f"Qdrant URL {url!r}: scheme must be http or https")
    if not parts.hostname:
        raise InvalidInputError(f"Qdrant URL {url!r} has no host")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise InvalidInputError(f"Qdrant URL {url!r}: {e}") from None
    return f"{host}:{port}", parts.scheme in ("https", "grpcs")


class _RpcFailure(SinkError):
    """A SinkError that remembers the gRPC status it came from."""

    def __init__(self, message: str, code: grpc.StatusCode | None) -> None:
        super().__init__(message)
        self.code = code


class _Pending:
    __slots__ = ("attempt", "done_at", "future", "kind", "method", "points", "request", "sent_at")

    def __init__(
        self, kind: str, method: str, request: bytes, points: int, future: grpc.Future[Any]
    ) -> None:
        self.kind = kind
        self.method = method
        self.request = request
        self.points = points
        self.future = future
        self.attempt = 0
        self.sent_at = time.monotonic()
        self.done_at = 0.0
        future.add_done_callback(self._done)

    def _done(self, _: Any) -> None:
        self.done_at = time.monotonic()


class Adaptive:
    """Requests in flight and points per request, steered by the server's answers (AIMD).

    Every ``window`` acknowledged requests: while their median latency stays within 1.5x the
    best median seen (the server is not slowing down), one more request may be in flight;
    past 2.5x, one fewer; and a request size cut earlier grows back by an eighth. A timeout or
    RESOURCE_EXHAUSTED (an overloaded server) halves both the requests in flight and the
    request size; another transient failure (a dropped connection) takes one request in
    flight away. Both stay within their bounds.
    """

    def __init__(
        self,
        in_flight: int,
        points: int,
        *,
        in_flight_bounds: tuple[int, int] = (1, 32),
        points_bounds: tuple[int, int] = (16, 256),
        window: int = 8,
    ) -> None:
        self.lo, self.hi = in_flight_bounds
        self.plo, self.phi = points_bounds
        self.in_flight = max(self.lo, min(self.hi, in_flight))
        self.points = max(self.plo, min(self.phi, points))
        self.window = window
        self._lat: list[float] = []
        self._best = float("inf")
        self.grown = self.shrunk = 0  # adjustments made, for reports

    def ok(self, latency: float) -> None:
        self._lat.append(latency)
        if len(self._lat) < self.window:
            return
        med = sorted(self._lat)[len(self._lat) // 2]
        self._lat.clear()
        self._best = min(self._best, med)
        if med <= 1.5 * self._best and self.in_flight < self.hi:
            self.in_flight += 1
            self.grown += 1
        elif med > 2.5 * self._best and self.in_flight > self.lo:
            self.in_flight -= 1
            self.shrunk += 1
        if self.points < self.phi:
            self.points = min(self.phi, self.points + max(1, self.points // 8))

    def failed(self, code: grpc.StatusCode | None) -> None:
        self._lat.clear()
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
            # the server is overloaded (or the request too big for it): back off hard
            self.in_flight = max(self.lo, self.in_flight // 2)
            self.points = max(self.plo, self.points // 2)
        else:  # a dropped connection, a restart: one fewer, the size is not the cause
            self.in_flight = max(self.lo, self.in_flight - 1)
        self.shrunk += 1


class GrpcSink(Sink):
    """A Qdrant collection on a server, written over gRPC (default port 6334).

    `tls=None` uses TLS for https:// URLs; `root_certificates` (PEM bytes) trusts a private CA.
    `batch_bytes` / `batch_points` bound each request; `max_in_flight` bounds concurrent ones;
    `retries` and `backoff=(first, max)` seconds govern retries of transient failures.

    With ``outbox`` (a file path), a server that stays unreachable after the retries does not
    fail the writes: updates are spooled in order to that file (at most ``outbox_bytes``) while
    the caller goes on, the server is probed every ``probe_interval`` seconds, and the outbox is
    sent in order when it is back. `barrier()` answers False while anything is held back;
    `flush()` waits for it. If the outage outlasts ``outage_deadline`` seconds or the outbox is
    full, the next call raises the error the failed request gave, saying so.
    """

    def __init__(
        self,
        url: str,
        collection: str,
        *,
        api_key: str | None = None,
        tls: bool | None = None,
        root_certificates: bytes | None = None,
        timeout: float = 30.0,
        max_in_flight: int = 4,
        batch_bytes: int = 8 * 1024 * 1024,
        batch_points: int = 256,
        wait: bool = False,
        retries: int = 6,
        backoff: tuple[float, float] = (0.05, 5.0),
        outbox: str | os.PathLike[str] | None = None,
        outbox_bytes: int = 1 << 30,
        outage_deadline: float = 900.0,
        probe_interval: float = 1.0,
        adaptive: bool = True,
        in_flight_bounds: tuple[int, int] = (1, 32),
        versioned: bool = False,
    ) -> None:
        if not collection:
            raise InvalidInputError("GrpcSink: collection name must not be empty")
        if max_in_flight < 1:
            raise InvalidInputError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if retries < 0:
            raise InvalidInputError(f"retries must be >= 0, got {retries}")
        if batch_points < 1:
            raise InvalidInputError(f"batch_points must be >= 1, got {batch_points}")
        if not 1024 <= batch_bytes <= _HARD_LIMIT:
            raise InvalidInputError(
                f"batch_bytes must be between 1024 and {_HARD_LIMIT} (Qdrant's request limit), "
                f"got {batch_bytes}"
            )
        if isinstance(outbox_bytes, bool) or not isinstance(outbox_bytes, int) or outbox_bytes < 1:
            raise InvalidInputError(f"outbox_bytes must be a positive int, got {outbox_bytes!r}")
        for name, v in (("outage_deadline", outage_deadline), ("probe_interval", probe_interval)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise InvalidInputError(f"{name} must be a positive number of seconds, got {v!r}")
        self.url = url
        self.collection = collection
        #: create a missing collection as ``<collection>__v1`` behind the alias ``collection``
        self.versioned = versioned
        #: the collection ensure_collection created (None: it was there)
        self.created: str | None = None
        self.timeout = float(timeout)
        self.max_in_flight = max_in_flight
        lo, hi = in_flight_bounds
        if not 1 <= lo <= hi:
            raise InvalidInputError(
                f"in_flight_bounds must be 1 <= lo <= hi, got {in_flight_bounds}"
            )
        #: requests in flight and points per request now (see Adaptive); fixed when not adaptive
        self.adaptive: Adaptive | None = (
            Adaptive(
                max_in_flight,
                batch_points,
                in_flight_bounds=(lo, max(hi, max_in_flight)),
                points_bounds=(min(16, batch_points), batch_points),
            )
            if adaptive
            else None
        )
        self.batch_bytes = batch_bytes
        self.batch_points = batch_points
        self.wait = wait
        self.retries = retries
        self.backoff = (float(backoff[0]), float(backoff[1]))
        target, https = _parse_url(url)
        self._target = target
        self._metadata: tuple[tuple[str, str], ...] = (
            (("api-key", api_key),) if api_key is not None else ()
        )
        options = [
            ("grpc.max_send_message_length", _HARD_LIMIT + (1 << 20)),
            ("grpc.max_receive_message_length", -1),
            ("grpc.enable_retries", 0),
        ]
        use_tls = https if tls is None else tls
        if use_tls:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self.meter = RpcMeter()  # bytes each way, failures by code, per-call metrics
        self._channel = grpc.intercept_channel(self._channel, self.meter)
        self._methods: dict[str, grpc.UnaryUnaryMultiCallable[Any, Any]] = {}
        self._pending: deque[_Pending] = deque()
        self._dirty = False  # updates sent since the last barrier
        self._dim: int | None = None
        self._closed = False
        # What happened, for reports: requests sent, retries, points acknowledged.
        self.requests = 0
        self.retried = 0
        self.points_written = 0
        # The outbox while the server is unreachable (see the class docstring).
        self._outbox_path = None if outbox is None else os.fspath(outbox)
        if self._outbox_path is not None:
            # left by a killed run: never acknowledged, so never committed: replanned, not sent
            with contextlib.suppress(OSError):
                os.unlink(self._outbox_path)
        self.outbox_bytes = int(outbox_bytes)
        self.outage_deadline = float(outage_deadline)
        self.probe_interval = float(probe_interval)
        self._outbox: Outbox | None = None
        self._down_since: float | None = None
        self._down_error = ""
        self._last_probe = 0.0
        self.spooled = 0  # requests written to the outbox
        self.outage_s = 0.0  # seconds spent with the server unreachable (ended outages)
        self.outages = 0

    # --- plumbing ------------------------------------------------------------------------------

    def _method(self, path: str, response: Any) -> grpc.UnaryUnaryMultiCallable[Any, Any]:
        m = self._methods.get(path)
        if m is None:
            # request_serializer=None: requests are already serialized bytes.
            m = self._channel.unary_unary(
                path, request_serializer=None, response_deserializer=response.FromString
            )
            self._methods[path] = m
        return m

    def _error(self, method: str, err: grpc.RpcError, attempts: int) -> _RpcFailure:
        code = err.code() if isinstance(err, grpc.Call) else None
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        name = code.name if code is not None else "error"
        hint = ""
        if code == grpc.StatusCode.UNAVAILABLE and self._target.endswith(":6333"):
            hint = " (6333 is Qdrant's REST port; gRPC listens on 6334)"
        elif code == grpc.StatusCode.UNAUTHENTICATED:
            hint = " (check the api_key)"
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return _RpcFailure(
            f"Qdrant at {self.url}{hint}, collection {self.collection!r}: {method} failed "
            f"with {name}{tries}: {details}",
            code,
        )

    def _sleep_before(self, attempt: int) -> None:
        first, cap = self.backoff
        delay = min(cap, first * (2 ** (attempt - 1)))
        time.sleep(delay * random.uniform(0.5, 1.0))

    def _check_open(self) -> None:
        if self._closed:
            raise SinkError(f"GrpcSink for {self.url} / {self.collection!r} is closed")

    def _call(self, method: str, response: Any, request: bytes, attempt: int = 0) -> Any:
        """A blocking call with retries of transient failures (`attempt` were made already)."""
        self._check_open()
        fn = self._method(method, response)
        while True:
            try:
                self.requests += 1
                return fn(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                attempt += 1
                if not isinstance(err, grpc.Call) or err.code() not in RETRYABLE:
                    raise self._error(method, err, attempt) from None
                if attempt > self.retries:
                    raise self._error(method, err, attempt) from None
                self.retried += 1
                self._sleep_before(attempt)

    def _harvest(self, p: _Pending) -> None:
        """Waits for a pending request (popped already); retries it (blocking) if it failed
        transiently; when the server stays unreachable and there is an outbox, spools it and
        everything after it."""
        try:
            p.future.result()
        except grpc.RpcError as err:
            if self.adaptive is not None and isinstance(err, grpc.Call):
                if err.code() in RETRYABLE:
                    self.adaptive.failed(err.code())
            if not isinstance(err, grpc.Call) or err.code() not in RETRYABLE or self.retries == 0:
                if self._outbox_path is not None and isinstance(err, grpc.Call):
                    if err.code() in RETRYABLE:
                        self._go_down(str(self._error(p.method, err, 1)), [p])
                        return
                self._abort_pending()
                raise self._error(p.method, err, 1) from None
            self.retried += 1
            self._sleep_before(1)
            try:
                self._call(p.method, _response_of(p.method), p.request, attempt=1)
            except _RpcFailure as e:
                if self._can_spool(e):
                    self._go_down(f"{e} (a request of {p.points} points)", [p])
                    return
                self._abort_pending()
                raise _RpcFailure(f"{e} (a request of {p.points} points)", e.code) from None
        else:
            if self.adaptive is not None and p.done_at:
                self.adaptive.ok(p.done_at - p.sent_at)
        self.points_written += p.points

    def _abort_pending(self) -> None:
        while self._pending:
            self._pending.popleft().future.cancel()

    def _drain(self) -> None:
        while self._pending:
            self._harvest(self._pending.popleft())

    def _send(
        self, kind: str, method: str, messages: Sequence[bytes], points: Sequence[int]
    ) -> None:
        self._check_open()
        if self._pending and self._pending[0].kind != kind:
            self._drain()
        if self._down_since is not None:
            self._try_recover()
        fn = self._method(method, _response_of(method))
        for i, (msg, n) in enumerate(zip(messages, points, strict=True)):
            if self._down_since is not None:  # unreachable: the rest waits in the outbox
                self._spool_all(kind, method, messages[i:], points[i:])
                return
            while len(self._pending) >= self._in_flight() and self._down_since is None:
                self._harvest(self._pending.popleft())
            if self._down_since is not None:
                self._spool_all(kind, method, messages[i:], points[i:])
                return
            self.requests += 1
            fut = fn.future(msg, timeout=self.timeout, metadata=self._metadata)
            self._pending.append(_Pending(kind, method, msg, n, fut))
            self._dirty = True

    # --- the outbox ----------------------------------------------------------------------------

    def _can_spool(self, e: _RpcFailure) -> bool:
        return self._outbox_path is not None and e.code in RETRYABLE

    def _go_down(self, message: str, failed: list[_Pending]) -> None:
        """The server is unreachable: ``failed`` and every request still in flight that was not
        acknowledged go to the outbox, in order."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._last_probe = self._down_since
            self._down_error = message
            self.outages += 1
        rest = list(self._pending)
        self._pending.clear()
        for q in failed + rest:
            ok = q.future.done() and not q.future.cancelled() and q.future.exception() is None
            if q in rest and ok:
                self.points_written += q.points
                continue
            q.future.cancel()
            self._spool(q.kind, q.method, q.request, q.points)

    def _spool_all(
        self, kind: str, method: str, messages: Sequence[bytes], points: Sequence[int]
    ) -> None:
        self._check_deadline()
        for msg, n in zip(messages, points, strict=True):
            self._spool(kind, method, msg, n)
        self._dirty = True

    def _spool(self, kind: str, method: str, request: bytes, points: int) -> None:
        if self._outbox is None:
            assert self._outbox_path is not None
            self._outbox = Outbox(self._outbox_path, self.outbox_bytes)
        if not self._outbox.fits(request):
            raise self._outage_failure(f"the outbox is full ({self.outbox_bytes} bytes)")
        self._outbox.put(kind, method, points, request)
        self.spooled += 1

    def _outage_failure(self, why: str) -> SinkError:
        waiting = len(self._outbox) if self._outbox is not None else 0
        return SinkError(
            f"{self._down_error}; {why}: {waiting} requests waiting in the outbox were not sent "
            "(nothing of them was committed to the state: the next run sends them again)"
        )

    def _check_deadline(self) -> None:
        if self._down_since is None:
            return
        down = time.monotonic() - self._down_since
        if down > self.outage_deadline:
            raise self._outage_failure(
                f"the server stayed unreachable for {down:.0f} s "
                f"(outage_deadline={self.outage_deadline:g} s)"
            )

    def _try_recover(self) -> bool:
        """Probe the server (at most every probe_interval s); when it answers, send the outbox in
        order. True when the outage is over."""
        if self._down_since is None:
            return True
        now = time.monotonic()
        if now - self._last_probe < self.probe_interval:
            return False
        self._last_probe = now
        probe = self._method("/qdrant.Qdrant/HealthCheck", qg.HealthCheckReply)
        try:
            probe(
                qg.HealthCheckRequest().SerializeToString(),
                timeout=min(self.timeout, 5.0),
                metadata=self._metadata,
            )
        except grpc.RpcError:
            return False
        box = self._outbox
        while box is not None and len(box):
            entries = box.peek(self.max_in_flight)
            sent = []
            for e in entries:
                fn = self._method(e.method, _response_of(e.method))
                self.requests += 1
                sent.append(fn.future(e.request, timeout=self.timeout, metadata=self._metadata))
            for i, (e, fut) in enumerate(zip(entries, sent, strict=True)):
                try:
                    fut.result()
                except grpc.RpcError as err:
                    for later in sent[i + 1 :]:
                        later.cancel()  # sent again with the rest: every update is idempotent
                    if isinstance(err, grpc.Call) and err.code() in RETRYABLE:
                        self._last_probe = time.monotonic()
                        return False
                    raise self._error(e.method, err, 1) from None
                box.pop(e)
                self.points_written += e.points
        self.outage_s += time.monotonic() - self._down_since
        self._down_since = None
        return True

    @property
    def spooling(self) -> bool:
        """Whether the server is unreachable and updates wait in the outbox."""
        return self._down_since is not None

    # --- collection ----------------------------------------------------------------------------

    def _info(self) -> Any | None:
        """The collection's CollectionInfo, or None if it does not exist."""
        req = qg.GetCollectionInfoRequest(collection_name=self.collection).SerializeToString()
        try:
            return self._call("/qdrant.Collections/Get", qg.GetCollectionInfoResponse, req).result
        except _RpcFailure as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    @staticmethod
    def _default_vector(info: Any) -> tuple[int, str] | None:
        params = info.config.params
        if not params.HasField("vectors_config"):
            return None
        vc = params.vectors_config
        which = vc.WhichOneof("config")
        p = None
        if which == "params":
            p = vc.params
        elif which == "params_map" and "" in vc.params_map.map:
            p = vc.params_map.map[""]
        if p is None:
            return None
        return int(p.size), qg.Distance.Name(p.distance)

    def ensure_collection(self, spec: CollectionSpec) -> None:
        distance = _DISTANCES.get(spec.distance.lower())
        if distance is None:
            raise InvalidInputError(
                f"distance must be one of {sorted(_DISTANCES.values())}, got {spec.distance!r}"
            )
        if spec.dim < 1:
            raise InvalidInputError(f"dense dimension must be >= 1, got {spec.dim}")
        info = self._info()
        if info is None:
            # versioned: the collection is created as <name>__v1, with <name> as its alias
            name = f"{self.collection}__v1" if self.versioned else self.collection
            req = qg.CreateCollection(
                collection_name=name,
                vectors_config=qg.VectorsConfig(
                    params=qg.VectorParams(size=spec.dim, distance=qg.Distance.Value(distance))
                ),
                sparse_vectors_config=qg.SparseVectorConfig(
                    map={
                        name: qg.SparseVectorParams(
                            modifier=qg.Modifier.Idf if name in spec.idf_sparse else None
                        )
                        for name in spec.sparse
                    }
                )
                if spec.sparse
                else None,
            )
            try:
                self._call(
                    "/qdrant.Collections/Create",
                    qg.CollectionOperationResponse,
                    req.SerializeToString(),
                )
            except _RpcFailure as e:
                # A concurrent creator won the race: check what it made.
                if e.code != grpc.StatusCode.ALREADY_EXISTS and "already exists" not in str(e):
                    raise
                if self.versioned:
                    self.update_aliases({self.collection: name})
            else:
                if self.versioned:
                    self.update_aliases({self.collection: name})
                self.created = name
                self._dim = spec.dim
                return
            info = self._info()
            if info is None:
                raise SinkError(
                    f"Qdrant at {self.url}: collection {self.collection!r} could not be created"
                )
        self._check_fits(info, spec, distance)
        self._dim = spec.dim

    def _check_fits(self, info: Any, spec: CollectionSpec, distance: str) -> None:
        where = f"collection {self.collection!r} at {self.url}"
        dv = self._default_vector(info)
        if dv is None:
            raise ShapeError(
                f"{where} has no default (unnamed) dense vector; qflume needs one of size "
                f"{spec.dim} ({distance}). Use another collection name."
            )
        size, have = dv
        if size != spec.dim:
            raise ShapeError(
                f"{where} holds vectors of size {size}, but the embedder makes vectors of size "
                f"{spec.dim}. Use another collection name or the model it was built with."
            )
        if have != distance:
            raise ShapeError(
                f"{where} uses {have} distance, but {distance} was asked for. Use another "
                "collection name or the same distance."
            )
        names = set(info.config.params.sparse_vectors_config.map.keys())
        missing = [s for s in spec.sparse if s not in names]
        if missing:
            raise ShapeError(
                f"{where} has no sparse vector named {', '.join(map(repr, missing))} "
                f"(it has {sorted(names) or 'none'}). Use another collection name."
            )

    def _check_dim(self, dense: npt.NDArray[np.float32] | None) -> None:
        if dense is None:
            return
        if self._dim is None:
            info = self._info()
            if info is None:
                raise SinkError(
                    f"Qdrant at {self.url}: collection {self.collection!r} does not exist; "
                    "call ensure_collection(spec) first"
                )
            dv = self._default_vector(info)
            if dv is None:
                raise ShapeError(
                    f"collection {self.collection!r} at {self.url} has no default (unnamed) "
                    f"dense vector for vectors of size {dense.shape[1]}"
                )
            self._dim = dv[0]
        if dense.shape[1] != self._dim:
            raise ShapeError(
                f"vectors of size {dense.shape[1]} do not fit collection {self.collection!r} "
                f"at {self.url}, whose vectors have size {self._dim}"
            )

    # --- aliases and collections (qflume.versions) ---------------------------------------------

    def _collections_call(self, method: str, response: Any, request: Any) -> Any:
        return self._call(f"/qdrant.Collections/{method}", response, request.SerializeToString())

    def aliases(self) -> dict[str, str]:
        """Every alias on the server: alias -> the collection it names."""
        resp = self._collections_call(
            "ListAliases", qg.ListAliasesResponse, qg.ListAliasesRequest()
        )
        return {a.alias_name: a.collection_name for a in resp.aliases}

    def update_aliases(
        self, create: Mapping[str, str] | None = None, delete: Sequence[str] = ()
    ) -> None:
        """In one request, which Qdrant applies all at once: delete the aliases ``delete``,
        then point each alias of ``create`` (alias -> collection) at its collection (an alias
        that exists is moved)."""
        actions = [qg.AliasOperations(delete_alias=qg.DeleteAlias(alias_name=a)) for a in delete]
        actions += [
            qg.AliasOperations(create_alias=qg.CreateAlias(collection_name=c, alias_name=a))
            for a, c in (create or {}).items()
        ]
        if actions:
            self._collections_call(
                "UpdateAliases", qg.CollectionOperationResponse, qg.ChangeAliases(actions=actions)
            )

    def collections(self) -> list[str]:
        """The names of the server's collections (aliases not included)."""
        resp = self._collections_call(
            "List", qg.ListCollectionsResponse, qg.ListCollectionsRequest()
        )
        return sorted(c.name for c in resp.collections)

    def drop_collection(self, name: str) -> bool:
        """Delete collection ``name`` (never through an alias) and the aliases naming it; False
        when there was none."""
        resp = self._collections_call(
            "Delete", qg.CollectionOperationResponse, qg.DeleteCollection(collection_name=name)
        )
        return bool(resp.result)

    def info(self) -> CollectionInfo | None:
        info = self._info()
        if info is None:
            return None
        opt = info.optimizer_status
        return CollectionInfo(
            points=int(info.points_count),
            indexed_vectors=int(info.indexed_vectors_count),
            segments=int(info.segments_count),
            status=qg.CollectionStatus.Name(info.status).lower(),
            spec=self._spec_of(info),
            optimizer=(
                None
                if not info.HasField("optimizer_status")
                else "ok"
                if opt.ok
                else opt.error or "error"
            ),
            update_queue=(int(info.update_queue.length) if info.HasField("update_queue") else None),
            warnings=tuple(w.message for w in info.warnings),
        )

    def collection_spec(self) -> CollectionSpec | None:
        info = self._info()
        return None if info is None else self._spec_of(info)

    def _spec_of(self, info: Any) -> CollectionSpec | None:
        dv = self._default_vector(info)
        if dv is None:
            return None
        smap = info.config.params.sparse_vectors_config.map
        return CollectionSpec(
            dim=dv[0],
            distance=dv[1],
            sparse=tuple(sorted(smap)),
            idf_sparse=tuple(sorted(n for n, p in smap.items() if p.modifier == qg.Modifier.Idf)),
        )

    # --- updates -------------------------------------------------------------------------------

    def _pack_opts(self) -> dict[str, Any]:
        return {"wait": self.wait, "max_bytes": self.batch_bytes}

    def _upsert_opts(self) -> dict[str, Any]:
        points = self.adaptive.points if self.adaptive is not None else self.batch_points
        return {**self._pack_opts(), "max_points": points, "return_counts": True}

    def _in_flight(self) -> int:
        return self.adaptive.in_flight if self.adaptive is not None else self.max_in_flight

    def _send_upserts(self, packed: tuple[list[bytes], list[int]]) -> None:
        messages, counts = packed
        self._send("upsert", "/qdrant.Points/Upsert", messages, counts)

    def upsert(
        self,
        ids: Ids,
        dense: npt.NDArray[np.float32] | None,
        payloads: Sequence[Mapping[str, Any]],
        sparse: Mapping[str, SparseBatch] | None = None,
    ) -> None:
        arr = id_array(ids)
        n = len(arr)
        vecs = dense_array(dense, n)
        self._check_dim(vecs)
        if len(payloads) != n:
            raise ShapeError(f"{len(payloads)} payloads for {n} ids")
        msgs = _core.pack_upsert(
            self.collection,
            arr,
            vecs,
            sparse=sparse_arrays(sparse, n),
            payloads=payloads,
            **self._upsert_opts(),
        )
        self._send_upserts(msgs)

    def upsert_batch(self, batch: PointBatch) -> None:
        arr = id_array(batch.ids)
        n = len(arr)
        vecs = dense_array(batch.dense, n)
        self._check_dim(vecs)
        sparse: dict[str, SparseArrays] | None = sparse_arrays(batch.sparse, n)
        if batch.payloads is not None:
            msgs = _core.pack_upsert(
                self.collection,
                arr,
                vecs,
                sparse=sparse,
                payloads=batch.payloads,
                **self._upsert_opts(),
            )
        elif batch.texts is not None:
            if batch.chunk_hash is None or batch.doc_metadata is None:
                raise InvalidInputError("PointBatch with texts needs chunk_hash and doc_metadata")
            doc_index = int64_array(batch.doc_index, "doc_index", n)
            docs: Sequence[Mapping[str, Any]] = batch.doc_metadata
            if batch.chunk_meta_index is not None:  # pages, headings: folded into the docs
                docs, doc_index = replace(batch, doc_index=doc_index).merged_metadata()
            msgs = _core.pack_upsert(
                self.collection,
                arr,
                vecs,
                sparse=sparse,
                texts=list(batch.texts),
                doc_index=doc_index,
                doc_metadata=docs,
                chunk_index=int64_array(batch.chunk_index, "chunk_index", n),
                start=int64_array(batch.start, "start", n),
                end=int64_array(batch.end, "end", n),
                chunk_hash=np.ascontiguousarray(batch.chunk_hash, dtype=np.uint8),
                **self._upsert_opts(),
            )
        else:
            msgs = _core.pack_upsert(
                self.collection,
                arr,
                vecs,
                sparse=sparse,
                **self._upsert_opts(),
            )
        self._send_upserts(msgs)

    def delete(self, ids: Ids) -> None:
        arr = id_array(ids)
        if len(arr) == 0:
            return
        msgs = _core.pack_delete(self.collection, arr, **self._pack_opts())
        self._send("delete", "/qdrant.Points/Delete", msgs, [0] * len(msgs))

    def delete_by_source(self, sources: Sequence[str]) -> None:
        if isinstance(sources, str):
            raise InvalidInputError("delete_by_source expects a sequence of sources, not a str")
        if not sources:
            return
        msgs = _core.pack_delete_by_values(
            self.collection, list(sources), key=layout.SOURCE_FIELD, **self._pack_opts()
        )
        self._send("delete", "/qdrant.Points/Delete", msgs, [0] * len(msgs))

    def set_payload(self, payload: Mapping[str, Any], ids: Ids, *, key: str | None = None) -> None:
        arr = id_array(ids)
        if len(arr) == 0:
            return
        msgs = _core.pack_set_payload(self.collection, payload, arr, key=key, **self._pack_opts())
        self._send("set_payload", "/qdrant.Points/SetPayload", msgs, [0] * len(msgs))

    def _barrier_request(self) -> bytes:
        # An update that matches nothing, applied after everything before it.
        req = qg.DeletePoints(
            collection_name=self.collection,
            wait=True,
            points=qg.PointsSelector(
                filter=qg.Filter(
                    must=[qg.Condition(has_id=qg.HasIdCondition(has_id=[qg.PointId(uuid=NIL_ID)]))]
                )
            ),
        )
        return req.SerializeToString()

    def _acknowledge(self) -> bool:
        """Drain, then the barrier; False when the server went (or is) unreachable."""
        self._drain()
        if self._down_since is not None:
            return False
        if self._dirty and not self.wait:
            try:
                self._call(
                    "/qdrant.Points/Delete", qg.PointsOperationResponse, self._barrier_request()
                )
            except _RpcFailure as e:
                if not self._can_spool(e):
                    raise
                self._go_down(str(e), [])
                return False
        self._dirty = False
        return True

    def barrier(self) -> bool:
        self._check_open()
        if self._down_since is not None and not self._try_recover():
            self._check_deadline()
            return False
        return self._acknowledge()

    def set_payloads(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], *, key: str | None = None
    ) -> None:
        """One UpdateBatch request per 256 points, each point its own SetPayload operation."""
        if not items:
            return
        from qdrant_client.conversions.conversion import payload_to_grpc

        uuids = id_strings([pid for pid, _ in items])
        ops = [
            qg.PointsUpdateOperation(
                set_payload=qg.PointsUpdateOperation.SetPayload(
                    payload=payload_to_grpc(dict(payload)),
                    points_selector=qg.PointsSelector(
                        points=qg.PointsIdsList(ids=[qg.PointId(uuid=u)])
                    ),
                    key=key,
                )
            )
            for u, (_, payload) in zip(uuids, items, strict=True)
        ]
        msgs = [
            qg.UpdateBatchPoints(
                collection_name=self.collection, wait=self.wait, operations=ops[lo : lo + 256]
            ).SerializeToString()
            for lo in range(0, len(ops), 256)
        ]
        self._send("set_payload", "/qdrant.Points/UpdateBatch", msgs, [0] * len(msgs))

    def flush(self) -> None:
        """Everything sent is acknowledged when it returns: while the server is unreachable
        (with an outbox), it waits for the server, up to outage_deadline."""
        while True:
            if self._down_since is not None and not self._try_recover():
                self._check_deadline()
                time.sleep(min(0.1, self.probe_interval))
                continue
            if self._acknowledge():
                return

    # --- reads ---------------------------------------------------------------------------------

    def count(self, filter: Any = None) -> int:
        """Exact number of points (matching `filter`, a Qdrant filter, if given)."""
        flt = grpc_filter(filter)
        self.flush()
        req = qg.CountPoints(collection_name=self.collection, exact=True, filter=flt)
        try:
            resp = self._call("/qdrant.Points/Count", qg.CountResponse, req.SerializeToString())
            return int(resp.result.count)
        except _RpcFailure as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return 0
            raise

    @staticmethod
    def _record(p: Any, with_payload: bool = True) -> PointRecord:
        pid = p.id.uuid if p.id.WhichOneof("point_id_options") == "uuid" else str(p.id.num)
        dense, sparse = vectors_to_py(p.vectors) if p.HasField("vectors") else (None, None)
        body = payload_to_py(p.payload) if with_payload else None  # as on Qdrant Edge
        return PointRecord(id=pid, payload=body, vector=dense, sparse=sparse)

    def retrieve(self, ids: Ids, *, with_vectors: bool = False) -> list[PointRecord]:
        self.flush()
        out: list[PointRecord] = []
        for part in chunked(id_strings(id_array(ids)), 1024):
            req = qg.GetPoints(
                collection_name=self.collection,
                ids=[qg.PointId(uuid=u) for u in part],
                with_payload=qg.WithPayloadSelector(enable=True),
                with_vectors=qg.WithVectorsSelector(enable=with_vectors),
            )
            try:
                resp = self._call("/qdrant.Points/Get", qg.GetResponse, req.SerializeToString())
            except _RpcFailure as e:
                if e.code == grpc.StatusCode.NOT_FOUND:
                    return []
                raise
            out.extend(self._record(p) for p in resp.result)
        return out

    def scroll(
        self,
        *,
        filter: Any = None,
        with_payload: bool = True,
        with_vectors: bool = False,
        batch: int = 1024,
    ) -> Iterator[PointRecord]:
        """Every point `filter` selects (all without one), after flushing pending writes;
        nothing when the collection does not exist."""
        flt = grpc_filter(filter)
        if batch < 1:
            raise InvalidInputError(f"scroll batch must be >= 1, got {batch}")
        self.flush()
        offset: Any = None
        while True:
            req = qg.ScrollPoints(
                collection_name=self.collection,
                limit=batch,
                offset=offset,
                filter=flt,
                with_payload=qg.WithPayloadSelector(enable=with_payload),
                with_vectors=qg.WithVectorsSelector(enable=with_vectors),
            )
            try:
                resp = self._call(
                    "/qdrant.Points/Scroll", qg.ScrollResponse, req.SerializeToString()
                )
            except _RpcFailure as e:
                if offset is None and e.code == grpc.StatusCode.NOT_FOUND:
                    return
                raise
            for p in resp.result:
                yield self._record(p, with_payload)
            if not resp.HasField("next_page_offset"):
                return
            offset = resp.next_page_offset

    def query_batch(self, requests: Sequence[QueryRequest]) -> list[list[ScoredPoint]]:
        """Run all searches in one `QueryBatch` request (split only past `batch_bytes`).

        Dense queries search the default vector, sparse ones the named vector; a request with both
        is a hybrid search: a dense and a sparse prefetch fused by RRF on the server. Pending
        writes are flushed first, so every search sees them.
        """
        self._check_open()
        if isinstance(requests, QueryRequest):
            raise InvalidInputError("query_batch expects a sequence of QueryRequest, not one")
        if not requests:
            return []
        for i, q in enumerate(requests):
            if not isinstance(q, QueryRequest):
                raise InvalidInputError(f"query #{i}: expected a QueryRequest, got {q!r}")
        self.flush()
        dim = self._dim
        missing = False
        if dim is None and any(q.dense is not None for q in requests):
            info = self._info()
            missing = info is None
            dv = None if info is None else self._default_vector(info)
            if dv is not None:
                dim = self._dim = dv[0]
        queries = [query_points(q, i, self.collection, dim) for i, q in enumerate(requests)]
        if missing:  # nothing stored yet: no hits, as on Qdrant Edge before the first write
            return [[] for _ in requests]
        out: list[list[ScoredPoint]] = []
        for lo, hi in self._query_groups(queries):
            req = qg.QueryBatchPoints(collection_name=self.collection, query_points=queries[lo:hi])
            try:
                resp = self._call(
                    "/qdrant.Points/QueryBatch", qg.QueryBatchResponse, req.SerializeToString()
                )
            except _RpcFailure as e:
                if e.code == grpc.StatusCode.NOT_FOUND:  # no collection yet: nothing to find
                    return [[] for _ in requests]
                raise
            if len(resp.result) != hi - lo:
                raise SinkError(
                    f"Qdrant at {self.url}, collection {self.collection!r}: QueryBatch answered "
                    f"{len(resp.result)} results for {hi - lo} queries"
                )
            out.extend(
                scored_points(r.result, q)
                for r, q in zip(resp.result, requests[lo:hi], strict=True)
            )
        return out

    def _query_groups(self, queries: Sequence[Any]) -> list[tuple[int, int]]:
        """[lo, hi) ranges of queries whose request stays under `batch_bytes` (usually one)."""
        groups: list[tuple[int, int]] = []
        lo, size = 0, 0
        for i, q in enumerate(queries):
            n = q.ByteSize() + 8
            if i > lo and size + n > self.batch_bytes:
                groups.append((lo, i))
                lo, size = i, 0
            size += n
        groups.append((lo, len(queries)))
        return groups

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._abort_pending()
            self._close_outbox()
            self._channel.close()

    def _close_outbox(self) -> None:
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None

    def __enter__(self) -> GrpcSink:
        return self

    def abandon(self) -> None:
        """Let go without waiting on (or raising from) the barrier: an outage is not waited out
        (see `Sink.abandon`)."""
        if self._closed:
            return
        self._closed = True
        self._abort_pending()
        self._close_outbox()
        self._channel.close()

    def __exit__(self, *exc: object) -> None:
        if not exc or exc[0] is None:
            self.close()
        else:  # leaving on an error
            self.abandon()

    def __repr__(self) -> str:
        return f"GrpcSink({self.url!r}, {self.collection!r})"
