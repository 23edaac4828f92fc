"""Searches as Qdrant gRPC messages: filters from Qdrant's JSON layout, Query API requests, hits back.

Queries are few (one per search string), so plain `qdrant_client.grpc` messages are built here; the
per-point hot path (upserts) stays in Rust. Filters are validated and normalised by
`qflume.filters.normalize` (as on Qdrant Edge, `qflume.sinks.edge.edge_filter`), then translated.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from qdrant_client import grpc as qg

from qflume.exceptions import InvalidInputError, ShapeError
from qflume.filters import FILTER_KEYS, native_filter
from qflume.sinks._common import payload_to_py, vectors_to_py
from qflume.sinks.base import QueryRequest, ScoredPoint, check_fusion

__all__ = ["grpc_filter", "query_points", "scored_points"]

# --- filters: the canonical JSON layout (qflume.filters) -> qdrant.Filter ------------------------


def _typed(v: Any) -> tuple[str, Any]:
    """The qdrant.Match field of a (validated) match value."""
    if isinstance(v, bool):
        return "boolean", v
    return ("integer", v) if isinstance(v, int) else ("keyword", v)


def _match(m: Mapping[str, Any]) -> qg.Match:
    ((kind, v),) = m.items()
    if kind == "value":
        name, x = _typed(v)
        return qg.Match(**{name: x})
    if kind in ("any", "except"):
        if v and isinstance(v[0], int):
            ints = qg.RepeatedIntegers(integers=v)
            return qg.Match(integers=ints) if kind == "any" else qg.Match(except_integers=ints)
        strs = qg.RepeatedStrings(strings=v)
        return qg.Match(keywords=strs) if kind == "any" else qg.Match(except_keywords=strs)
    return qg.Match(**{kind: v})


def _timestamp(text: str) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.fromisoformat(text.replace("Z", "+00:00")))
    return ts


def _geo(p: Mapping[str, float]) -> qg.GeoPoint:
    return qg.GeoPoint(lon=p["lon"], lat=p["lat"])


def _line(ring: Mapping[str, Any]) -> qg.GeoLineString:
    return qg.GeoLineString(points=[_geo(p) for p in ring["points"]])


def _field(c: Mapping[str, Any]) -> qg.FieldCondition:
    fc = qg.FieldCondition(key=c["key"])
    if "match" in c:
        fc.match.CopyFrom(_match(c["match"]))
    if "range" in c:
        r = c["range"]
        if any(isinstance(v, str) for v in r.values()):
            fc.datetime_range.CopyFrom(qg.DatetimeRange(**{k: _timestamp(v) for k, v in r.items()}))
        else:
            fc.range.CopyFrom(qg.Range(**r))
    if "values_count" in c:
        fc.values_count.CopyFrom(qg.ValuesCount(**c["values_count"]))
    if "geo_bounding_box" in c:
        b = c["geo_bounding_box"]
        fc.geo_bounding_box.CopyFrom(
            qg.GeoBoundingBox(top_left=_geo(b["top_left"]), bottom_right=_geo(b["bottom_right"]))
        )
    if "geo_radius" in c:
        g = c["geo_radius"]
        fc.geo_radius.CopyFrom(qg.GeoRadius(center=_geo(g["center"]), radius=g["radius"]))
    if "geo_polygon" in c:
        poly = c["geo_polygon"]
        fc.geo_polygon.CopyFrom(
            qg.GeoPolygon(
                exterior=_line(poly["exterior"]),
                interiors=[_line(r) for r in poly.get("interiors", ())],
            )
        )
    if "is_empty" in c:
        fc.is_empty = c["is_empty"]
    if "is_null" in c:
        fc.is_null = c["is_null"]
    return fc


def _point_id(x: str | int) -> qg.PointId:
    return qg.PointId(num=x) if isinstance(x, int) else qg.PointId(uuid=x)


def _condition(c: Mapping[str, Any]) -> qg.Condition:
    if any(k in c for k in FILTER_KEYS):
        return qg.Condition(filter=_to_grpc(c))
    if "key" in c:
        return qg.Condition(field=_field(c))
    if "is_empty" in c:
        return qg.Condition(is_empty=qg.IsEmptyCondition(key=c["is_empty"]["key"]))
    if "is_null" in c:
        return qg.Condition(is_null=qg.IsNullCondition(key=c["is_null"]["key"]))
    if "has_id" in c:
        return qg.Condition(has_id=qg.HasIdCondition(has_id=[_point_id(x) for x in c["has_id"]]))
    if "has_vector" in c:
        return qg.Condition(has_vector=qg.HasVectorCondition(has_vector=c["has_vector"]))
    n = c["nested"]
    return qg.Condition(nested=qg.NestedCondition(key=n["key"], filter=_to_grpc(n["filter"])))


def _to_grpc(f: Mapping[str, Any]) -> qg.Filter:
    out = qg.Filter()
    for name in ("must", "should", "must_not"):
        if name in f:
            getattr(out, name).extend(_condition(c) for c in f[name])
    ms = f.get("min_should")
    if ms is not None:
        out.min_should.CopyFrom(
            qg.MinShould(
                conditions=[_condition(c) for c in ms["conditions"]], min_count=ms["min_count"]
            )
        )
    return out


def grpc_filter(f: Any) -> qg.Filter | None:
    """A ``qdrant.Filter`` from Qdrant's JSON layout or a qdrant_client ``models.Filter``
    (validated by `qflume.filters.normalize`, as every sink does), or a ``qdrant.Filter`` as is."""
    return native_filter(f, qg.Filter, _to_grpc)


# --- queries ------------------------------------------------------------------------------------


def _dense_query(q: QueryRequest, i: int, dim: int | None, collection: str) -> qg.Query:
    vec = np.asarray(q.dense, dtype=np.float32).reshape(-1)
    if dim is not None and vec.shape[0] != dim:
        raise ShapeError(
            f"query #{i}: vector has size {vec.shape[0]}, but collection {collection!r} holds "
            f"vectors of size {dim}"
        )
    if not np.isfinite(vec).all():
        raise InvalidInputError(f"query #{i}: the dense vector holds NaN or infinity")
    return qg.Query(nearest=qg.VectorInput(dense=qg.DenseVector(data=vec.tolist())))


def _sparse_query(q: QueryRequest, i: int) -> tuple[str, qg.Query]:
    assert q.sparse is not None
    try:
        name, indices, values = q.sparse
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"query #{i}: sparse must be (vector name, indices, values)"
        ) from None
    idx = np.asarray(indices).reshape(-1)
    val = np.asarray(values, dtype=np.float32).reshape(-1)
    if idx.shape != val.shape:
        raise ShapeError(
            f"query #{i}: sparse vector {name!r} has {idx.shape[0]} indices but "
            f"{val.shape[0]} values"
        )
    if idx.size and (idx.min() < 0 or idx.max() > 0xFFFFFFFF):
        raise InvalidInputError(f"query #{i}: sparse indices must fit in uint32")
    return str(name), qg.Query(
        nearest=qg.VectorInput(
            sparse=qg.SparseVector(indices=idx.astype(np.uint32).tolist(), values=val.tolist())
        )
    )


def query_points(q: QueryRequest, i: int, collection: str, dim: int | None) -> qg.QueryPoints:
    """The `qdrant.QueryPoints` of request #i: dense, sparse, or both fused (RRF or DBSF)."""
    if not isinstance(q, QueryRequest):
        raise InvalidInputError(f"query #{i}: expected a QueryRequest, got {type(q).__name__}")
    if int(q.limit) < 1:
        raise InvalidInputError(f"query #{i}: limit must be >= 1, got {q.limit}")
    dense = None if q.dense is None else _dense_query(q, i, dim, collection)
    sparse = None if q.sparse is None else _sparse_query(q, i)
    try:
        flt = grpc_filter(q.filter)
    except InvalidInputError as e:
        raise InvalidInputError(f"query #{i}: {e}") from None
    out = qg.QueryPoints(
        collection_name=collection,
        limit=int(q.limit),
        with_payload=qg.WithPayloadSelector(enable=bool(q.with_payload)),
        # All vectors: the default one is picked from the answer (a selector naming the unnamed
        # vector is not accepted by every server version).
        with_vectors=qg.WithVectorsSelector(enable=bool(q.with_vectors)),
    )
    if q.score_threshold is not None:
        out.score_threshold = float(q.score_threshold)
    if flt is not None:
        out.filter.CopyFrom(flt)
    if dense is not None and sparse is not None:
        per = int(q.prefetch_limit or 4 * q.limit)
        if per < 1:
            raise InvalidInputError(f"query #{i}: prefetch_limit must be >= 1, got {per}")
        name, sq = sparse
        branches = [
            qg.PrefetchQuery(query=dense, limit=per),
            qg.PrefetchQuery(query=sq, using=name, limit=per),
        ]
        if flt is not None:  # Qdrant propagates it too; explicit for servers that do not
            for b in branches:
                b.filter.CopyFrom(flt)
        out.prefetch.extend(branches)
        dbsf = check_fusion(q, f"query #{i}") == "dbsf"
        out.query.CopyFrom(qg.Query(fusion=qg.Fusion.DBSF if dbsf else qg.Fusion.RRF))
    elif dense is not None:
        out.query.CopyFrom(dense)
    elif sparse is not None:
        out.using = sparse[0]
        out.query.CopyFrom(sparse[1])
    else:
        raise InvalidInputError(
            f"query #{i}: a QueryRequest needs a dense vector, a sparse vector, or both"
        )
    return out


def scored_points(points: Any, q: QueryRequest) -> list[ScoredPoint]:
    """Hits of one query from `qdrant.ScoredPoint` messages, best first as the server sent them."""
    out = []
    for p in points:
        pid = p.id.uuid if p.id.WhichOneof("point_id_options") == "uuid" else str(p.id.num)
        vec = None
        if q.with_vectors and p.HasField("vectors"):
            vec = vectors_to_py(p.vectors)[0]
        out.append(
            ScoredPoint(
                id=pid,
                score=float(p.score),
                payload=payload_to_py(p.payload) if q.with_payload else None,
                vector=vec,
            )
        )
    return out
