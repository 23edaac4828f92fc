"""qflume: move documents into Qdrant as fast as the hardware allows, and keep them in sync.

Heavy parts (ONNX Runtime, gRPC, Qdrant Edge) load only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qflume._core import __version__, content_hash, get_threads, point_id, set_threads
from qflume.exceptions import (
    ConfigError,
    DecodeError,
    InvalidInputError,
    InvalidTypeError,
    ModelError,
    QflumeError,
    QflumeIOError,
    RustPanicError,
    ShapeError,
    SinkError,
    StateCorruptError,
    StateError,
    StateLockedError,
    StoreBusyError,
    TokenizerError,
    VersionError,
)

# Functions that share their module's name are bound eagerly: importing the submodule
# `qflume.scan` would otherwise rebind the attribute `qflume.scan` to the module.
from qflume.scan import FileEntry, read_text, scan
from qflume.search import search

# Public name -> module that defines it, imported on first access.
_LAZY: dict[str, str] = {
    "Chunker": "qflume.chunk",
    "ChunkBatch": "qflume.chunk",
    "chunk_file": "qflume.chunk",
    "Embedder": "qflume.embed",
    "model_fingerprint": "qflume.embed",
    "EmbeddingCache": "qflume.cache",
    "Bm25": "qflume.sparse",
    "Splade": "qflume.sparse",
    "Pipeline": "qflume.pipeline",
    "AsyncPipeline": "qflume.aio",
    "ingest": "qflume.pipeline",
    "ingest_records": "qflume.pipeline",
    "update_payload": "qflume.ops",
    "delete": "qflume.ops",
    "health": "qflume.metrics",
    "ProgressEvent": "qflume.progress",
    "load_config": "qflume.config",
    "AlertMonitor": "qflume.alerts",
    "Threshold": "qflume.alerts",
}

__all__ = [
    "AlertMonitor",
    "AsyncPipeline",
    "Bm25",
    "ChunkBatch",
    "Chunker",
    "ConfigError",
    "DecodeError",
    "Embedder",
    "EmbeddingCache",
    "FileEntry",
    "InvalidInputError",
    "InvalidTypeError",
    "ModelError",
    "Pipeline",
    "ProgressEvent",
    "QflumeError",
    "QflumeIOError",
    "RustPanicError",
    "ShapeError",
    "SinkError",
    "Splade",
    "StateCorruptError",
    "StateError",
    "StateLockedError",
    "StoreBusyError",
    "Threshold",
    "TokenizerError",
    "VersionError",
    "__version__",
    "chunk_file",
    "content_hash",
    "delete",
    "get_threads",
    "health",
    "ingest",
    "ingest_records",
    "load_config",
    "model_fingerprint",
    "point_id",
    "read_text",
    "scan",
    "search",
    "set_threads",
    "update_payload",
]

if TYPE_CHECKING:  # pragma: no cover
    from qflume.chunk import ChunkBatch, Chunker, chunk_file
    from qflume.scan import FileEntry, read_text, scan


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qflume' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
