"""The work items passed between the stages: columnar batches of chunks.

A `Doc` is a document that needs work; `DocDiff` diffs its new chunks against its state row
(in Rust: `qflume._core.DocDiffer`) block by block; the result is its `DocPlan` (what to commit,
what was lost, moved or restated). A `Batch` carries the chunks to send of one or more
documents as numpy arrays (hashes, ids, offsets, chunk indices) plus their texts, and later
their dense and sparse vectors: no per-chunk Python objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from qflume._core import DocDiffer
from qflume.ids import HASH_LEN, id_strings, point_id, point_ids
from qflume.payload import chunk_metadata, moved_fields
from qflume.readers.meta import ChunkMeta
from qflume.sinks.base import SparseBatch
from qflume.state import DocState, DocUpdate

__all__ = [
    "RECORDS_ROOT",
    "RECOVERED_ROOT",
    "Batch",
    "Doc",
    "DocDiff",
    "DocPlan",
    "doc_of",
    "empty_batch",
]

#: The root of documents ingested as records (their keys are the records' ids).
RECORDS_ROOT = "<records>"
#: The root of documents rebuilt from the collection after a damaged state: the next ingest of
#: their folder (or records) takes them over.
RECOVERED_ROOT = "<recovered>"


@dataclass
class Doc:
    """A document that needs work (new, changed, re-fingerprinted or repaired)."""

    key: str
    root: str
    content_hash: bytes
    size: int
    mtime_ns: int
    meta: dict[str, Any]
    meta_json: str
    prev: DocState | None
    text: str | None = None
    path: str | None = None
    #: Its reader (a built-in kind or a plug-in), None for plain text.
    reader: Any = None
    #: Set by the read-ahead: the structure its chunks' pages and headings come from, where
    #: chunking segments start (chunks never cross one), and for a large PDF its page count.
    structure: ChunkMeta | None = None
    segments: list[int] | None = None
    pages_total: int = 0


@dataclass
class DocPlan:
    doc: Doc
    update: DocUpdate | None  # None: nothing to commit (the document was abandoned)
    upsert_hashes: bytes  # concatenated hashes that are (re)sent
    lost_ids: list[str]  # point ids of chunks the document no longer has
    moved: list[tuple[str, dict[str, int]]]  # kept chunks whose offsets changed: (id, fields)
    #: Kept chunks whose page or heading changed: (id, the chunk's whole new metadata).
    restated: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class DocDiff:
    """One document's new chunks against its state row, block by block (the work is done in
    Rust: `qflume._core.DocDiffer`): which to (re)send, which kept chunks moved (a payload
    update), which were restated (same text, other page or heading), and at the end which are
    lost (deleted). It holds ~60 bytes per distinct chunk (its hash, row and index entry), so a
    document streamed block by block stays small whatever its size."""

    def __init__(self, d: Doc, fp: str, *, streamed: bool = False) -> None:
        prev = d.prev
        self.doc = d
        self.streamed = streamed  # written ahead block by block: no upsert list kept
        self.fp = fp
        resend_all = prev is None or prev.fingerprint != fp or prev.meta_json != d.meta_json
        self._diff = DocDiffer(
            bytes(prev.chunks) if prev else b"",
            bytes(prev.offsets) if prev else b"",
            bytes(prev.chunk_meta) if prev else b"",
            bytes(prev.pending) if prev else b"",
            resend_all,
        )
        self.upsert = bytearray()
        self.plan = DocPlan(d, None, b"", [], [])
        self._count = -1  # set when finished

    @property
    def count(self) -> int:
        """Distinct chunks taken."""
        return self._count if self._count >= 0 else self._diff.count()

    def take(
        self,
        hashes: npt.NDArray[np.uint8],
        offsets: npt.NDArray[np.int64],
        j0: int = 0,
        digests: Sequence[bytes] | None = None,
        metas: Sequence[dict[str, Any]] | None = None,
        meta_index: npt.NDArray[np.int64] | None = None,
    ) -> npt.NDArray[np.int64]:
        """The next block of the document's chunks: (k, 16) ``hashes`` at ``offsets`` (k, 2),
        the first being chunk ``j0``, with their page/heading ``digests`` (8 bytes each) and
        metadata (``metas[meta_index[i]]``, -1: none). Returns the rows to send; records the
        moved and the restated ones (Python work only for those)."""
        hashes = np.ascontiguousarray(hashes, np.uint8)
        offsets = np.ascontiguousarray(offsets, np.int64)
        dg = None if digests is None else b"".join(digests)
        send, moved, restated = self._diff.take(hashes, offsets, j0, dg)
        if not self.streamed and len(send):
            self.upsert += hashes[send].tobytes()
        key, meta = self.doc.key, self.doc.meta
        for i in restated.tolist():  # same text, another page or heading: metadata restated
            h = hashes[i].tobytes()
            m = -1 if meta_index is None else int(meta_index[i])
            extra = metas[m] if metas is not None and m >= 0 else None
            full = chunk_metadata(meta, extra, j0 + i, offsets[i, 0], offsets[i, 1], h)
            self.plan.restated.append((point_id(key, h), full))
        for i in moved.tolist():
            fields = moved_fields(j0 + i, offsets[i, 0], offsets[i, 1])
            self.plan.moved.append((point_id(key, hashes[i].tobytes()), fields))
        return send

    def finish(self) -> DocPlan:
        d = self.doc
        self._count = self._diff.count()
        chunks, rows, chunk_meta, lost = self._diff.finish()
        self.plan.lost_ids = _ids_of(d.key, lost)
        self.plan.upsert_hashes = bytes(self.upsert)
        self.upsert = bytearray()
        self.plan.update = DocUpdate(
            key=d.key,
            root=d.root,
            content_hash=d.content_hash,
            size=d.size,
            mtime_ns=d.mtime_ns,
            meta_json=d.meta_json,
            fingerprint=self.fp,
            chunks=chunks,
            offsets=rows,
            chunk_meta=chunk_meta,
        )
        return self.plan

    def abandon(self) -> None:
        """The document could not be read to its end: take back what was sent of it (points
        that were not in its committed version) and keep its state row as it was."""
        self.plan.lost_ids = _ids_of(self.doc.key, self._diff.uncommitted())
        self.plan.moved = []
        self.plan.restated = []
        self.plan.update = None


@dataclass
class Batch:
    plans: list[DocPlan]
    texts: list[str]
    hashes: npt.NDArray[np.uint8]  # (n, 16)
    ids: npt.NDArray[np.uint8]  # (n, 16)
    doc_index: npt.NDArray[np.int64]
    chunk_index: npt.NDArray[np.int64]
    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    deleted: list[tuple[str, list[str]]] = field(default_factory=list)  # (key, point ids)
    dense: npt.NDArray[np.float32] | None = None
    sparse: dict[str, SparseBatch] | None = None
    #: False for all but the last slice of a batch cut into slices (a large document): only the
    #: last deletes lost chunks, updates moved offsets and commits the plans.
    final: bool = True
    first: bool = True
    #: A write-ahead to record before this batch is sent (a streamed document's blocks carry
    #: their own); None: the plans' upsert hashes, with the first slice.
    ahead: dict[str, tuple[str, bytes]] | None = None
    #: Per-chunk metadata (pages, headings): the distinct dicts and each chunk's index into
    #: them (-1: none); None when no chunk has any.
    extra_meta: list[dict[str, Any]] = field(default_factory=list)
    extra_index: npt.NDArray[np.int64] | None = None

    def slices(self, rows: int) -> Iterator[Batch]:
        """This batch as consecutive slices of at most ``rows`` chunks, so that one large
        document never holds all its texts, vectors and packed requests in flight at once."""
        n = len(self.texts)
        if n <= rows:
            yield self
            return
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            yield Batch(
                plans=self.plans,
                texts=self.texts[lo:hi],
                hashes=self.hashes[lo:hi],
                ids=self.ids[lo:hi],
                doc_index=self.doc_index[lo:hi],
                chunk_index=self.chunk_index[lo:hi],
                start=self.start[lo:hi],
                end=self.end[lo:hi],
                deleted=self.deleted if hi == n else [],
                final=hi == n,
                first=lo == 0,
                extra_meta=self.extra_meta,
                extra_index=None if self.extra_index is None else self.extra_index[lo:hi],
            )


def empty_batch() -> Batch:
    z = np.zeros(0, np.int64)
    h = np.zeros((0, HASH_LEN), np.uint8)
    return Batch([], [], h, h, z, z, z, z)


def _ids_of(key: str, hashes: npt.NDArray[np.uint8]) -> list[str]:
    """The point ids (UUID text) of document ``key``'s chunks of (k, 16) ``hashes``, at once."""
    if not len(hashes):
        return []
    return id_strings(point_ids(key, np.ascontiguousarray(hashes, np.uint8)))


def doc_of(indptr: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Document index of each flat chunk row."""
    return np.searchsorted(indptr, rows, side="right") - 1
