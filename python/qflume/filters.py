"""One filter path: a Qdrant filter (its JSON/REST layout, a qdrant-client ``models.Filter``, or
qflume's short form) validated and normalised once, before any sink sees it.

`normalize` checks every part and returns the canonical JSON layout: only ``must`` / ``should``
/ ``must_not`` lists and ``min_should``; match values typed as Qdrant types them (keyword,
integer, boolean); numeric range bounds as floats and date bounds as RFC 3339 UTC text; point ids
as canonical UUID text or unsigned integers. A bad filter fails here, the same way on every sink,
with an InvalidInputError naming the bad part (``filter.must[1].range: ...``). The sinks then
only translate the canonical form: `qflume.sinks.edge` into Qdrant Edge objects,
`qflume.sinks._grpc_query` into ``qdrant.Filter`` messages.

The short form (`expand_short`): ``{"source": "a.md" | [...], "source_prefix": "lib/",
"metadata": {"lang": "en"}}``, all conditions must hold.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence, Set
from datetime import date, datetime, timezone
from typing import Any, Final, TypeVar

import numpy as np

from qflume import payload
from qflume.exceptions import InvalidInputError

__all__ = ["FILTER_KEYS", "MAX_DEPTH", "expand_short", "native_filter", "normalize"]

_Native = TypeVar("_Native")

FILTER_KEYS: Final = ("must", "should", "must_not", "min_should")
#: Filters nested deeper than this are refused (a cycle, or not a filter a person wrote).
MAX_DEPTH: Final = 32
_FIELD_TESTS: Final = (
    "match",
    "range",
    "values_count",
    "geo_bounding_box",
    "geo_radius",
    "geo_polygon",
    "is_empty",
    "is_null",
)
_BOUNDS: Final = ("gte", "gt", "lte", "lt")
_TEXT_MATCHES: Final = ("text", "text_any", "phrase", "prefix", "substring")
_SHORT_KEYS: Final = ("source", "source_prefix", "metadata")


def _bad(where: str, what: str) -> InvalidInputError:
    return InvalidInputError(f"{where}: {what}")


def _short(v: Any, limit: int = 120) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Qdrant stores integers as signed 64-bit, counts and numeric ids as unsigned 64-bit.
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)


def _utf8(v: str, where: str, what: str) -> str:
    """``v`` if it is valid Unicode text (no lone surrogates: UTF-8 cannot carry them)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(where, f"{what} {_short(v)} is not valid Unicode text") from None
    return v


def _int_in(v: int, bounds: tuple[int, int], where: str, what: str) -> int:
    if not bounds[0] <= v <= bounds[1]:
        raise _bad(where, f"{what} {v} does not fit in 64 bits")
    return v


# --- the short form ------------------------------------------------------------------------------


def _match_of(v: Any) -> dict[str, Any]:
    return {"any": list(v)} if isinstance(v, (list, tuple)) else {"value": v}


def expand_short(flt: Mapping[str, Any]) -> dict[str, Any]:
    """qflume's short form as a Qdrant filter (a Qdrant filter is returned as it is)."""
    if any(k in flt for k in FILTER_KEYS):
        return dict(flt)
    must: list[dict[str, Any]] = []
    for k, v in flt.items():
        if k == "source":
            must.append({"key": payload.SOURCE_FIELD, "match": _match_of(v)})
        elif k == "source_prefix":
            if not isinstance(v, str):
                raise _bad("filter.source_prefix", f"must be a string, got {_short(v)}")
            must.append({"key": payload.SOURCE_FIELD, "match": {"prefix": v}})
        elif k == "metadata":
            if not isinstance(v, Mapping):
                raise _bad(
                    "filter.metadata", f"must be an object of field -> value, got {_short(v)}"
                )
            for mk, mv in v.items():
                must.append({"key": payload.field(str(mk)), "match": _match_of(mv)})
        else:
            raise InvalidInputError(
                f"unknown filter field {k!r}: use {', '.join(_SHORT_KEYS)}, "
                "or a Qdrant filter with must/should/must_not"
            )
    return {"must": must}


# --- validation and normalisation ----------------------------------------------------------------


def _keyword_or_int(v: Any, where: str) -> tuple[str, Any]:
    """('keyword' | 'integer' | 'boolean', value) of a match value (Qdrant has no float match)."""
    if isinstance(v, (bool, np.bool_)):
        return "boolean", bool(v)
    if isinstance(v, (int, np.integer)):
        return "integer", _int_in(int(v), _INT64, where, "match value")
    if isinstance(v, str):
        return "keyword", _utf8(v, where, "match value")
    raise _bad(where, f"match value {_short(v)} must be a string, an integer or a boolean")


