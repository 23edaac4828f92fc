"""What a gRPC channel to Qdrant carries: bytes each way, calls, failures by status code.

`RpcMeter` is a client interceptor (``grpc.intercept_channel(channel, meter)``): it sees every
unary call, blocking or future, without changing it. Each finished call is recorded in
`qflume.metrics` as the operation ``qdrant_rpc{method=Upsert}`` (latency, failed or not: a
NOT_FOUND answer, e.g. to "does this collection exist", is no failure), with the counters ``qdrant_sent_bytes`` / ``qdrant_received_bytes`` and ``qdrant_rpc_errors{code,
method}``. Sizes are those of the protobuf messages (requests go out already serialized;
responses are measured with ``ByteSize()``), without HTTP/2 framing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import grpc

__all__ = ["RpcMeter"]


class RpcMeter(grpc.UnaryUnaryClientInterceptor):
    """Counts the traffic of the channels it intercepts (thread-safe)."""

    def __init__(self, registry: Any = None) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.calls = 0
        self.cancelled = 0
        #: failed calls by gRPC status code name (UNAVAILABLE, DEADLINE_EXCEEDED, ...)
        self.errors: Counter[str] = Counter()

    def _reg(self) -> Any:
        if self._registry is None:
            from qflume import metrics

            return metrics.REGISTRY
        return self._registry

    def snapshot(self) -> dict[str, Any]:
        """The counts so far: {"bytes_sent", "bytes_received", "calls", "errors": {code: n}}."""
        with self._lock:
            return {
                "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received,
                "calls": self.calls,
                "errors": dict(self.errors),
            }

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        t0 = time.perf_counter()
        if isinstance(request, (bytes, bytearray, memoryview)):
            size = len(request)
        else:
            size = int(getattr(request, "ByteSize", lambda: 0)())
        method = str(details.method).rsplit("/", 1)[-1]
        with self._lock:
            self.bytes_sent += size
            self.calls += 1
        self._reg().inc("qdrant_sent_bytes", size)
        call = continuation(details, request)
        call.add_done_callback(lambda done: self._done(done, method, t0))
        return call

    def _done(self, call: Any, method: str, t0: float) -> None:
        # Runs on gRPC's thread for futures: it must never raise.
        try:
            secs = time.perf_counter() - t0
            reg = self._reg()
            if call.cancelled():
                with self._lock:
                    self.cancelled += 1
                return
            code = call.code() if isinstance(call, grpc.Call) else None
            if code == grpc.StatusCode.NOT_FOUND:  # an answer ("no such collection"), no failure
                reg.observe("qdrant_rpc", secs, method=method)
                return
            if code is None or code == grpc.StatusCode.OK:
                response = call.result()
                size = int(getattr(response, "ByteSize", lambda: 0)())
                with self._lock:
                    self.bytes_received += size
                reg.inc("qdrant_received_bytes", size)
                reg.observe("qdrant_rpc", secs, method=method)
                return
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            with self._lock:
                self.errors[name] += 1
            reg.observe("qdrant_rpc", secs, error=True, method=method)
            reg.inc("qdrant_rpc_errors", code=name, method=method)
        except Exception:  # pragma: no cover - a count lost, never a call
            pass
