"""qflume: move documents into Qdrant as fast as the hardware allows, and keep them in sync.

Heavy parts (ONNX Runtime, gRPC, Qdrant Edge) load only when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from qflume._core import __version__, content_hash, get_threads, point_id, set_threads
from qflume.exceptions import (
    DecodeError,
    InvalidInputError,
    ModelError,
    QflumeError,
    QflumeIOError,
    ShapeError,
    SinkError,
    StateError,
    StateLockedError,
    TokenizerError,
)

# Public name -> module that defines it, imported on first access.
_LAZY: dict[str, str] = {
    "Chunker": "qflume.chunk",
    "chunk_file": "qflume.chunk",
    "scan": "qflume.scan",
    "FileEntry": "qflume.scan",
    "Embedder": "qflume.embed",
    "EmbeddingCache": "qflume.cache",
    "Bm25": "qflume.sparse",
    "Splade": "qflume.sparse",
    "Pipeline": "qflume.pipeline",
    "AsyncPipeline": "qflume.aio",
    "ingest": "qflume.pipeline",
    "ingest_records": "qflume.pipeline",
    "search": "qflume.search",
}

__all__ = [
    "AsyncPipeline",
    "Bm25",
    "Chunker",
    "DecodeError",
    "Embedder",
    "EmbeddingCache",
    "FileEntry",
    "InvalidInputError",
    "ModelError",
    "Pipeline",
    "QflumeError",
    "QflumeIOError",
    "ShapeError",
    "SinkError",
    "Splade",
    "StateError",
    "StateLockedError",
    "TokenizerError",
    "__version__",
    "chunk_file",
    "content_hash",
    "get_threads",
    "ingest",
    "ingest_records",
    "point_id",
    "scan",
    "search",
    "set_threads",
]

if TYPE_CHECKING:  # pragma: no cover
    from qflume.chunk import Chunker, chunk_file
    from qflume.scan import FileEntry, scan


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qflume' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
