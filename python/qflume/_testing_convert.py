"""Conversions between Qdrant's gRPC messages (qdrant_client.grpc) and Qdrant Edge objects.

Used by `qflume.testing.QdrantGrpcServer`. Every function raises `UnsupportedRequest` for a message
part the test server does not implement, which the server turns into an INVALID_ARGUMENT status.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import qdrant_edge as qe
from qdrant_client import grpc as qg

from qflume.exceptions import InvalidInputError
from qflume.sinks._common import payload_to_py

DEFAULT_RRF_K = 2  # Qdrant's default k for reciprocal rank fusion


class UnsupportedRequest(InvalidInputError):
    """A request (or part of one) the test server does not implement."""


# --- ids --------------------------------------------------------------------------------------


def point_id_in(pid: qg.PointId) -> int | str:
    kind = pid.WhichOneof("point_id_options")
    if kind == "num":
        return int(pid.num)
    if kind == "uuid":
        return pid.uuid
    raise UnsupportedRequest("a point id must be a number or a UUID")


def point_id_out(pid: Any) -> qg.PointId:
    if isinstance(pid, int):
        return qg.PointId(num=pid)
    return qg.PointId(uuid=str(pid))


def point_id_key(pid: Any) -> int | str:
    """A hashable, comparable form of an Edge id (UUIDs as canonical strings)."""
    return pid if isinstance(pid, int) else str(uuid.UUID(str(pid)))


# --- payload values ---------------------------------------------------------------------------

# gRPC payload -> Python: the same conversion the sinks apply to the replies they read.
payload_in = payload_to_py


def value_out(x: Any, out: qg.Value) -> None:
    """Write the JSON-like value `x` into the protobuf Value `out`."""
    if x is None:
        out.null_value = qg.NullValue.NULL_VALUE
    elif isinstance(x, bool):
        out.bool_value = x
    elif isinstance(x, int):
        out.integer_value = x
    elif isinstance(x, float):
        out.double_value = x
    elif isinstance(x, str):
        out.string_value = x
    elif isinstance(x, Mapping):
        fields = out.struct_value.fields
        out.struct_value.SetInParent()
        for k, item in x.items():
            value_out(item, fields[k])
    elif isinstance(x, (list, tuple)):
        values = out.list_value.values
        out.list_value.SetInParent()
        for item in x:
            value_out(item, values.add())
    else:
        out.string_value = str(x)


def payload_out(payload: Mapping[str, Any] | None, target: Any) -> None:
    """Fill a protobuf `map<string, Value>` field from a payload dict."""
    if not payload:
        return
    for k, x in payload.items():
        value_out(x, target[k])


# --- vectors ----------------------------------------------------------------------------------


def _dense_in(d: qg.DenseVector) -> list[float]:
    # The packed floats are the tail of the serialized message: one memcpy instead of a Python
    # float per element through the protobuf container (about twice as fast).
    n = len(d.data)
    if n == 0:
        return []
    raw = d.SerializeToString()
    return np.frombuffer(raw, dtype="<f4", count=n, offset=len(raw) - 4 * n).tolist()  # type: ignore[no-any-return]


_TYPED_VECTOR_KINDS = ("dense", "sparse", "multi_dense")


def _typed_vector_in(msg: Any, kind: str) -> Any:
    """The `kind` variant (one of `_TYPED_VECTOR_KINDS`) of a Vector or a VectorInput."""
    if kind == "dense":
        return _dense_in(msg.dense)
    if kind == "sparse":
        return qe.SparseVector(list(msg.sparse.indices), list(msg.sparse.values))
    return [list(d.data) for d in msg.multi_dense.vectors]


def _vector_in(v: qg.Vector) -> Any:
    kind = v.WhichOneof("vector")
    if kind in _TYPED_VECTOR_KINDS:
        return _typed_vector_in(v, kind)
    if kind is None:
        # The deprecated layout: `data` (+ `indices` for a sparse vector).
        if v.HasField("indices"):
            return qe.SparseVector(list(v.indices.data), list(v.data))
        if v.vectors_count > 1:
            dim = len(v.data) // v.vectors_count
            return [list(v.data[i * dim : (i + 1) * dim]) for i in range(v.vectors_count)]
        return list(v.data)
    raise UnsupportedRequest(f"{kind} vectors need an inference service; send vectors")


def vectors_in(v: qg.Vectors) -> Any:
    kind = v.WhichOneof("vectors_options")
    if kind == "vector":
        return _vector_in(v.vector)
    if kind == "vectors":
        return {name: _vector_in(x) for name, x in v.vectors.vectors.items()}
    return {}


def _vector_out(x: Any, out: qg.VectorOutput) -> None:
    if isinstance(x, qe.SparseVector):
        out.sparse.indices.extend(x.indices)
        out.sparse.values.extend(x.values)
    elif x and isinstance(x[0], list):
        for row in x:
            out.multi_dense.vectors.add().data.extend(row)
    else:
        out.dense.data.extend(x)


def vectors_out(vector: Any, out: qg.VectorsOutput) -> None:
    if vector is None:
        return
    if isinstance(vector, Mapping):
        if list(vector) == [""]:
            _vector_out(vector[""], out.vector)
            return
        named = out.vectors.vectors
        out.vectors.SetInParent()
        for name, x in vector.items():
            _vector_out(x, named[name])
        return
    _vector_out(vector, out.vector)


# --- selectors --------------------------------------------------------------------------------


def _selector_in(sel: Any, present: bool, options: Mapping[str, Callable[[Any], Any]]) -> Any:
    """A with_payload / with_vectors selector: False when absent, its ``enable`` flag, or what
    ``options`` makes of its other ``selector_options`` kinds (False for one not listed)."""
    if not present or sel is None:
        return False
    kind = sel.WhichOneof("selector_options")
    if kind == "enable":
        return sel.enable
    make = options.get(kind) if kind is not None else None
    return False if make is None else make(sel)


_PAYLOAD_SELECTORS: dict[str, Callable[[Any], Any]] = {
    "include": lambda sel: qe.PayloadSelector.Include(list(sel.include.fields)),
    "exclude": lambda sel: qe.PayloadSelector.Exclude(list(sel.exclude.fields)),
}
_VECTOR_SELECTORS: dict[str, Callable[[Any], Any]] = {
    "include": lambda sel: list(sel.include.names),
}


def with_payload_in(sel: qg.WithPayloadSelector | None, present: bool) -> Any:
    return _selector_in(sel, present, _PAYLOAD_SELECTORS)


def with_vectors_in(sel: qg.WithVectorsSelector | None, present: bool) -> Any:
    return _selector_in(sel, present, _VECTOR_SELECTORS)


# --- filters ----------------------------------------------------------------------------------


def _timestamp(ts: Any) -> str:
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=timezone.utc).isoformat()


#: Match oneof kind -> (the Edge match class, how to read its value off the gRPC Match).
_MATCHES: dict[str, tuple[Any, Any]] = {
    "keyword": (qe.MatchValue, lambda m: m.keyword),
    "integer": (qe.MatchValue, lambda m: m.integer),
    "boolean": (qe.MatchValue, lambda m: m.boolean),
    "text": (qe.MatchText, lambda m: m.text),
    "keywords": (qe.MatchAny, lambda m: list(m.keywords.strings)),
    "integers": (qe.MatchAny, lambda m: list(m.integers.integers)),
    "except_keywords": (qe.MatchExcept, lambda m: list(m.except_keywords.strings)),
    "except_integers": (qe.MatchExcept, lambda m: list(m.except_integers.integers)),
    "phrase": (qe.MatchPhrase, lambda m: m.phrase),
    "text_any": (qe.MatchTextAny, lambda m: m.text_any),
    "prefix": (qe.MatchPrefix, lambda m: m.prefix),
    "substring": (qe.MatchSubstring, lambda m: m.substring),
}


def _match_in(m: qg.Match) -> Any:
    kind = m.WhichOneof("match_value")
    entry = _MATCHES.get(kind) if kind is not None else None
    if entry is None:
        raise UnsupportedRequest(f"match {kind!r} is not supported")
    make, value = entry
    return make(value(m))


def _opt(msg: Any, *names: str) -> dict[str, Any]:
    return {n: getattr(msg, n) for n in names if msg.HasField(n)}


def _geo(p: Any) -> qe.GeoPoint:
    return qe.GeoPoint(lon=p.lon, lat=p.lat)


def _field_condition_in(fc: qg.FieldCondition) -> Any:
    kw: dict[str, Any] = {}
    if fc.HasField("match"):
        kw["match"] = _match_in(fc.match)
    if fc.HasField("range"):
        kw["range"] = qe.RangeFloat(**_opt(fc.range, "gte", "gt", "lte", "lt"))
    if fc.HasField("datetime_range"):
        r = fc.datetime_range
        kw["range"] = qe.RangeDateTime(
            **{n: _timestamp(getattr(r, n)) for n in ("gte", "gt", "lte", "lt") if r.HasField(n)}
        )
    if fc.HasField("values_count"):
        kw["values_count"] = qe.ValuesCount(**_opt(fc.values_count, "lt", "gt", "lte", "gte"))
    if fc.HasField("geo_bounding_box"):
        b = fc.geo_bounding_box
        kw["geo_bounding_box"] = qe.GeoBoundingBox(_geo(b.top_left), _geo(b.bottom_right))
    if fc.HasField("geo_radius"):
        kw["geo_radius"] = qe.GeoRadius(_geo(fc.geo_radius.center), fc.geo_radius.radius)
    if fc.HasField("geo_polygon"):
        poly = fc.geo_polygon
        kw["geo_polygon"] = qe.GeoPolygon(
            [_geo(p) for p in poly.exterior.points],
            [[_geo(p) for p in ring.points] for ring in poly.interiors] or None,
        )
    if fc.HasField("is_empty"):
        kw["is_empty"] = fc.is_empty
    if fc.HasField("is_null"):
        kw["is_null"] = fc.is_null
    return qe.FieldCondition(key=fc.key, **kw)


def _condition_in(c: qg.Condition) -> Any:
    kind = c.WhichOneof("condition_one_of")
    if kind == "field":
        return _field_condition_in(c.field)
    if kind == "is_empty":
        return qe.IsEmptyCondition(c.is_empty.key)
    if kind == "is_null":
        return qe.IsNullCondition(c.is_null.key)
    if kind == "has_id":
        return qe.HasIdCondition({point_id_in(p) for p in c.has_id.has_id})
    if kind == "filter":
        return filter_in(c.filter)
    if kind == "nested":
        return qe.NestedCondition(c.nested.key, filter_in(c.nested.filter))
    if kind == "has_vector":
        return qe.HasVectorCondition(c.has_vector.has_vector)
    raise UnsupportedRequest(f"condition {kind!r} is not supported")


def _conditions(cs: Iterable[qg.Condition]) -> list[Any] | None:
    out = [_condition_in(c) for c in cs]
    return out or None


def filter_in(f: qg.Filter) -> qe.Filter:
    min_should = None
    if f.HasField("min_should"):
        min_should = qe.MinShould(
            [_condition_in(c) for c in f.min_should.conditions], f.min_should.min_count
        )
    return qe.Filter(
        must=_conditions(f.must),
        should=_conditions(f.should),
        must_not=_conditions(f.must_not),
        min_should=min_should,
    )


def optional_filter(msg: Any, field: str = "filter") -> qe.Filter | None:
    return filter_in(getattr(msg, field)) if msg.HasField(field) else None


# --- queries ----------------------------------------------------------------------------------


def search_params_in(msg: Any) -> qe.SearchParams | None:
    if not msg.HasField("params"):
        return None
    p = msg.params
    kw: dict[str, Any] = {"exact": p.exact} if p.HasField("exact") else {}
    if p.HasField("hnsw_ef"):
        kw["hnsw_ef"] = p.hnsw_ef
    if p.HasField("indexed_only"):
        kw["indexed_only"] = p.indexed_only
    return qe.SearchParams(**kw)


def _using(msg: Any) -> str | None:
    return msg.using if msg.HasField("using") and msg.using else None


def query_in(q: qg.Query, using: str | None, lookup: Any) -> Any:
    """Convert a Query; `lookup(id, using)` returns the stored vector of a point (query by id)."""
    kind = q.WhichOneof("variant")
    if kind == "nearest":
        vi = q.nearest
        vk = vi.WhichOneof("variant")
        if vk in _TYPED_VECTOR_KINDS:
            vec: Any = _typed_vector_in(vi, vk)
        elif vk == "id":
            vec = lookup(point_id_in(vi.id), using)
        else:
            raise UnsupportedRequest(f"nearest {vk!r} needs an inference service; send vectors")
        return qe.Query.Nearest(vec, using=using)
    if kind == "fusion":
        if q.fusion == qg.Fusion.DBSF:
            return qe.Fusion.Dbsf()
        return qe.Fusion.Rrf(k=DEFAULT_RRF_K)
    if kind == "rrf":
        k = q.rrf.k if q.rrf.HasField("k") else DEFAULT_RRF_K
        return qe.Fusion.Rrf(k=k, weights=list(q.rrf.weights) or None)
    if kind == "order_by":
        ob = q.order_by
        direction = None
        if ob.HasField("direction"):
            direction = qe.Direction.Desc if ob.direction == qg.Direction.Desc else qe.Direction.Asc
        start = None
        if ob.HasField("start_from"):
            sk = ob.start_from.WhichOneof("value")
            start = getattr(ob.start_from, sk) if sk in ("float", "integer", "datetime") else None
        return qe.OrderBy(ob.key, direction=direction, start_from=start)
    if kind == "sample":
        return qe.Sample.Random
    raise UnsupportedRequest(f"query {kind!r} is not supported by the test server")


def prefetch_in(p: qg.PrefetchQuery, lookup: Any) -> qe.Prefetch:
    using = _using(p)
    return qe.Prefetch(
        limit=p.limit if p.HasField("limit") else 10,
        query=query_in(p.query, using, lookup) if p.HasField("query") else None,
        prefetches=[prefetch_in(x, lookup) for x in p.prefetch] or None,
        params=search_params_in(p),
        filter=optional_filter(p),
        score_threshold=p.score_threshold if p.HasField("score_threshold") else None,
    )


def _request_options_in(req: qg.QueryPoints | qg.SearchPoints) -> dict[str, Any]:
    """The QueryRequest arguments that QueryPoints and SearchPoints spell the same way."""
    return {
        "offset": req.offset if req.HasField("offset") else None,
        "with_vector": with_vectors_in(req.with_vectors, req.HasField("with_vectors")),
        "with_payload": with_payload_in(req.with_payload, req.HasField("with_payload")),
        "score_threshold": req.score_threshold if req.HasField("score_threshold") else None,
        "params": search_params_in(req),
    }


def query_points_in(req: qg.QueryPoints, lookup: Any) -> qe.QueryRequest:
    if req.HasField("lookup_from"):
        raise UnsupportedRequest("lookup_from is not supported by the test server")
    using = _using(req)
    # Like Qdrant, points used as queries (by id) are left out of the results.
    referenced: list[int | str] = []

    def remember(pid: int | str, name: str | None) -> Any:
        referenced.append(pid)
        return lookup(pid, name)

    query = query_in(req.query, using, remember) if req.HasField("query") else None
    prefetches = [prefetch_in(x, remember) for x in req.prefetch] or None
    flt = optional_filter(req)
    if referenced:
        flt = qe.Filter(
            must=[flt] if flt is not None else None,
            must_not=[qe.HasIdCondition(set(referenced))],
        )
    return qe.QueryRequest(
        limit=req.limit if req.HasField("limit") else 10,
        query=query,
        prefetches=prefetches,
        filter=flt,
        **_request_options_in(req),
    )


def search_points_in(req: qg.SearchPoints) -> qe.QueryRequest:
    using = req.vector_name if req.HasField("vector_name") and req.vector_name else None
    if req.HasField("sparse_indices"):
        vec: Any = qe.SparseVector(list(req.sparse_indices.data), list(req.vector))
    else:
        vec = list(req.vector)
    return qe.QueryRequest(
        limit=req.limit,
        query=qe.Query.Nearest(vec, using=using),
        filter=optional_filter(req),
        **_request_options_in(req),
    )


def scored_point_out(p: Any, out: qg.ScoredPoint) -> None:
    out.id.CopyFrom(point_id_out(p.id))
    out.score = p.score
    out.version = p.version
    payload_out(p.payload, out.payload)
    if p.vector is not None:
        vectors_out(p.vector, out.vectors)
    ov = p.order_value
    if ov is not None:
        if isinstance(ov, int):
            out.order_value.int = ov
        else:
            out.order_value.float = float(ov)


def record_out(r: Any, out: qg.RetrievedPoint) -> None:
    out.id.CopyFrom(point_id_out(r.id))
    payload_out(r.payload, out.payload)
    if r.vector is not None:
        vectors_out(r.vector, out.vectors)


# --- collection config ------------------------------------------------------------------------

DISTANCE_IN = {
    qg.Distance.Cosine: qe.Distance.Cosine,
    qg.Distance.Euclid: qe.Distance.Euclid,
    qg.Distance.Dot: qe.Distance.Dot,
    qg.Distance.Manhattan: qe.Distance.Manhattan,
}
DISTANCE_NAME_OUT = {"Cosine": qg.Distance.Cosine, "Euclid": qg.Distance.Euclid}
DISTANCE_NAME_OUT.update({"Dot": qg.Distance.Dot, "Manhattan": qg.Distance.Manhattan})


def _vector_params_in(p: qg.VectorParams) -> qe.EdgeVectorParams:
    if p.distance not in DISTANCE_IN:
        raise UnsupportedRequest(f"unknown distance {p.distance}")
    if p.HasField("multivector_config"):
        return qe.EdgeVectorParams(
            size=p.size,
            distance=DISTANCE_IN[p.distance],
            multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
        )
    return qe.EdgeVectorParams(size=p.size, distance=DISTANCE_IN[p.distance])


def edge_config_in(req: qg.CreateCollection) -> qe.EdgeConfig:
    vectors: Any = None
    if req.HasField("vectors_config"):
        vc = req.vectors_config
        if vc.WhichOneof("config") == "params":
            vectors = _vector_params_in(vc.params)
        elif vc.WhichOneof("config") == "params_map":
            vectors = {k: _vector_params_in(v) for k, v in vc.params_map.map.items()}
    sparse: dict[str, qe.EdgeSparseVectorParams] | None = None
    if req.HasField("sparse_vectors_config"):
        sparse = {}
        for name, sp in req.sparse_vectors_config.map.items():
            modifier = qe.Modifier.Idf if sp.modifier == qg.Modifier.Idf else None
            sparse[name] = qe.EdgeSparseVectorParams(modifier=modifier)
    if vectors is None and not sparse:
        vectors = {}
    return qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse)


def collection_params_out(config: Mapping[str, Any], out: qg.CollectionParams) -> None:
    """Fill CollectionParams from the shard's persisted edge_config.json."""
    out.shard_number = 1
    out.replication_factor = 1
    out.write_consistency_factor = 1
    out.on_disk_payload = bool(config.get("on_disk_payload", True))
    vectors: Mapping[str, Any] = config.get("vectors") or {}

    def fill(p: Mapping[str, Any], target: qg.VectorParams) -> None:
        target.size = int(p["size"])
        target.distance = DISTANCE_NAME_OUT.get(str(p.get("distance")), qg.Distance.Cosine)
        if p.get("multivector_config"):
            target.multivector_config.comparator = qg.MultiVectorComparator.MaxSim

    if list(vectors) == [""]:
        fill(vectors[""], out.vectors_config.params)
    elif vectors:
        for name, p in vectors.items():
            fill(p, out.vectors_config.params_map.map[name])
    sparse: Mapping[str, Any] = config.get("sparse_vectors") or {}
    if sparse:
        out.sparse_vectors_config.SetInParent()
        for name, sp in sparse.items():
            entry = out.sparse_vectors_config.map[name]
            entry.SetInParent()
            if str(sp.get("modifier", "")).lower() == "idf":
                entry.modifier = qg.Modifier.Idf
