"""Where points go: Qdrant Edge in process (the default) or a Qdrant server over gRPC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qflume.sinks.base import (
    CollectionSpec,
    PointBatch,
    PointRecord,
    QueryRequest,
    ScoredPoint,
    Sink,
    SparseBatch,
)

__all__ = [
    "CollectionSpec",
    "EdgeSink",
    "GrpcSink",
    "PointBatch",
    "PointRecord",
    "QueryRequest",
    "ScoredPoint",
    "Sink",
    "SparseBatch",
]

if TYPE_CHECKING:  # pragma: no cover
    from qflume.sinks.edge import EdgeSink
    from qflume.sinks.grpc import GrpcSink


def __getattr__(name: str) -> Any:
    if name == "EdgeSink":
        from qflume.sinks.edge import EdgeSink

        return EdgeSink
    if name == "GrpcSink":
        from qflume.sinks.grpc import GrpcSink

        return GrpcSink
    raise AttributeError(f"module 'qflume.sinks' has no attribute {name!r}")