def _values(vs: Any, where: str, what: str) -> list[Any]:
    """A match any / except list: all strings or all integers."""
    if isinstance(vs, (str, bytes)) or not isinstance(vs, (Sequence, Set)):
        raise _bad(
            where, f"match {what} must be a list of strings or of integers, got {_short(vs)}"
        )
    typed = [_keyword_or_int(v, where) for v in vs]
    kinds = {k for k, _ in typed}
    if kinds <= {"keyword"} or kinds == {"integer"}:
        return [v for _, v in typed]
    raise _bad(where, f"match {what} mixes types or holds booleans: {_short(list(vs))}")


def _match(m: Any, where: str) -> dict[str, Any]:
    if not isinstance(m, Mapping):
        raise _bad(where, f"match must be an object such as {{'value': ...}}, got {_short(m)}")
    kinds = [k for k in ("value", "any", "except", *_TEXT_MATCHES) if k in m]
    if len(kinds) != 1 or len(m) != 1:
        raise _bad(where, f"unknown match {_short(dict(m))} (give one of value, any, except, "
                          f"{', '.join(_TEXT_MATCHES)})")  # fmt: skip
    kind = kinds[0]
    v = m[kind]
    if kind == "value":
        return {"value": _keyword_or_int(v, where)[1]}
    if kind in ("any", "except"):
        return {kind: _values(v, where, kind)}
    if not isinstance(v, str):
        raise _bad(where, f"match {kind} must be a string, got {_short(v)}")
    return {kind: _utf8(v, where, f"match {kind}")}


