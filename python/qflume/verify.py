"""`verify`: reconcile the state with the collection (missing, orphan and stale points), and
with ``repair`` fix what is found; after a damaged state was set aside, rebuild it from the
collection's payloads first."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from qflume import payload
from qflume.ids import point_id, split_hashes
from qflume.stages.batch import RECOVERED_ROOT
from qflume.state import DocUpdate

if TYPE_CHECKING:
    from qflume.collection import Collection

__all__ = ["rebuild_state", "verify"]


def verify(col: Collection, *, repair: bool = False) -> dict[str, Any]:
    """Reconcile the state with the collection: missing, orphan and stale points. With
    ``repair`` after a damaged state was set aside (``recover_state``), the state is first
    rebuilt from the collection's payloads."""
    rebuilt = None
    if repair and col.recovered_from is not None:
        rebuilt = rebuild_state(col)
    expected: dict[str, tuple[str, bytes]] = {}
    for doc in col.state.iter_all():
        for h in split_hashes(doc.chunks):
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
        got = payload.chunk_fields(rec.payload)
        if got is None or (got.source, got.content_hash) != expected[pid]:
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
    chunks: dict[str, dict[bytes, tuple[int, int, int]]] = {}
    metas: dict[str, str] = {}
    for rec in col.sink.scroll(with_payload=True):
        got = payload.chunk_fields(rec.payload)
        if got is None or got.place is None:
            continue  # not a qflume point: verify reports it as an orphan
        key = got.source
        chunks.setdefault(key, {})[got.content_hash] = got.place
        if key not in metas:
            doc_meta = payload.document_metadata(payload.metadata_of(rec.payload))
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
