"""The embedded default sink: a Qdrant Edge shard (the Qdrant engine in process) at STORE/<collection>.

No server: points go straight into the shard's segments. `flush()` makes them durable; big loads
are followed by `optimize()` (Edge has no background optimizer: indexing runs when asked for).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import qdrant_edge as qe

from qflume import payload as layout
from qflume._validate import metadata_problem
from qflume.exceptions import (
    InvalidInputError,
    QflumeIOError,
    RustPanicError,
    ShapeError,
    SinkError,
    is_rust_panic,
)
from qflume.filters import FILTER_KEYS, native_filter
from qflume.ids import id_strings
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
    check_fusion,
)

__all__ = ["EdgeSink", "edge_filter", "ids_to_strings", "read_pointer", "write_pointer"]

SPEC_FILE = "qflume_collection.json"  # the CollectionSpec, beside Edge's own edge_config.json
_EDGE_CONFIG = "edge_config.json"
#: ``STORE/<collection>.version``: which shard folder a versioned collection's live version is
#: (qflume.versions), swapped by write + rename; without it the folder is ``STORE/<collection>``.
POINTER_SUFFIX = ".version"
#: How long opening a shard waits while another process has it open (Edge admits one).
OPEN_WAIT_S = 30.0
_DISTANCES = {
    "cosine": qe.Distance.Cosine,
    "dot": qe.Distance.Dot,
    "euclid": qe.Distance.Euclid,
    "manhattan": qe.Distance.Manhattan,
}
_CHUNK = 2048  # points per update operation: bounds the Python objects alive at once
_RRF_K = 2  # Qdrant's default k for reciprocal rank fusion


def pointer_path(root: str | os.PathLike[str], collection: str) -> Path:
    return Path(root) / f"{collection}{POINTER_SUFFIX}"


def read_pointer(root: str | os.PathLike[str], collection: str) -> tuple[str, int] | None:
    """(shard folder name, version) the pointer of ``collection`` names, or None without one."""
    path = pointer_path(root, collection)
    try:
        data = json.loads(path.read_text("utf-8"))
        name, version = str(data["collection"]), int(data["version"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SinkError(f"{path}: not a readable version pointer ({e}); `qflume gc -c "
                        f"{collection}` rewrites it from the state") from None  # fmt: skip
    if not name or os.sep in name or name in (".", "..") or name.startswith("."):
        raise SinkError(f"{path}: names {name!r}, which is not a shard folder of this store")
    return name, version


def write_pointer(root: str | os.PathLike[str], collection: str, name: str, version: int) -> None:
    """Point ``collection`` at the shard folder ``name`` (atomically: write, fsync, rename)."""
    path = pointer_path(root, collection)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"collection": name, "version": version}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise QflumeIOError(f"cannot write the version pointer {path}: {e}") from e


def _load_shard(path: Path, wait: float) -> Any:
    """Open the shard at ``path``, waiting up to ``wait`` s while another process has it open."""
    deadline = time.monotonic() + wait
    delay = 0.005
    while True:
        try:
            return qe.EdgeShard.load(str(path))
        except Exception as e:
            if "WouldBlock" not in str(e) or time.monotonic() >= deadline:
                if "WouldBlock" in str(e):
                    raise SinkError(
                        f"the Qdrant Edge shard at {path} stayed open in another process (a "
                        f"search, status, ingest or reindex) for {wait:.0f} s; try again when "
                        "it is done"
                    ) from e
                raise SinkError(f"cannot open the Qdrant Edge shard at {path}: {e}") from e
            time.sleep(delay)
            delay = min(0.1, delay * 2)


#: UUID text of qflume ids (kept under this name for callers of the embedded sink).
ids_to_strings = id_strings


# --- filters: the canonical JSON layout (qflume.filters) -> Qdrant Edge objects ------------------

_MATCHES: dict[str, Any] = {
    "value": qe.MatchValue,
    "any": qe.MatchAny,
    "except": qe.MatchExcept,
    "text": qe.MatchText,
    "text_any": qe.MatchTextAny,
    "phrase": qe.MatchPhrase,
    "prefix": qe.MatchPrefix,
    "substring": qe.MatchSubstring,
}


def _geo(p: Mapping[str, float]) -> qe.GeoPoint:
    return qe.GeoPoint(lon=p["lon"], lat=p["lat"])


def _ring(r: Mapping[str, Any]) -> list[qe.GeoPoint]:
    return [_geo(p) for p in r["points"]]


def _field(c: Mapping[str, Any]) -> qe.FieldCondition:
    kw: dict[str, Any] = {}
    if "match" in c:
        ((kind, v),) = c["match"].items()
        kw["match"] = _MATCHES[kind](v)
    if "range" in c:
        r = c["range"]
        dated = any(isinstance(v, str) for v in r.values())
        kw["range"] = qe.RangeDateTime(**r) if dated else qe.RangeFloat(**r)
    if "values_count" in c:
        kw["values_count"] = qe.ValuesCount(**c["values_count"])
    if "geo_bounding_box" in c:
        b = c["geo_bounding_box"]
        kw["geo_bounding_box"] = qe.GeoBoundingBox(_geo(b["top_left"]), _geo(b["bottom_right"]))
    if "geo_radius" in c:
        g = c["geo_radius"]
        kw["geo_radius"] = qe.GeoRadius(_geo(g["center"]), g["radius"])
    if "geo_polygon" in c:
        g = c["geo_polygon"]
        interiors = [_ring(r) for r in g.get("interiors", ())] or None
        kw["geo_polygon"] = qe.GeoPolygon(_ring(g["exterior"]), interiors)
    for name in ("is_empty", "is_null"):
        if name in c:
            kw[name] = c[name]
    return qe.FieldCondition(key=c["key"], **kw)


def _condition(c: Mapping[str, Any]) -> Any:
    if any(k in c for k in FILTER_KEYS):
        return _to_edge(c)
    if "key" in c:
        return _field(c)
    if "is_empty" in c:
        return qe.IsEmptyCondition(c["is_empty"]["key"])
    if "is_null" in c:
        return qe.IsNullCondition(c["is_null"]["key"])
    if "has_id" in c:
        return qe.HasIdCondition(set(c["has_id"]))
    if "has_vector" in c:
        return qe.HasVectorCondition(c["has_vector"])
    n = c["nested"]
    return qe.NestedCondition(n["key"], _to_edge(n["filter"]))


def _to_edge(f: Mapping[str, Any]) -> qe.Filter:
    def conds(name: str) -> list[Any] | None:
        v = f.get(name)
        return None if v is None else [_condition(c) for c in v]

    ms = f.get("min_should")
    return qe.Filter(
        must=conds("must"),
        should=conds("should"),
        must_not=conds("must_not"),
        min_should=None
        if ms is None
        else qe.MinShould([_condition(c) for c in ms["conditions"]], ms["min_count"]),
    )


def edge_filter(f: Any) -> qe.Filter | None:
    """A Qdrant Edge filter from Qdrant's JSON layout or a qdrant_client ``models.Filter``
    (validated by `qflume.filters.normalize`, as every sink does), or a ``qe.Filter`` as is."""
    return native_filter(f, qe.Filter, _to_edge)


def _sources_filter(sources: Sequence[str]) -> qe.Filter:
    return qe.Filter(
        must=[
            qe.FieldCondition(key=layout.SOURCE_FIELD, match=qe.MatchAny([str(s) for s in sources]))
        ]
    )


# --- the sink -----------------------------------------------------------------------------------


def _spec_json(spec: CollectionSpec) -> dict[str, Any]:
    return {
        "dim": spec.dim,
        "distance": spec.distance,
        "sparse": list(spec.sparse),
        "idf_sparse": list(spec.idf_sparse),
    }


def _distance(name: str) -> qe.Distance:
    d = _DISTANCES.get(name.lower())
    if d is None:
        raise InvalidInputError(
            f"distance {name!r} is not one of Cosine, Dot, Euclid, Manhattan (CollectionSpec)"
        )
    return d


class EdgeSink(Sink):
    """A collection stored as a Qdrant Edge shard in `path/collection`.

    The shard is opened if it exists; otherwise `ensure_collection(spec)` (or `spec=` here) creates
    it. Edge has no background optimizer: points are searchable at once (unindexed), and indexing
    runs when `optimize()` is called. `flush()` and `close()` call it once `optimize_threshold`
    points were written since the last optimization (a big load); Edge then does whatever its
    optimizers plan (nothing for small segments). Indexing costs about 1 s per 1K 384-d points
    on 2 cores, hence the high default; None turns automatic optimization off.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        collection: str,
        *,
        spec: CollectionSpec | None = None,
        optimize_threshold: int | None = 50_000,
        follow_pointer: bool = True,
        open_wait: float = OPEN_WAIT_S,
    ) -> None:
        if not collection or os.sep in collection or collection in (".", ".."):
            raise InvalidInputError(f"collection name {collection!r} cannot be a directory name")
        self.collection = collection
        self.root = Path(path)
        # A versioned collection's live version is the shard folder its pointer names.
        pointed = read_pointer(self.root, collection) if follow_pointer else None
        self.path = self.root / (pointed[0] if pointed else collection)
        self.optimize_threshold = optimize_threshold
        self._shard: Any = None  # a _PanicGuard over qe.EdgeShard
        self._spec: CollectionSpec | None = None
        self._written = 0  # points written since the last optimization
        self._closed = False
        #: the shard folder ensure_collection created (None: it was there)
        self.created: str | None = None
        if (self.path / _EDGE_CONFIG).exists():
            self._shard = _PanicGuard(_load_shard(self.path, open_wait), self.path)
            self._spec = self._stored_spec()
        if spec is not None:
            self.ensure_collection(spec)

    # --- collection -------------------------------------------------------------------------

    def _stored_spec(self) -> CollectionSpec | None:
        """The spec written at creation, or one read back from Edge's own config."""
        try:
            data = json.loads((self.path / SPEC_FILE).read_text("utf-8"))
            return CollectionSpec(
                dim=int(data["dim"]),
                distance=str(data["distance"]),
                sparse=tuple(data.get("sparse", ())),
                idf_sparse=tuple(data.get("idf_sparse", ("bm25",))),
            )
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            cfg = json.loads((self.path / _EDGE_CONFIG).read_text("utf-8"))
            dense = (cfg.get("vectors") or {}).get("")
            if not dense:
                return None
            sparse = cfg.get("sparse_vectors") or {}
            return CollectionSpec(
                dim=int(dense["size"]),
                distance=str(dense.get("distance", "Cosine")),
                sparse=tuple(sparse),
                idf_sparse=tuple(
                    k for k, v in sparse.items() if (v or {}).get("modifier") == "idf"
                ),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _write_spec(self, spec: CollectionSpec) -> None:
        try:
            tmp = self.path / (SPEC_FILE + ".tmp")
            tmp.write_text(json.dumps(_spec_json(spec)), "utf-8")
            tmp.replace(self.path / SPEC_FILE)
        except OSError as e:
            raise QflumeIOError(f"cannot write {self.path / SPEC_FILE}: {e}") from e

    @property
    def spec(self) -> CollectionSpec | None:
        """The collection's spec, or None while it does not exist."""
        return self._spec

    def ensure_collection(self, spec: CollectionSpec) -> None:
        self._check_open()
        distance = _distance(spec.distance)
        if spec.dim < 1:
            raise InvalidInputError(f"CollectionSpec.dim must be >= 1, got {spec.dim}")
        if self._shard is None:
            config = qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=spec.dim, distance=distance),
                sparse_vectors={
                    name: qe.EdgeSparseVectorParams(
                        modifier=qe.Modifier.Idf if name in spec.idf_sparse else None
                    )
                    for name in spec.sparse
                }
                or None,
            )
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                self._shard = _PanicGuard(qe.EdgeShard.create(str(self.path), config), self.path)
            except OSError as e:
                raise QflumeIOError(
                    f"cannot create the Qdrant Edge shard at {self.path}: {e}"
                ) from e
            except Exception as e:
                raise SinkError(f"cannot create the Qdrant Edge shard at {self.path}: {e}") from e
            self._spec = spec
            self._write_spec(spec)
            self.created = self.path.name
            return
        have = self._spec
        if have is None:
            raise ShapeError(
                f"collection {self.collection!r} at {self.path} has no default dense vector; "
                f"qflume needs one of size {spec.dim}: use another collection name"
            )
        if have.dim != spec.dim:
            raise ShapeError(
                f"collection {self.collection!r} at {self.path} holds vectors of size {have.dim}, "
                f"but the embedder makes vectors of size {spec.dim}: use another collection or "
                "the model it was built with"
            )
        if have.distance.lower() != spec.distance.lower():
            raise ShapeError(
                f"collection {self.collection!r} at {self.path} uses distance {have.distance}, "
                f"but {spec.distance} was asked for"
            )
        missing = [n for n in spec.sparse if n not in have.sparse]
        for name in missing:
            modifier = qe.Modifier.Idf if name in spec.idf_sparse else None
            self._update(qe.UpdateOperation.create_sparse_vector(name, modifier=modifier))
        if missing:
            self._spec = CollectionSpec(
                dim=have.dim,
                distance=have.distance,
                sparse=(*have.sparse, *missing),
                idf_sparse=(*have.idf_sparse, *(n for n in missing if n in spec.idf_sparse)),
            )
            self._write_spec(self._spec)

    # --- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SinkError(f"EdgeSink({self.path}) is closed")

    def _need_shard(self) -> Any:
        self._check_open()
        if self._shard is None:
            raise SinkError(
                f"collection {self.collection!r} does not exist at {self.path}: "
                "call ensure_collection(spec) first"
            )
        return self._shard

    def _update(self, op: qe.UpdateOperation) -> None:
        shard = self._need_shard()
        try:
            shard.update(op)
        except Exception as e:
            msg = str(e)
            if "dimension" in msg.lower():
                raise ShapeError(f"collection {self.collection!r} at {self.path}: {msg}") from e
            raise SinkError(f"Qdrant Edge update failed on {self.path}: {msg}") from e

    def _check_dense(self, dense: npt.NDArray[np.float32] | None, n: int) -> Any:
        if dense is None:
            return None
        arr = np.asarray(dense)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ShapeError(f"dense: expected shape ({n}, dim), got {arr.shape}")
        if self._spec is not None and arr.shape[1] != self._spec.dim:
            raise ShapeError(
                f"dense vectors have size {arr.shape[1]}, but collection {self.collection!r} "
                f"at {self.path} holds vectors of size {self._spec.dim}"
            )
        return arr

    def _write(
        self,
        ids: list[str],
        dense: Any,
        sparse: Mapping[str, SparseBatch] | None,
        payload_of: Any,
    ) -> None:
        n = len(ids)
        sparse = dict(sparse or {})
        for name, sb in sparse.items():
            if len(sb) != n:
                raise ShapeError(f"sparse[{name!r}]: {len(sb)} vectors for {n} ids")
            if self._spec is not None and name not in self._spec.sparse:
                raise ShapeError(
                    f"sparse vector {name!r} is not configured in collection {self.collection!r}"
                    f" (it has {list(self._spec.sparse)}): add it to the CollectionSpec"
                )
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            rows = (
                dense[lo:hi].astype(np.float32, copy=False).tolist() if dense is not None else None
            )
            points = []
            for i in range(lo, hi):
                vec: Any
                if sparse:
                    vec = {} if rows is None else {"": rows[i - lo]}
                    for name, sb in sparse.items():
                        a, b = int(sb.indptr[i]), int(sb.indptr[i + 1])
                        vec[name] = qe.SparseVector(
                            sb.indices[a:b].tolist(), sb.values[a:b].tolist()
                        )
                else:
                    vec = rows[i - lo] if rows is not None else {}
                points.append(qe.Point(ids[i], vec, payload_of(i)))
            self._update(qe.UpdateOperation.upsert_points(points))
        self._written += n

    # --- writes -------------------------------------------------------------------------------

    def upsert(
        self,
        ids: Ids,
        dense: npt.NDArray[np.float32] | None,
        payloads: Sequence[Mapping[str, Any]],
        sparse: Mapping[str, SparseBatch] | None = None,
    ) -> None:
        self._need_shard()
        sids: list[Any] = id_strings(ids)
        if len(payloads) != len(sids):
            raise ShapeError(f"payloads: {len(payloads)} payloads for {len(sids)} ids")
        arr = self._check_dense(dense, len(sids))
        _check_payloads(payloads)
        self._write(sids, arr, sparse, lambda i: dict(payloads[i]))

    def upsert_batch(self, batch: PointBatch) -> None:
        self._need_shard()
        sids = id_strings(batch.ids)
        arr = self._check_dense(batch.dense, len(sids))
        if batch.payloads is not None:
            if len(batch.payloads) != len(sids):
                raise ShapeError(f"payloads: {len(batch.payloads)} payloads for {len(sids)} ids")
            payloads = batch.payloads
            _check_payloads(payloads)
            self._write(sids, arr, batch.sparse, lambda i: dict(payloads[i]))
            return
        if batch.texts is None:
            raise ShapeError("PointBatch: give payloads, or texts + doc_index + doc_metadata")
        if len(batch.texts) != len(sids):
            raise ShapeError(f"texts: {len(batch.texts)} texts for {len(sids)} ids")
        payload_of = layout.columns_payloads(
            batch.texts,
            batch.doc_index,
            batch.doc_metadata,
            batch.chunk_index,
            batch.start,
            batch.end,
            batch.chunk_hash,
            batch.chunk_metadata,
            batch.chunk_meta_index,
        )
        self._write(sids, arr, batch.sparse, payload_of)

    def delete(self, ids: Ids) -> None:
        self._need_shard()
        sids: list[Any] = id_strings(ids)
        for lo in range(0, len(sids), _CHUNK * 4):
            self._update(qe.UpdateOperation.delete_points(sids[lo : lo + _CHUNK * 4]))

    def delete_by_source(self, sources: Sequence[str]) -> None:
        self._need_shard()
        sources = list(sources)
        for lo in range(0, len(sources), 1024):
            self._update(
                qe.UpdateOperation.delete_points_by_filter(_sources_filter(sources[lo : lo + 1024]))
            )

    def set_payload(self, payload: Mapping[str, Any], ids: Ids, *, key: str | None = None) -> None:
        self._need_shard()
        sids: list[Any] = id_strings(ids)
        for lo in range(0, len(sids), _CHUNK * 4):
            self._update(
                qe.UpdateOperation.set_payload(sids[lo : lo + _CHUNK * 4], dict(payload), key)
            )

    # --- reads --------------------------------------------------------------------------------

    def count(self, filter: Any = None) -> int:
        """Exact number of points (matching `filter`, a Qdrant filter, if given)."""
        self._check_open()
        flt = edge_filter(filter)
        if self._shard is None:
            return 0
        return int(self._shard.count(qe.CountRequest(exact=True, filter=flt)))

    def info(self) -> CollectionInfo | None:
        self._check_open()
        if self._shard is None:
            return None
        from qflume.metrics import disk_bytes

        info = self._shard.info()
        return CollectionInfo(
            points=int(info.points_count),
            indexed_vectors=int(info.indexed_vectors_count),
            segments=int(info.segments_count),
            status="green",  # Edge has no background work that could leave it yellow
            spec=self._spec,
            disk_bytes=disk_bytes(self.path),
        )

    def collection_spec(self) -> CollectionSpec | None:
        self._check_open()
        return self._spec

    def _record(self, r: Any) -> PointRecord:
        vector = None
        sparse = None
        v = r.vector
        if v is not None:
            if isinstance(v, Mapping):
                dense = v.get("")
                sparse = {
                    name: (list(x.indices), list(x.values))
                    for name, x in v.items()
                    if isinstance(x, qe.SparseVector)
                } or None
            else:
                dense = v
            if dense is not None:
                vector = np.asarray(dense, dtype=np.float32)
        return PointRecord(id=str(r.id), payload=r.payload, vector=vector, sparse=sparse)

    def retrieve(self, ids: Ids, *, with_vectors: bool = False) -> list[PointRecord]:
        self._check_open()
        if self._shard is None:
            return []
        sids: list[Any] = id_strings(ids)
        records = self._shard.retrieve(sids, True, with_vectors)
        return [self._record(r) for r in records]

    def scroll(
        self,
        *,
        filter: Any = None,
        with_payload: bool = True,
        with_vectors: bool = False,
        batch: int = 1024,
    ) -> Iterator[PointRecord]:
        self._check_open()
        flt = edge_filter(filter)
        if batch < 1:
            raise InvalidInputError(f"scroll batch must be >= 1, got {batch}")
        if self._shard is None:
            return
        offset: Any = None
        while True:
            records, offset = self._need_shard().scroll(
                qe.ScrollRequest(
                    offset=offset,
                    limit=batch,
                    filter=flt,
                    with_payload=with_payload,
                    with_vector=with_vectors,
                )
            )
            for r in records:
                yield self._record(r)
            if offset is None:
                return

    def _edge_query(self, q: QueryRequest) -> qe.QueryRequest:
        if q.limit < 1:
            raise InvalidInputError(f"QueryRequest.limit must be >= 1, got {q.limit}")
        dense_q = None
        if q.dense is not None:
            vec = np.asarray(q.dense, dtype=np.float32).reshape(-1)
            if self._spec is not None and vec.shape[0] != self._spec.dim:
                raise ShapeError(
                    f"query vector has size {vec.shape[0]}, but collection {self.collection!r} "
                    f"holds vectors of size {self._spec.dim}"
                )
            dense_q = qe.Query.Nearest(vec.tolist())
        sparse_q = None
        if q.sparse is not None:
            name, indices, values = q.sparse
            sparse_q = qe.Query.Nearest(
                qe.SparseVector(np.asarray(indices).tolist(), np.asarray(values).tolist()),
                using=name,
            )
        flt = edge_filter(q.filter)
        common: dict[str, Any] = {
            "limit": q.limit,
            "with_payload": q.with_payload,
            "with_vector": [""] if q.with_vectors else False,
            "score_threshold": q.score_threshold,
        }
        if dense_q is not None and sparse_q is not None:
            per = q.prefetch_limit or 4 * q.limit
            fusion = qe.Fusion.Dbsf() if check_fusion(q) == "dbsf" else qe.Fusion.Rrf(k=_RRF_K)
            return qe.QueryRequest(
                query=fusion,  # type: ignore[arg-type]
                prefetches=[
                    qe.Prefetch(limit=per, query=dense_q, filter=flt),
                    qe.Prefetch(limit=per, query=sparse_q, filter=flt),
                ],
                filter=flt,
                **common,
            )
        query = dense_q if dense_q is not None else sparse_q
        if query is None:
            raise InvalidInputError("QueryRequest needs a dense vector, a sparse vector, or both")
        return qe.QueryRequest(query=query, filter=flt, **common)

    def query_batch(self, requests: Sequence[QueryRequest]) -> list[list[ScoredPoint]]:
        self._check_open()
        if not requests:
            return []
        if self._shard is None:
            return [[] for _ in requests]
        reqs = [self._edge_query(q) for q in requests]
        try:
            results = self._shard.query_batch(qe.QueryBatchRequest(reqs))
        except Exception as e:
            raise SinkError(f"Qdrant Edge query failed on {self.path}: {e}") from e
        out = []
        for hits in results:
            row = []
            for h in hits:
                vec = None
                if h.vector is not None:
                    v = h.vector.get("") if isinstance(h.vector, Mapping) else h.vector
                    vec = None if v is None else np.asarray(v, dtype=np.float32)
                row.append(
                    ScoredPoint(id=str(h.id), score=float(h.score), payload=h.payload, vector=vec)
                )
            out.append(row)
        return out

    # --- lifecycle ----------------------------------------------------------------------------

    def optimize(self) -> bool:
        """Run Edge's optimizers now (merge segments, build indexes); True if anything changed."""
        shard = self._need_shard()
        try:
            changed = bool(shard.optimize())
        except Exception as e:
            raise SinkError(f"Qdrant Edge optimize failed on {self.path}: {e}") from e
        self._written = 0
        return changed

    def flush(self) -> None:
        self._check_open()
        if self._shard is None:
            return
        try:
            self._shard.flush()
        except Exception as e:
            raise SinkError(f"Qdrant Edge flush failed on {self.path}: {e}") from e
        if self.optimize_threshold is not None and self._written >= self.optimize_threshold:
            self.optimize()

    def close(self) -> None:
        if self._closed:
            return
        shard = self._shard
        try:
            if shard is not None:
                shard.flush()
                if self.optimize_threshold is not None and self._written >= self.optimize_threshold:
                    shard.optimize()
                    shard.flush()
        finally:
            self._closed = True
            self._shard = None
            if shard is not None:
                shard.close()

    def __enter__(self) -> EdgeSink:
        return self

    def __repr__(self) -> str:
        return f"EdgeSink({str(self.root)!r}, {self.collection!r})"


def _check_payloads(payloads: Sequence[Mapping[str, Any]]) -> None:
    """Refuses, naming the point, a payload Qdrant Edge would store but never read back
    (nesting past serde's recursion limit bricks the shard) or that JSON cannot hold."""
    for i, payload in enumerate(payloads):
        problem = metadata_problem(payload, where=f"payload of point {i}")
        if problem:
            raise InvalidInputError(problem)


class _PanicGuard:
    """A Qdrant Edge shard whose calls turn a Rust panic into :class:`RustPanicError` naming the
    call and the shard: a PanicException is a BaseException, which no ``except Exception``
    (a job worker, a request handler) would catch."""

    def __init__(self, shard: Any, path: Path) -> None:
        self._inner = shard
        self._where = path

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except BaseException as e:
                if is_rust_panic(e):
                    raise RustPanicError(
                        f"Qdrant Edge panicked in {name}() on the shard at {self._where}: {e}"
                    ) from None
                raise

        return call
