"""Searches as Qdrant gRPC messages: filters from Qdrant's JSON layout, Query API requests, hits back.

Queries are few (one per search string), so plain `qdrant_client.grpc` messages are built here; the
per-point hot path (upserts) stays in Rust. The filter converter accepts the same JSON layout as
Qdrant's REST API and `qflume.sinks.edge.edge_filter`, and names the offending part of a bad filter.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from qdrant_client import grpc as qg

from qflume.exceptions import InvalidInputError, ShapeError
from qflume.sinks._common import payload_to_py, vectors_to_py
from qflume.sinks.base import QueryRequest, ScoredPoint, check_fusion

__all__ = ["grpc_filter", "query_points", "scored_points"]

_FILTER_KEYS = frozenset({"must", "should", "must_not", "min_should"})
_FIELD_TESTS = (
    "match",
    "range",
    "values_count",
    "geo_bounding_box",
    "geo_radius",
    "geo_polygon",
    "is_empty",
    "is_null",
)
_BOUNDS = ("gte", "gt", "lte", "lt")


# --- filters: Qdrant's JSON layout -> qdrant.Filter ---------------------------------------------


def _bad(where: str, what: str) -> InvalidInputError:
    return InvalidInputError(f"filter {where}: {what}")


def _keyword_or_int(v: Any, where: str) -> tuple[str, Any]:
    """('keyword' | 'integer' | 'boolean', value) of a match value (Qdrant has no float match)."""
    if isinstance(v, (bool, np.bool_)):
        return "boolean", bool(v)
    if isinstance(v, (int, np.integer)):
        return "integer", int(v)
    if isinstance(v, str):
        return "keyword", v
    raise _bad(where, f"match value {v!r} must be a string, an integer or a boolean")


def _values(vs: Any, where: str, what: str) -> tuple[str, list[Any]]:
    """('keywords' | 'integers', values) of a match any / except list."""
    if isinstance(vs, (str, bytes)) or not isinstance(vs, (Sequence, set, frozenset)):
        raise _bad(where, f"match {what} must be a list of strings or of integers, got {vs!r}")
    kinds = {_keyword_or_int(v, where)[0] for v in vs}
    if kinds <= {"keyword"}:
        return "keywords", [str(v) for v in vs]
    if kinds == {"integer"}:
        return "integers", [int(v) for v in vs]
    raise _bad(where, f"match {what} mixes types or holds booleans: {list(vs)!r}")


def _match(m: Any, where: str) -> qg.Match:
    if not isinstance(m, Mapping):
        raise _bad(where, f"match must be an object such as {{'value': ...}}, got {m!r}")
    if "value" in m:
        kind, v = _keyword_or_int(m["value"], where)
        return qg.Match(**{kind: v})
    if "any" in m:
        kind, vs = _values(m["any"], where, "any")
        if kind == "keywords":
            return qg.Match(keywords=qg.RepeatedStrings(strings=vs))
        return qg.Match(integers=qg.RepeatedIntegers(integers=vs))
    if "except" in m:
        kind, vs = _values(m["except"], where, "except")
        if kind == "keywords":
            return qg.Match(except_keywords=qg.RepeatedStrings(strings=vs))
        return qg.Match(except_integers=qg.RepeatedIntegers(integers=vs))
    for name in ("text", "text_any", "phrase", "prefix", "substring"):
        if name in m:
            if not isinstance(m[name], str):
                raise _bad(where, f"match {name} must be a string, got {m[name]!r}")
            return qg.Match(**{name: m[name]})
    raise _bad(where, f"unknown match {dict(m)!r}")


def _timestamp(v: Any, where: str) -> Timestamp:
    if isinstance(v, str):
        text = v.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            v = datetime.fromisoformat(text)
        except ValueError:
            raise _bad(
                where, f"range bound {v!r} is neither a number nor an RFC 3339 date"
            ) from None
    elif isinstance(v, date) and not isinstance(v, datetime):
        v = datetime(v.year, v.month, v.day)
    if v.tzinfo is None:  # Qdrant reads dates without a zone as UTC
        v = v.replace(tzinfo=timezone.utc)
    ts = Timestamp()
    ts.FromDatetime(v)
    return ts


def _range_into(fc: qg.FieldCondition, r: Any, where: str) -> None:
    if not isinstance(r, Mapping):
        raise _bad(where, f"range must be an object with gte/gt/lte/lt, got {r!r}")
    unknown = set(r) - set(_BOUNDS)
    if unknown:
        raise _bad(where, f"range has unknown bounds {sorted(unknown)} (use gte, gt, lte, lt)")
    bounds = {k: r[k] for k in _BOUNDS if r.get(k) is not None}
    if any(isinstance(v, (str, date)) for v in bounds.values()):
        fc.datetime_range.CopyFrom(
            qg.DatetimeRange(**{k: _timestamp(v, where) for k, v in bounds.items()})
        )
        return
    try:
        fc.range.CopyFrom(qg.Range(**{k: float(v) for k, v in bounds.items()}))
    except (TypeError, ValueError):
        raise _bad(where, f"range bounds must be numbers or dates, got {dict(r)!r}") from None


def _geo(p: Any, where: str) -> qg.GeoPoint:
    try:
        return qg.GeoPoint(lon=float(p["lon"]), lat=float(p["lat"]))
    except (KeyError, TypeError, ValueError):
        raise _bad(where, f"geo point must be {{'lon': ..., 'lat': ...}}, got {p!r}") from None


def _line(ring: Any, where: str) -> qg.GeoLineString:
    points = ring["points"] if isinstance(ring, Mapping) else ring
    return qg.GeoLineString(points=[_geo(p, where) for p in points])


def _field(c: Mapping[str, Any], where: str) -> qg.FieldCondition:
    unknown = set(c) - {"key", *_FIELD_TESTS}
    if unknown:
        raise _bad(where, f"condition on {c['key']!r} has unknown fields {sorted(unknown)}")
    fc = qg.FieldCondition(key=str(c["key"]))
    tests = 0
    if c.get("match") is not None:
        fc.match.CopyFrom(_match(c["match"], where))
        tests += 1
    if c.get("range") is not None:
        _range_into(fc, c["range"], where)
        tests += 1
    if c.get("values_count") is not None:
        vc = c["values_count"]
        fc.values_count.CopyFrom(
            qg.ValuesCount(**{k: int(vc[k]) for k in _BOUNDS if vc.get(k) is not None})
        )
        tests += 1
    if c.get("geo_bounding_box") is not None:
        b = c["geo_bounding_box"]
        fc.geo_bounding_box.CopyFrom(
            qg.GeoBoundingBox(
                top_left=_geo(b.get("top_left"), where),
                bottom_right=_geo(b.get("bottom_right"), where),
            )
        )
        tests += 1
    if c.get("geo_radius") is not None:
        g = c["geo_radius"]
        fc.geo_radius.CopyFrom(
            qg.GeoRadius(center=_geo(g.get("center"), where), radius=float(g["radius"]))
        )
        tests += 1
    if c.get("geo_polygon") is not None:
        poly = c["geo_polygon"]
        fc.geo_polygon.CopyFrom(
            qg.GeoPolygon(
                exterior=_line(poly["exterior"], where),
                interiors=[_line(r, where) for r in poly.get("interiors") or ()],
            )
        )
        tests += 1
    if c.get("is_empty") is not None:
        fc.is_empty = bool(c["is_empty"])
        tests += 1
    if c.get("is_null") is not None:
        fc.is_null = bool(c["is_null"])
        tests += 1
    if not tests:
        raise _bad(where, f"condition on {c['key']!r} has no test (match, range, ...)")
    return fc


def _key_of(v: Any, where: str, name: str) -> str:
    key = v.get("key") if isinstance(v, Mapping) else None
    if not isinstance(key, str):
        raise _bad(where, f"{name} needs {{'key': 'field'}}, got {v!r}")
    return key


def _point_id(x: Any, where: str) -> qg.PointId:
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0:
        return qg.PointId(num=int(x))
    try:
        return qg.PointId(uuid=str(x if isinstance(x, uuid.UUID) else uuid.UUID(str(x))))
    except ValueError:
        raise _bad(where, f"has_id: {x!r} is neither a UUID nor an unsigned integer") from None


def _condition(c: Any, where: str) -> qg.Condition:
    try:
        return _condition_of(c, where)
    except InvalidInputError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise _bad(where, f"malformed condition {c!r} ({what})") from None


def _condition_of(c: Any, where: str) -> qg.Condition:
    if isinstance(c, qg.Condition):
        return c
    if isinstance(c, qg.Filter):
        return qg.Condition(filter=c)
    if not isinstance(c, Mapping):
        raise _bad(where, f"a condition must be an object, got {c!r}")
    if any(k in c for k in _FILTER_KEYS):
        return qg.Condition(filter=_filter(c, where))
    if "key" in c:
        return qg.Condition(field=_field(c, where))
    if "is_empty" in c:
        return qg.Condition(
            is_empty=qg.IsEmptyCondition(key=_key_of(c["is_empty"], where, "is_empty"))
        )
    if "is_null" in c:
        return qg.Condition(is_null=qg.IsNullCondition(key=_key_of(c["is_null"], where, "is_null")))
    if "has_id" in c:
        ids = c["has_id"]
        if isinstance(ids, (str, bytes, int)) or not isinstance(ids, (Sequence, set, frozenset)):
            raise _bad(where, f"has_id must be a list of point ids, got {ids!r}")
        return qg.Condition(has_id=qg.HasIdCondition(has_id=[_point_id(x, where) for x in ids]))
    if "has_vector" in c:
        return qg.Condition(has_vector=qg.HasVectorCondition(has_vector=str(c["has_vector"])))
    if "nested" in c:
        n = c["nested"]
        key = _key_of(n, where, "nested")
        if not isinstance(n.get("filter"), Mapping):
            raise _bad(where, f"nested needs {{'key': ..., 'filter': {{...}}}}, got {n!r}")
        return qg.Condition(
            nested=qg.NestedCondition(key=key, filter=_filter(n["filter"], f"{where}.nested"))
        )
    raise _bad(where, f"unknown condition {dict(c)!r}")


def _filter(f: Mapping[str, Any], where: str) -> qg.Filter:
    unknown = set(f) - _FILTER_KEYS
    if unknown:
        raise _bad(
            where,
            f"unknown keys {sorted(unknown)} (a filter has must, should, must_not, min_should)",
        )
    out = qg.Filter()
    for name in ("must", "should", "must_not"):
        v = f.get(name)
        if v is None:
            continue
        items = v if isinstance(v, (list, tuple)) else [v]
        getattr(out, name).extend(
            _condition(c, f"{where}.{name}[{i}]") for i, c in enumerate(items)
        )
    ms = f.get("min_should")
    if ms is not None:
        if not isinstance(ms, Mapping) or "conditions" not in ms or "min_count" not in ms:
            raise _bad(where, f"min_should needs conditions and min_count, got {ms!r}")
        out.min_should.CopyFrom(
            qg.MinShould(
                conditions=[
                    _condition(c, f"{where}.min_should[{i}]")
                    for i, c in enumerate(ms["conditions"])
                ],
                min_count=int(ms["min_count"]),
            )
        )
    return out


def grpc_filter(f: Any) -> qg.Filter | None:
    """A `qdrant.Filter` from Qdrant's JSON layout, a qdrant_client `models.Filter`, or as is."""
    if f is None or isinstance(f, qg.Filter):
        return f
    if hasattr(f, "model_dump"):  # qdrant_client.models.Filter (pydantic)
        from qdrant_client.conversions.conversion import RestToGrpc

        return RestToGrpc.convert_filter(f)
    if not isinstance(f, Mapping):
        raise InvalidInputError(f"filter: expected a Qdrant filter mapping, got {type(f).__name__}")
    return _filter(f, "filter")


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
