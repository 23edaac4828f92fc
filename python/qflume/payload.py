"""The payload layout of a qflume point, written once: field names, the fields qflume manages,
building a chunk's payload and reading one back.

A chunk's payload is LangChain's Qdrant layout::

    {"page_content": <the chunk's text>,
     "metadata": {**<its document's metadata: source, ...>, **<its page/heading keys>,
                  "chunk_index": j, "start": s, "end": e, "content_hash": "<32 hex digits>"}}

The Rust packer (rust/core/pack.rs) writes the same layout straight into protobuf; its key list
is exposed as ``_core.PAYLOAD_KEYS`` / ``_core.CHUNK_KEYS`` and tests/test_payload.py checks that
it matches this module. Per-chunk keys win over a document's own keys of the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from qflume.exceptions import ShapeError
from qflume.ids import HASH_LEN
from qflume.readers.meta import KEYS as STRUCTURE_KEYS

__all__ = [
    "CHUNK_KEYS",
    "CONTENT_HASH",
    "MANAGED_FIELDS",
    "METADATA",
    "PER_CHUNK_KEYS",
    "SOURCE",
    "SOURCE_FIELD",
    "STRUCTURE_KEYS",
    "TEXT",
    "ChunkFields",
    "chunk_fields",
    "chunk_metadata",
    "chunk_payload",
    "columns_payloads",
    "document_metadata",
    "field",
    "managed_field",
    "metadata_of",
    "moved_fields",
    "source_of",
    "text_of",
]

#: Top-level keys: the chunk's text and its metadata object.
TEXT: Final = "page_content"
METADATA: Final = "metadata"
#: Metadata keys: the document key (the file's path under its root, or a record's id), and the
#: keys the packer writes for every chunk, in the order it writes them.
SOURCE: Final = "source"
CHUNK_INDEX: Final = "chunk_index"
START: Final = "start"
END: Final = "end"
CONTENT_HASH: Final = "content_hash"
CHUNK_KEYS: Final = (CHUNK_INDEX, START, END, CONTENT_HASH)
#: Every metadata key that belongs to one chunk rather than to its document (the structure keys
#: come from readers.meta: page, page_start, page_end, heading).
PER_CHUNK_KEYS: Final = (*CHUNK_KEYS, *STRUCTURE_KEYS)


def field(key: str) -> str:
    """The payload path of metadata key ``key`` (``"metadata.<key>"``), as filters name it."""
    return f"{METADATA}.{key}"


SOURCE_FIELD: Final = field(SOURCE)
#: Payload fields qflume owns (the sync contract): payload updates may not write them.
MANAGED_FIELDS: Final = (TEXT, SOURCE_FIELD, *(field(k) for k in CHUNK_KEYS))


def managed_field(path: str) -> str | None:
    """The managed field ``path`` is or lies under (None: a field users may write)."""
    for m in MANAGED_FIELDS:
        if path == m or path.startswith(m + "."):
            return m
    return None


# --- building ------------------------------------------------------------------------------------


def chunk_metadata(
    doc: Mapping[str, Any],
    chunk: Mapping[str, Any] | None,
    chunk_index: int,
    start: int,
    end: int,
    chunk_hash: bytes | str,
) -> dict[str, Any]:
    """A chunk's metadata: its document's, its own page/heading keys, then its place and hash
    (``chunk_hash``: 16 bytes or their 32 hex digits)."""
    meta = dict(doc)
    if chunk:
        meta.update(chunk)
    meta[CHUNK_INDEX] = int(chunk_index)
    meta[START] = int(start)
    meta[END] = int(end)
    meta[CONTENT_HASH] = chunk_hash if isinstance(chunk_hash, str) else bytes(chunk_hash).hex()
    return meta


def chunk_payload(text: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of a chunk with ``text`` and ``metadata`` (see chunk_metadata)."""
    return {TEXT: text, METADATA: dict(metadata)}


def moved_fields(chunk_index: int, start: int, end: int) -> dict[str, Any]:
    """The metadata fields that change when a chunk's text stays but its place moves (merged
    under METADATA)."""
    return {CHUNK_INDEX: int(chunk_index), START: int(start), END: int(end)}


def _column(a: Any, name: str, n: int) -> list[int]:
    if a is None:
        raise ShapeError(f"PointBatch with texts needs {name} (one per point)")
    arr = np.asarray(a)
    if arr.shape != (n,):
        raise ShapeError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ShapeError(f"{name} must hold integers, got {arr.dtype}")
    out: list[int] = arr.astype(np.int64, copy=False).tolist()
    return out


