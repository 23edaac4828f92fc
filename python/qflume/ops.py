"""Batch payload updates and deletes, with one result per item.

Both take a *target*: a `qflume.Pipeline` (its sink, and its state for per-source work), or a bare
`Sink` (then only id- and filter-based items work). Items are validated one by one; a bad item is
reported with the reason and the others are still applied. Writes are batched on the wire: updates
that write the same payload under the same key go out as one set-payload request over many ids.

Results are lists of dicts, one per item, in input order:
``{"index": i, "ok": True, "points": n}`` or ``{"index": i, "ok": False, "error": "why", "type":
t}``, where `t` says what kind of failure it is (`ERROR_TYPES`).
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qflume import ids as qids
from qflume import payload as layout
from qflume.exceptions import InvalidInputError, InvalidTypeError, QflumeError
from qflume.filters import normalize as normalize_filter
from qflume.sinks.base import PointRecord, Sink

if TYPE_CHECKING:
    from qflume.collection import Collection
    from qflume.state import State

__all__ = ["ERROR_TYPES", "MANAGED_FIELDS", "delete", "update_payload"]

#: The ``type`` of a failed item: ``invalid`` (the item itself is wrong: fix it), ``not_found``
#: (it names a point or document the collection does not hold), ``target_error`` (Qdrant failed
#: on it: sending it again may work). `qflume serve` adds ``conflict`` and ``job_failed``.
ERROR_TYPES = ("invalid", "not_found", "target_error")

#: Payload fields qflume owns (the sync contract): updates may not write them.
MANAGED_FIELDS = layout.MANAGED_FIELDS
_OPS = ("set", "merge", "increment", "set_now")
_ITEM_KEYS = frozenset(("id", "source", *_OPS))

_locks: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def _lock_for(sink: Any) -> threading.RLock:
    """One lock per sink: read-modify-write updates of one process never interleave."""
    with _locks_guard:
        lock = _locks.get(sink)
        if lock is None:
            lock = threading.RLock()
            _locks[sink] = lock
        return lock


def _parts(target: Collection | Sink) -> tuple[Sink, State | None]:
    """(sink, state or None) of a Collection (a Pipeline) or a bare Sink."""
    from qflume.collection import Collection

    if isinstance(target, Sink):
        return target, None
    if not isinstance(target, Collection):
        raise InvalidTypeError(
            f"target must be a qflume Pipeline or Sink (or a Collection), not {type(target).__name__}"
        )
    return target.sink, target.state


def _observe(op: str, seconds: float, items: int, errors: int) -> None:
    from qflume import metrics

    metrics.observe(op, seconds, items=items, error=errors > 0, errors=errors)


# --- payload paths ------------------------------------------------------------------------------


def _check_path(path: Any, what: str) -> list[str]:
    if not isinstance(path, str) or not path:
        raise InvalidInputError(
            f"{what}: field {path!r} must be a non-empty string like 'metadata.tag'"
        )
    parts = path.split(".")
    if any(not p for p in parts):
        raise InvalidInputError(f"{what}: field {path!r} has an empty segment")
    if layout.managed_field(path) is not None:
        raise InvalidInputError(
            f"{what}: field {path!r} is managed by qflume and cannot be written"
        )
    return parts


def _check_value(v: Any, path: str) -> None:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"value of {path!r} is not JSON ({e})") from None


def _get(tree: Mapping[str, Any], parts: Sequence[str]) -> Any:
    node: Any = tree
    for p in parts:
        if not isinstance(node, Mapping):
            return None
        node = node.get(p)
    return node


def _parent(tree: dict[str, Any], parts: Sequence[str], path: str) -> dict[str, Any]:
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise InvalidInputError(
                f"field {path!r}: {where!r} holds a {type(nxt).__name__}, not an object"
            )
        node = nxt
    return node


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Op:
    __slots__ = ("kind", "parts", "path", "value")

    def __init__(self, kind: str, path: str, parts: list[str], value: Any) -> None:
        self.kind = kind
        self.path = path
        self.parts = parts
        self.value = value


def _parse_ops(item: Mapping[str, Any]) -> list[_Op]:
    ops: list[_Op] = []
    for kind in _OPS:
        spec = item.get(kind)
        if spec is None:
            continue
        if kind == "set_now":
            if isinstance(spec, str):
                spec = [spec]
            if isinstance(spec, Mapping):
                fields = {str(k): v for k, v in spec.items()}
            elif isinstance(spec, (list, tuple)):
                fields = {p: "epoch" for p in spec}
            else:
                raise InvalidInputError(
                    "set_now must be a list of fields (or {field: 'epoch'|'iso'})"
                )
            for path, fmt in fields.items():
                if fmt not in ("epoch", "iso"):
                    raise InvalidInputError(f"set_now {path!r}: format must be 'epoch' or 'iso'")
                ops.append(_Op(kind, path, _check_path(path, kind), fmt))
            continue
        if not isinstance(spec, Mapping) or not spec:
            raise InvalidInputError(f"{kind} must be a non-empty object of field -> value")
        for path, value in spec.items():
            if kind == "set" and path == layout.METADATA:
                # {"set": {"metadata": {...}}} merges into metadata, never replaces it.
                if not isinstance(value, Mapping) or not value:
                    raise InvalidInputError(
                        "set: 'metadata' must be a non-empty object (it is merged)"
                    )
                for k, v in value.items():
                    p = layout.field(str(k))
                    _check_value(v, p)
                    ops.append(_Op("set", p, _check_path(p, kind), v))
                continue
            parts = _check_path(path, kind)
            if kind == "increment":
                if not _is_number(value) or not math.isfinite(value):
                    raise InvalidInputError(f"increment {path!r}: {value!r} is not a finite number")
            elif kind == "merge":
                if not isinstance(value, Mapping):
                    raise InvalidInputError(f"merge {path!r}: expected an object, got {value!r}")
            _check_value(value, path)
            ops.append(_Op(kind, path, parts, value))
    if not ops:
        raise InvalidInputError(f"nothing to do: give at least one of {', '.join(_OPS)}")
    return ops


def _apply(payload: dict[str, Any], ops: Sequence[_Op], now: float) -> list[str]:
    """Apply ops to `payload` in place; the leaf paths written (raises InvalidInputError, item-level)."""
    leaves: list[str] = []
    for op in ops:
        if op.kind == "increment":
            cur = _get(payload, op.parts)
            if cur is not None and not _is_number(cur):
                raise InvalidInputError(
                    f"increment {op.path!r}: the point holds {cur!r}, which is not a number"
                )
            _parent(payload, op.parts, op.path)[op.parts[-1]] = (cur or 0) + op.value
            leaves.append(op.path)
        elif op.kind == "set_now":
            val: Any = now
            if op.value == "iso":
                val = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + (
                    f".{int((now % 1) * 1e6):06d}Z"
                )
            _parent(payload, op.parts, op.path)[op.parts[-1]] = val
            leaves.append(op.path)
        elif op.kind == "set":
            _parent(payload, op.parts, op.path)[op.parts[-1]] = copy.deepcopy(op.value)
            leaves.append(op.path)
        else:  # merge: fields of an object merged into the object at path
            parent = _parent(payload, op.parts, op.path)
            node = parent.get(op.parts[-1])
            if node is None:
                node = parent[op.parts[-1]] = {}
            elif not isinstance(node, dict):
                raise InvalidInputError(
                    f"merge {op.path!r}: the point holds a {type(node).__name__}, not an object"
                )
            for k, v in op.value.items():
                node[str(k)] = copy.deepcopy(v)
                leaves.append(f"{op.path}.{k}")
    return leaves


# --- target resolution --------------------------------------------------------------------------


def _norm_id(x: Any) -> str:
    return qids.uuid_text(x)


def _source_ids(state: Any, keys: Sequence[str]) -> dict[str, list[str]]:
    """Point ids of each committed document (from the state: no collection scan)."""
    out: dict[str, list[str]] = {}
    if state is None or not keys:
        return out
    for key, doc in state.get_many(list(keys)).items():
        out[key] = qids.id_strings(qids.point_ids(key, doc.chunks))
    return out


def _retrieve(sink: Sink, ids: Sequence[str]) -> dict[str, PointRecord]:
    out: dict[str, PointRecord] = {}
    for lo in range(0, len(ids), 4096):
        for r in sink.retrieve(list(ids[lo : lo + 4096])):
            out[str(r.id)] = r
    return out


# --- update_payload -----------------------------------------------------------------------------


def update_payload(
    target: Collection | Sink,
    updates: Iterable[Mapping[str, Any]],
    *,
    now: Callable[[], float] = time.time,
) -> list[dict[str, Any]]:
    """Apply payload updates in batch; one result per update, in order.

    Each update names its points with ``"id"`` (a point UUID) or ``"source"`` (a document key:
    every chunk of it, from the pipeline's state) and says what to do, in this order:

    - ``"set": {"metadata.tag": "x", "title": "t"}`` writes fields (dotted paths are nested);
      ``{"set": {"metadata": {...}}}`` merges into metadata rather than replacing it;
    - ``"merge": {"metadata.attrs": {"a": 1}}`` merges an object into the object at a path;
    - ``"increment": {"metadata.usage_count": 1}`` adds to a number (a missing field counts as 0);
    - ``"set_now": ["metadata.last_used"]`` writes the current time, epoch seconds (float), or
      ``{"metadata.last_used": "iso"}`` for an RFC 3339 UTC string.

    Fields qflume owns (`MANAGED_FIELDS`: page_content, metadata.source/content_hash/chunk_index/
    start/end) cannot be written. Result: ``{"index", "ok", "points"}`` or ``{"index", "ok":
    False, "error"}``: unknown ids or sources, bad fields, increments of non-numbers fail their item
    only; the rest is committed (durable and visible when this returns).

    Increments read the points, compute, and write the new values back. Calls in one process are
    serialized per sink, so they never lose counts to each other; concurrent writers in *other*
    processes can (there is no server-side increment in Qdrant): give each counter one writer.
    """
    t0 = time.perf_counter()
    sink, state = _parts(target)
    items = list(updates)
    results: list[dict[str, Any] | None] = [None] * len(items)

    def fail(i: int, msg: str, kind: str = "invalid") -> None:
        results[i] = {"index": i, "ok": False, "error": msg, "type": kind}

    parsed: list[tuple[int, str | None, str | None, list[_Op]]] = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, Mapping):
                raise InvalidInputError(f"an update must be an object, not {type(item).__name__}")
            extra = set(item) - _ITEM_KEYS
            if extra:
                raise InvalidInputError(
                    f"unknown key(s) {sorted(extra)}: use id or source, and {', '.join(_OPS)}"
                )
            has_id, has_src = item.get("id") is not None, item.get("source") is not None
            if has_id == has_src:
                raise InvalidInputError(
                    "give exactly one of 'id' (a point) or 'source' (a document)"
                )
            pid = _norm_id(item["id"]) if has_id else None
            src = item["source"] if has_src else None
            if src is not None and (not isinstance(src, str) or not src):
                raise InvalidInputError(f"source {src!r} must be a non-empty document key")
            if src is not None and state is None:
                raise InvalidInputError(
                    "updates by source need a Pipeline (its state maps sources)"
                )
            parsed.append((i, pid, src, _parse_ops(item)))
        except InvalidInputError as e:
            fail(i, str(e))

    with _lock_for(sink):
        by_source = _source_ids(state, sorted({s for _, _, s, _ in parsed if s is not None}))
        wanted: dict[str, None] = {}
        for _, pid, src, _ in parsed:
            for p in [pid] if pid is not None else by_source.get(src or "", []):
                wanted[p] = None
        current = _retrieve(sink, list(wanted)) if wanted else {}
        # Work on copies of the payloads: every item applies (in order) or none of it does.
        payloads: dict[str, dict[str, Any]] = {}
        touched: dict[str, dict[str, set[int]]] = {}  # point -> leaf path -> items writing it
        stamp = now()
        for i, pid, src, ops in parsed:
            if pid is not None:
                if pid not in current:
                    fail(
                        i,
                        f"unknown id {pid}: no such point in collection {sink.collection!r}",
                        "not_found",
                    )
                    continue
                pids = [pid]
            else:
                pids = [p for p in by_source.get(src or "", []) if p in current]
                if not pids:
                    fail(
                        i, f"unknown source {src!r}: no points of it in the collection", "not_found"
                    )
                    continue
            trial: dict[str, dict[str, Any]] = {}
            writes: dict[str, list[str]] = {}
            try:
                for p in pids:
                    base = payloads.get(p)
                    if base is None:
                        base = current[p].payload or {}
                    trial[p] = copy.deepcopy(base)
                    writes[p] = _apply(trial[p], ops, stamp)
            except InvalidInputError as e:
                fail(i, f"point {p}: {e}")
                continue
            payloads.update(trial)
            for p, leaves in writes.items():
                t = touched.setdefault(p, {})
                for leaf in leaves:
                    t.setdefault(leaf, set()).add(i)
            results[i] = {"index": i, "ok": True, "points": len(pids)}

        # Group the final values: (key, payload) -> ids, so identical writes share one request.
        groups: dict[tuple[str | None, str], tuple[dict[str, Any], list[str], set[int]]] = {}
        for p, point_leaves in touched.items():
            per_key: dict[str | None, dict[str, Any]] = {}
            per_key_items: dict[str | None, set[int]] = {}
            for leaf, who in point_leaves.items():
                parts = leaf.split(".")
                key = ".".join(parts[:-1]) or None
                per_key.setdefault(key, {})[parts[-1]] = _get(payloads[p], parts)
                per_key_items.setdefault(key, set()).update(who)
            for key, body in per_key.items():
                sig = (key, json.dumps(body, sort_keys=True))
                g = groups.get(sig)
                if g is None:
                    groups[sig] = (body, [p], set(per_key_items[key]))
                else:
                    g[1].append(p)
                    g[2].update(per_key_items[key])
        error: Exception | None = None
        try:
            for (key, _), (body, ids, _) in groups.items():
                sink.set_payload(body, ids, key=key)
            sink.flush()
        except QflumeError as e:
            error = e
        if error is not None:
            _after_failed_update(sink, error, touched, payloads, results)

    out = [r for r in results if r is not None]
    _observe("update_payload", time.perf_counter() - t0, len(out), sum(not r["ok"] for r in out))
    return out


def _after_failed_update(
    sink: Sink,
    error: Exception,
    touched: dict[str, dict[str, set[int]]],
    payloads: dict[str, dict[str, Any]],
    results: list[dict[str, Any] | None],
) -> None:
    """A write failed (the sink may pipeline requests): read back what landed, fail the rest."""
    try:
        after = _retrieve(sink, list(touched))
    except Exception as e:  # the sink is gone: nothing can be confirmed
        for who in (w for leaves in touched.values() for w in leaves.values()):
            _fail(results, who, f"{error} (then: {e})")
        return
    for p, leaves in touched.items():
        rec = after.get(p)
        for leaf, who in leaves.items():
            parts = leaf.split(".")
            if rec is not None and _get(rec.payload or {}, parts) == _get(payloads[p], parts):
                continue
            _fail(results, who, f"not applied to point {p} ({leaf}): {error}")


def _fail(results: list[dict[str, Any] | None], who: Iterable[int], error: str) -> None:
    """Mark the updates at indexes ``who`` failed at the target with ``error``."""
    for i in who:
        results[i] = {"index": i, "ok": False, "error": error, "type": "target_error"}


# --- delete -------------------------------------------------------------------------------------


def _forget_points(state: Any, records: Iterable[PointRecord]) -> None:
    """Drop deleted points' chunks from their documents' state rows (the state mirrors the
    collection: those chunks come back only when their document changes)."""
    if state is None:
        return
    gone: dict[str, set[bytes]] = {}
    for r in records:
        chunk = layout.chunk_fields(r.payload)
        if chunk is not None:
            gone.setdefault(chunk.source, set()).add(chunk.content_hash)
    if gone:
        state.forget_points(gone)


def delete(
    target: Collection | Sink,
    *,
    ids: Sequence[Any] | None = None,
    sources: Sequence[str] | None = None,
    filter: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Delete points by id, whole documents by source, and/or every point matching a filter.

    One result per item, ids first, then sources, then the filter (``"kind"``: "id" | "source" |
    "filter"; ``"index"``: the position in its own list): ``{"kind", "index", "ok", "deleted": n}``
    or ``{..., "ok": False, "error", "type"}`` (`ERROR_TYPES`). Deleting what is not there is not
    an error (deleted: 0), nor is deleting from a collection that does not exist yet; deletes
    never load the embedding model.

    With a Pipeline, the state follows: a deleted source is forgotten, so the next ingest adds it
    again only if its file (or record) is still given; points deleted by id or filter are dropped
    from their document's row, and come back only when that document changes. `filter` is a
    Qdrant filter or qflume's short form ({"source_prefix": ...}, see qflume.search.qdrant_filter).
    """
    t0 = time.perf_counter()
    sink, state = _parts(target)
    if isinstance(sources, str):
        raise InvalidInputError("sources must be a list of document keys, not one string")
    if isinstance(ids, (str, bytes)):
        raise InvalidInputError("ids must be a list of point ids, not one string")
    if ids is None and sources is None and filter is None:
        raise InvalidInputError("delete() needs ids=, sources= or filter=")
    results: list[dict[str, Any]] = []
    with _lock_for(sink):
        if ids is not None:
            results.extend(_delete_ids(sink, state, list(ids)))
        if sources is not None:
            results.extend(_delete_sources(sink, state, list(sources)))
        if filter is not None:
            results.append(_delete_filter(sink, state, filter))
    _observe(
        "delete",
        time.perf_counter() - t0,
        len(results),
        sum(not r["ok"] for r in results),
    )
    return results


def _delete_ids(sink: Sink, state: Any, ids: list[Any]) -> list[dict[str, Any]]:
    res: list[dict[str, Any]] = []
    valid: dict[str, list[int]] = {}
    for i, x in enumerate(ids):
        try:
            valid.setdefault(_norm_id(x), []).append(i)
            res.append({"kind": "id", "index": i, "ok": True, "deleted": 0})
        except InvalidInputError as e:
            res.append({"kind": "id", "index": i, "ok": False, "error": str(e), "type": "invalid"})
    if not valid:
        return res
    present = _retrieve(sink, list(valid))
    if not present:
        return res
    targets = list(present)
    try:
        sink.delete(targets)
        sink.flush()
    except QflumeError as e:
        still = _retrieve(sink, targets)  # deletes are idempotent: see what went
        for pid in still:
            for i in valid[pid]:
                res[i] = {
                    "kind": "id",
                    "index": i,
                    "ok": False,
                    "error": f"{pid}: {e}",
                    "type": "target_error",
                }
        present = {p: r for p, r in present.items() if p not in still}
    for pid in present:
        first = valid[pid][0]
        if res[first]["ok"]:
            res[first]["deleted"] = 1
    _forget_points(state, present.values())
    return res


def _delete_sources(sink: Sink, state: Any, sources: list[Any]) -> list[dict[str, Any]]:
    res: list[dict[str, Any]] = []
    keys: list[str] = []
    for i, s in enumerate(sources):
        if isinstance(s, str) and s:
            keys.append(s)
            res.append({"kind": "source", "index": i, "ok": True, "deleted": 0})
        else:
            res.append(
                {
                    "kind": "source",
                    "index": i,
                    "ok": False,
                    "error": f"source {s!r} must be a non-empty document key",
                    "type": "invalid",
                }
            )
    if not keys:
        return res
    uniq = sorted(set(keys))
    counts = {k: len(v) for k, v in _source_ids(state, uniq).items()}
    try:
        # An empty or missing collection holds nothing to delete; a delete request sent to a
        # missing one would fail (NOT_FOUND on a server, no shard in the embedded store).
        if sink.count():
            sink.delete_by_source(uniq)
            sink.flush()
        else:
            counts = dict.fromkeys(counts, 0)
    except QflumeError as e:
        for r in res:
            if r["ok"]:
                r.update(
                    ok=False, error=f"source {sources[r['index']]!r}: {e}", type="target_error"
                )
                r.pop("deleted", None)
        return res
    if state is not None:
        state.commit([], deleted=[k for k in uniq if k in counts])
    seen: set[str] = set()
    for r in res:
        if r["ok"]:
            key = sources[r["index"]]
            r["deleted"] = counts.get(key, 0) if key not in seen else 0
            seen.add(key)
    return res


def _delete_filter(sink: Sink, state: Any, flt: Mapping[str, Any]) -> dict[str, Any]:
    try:
        qf = normalize_filter(flt, short=True)
        if not qf or not any(qf.values()):
            raise InvalidInputError("an empty filter would delete everything: refused")
        matched = list(sink.scroll(filter=qf, with_payload=True))
    except QflumeError as e:
        kind = "invalid" if isinstance(e, InvalidInputError) else "target_error"
        return {"kind": "filter", "index": 0, "ok": False, "error": f"filter: {e}", "type": kind}
    if not matched:
        return {"kind": "filter", "index": 0, "ok": True, "deleted": 0}
    targets = [r.id for r in matched]
    try:
        sink.delete(targets)
        sink.flush()
    except QflumeError as e:
        still = _retrieve(sink, targets)
        _forget_points(state, [r for r in matched if r.id not in still])
        return {
            "kind": "filter",
            "index": 0,
            "ok": False,
            "error": f"{len(still)} of {len(targets)} matching points not deleted: {e}",
            "type": "target_error",
        }
    _forget_points(state, matched)
    return {"kind": "filter", "index": 0, "ok": True, "deleted": len(targets)}
