"""The contract every sink (Qdrant Edge in process, a Qdrant server over gRPC) implements.

Point ids are qflume's deterministic UUIDs (`qflume.point_id`), passed either as UUID strings or as
an (n, 16) uint8 array of their bytes (`qflume.ids`). Dense vectors are float32 (n, dim) arrays;
sparse vectors are CSR batches, one per named sparse vector. Payloads follow `qflume.payload`:
{"page_content": str, "metadata": {...}} (the layout LangChain's Qdrant store reads). Filters are
Qdrant filters in their JSON layout, validated by `qflume.filters.normalize` on every sink.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from qflume import payload as layout
from qflume.exceptions import InvalidInputError
from qflume.ids import Ids

__all__ = [
    "FUSIONS",
    "CollectionInfo",
    "CollectionSpec",
    "Ids",
    "PointBatch",
    "PointRecord",
    "QueryRequest",
    "ScoredPoint",
    "Sink",
    "SparseBatch",
    "check_fusion",
]


@dataclass(frozen=True)
class SparseBatch:
    """Sparse vectors of n points in CSR form: point i owns indices/values[indptr[i]:indptr[i+1]]."""

    indptr: npt.NDArray[np.int64]
    indices: npt.NDArray[np.uint32]
    values: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.indptr) - 1


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection must look like for a pipeline: dense size/distance and sparse names."""

    dim: int
    distance: str = "Cosine"  # "Cosine" | "Dot" | "Euclid" | "Manhattan"
    sparse: tuple[str, ...] = ()  # e.g. ("bm25",); bm25 gets Qdrant's IDF modifier
    idf_sparse: tuple[str, ...] = ("bm25",)


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's own figures, as its sink reports them (`Sink.info`)."""

    points: int
    indexed_vectors: int
    segments: int
    #: "green" (ready), "yellow" (optimizing), "grey" (optimizations pending), "red" (failed)
    status: str
    #: the vectors configuration: dense size and distance, sparse vectors (None: the collection
    #: has no default dense vector, so it is not a qflume collection)
    spec: CollectionSpec | None
    #: bytes on disk (the embedded store; None for a server, which does not say)
    disk_bytes: int | None = None
    #: a server's optimizer: "ok" or its error (None: not reported)
    optimizer: str | None = None
    #: a server's pending updates (None: not reported)
    update_queue: int | None = None
    warnings: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (`qflume.metrics.collection_info`, ``qflume status``)."""
        out: dict[str, Any] = {
            "exists": True,
            "status": self.status,
            "points": self.points,
            "indexed_vectors": self.indexed_vectors,
            "segments": self.segments,
            "vector_size": self.spec.dim if self.spec else None,
            "distance": self.spec.distance if self.spec else None,
            "sparse_vectors": sorted(self.spec.sparse) if self.spec else [],
        }
        if self.disk_bytes is not None:
            out["disk_bytes"] = self.disk_bytes
        else:
            out["optimizer"] = self.optimizer
            out["update_queue"] = self.update_queue
            out["warnings"] = list(self.warnings)
        return out


@dataclass(frozen=True)
class PointBatch:
    """A columnar batch of points, the form the pipeline hands to sinks (no per-point objects).

    Either `payloads` is given (one dict per point, used verbatim), or the payload of point i is
    `qflume.payload.chunk_payload` of texts[i] and the metadata of its document
    (``doc_metadata[doc_index[i]]``: shared by the chunks of one document, given and encoded
    once), its own page/heading keys (``chunk_metadata[chunk_meta_index[i]]``, none where the
    index is -1), its chunk_index, start, end and content hash.
    """

    ids: npt.NDArray[np.uint8]  # (n, 16) UUID bytes
    dense: npt.NDArray[np.float32] | None = None  # (n, dim)
    sparse: Mapping[str, SparseBatch] | None = None
    payloads: Sequence[Mapping[str, Any]] | None = None
    texts: Sequence[str] | None = None
    doc_index: npt.NDArray[np.int64] | None = None  # (n,) index into doc_metadata
    doc_metadata: Sequence[Mapping[str, Any]] | None = None
    chunk_index: npt.NDArray[np.int64] | None = None
    start: npt.NDArray[np.int64] | None = None
    end: npt.NDArray[np.int64] | None = None
    chunk_hash: npt.NDArray[np.uint8] | None = None  # (n, 16)
    chunk_metadata: Sequence[Mapping[str, Any]] | None = None
    chunk_meta_index: npt.NDArray[np.int64] | None = None  # (n,) into chunk_metadata, -1: none

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def merged_metadata(self) -> tuple[list[Mapping[str, Any]], npt.NDArray[np.int64]]:
        """``(doc_metadata, doc_index)`` with the per-chunk metadata folded in: one entry per
        distinct (document, chunk metadata) pair, so a packer that encodes each document's
        metadata once does the same for pages and headings."""
        assert self.doc_metadata is not None and self.doc_index is not None
        docs = list(self.doc_metadata)
        if self.chunk_meta_index is None or not self.chunk_metadata:
            return docs, np.asarray(self.doc_index, np.int64)
        extra = list(self.chunk_metadata)
        k = len(extra) + 1
        idx = np.asarray(self.chunk_meta_index, np.int64)
        if len(idx) != len(self.doc_index) or (
            len(idx) and (idx.min() < -1 or idx.max() >= len(extra))
        ):
            raise InvalidInputError(
                f"chunk_meta_index must have one entry per point, each -1 or below {len(extra)}"
            )
        pair = np.asarray(self.doc_index, np.int64) * k + idx + 1
        uniq, inverse = np.unique(pair, return_inverse=True)
        merged: list[Mapping[str, Any]] = [
            {**docs[int(u) // k], **extra[int(u) % k - 1]} if int(u) % k else docs[int(u) // k]
            for u in uniq
        ]
        return merged, inverse.astype(np.int64).ravel()

    def payload(self, i: int) -> dict[str, Any]:
        """The payload of point i as a dict (for sinks that need Python objects)."""
        if self.payloads is not None:
            return dict(self.payloads[i])
        assert self.texts is not None and self.doc_metadata is not None
        assert self.doc_index is not None and self.chunk_index is not None
        assert self.start is not None and self.end is not None and self.chunk_hash is not None
        own = None
        if self.chunk_meta_index is not None and self.chunk_metadata is not None:
            if (m := int(self.chunk_meta_index[i])) >= 0:
                own = self.chunk_metadata[m]
        meta = layout.chunk_metadata(
            self.doc_metadata[int(self.doc_index[i])],
            own,
            int(self.chunk_index[i]),
            int(self.start[i]),
            int(self.end[i]),
            self.chunk_hash[i].tobytes(),
        )
        return layout.chunk_payload(self.texts[i], meta)


@dataclass(frozen=True)
class PointRecord:
    """A point read back from a sink."""

    id: str
    payload: dict[str, Any] | None
    vector: npt.NDArray[np.float32] | None = None
    sparse: dict[str, tuple[list[int], list[float]]] | None = None


@dataclass(frozen=True)
class QueryRequest:
    """One search: dense, sparse, or hybrid (both given: dense and sparse candidates fused).

    `sparse` is (vector name, indices, values). `filter` is a Qdrant filter in its JSON (REST)
    layout, e.g. {"must": [{"key": "metadata.source", "match": {"value": "a.md"}}]}. `fusion`
    (hybrid only) is how the server merges the two candidate lists: "rrf" (reciprocal rank fusion,
    k=2) or "dbsf" (distribution-based score fusion: each list's scores normalized by their mean
    +/- 3 standard deviations, then summed).
    """

    dense: npt.NDArray[np.float32] | None = None  # (dim,)
    sparse: tuple[str, npt.NDArray[np.uint32], npt.NDArray[np.float32]] | None = None
    limit: int = 10
    filter: Mapping[str, Any] | None = None
    prefetch_limit: int | None = None  # hybrid: candidates per branch (default 4 * limit)
    score_threshold: float | None = None
    with_payload: bool = True
    with_vectors: bool = False
    fusion: str = "rrf"  # hybrid: "rrf" or "dbsf" (see FUSIONS)


FUSIONS = ("rrf", "dbsf")


def check_fusion(q: QueryRequest, where: str = "QueryRequest") -> str:
    """`q.fusion` if it is one of FUSIONS, else InvalidInputError naming it."""
    if q.fusion not in FUSIONS:
        raise InvalidInputError(f"{where}: fusion must be one of {FUSIONS}, not {q.fusion!r}")
    return q.fusion


@dataclass(frozen=True)
class ScoredPoint:
    """A search hit."""

    id: str
    score: float
    payload: dict[str, Any] | None
    vector: npt.NDArray[np.float32] | None = None


class Sink(ABC):
    """A Qdrant collection that qflume writes to. Use as a context manager or call close()."""

    collection: str

    @abstractmethod
    def ensure_collection(self, spec: CollectionSpec) -> None:
        """Create the collection if missing; raise ShapeError naming both sizes if it does not fit."""

    @abstractmethod
    def upsert(
        self,
        ids: Ids,
        dense: npt.NDArray[np.float32] | None,
        payloads: Sequence[Mapping[str, Any]],
        sparse: Mapping[str, SparseBatch] | None = None,
    ) -> None:
        """Insert or replace points (idempotent: ids are deterministic)."""

    @abstractmethod
    def upsert_batch(self, batch: PointBatch) -> None:
        """Insert or replace a columnar batch (the pipeline's fast path)."""

    @abstractmethod
    def delete(self, ids: Ids) -> None:
        """Delete points by id (ids that do not exist are ignored)."""

    @abstractmethod
    def delete_by_source(self, sources: Sequence[str]) -> None:
        """Delete every point whose metadata.source is one of `sources`."""

    @abstractmethod
    def set_payload(self, payload: Mapping[str, Any], ids: Ids, *, key: str | None = None) -> None:
        """Merge `payload` into the payload of `ids` (into the nested object at `key` if given)."""

    def set_payloads(
        self, items: Sequence[tuple[str, Mapping[str, Any]]], *, key: str | None = None
    ) -> None:
        """Many points, each its own payload to merge (under ``key`` if given): in a bounded
        number of requests where the sink can batch them."""
        for pid, payload in items:
            self.set_payload(payload, [pid], key=key)

    @abstractmethod
    def count(self, filter: Any = None) -> int:
        """Exact number of points (those matching `filter`, a Qdrant filter, if given; 0 if
        the collection does not exist)."""

    @abstractmethod
    def retrieve(self, ids: Ids, *, with_vectors: bool = False) -> list[PointRecord]:
        """The points with these ids that exist."""

    @abstractmethod
    def scroll(
        self,
        *,
        filter: Any = None,
        with_payload: bool = True,
        with_vectors: bool = False,
        batch: int = 1024,
    ) -> Iterator[PointRecord]:
        """Every point of the collection (those matching `filter`, a Qdrant filter, if
        given), `batch` at a time under the hood; nothing if the collection does not exist."""

    @abstractmethod
    def info(self) -> CollectionInfo | None:
        """The collection's figures (None if it does not exist)."""

    @abstractmethod
    def collection_spec(self) -> CollectionSpec | None:
        """The collection's dense size and distance and its sparse vectors (None: it does not
        exist or has no default dense vector)."""

    @abstractmethod
    def flush(self) -> None:
        """Barrier: when it returns, everything sent before is durable and searchable."""

    def barrier(self) -> bool:
        """`flush` that need not wait out an outage: True when everything sent before is
        durable and searchable, False when some of it is held back (a sink that spools while
        its server is unreachable) and will be sent later; `flush` then waits for it."""
        self.flush()
        return True

    @abstractmethod
    def close(self) -> None:
        """Flush and release the connection or the shard."""

    def query_batch(self, requests: Sequence[QueryRequest]) -> list[list[ScoredPoint]]:
        """Run several searches at once; one list of hits (best first) per request."""
        raise NotImplementedError(f"{type(self).__name__} does not support search")

    def __enter__(self) -> Sink:
        return self

    def abandon(self) -> None:
        """Let go after a failed run without waiting for what is in flight or spooled: the
        state committed none of it, so the next run plans and sends it again."""
        self.close()

    def __exit__(self, *exc: object) -> None:
        self.close()