def columns_payloads(
    texts: Sequence[str],
    doc_index: npt.ArrayLike | None,
    doc_metadata: Sequence[Mapping[str, Any]] | None,
    chunk_index: npt.ArrayLike | None,
    start: npt.ArrayLike | None,
    end: npt.ArrayLike | None,
    chunk_hash: npt.NDArray[np.uint8] | None,
    chunk_metadata_list: Sequence[Mapping[str, Any]] | None = None,
    chunk_meta_index: npt.ArrayLike | None = None,
) -> Callable[[int], dict[str, Any]]:
    """``payload_of(i)`` for the columnar chunk form (a PointBatch's texts and columns), for
    sinks that need one Python payload per point. The columns are checked and converted once."""
    n = len(texts)
    if doc_metadata is None:
        raise ShapeError("PointBatch with texts needs doc_metadata and doc_index")
    docs = [dict(m) for m in doc_metadata]
    di = _column(doc_index, "doc_index", n)
    if any(not 0 <= d < len(docs) for d in di):
        raise ShapeError(f"doc_index must index doc_metadata (0 <= i < {len(docs)})")
    ci = _column(chunk_index, "chunk_index", n)
    st = _column(start, "start", n)
    en = _column(end, "end", n)
    if chunk_hash is None:
        raise ShapeError("PointBatch with texts needs chunk_hash (one per point)")
    hashes = np.ascontiguousarray(chunk_hash, dtype=np.uint8)
    if hashes.shape != (n, HASH_LEN):
        raise ShapeError(f"chunk_hash must have shape ({n}, {HASH_LEN}), got {hashes.shape}")
    hx = hashes.tobytes().hex()
    extra = list(chunk_metadata_list or ())
    ei = _column(chunk_meta_index, "chunk_meta_index", n) if extra else None
    if ei is not None and any(not -1 <= m < len(extra) for m in ei):
        raise ShapeError(f"chunk_meta_index must be -1 or index chunk_metadata (< {len(extra)})")

    w = 2 * HASH_LEN  # hex digits per hash

    def payload_of(i: int) -> dict[str, Any]:
        own = extra[ei[i]] if ei is not None and ei[i] >= 0 else None
        meta = chunk_metadata(docs[di[i]], own, ci[i], st[i], en[i], hx[w * i : w * (i + 1)])
        return {TEXT: texts[i], METADATA: meta}

    return payload_of


# --- reading -------------------------------------------------------------------------------------


def text_of(payload: Mapping[str, Any] | None) -> str | None:
    """The chunk's text (None: the payload has none)."""
    v = (payload or {}).get(TEXT)
    return v if isinstance(v, str) else None


def metadata_of(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    """The chunk's metadata object (empty when the payload has none)."""
    v = (payload or {}).get(METADATA)
    return dict(v) if isinstance(v, Mapping) else {}


def source_of(payload: Mapping[str, Any] | None) -> str | None:
    """The document key the point belongs to (None: not a qflume point)."""
    v = metadata_of(payload).get(SOURCE)
    return v if isinstance(v, str) else None


def document_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A chunk's metadata without the per-chunk keys: what its document's metadata was."""
    return {k: v for k, v in metadata.items() if k not in PER_CHUNK_KEYS}


@dataclass(frozen=True)
class ChunkFields:
    """What a qflume point's payload says about its chunk."""

    source: str
    content_hash: bytes  # 16 bytes
    chunk_index: int | None
    start: int | None
    end: int | None

    @property
    def place(self) -> tuple[int, int, int] | None:
        """(chunk_index, start, end), or None when the payload lacks one of them."""
        if self.chunk_index is None or self.start is None or self.end is None:
            return None
        return self.chunk_index, self.start, self.end


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def chunk_fields(payload: Mapping[str, Any] | None) -> ChunkFields | None:
    """The chunk a payload describes, or None when it is not a qflume point (no source, or no
    content hash of 32 hex digits)."""
    meta = metadata_of(payload)
    src, h = meta.get(SOURCE), meta.get(CONTENT_HASH)
    if not isinstance(src, str) or not isinstance(h, str) or len(h) != 2 * HASH_LEN:
        return None
    try:
        digest = bytes.fromhex(h)
    except ValueError:
        return None
    return ChunkFields(
        source=src,
        content_hash=digest,
        chunk_index=_int(meta.get(CHUNK_INDEX)),
        start=_int(meta.get(START)),
        end=_int(meta.get(END)),
    )
