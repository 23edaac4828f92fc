"""`verify`: reconcile the state with the collection (missing, orphan and stale points), and
with ``repair`` fix what is found; after a damaged state was set aside, rebuild it from the
collection's payloads first."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from qflume._core import point_id
from qflume.readers.meta import KEYS as CHUNK_META_KEYS
from qflume.stages.batch import RECOVERED_ROOT
from qflume.state import HASH_LEN, DocUpdate

if TYPE_CHECKING:
    from qflume.collection import Collection

__all__ = ["rebuild_state", "verify"]


def _split_hashes(blob: bytes) -> list[bytes]:
    return [blob[i : i + HASH_LEN] for i in range(0, len(blob), HASH_LEN)]


def verify(col: Collection, *, repair: bool = False) -> dict[str, Any]:
    """Reconcile the state with the collection: missing, orphan and stale points. With
    ``repair`` after a damaged state was set aside (``recover_state``), the state is first
    rebuilt from the collection's payloads."""
    rebuilt = None
    if repair and col.recovered_from is not None:
        rebuilt = rebuild_state(col)
    expected: dict[str, tuple[str, bytes]] = {}
    for doc in col.state.iter_all():
        for h in _split_hashes(doc.chunks):
            expected[point_id(doc.key, h)] = (doc.key, h)
    orphans: list[str] = []
    stale: list[str] = []
    seen: set[str] = set()
    for rec in col.sink.scroll(with_payload=True):
        pid = str(rec.id)
        if pid not in expected:
            orphans.append(pid)
            continue
        seen.add(pid)
        meta = (rec.payload or {}).get("metadata") or {}
        key, h = expected[pid]
        if meta.get("source") != key or meta.get("content_hash") != h.hex():
            stale.append(pid)
    missing = [pid for pid in expected if pid not in seen]
    # documents whose writes are pending (a run stopped, or a repair): the next ingest
    # finishes them; until then the collection is not known to be complete
    stats = col.state.stats()
    pending = stats.pending_documents
    report: dict[str, Any] = {
        "points_expected": len(expected),
        "missing": len(missing),
        "orphans": len(orphans),
        "stale": len(stale),
        "documents_pending": pending,
        # rebuilt from the collection after a damaged state and not seen by an ingest since
        "documents_recovered": stats.by_root.get(RECOVERED_ROOT, 0),
        "ok": not (missing or orphans or stale or pending),
        "repaired": False,
    }
    if rebuilt is not None:
        report["state_rebuilt"] = {
            "documents": rebuilt,
            "damaged_file": str(col.recovered_from),
        }
        report["repaired"] = True
        col.recovered_from = None
    if repair and (missing or orphans or stale):
        if orphans:
            col.sink.delete(orphans)
        # Missing or stale points: the next ingest re-sends every chunk of those documents
        # (cache hits make it cheap) and deletes what they no longer have.
        broken = {expected[p][0] for p in missing + stale}
        if broken:
            col.state.forget_chunks(sorted(broken))
        col.sink.flush()
        report["repaired"] = True
        report["documents_to_rebuild"] = sorted(broken)
    return report


def rebuild_state(col: Collection) -> int:
    """Document rows rebuilt from the points' payloads (source, content_hash, chunk_index,
    start, end). Contents and settings are unknown, so the next ingest re-reads each
    document and re-sends its points (embeddings come from the cache): nothing is lost, and
    what the documents no longer have is deleted then."""
    per_chunk = ("chunk_index", "start", "end", "content_hash", *CHUNK_META_KEYS)
    chunks: dict[str, dict[bytes, tuple[int, int, int]]] = {}
    metas: dict[str, str] = {}
    for rec in col.sink.scroll(with_payload=True):
        meta = (rec.payload or {}).get("metadata") or {}
        key, h = meta.get("source"), meta.get("content_hash")
        if not isinstance(key, str) or not isinstance(h, str) or len(h) != 2 * HASH_LEN:
            continue  # not a qflume point: verify reports it as an orphan
        try:
            row = (int(meta["chunk_index"]), int(meta["start"]), int(meta["end"]))
            digest = bytes.fromhex(h)
        except (KeyError, TypeError, ValueError):
            continue
        chunks.setdefault(key, {})[digest] = row
        if key not in metas:
            doc_meta = {k: v for k, v in meta.items() if k not in per_chunk}
            metas[key] = json.dumps(doc_meta, sort_keys=True, ensure_ascii=False)
    docs = []
    for key in sorted(chunks):
        order = sorted(chunks[key].items(), key=lambda kv: kv[1])
        docs.append(
            DocUpdate(
                key=key,
                root=RECOVERED_ROOT,
                content_hash=None,
                size=-1,
                mtime_ns=0,
                meta_json=metas[key],
                fingerprint="",  # unknown: the next ingest re-sends every point
                chunks=b"".join(h for h, _ in order),
                offsets=np.asarray([r for _, r in order], np.int64).reshape(-1, 3).tobytes(),
            )
        )
    return col.state.restore(docs)