def _datetime_text(v: str | date, where: str) -> str:
    if isinstance(v, str):
        text = v.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            v = datetime.fromisoformat(text)
        except ValueError:
            raise _bad(
                where, f"range bound {_short(v)} is neither a number nor an RFC 3339 date"
            ) from None
    elif not isinstance(v, date):
        raise _bad(where, f"range mixes dates and numbers: {_short(v)}")
    elif not isinstance(v, datetime):  # a date
        v = datetime(v.year, v.month, v.day)
    if v.tzinfo is None:  # Qdrant reads dates without a zone as UTC
        v = v.replace(tzinfo=timezone.utc)
    return str(v.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def _range(r: Any, where: str) -> dict[str, Any]:
    if not isinstance(r, Mapping):
        raise _bad(where, f"range must be an object with gte/gt/lte/lt, got {_short(r)}")
    unknown = set(r) - set(_BOUNDS)
    if unknown:
        raise _bad(
            where, f"range has unknown bounds {sorted(map(str, unknown))} (use gte, gt, lte, lt)"
        )
    bounds = {k: r[k] for k in _BOUNDS if r.get(k) is not None}
    if not bounds:
        raise _bad(where, "range has no bound (give gte, gt, lte or lt)")
    if any(isinstance(v, (str, date)) for v in bounds.values()):
        return {k: _datetime_text(v, where) for k, v in bounds.items()}
    out: dict[str, float] = {}
    for k, v in bounds.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise _bad(where, f"range bounds must be numbers or dates, got {_short(dict(r))}")
        if not math.isfinite(float(v)):
            raise _bad(where, f"range bound {k} = {v!r} is not a finite number")
        out[k] = float(v)
    return out


def _count(vc: Any, where: str) -> dict[str, int]:
    if not isinstance(vc, Mapping):
        raise _bad(where, f"values_count must be an object with gte/gt/lte/lt, got {_short(vc)}")
    unknown = set(vc) - set(_BOUNDS)
    if unknown:
        raise _bad(where, f"values_count has unknown bounds {sorted(map(str, unknown))}")
    out: dict[str, int] = {}
    for k in _BOUNDS:
        v = vc.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise _bad(
                where, f"values_count {k} must be a count (an integer >= 0), got {_short(v)}"
            )
        out[k] = _int_in(int(v), _UINT64, where, f"values_count {k}")
    if not out:
        raise _bad(where, "values_count has no bound (give gte, gt, lte or lt)")
    return out


def _number(v: Any, where: str, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise _bad(where, f"{what} must be a number, got {_short(v)}")
    x = float(v)
    if not math.isfinite(x):
        raise _bad(where, f"{what} must be a finite number, got {v!r}")
    return x


def _geo(p: Any, where: str) -> dict[str, float]:
    if not isinstance(p, Mapping) or "lon" not in p or "lat" not in p:
        raise _bad(where, f"geo point must be {{'lon': ..., 'lat': ...}}, got {_short(p)}")
    lon, lat = _number(p["lon"], where, "lon"), _number(p["lat"], where, "lat")
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise _bad(
            where, f"geo point {_short(dict(p))} is off the globe (lon -180..180, lat -90..90)"
        )
    return {"lon": lon, "lat": lat}


def _ring(ring: Any, where: str) -> dict[str, list[dict[str, float]]]:
    points = ring.get("points") if isinstance(ring, Mapping) else ring
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or not points:
        raise _bad(where, f"a polygon ring needs {{'points': [...]}}, got {_short(ring)}")
    return {"points": [_geo(p, where) for p in points]}


def _geo_test(name: str, v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise _bad(where, f"{name} must be an object, got {_short(v)}")
    if name == "geo_bounding_box":
        return {
            "top_left": _geo(v.get("top_left"), where),
            "bottom_right": _geo(v.get("bottom_right"), where),
        }
    if name == "geo_radius":
        if "radius" not in v:
            what = f"malformed condition geo_radius={_short(v)}: it needs a center and a radius"
            raise _bad(where, what)
        return {
            "center": _geo(v.get("center"), where),
            "radius": _number(v["radius"], where, "radius"),
        }
    if "exterior" not in v:
        raise _bad(where, f"geo_polygon needs an exterior ring, got {_short(v)}")
    out: dict[str, Any] = {"exterior": _ring(v["exterior"], where)}
    interiors = v.get("interiors")
    if interiors:
        if not isinstance(interiors, Sequence) or isinstance(interiors, (str, bytes)):
            raise _bad(
                where, f"geo_polygon interiors must be a list of rings, got {_short(interiors)}"
            )
        out["interiors"] = [_ring(r, where) for r in interiors]
    return out


def _key(v: Any, where: str, what: str) -> str:
    if not isinstance(v, str) or not v:
        raise _bad(where, f"{what} must be a non-empty payload field name, got {_short(v)}")
    return _utf8(v, where, what)


def _field(c: Mapping[str, Any], where: str) -> dict[str, Any]:
    key = _key(c["key"], where, "key")
    unknown = set(c) - {"key", *_FIELD_TESTS}
    if unknown:
        raise _bad(where, f"condition on {key!r} has unknown fields {sorted(map(str, unknown))}")
    out: dict[str, Any] = {"key": key}
    for name in _FIELD_TESTS:
        v = c.get(name)
        if v is None:
            continue
        if name == "match":
            out[name] = _match(v, where)
        elif name == "range":
            out[name] = _range(v, where)
        elif name == "values_count":
            out[name] = _count(v, where)
        elif name in ("is_empty", "is_null"):
            if not isinstance(v, (bool, np.bool_)):
                raise _bad(where, f"{name} must be true or false, got {_short(v)}")
            out[name] = bool(v)
        else:
            out[name] = _geo_test(name, v, where)
    if len(out) == 1:
        raise _bad(where, f"condition on {key!r} has no test (match, range, ...)")
    return out


def _point_id(x: Any, where: str) -> str | int:
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)) and x >= 0:
        return _int_in(int(x), _UINT64, where, "has_id")
    if isinstance(x, uuid.UUID):
        return str(x)
    if isinstance(x, str):
        try:
            return str(uuid.UUID(x))
        except ValueError:
            pass
    raise _bad(where, f"has_id: {_short(x)} is neither a UUID nor an unsigned integer")


def _single_key(c: Mapping[str, Any], name: str, where: str) -> None:
    if len(c) != 1:
        others = sorted(str(k) for k in c if k != name)
        raise _bad(where, f"a {name} condition has unknown fields {others}")


def _condition(c: Any, where: str, depth: int) -> dict[str, Any]:
    if not isinstance(c, Mapping):
        raise _bad(where, f"a condition must be an object, got {_short(c)}")
    if any(k in c for k in FILTER_KEYS):
        return _filter(c, where, depth + 1)
    if "key" in c:
        return _field(c, where)
    for name in ("is_empty", "is_null"):
        if name in c:
            _single_key(c, name, where)
            v = c[name]
            return {name: {"key": _key(v.get("key") if isinstance(v, Mapping) else None, where,
                                       f"{name}.key")}}  # fmt: skip
    if "has_id" in c:
        _single_key(c, "has_id", where)
        ids = c["has_id"]
        if isinstance(ids, (str, bytes, int)) or not isinstance(ids, (Sequence, Set)):
            raise _bad(where, f"has_id must be a list of point ids, got {_short(ids)}")
        return {"has_id": [_point_id(x, where) for x in ids]}
    if "has_vector" in c:
        _single_key(c, "has_vector", where)
        v = c["has_vector"]
        if not isinstance(v, str):
            raise _bad(where, f"has_vector must be a vector name, got {_short(v)}")
        return {"has_vector": _utf8(v, where, "has_vector")}
    if "nested" in c:
        _single_key(c, "nested", where)
        n = c["nested"]
        if not isinstance(n, Mapping) or not isinstance(n.get("filter"), Mapping):
            raise _bad(where, f"nested needs {{'key': ..., 'filter': {{...}}}}, got {_short(n)}")
        key = _key(n.get("key"), where, "nested.key")
        return {
            "nested": {"key": key, "filter": _filter(n["filter"], f"{where}.nested", depth + 1)}
        }
    raise _bad(where, f"unknown condition {_short(dict(c))}")


def _filter(f: Mapping[str, Any], where: str, depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise _bad(where, f"filters nest deeper than {MAX_DEPTH} levels")
    unknown = set(f) - set(FILTER_KEYS)
    if unknown:
        raise _bad(
            where,
            f"unknown keys {sorted(map(str, unknown))} (a filter has must, should, must_not, "
            "min_should)",
        )
    out: dict[str, Any] = {}
    for name in ("must", "should", "must_not"):
        v = f.get(name)
        if v is None:
            continue
        if isinstance(v, Mapping):
            v = [v]
        elif isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
            raise _bad(f"{where}.{name}", f"must be a list of conditions, got {_short(v)}")
        out[name] = [_condition(c, f"{where}.{name}[{i}]", depth) for i, c in enumerate(v)]
    ms = f.get("min_should")
    if ms is not None:
        w = f"{where}.min_should"
        if not isinstance(ms, Mapping) or set(ms) != {"conditions", "min_count"}:
            raise _bad(w, f"needs exactly conditions and min_count, got {_short(ms)}")
        conds, count = ms["conditions"], ms["min_count"]
        if isinstance(conds, (str, bytes, Mapping)) or not isinstance(conds, Sequence):
            raise _bad(w, f"conditions must be a list, got {_short(conds)}")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise _bad(w, f"min_count must be an integer >= 0, got {_short(count)}")
        out["min_should"] = {
            "conditions": [_condition(c, f"{w}[{i}]", depth) for i, c in enumerate(conds)],
            "min_count": _int_in(int(count), _UINT64, w, "min_count"),
        }
    return out


def normalize(flt: Any, *, short: bool = False) -> dict[str, Any] | None:
    """The canonical, validated form of a Qdrant filter: its JSON layout (a mapping), a
    qdrant-client ``models.Filter``, or (``short=True``) qflume's short form. None and an empty
    filter give None; anything malformed raises InvalidInputError naming the bad part."""
    if flt is None:
        return None
    if hasattr(flt, "model_dump") and not isinstance(flt, Mapping):  # qdrant_client.models.Filter
        flt = flt.model_dump(mode="json", exclude_none=True)
    if not isinstance(flt, Mapping):
        raise InvalidInputError(
            f"filter: expected a Qdrant filter mapping, got {type(flt).__name__}"
        )
    if not flt:
        return None
    if short:
        flt = expand_short(flt)
    try:
        return _filter(flt, "filter", 0)
    except InvalidInputError:
        raise
    except RecursionError:
        raise InvalidInputError(f"filter: nests deeper than {MAX_DEPTH} levels") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
        # a type no check above foresaw (a custom mapping, say): still the caller's mistake
        raise InvalidInputError(f"filter: malformed ({type(e).__name__}: {e})") from None


def native_filter(
    flt: Any, native: type[_Native], build: Callable[[dict[str, Any]], _Native]
) -> _Native | None:
    """A sink's own filter object: ``flt`` as is when it already is a ``native`` one, else
    `normalize` (Qdrant's JSON layout or a qdrant-client ``models.Filter``) turned into one by
    ``build``; None for no filter."""
    if isinstance(flt, native):
        return flt
    canonical = normalize(flt)
    return None if canonical is None else build(canonical)
