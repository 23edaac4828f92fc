"""Test helpers: an in-process Qdrant gRPC server backed by Qdrant Edge, with fault injection.

`QdrantGrpcServer` implements Qdrant's own generated gRPC services (`qdrant_client.grpc`:
Points, Collections, Qdrant) on loopback, one Qdrant Edge shard per collection, so the official
qdrant-client and qflume's `GrpcSink` talk to it as to a real server::

    with QdrantGrpcServer() as server:
        client = server.client()  # a qdrant_client.QdrantClient speaking gRPC to it
        server.fail_next(2, grpc.StatusCode.UNAVAILABLE, methods=["Upsert"])
        ...
        assert server.calls["Points/Upsert"] == 3

It serves gRPC only (no REST port): build clients with `prefer_grpc=True` and
`check_compatibility=False` (the version check uses REST), as `server.client()` does.

Implemented: Collections Create/Get/List/Delete/CollectionExists, UpdateAliases (create, rename,
delete: all at once), ListAliases, ListCollectionAliases (every Points call and Get resolve an
alias; Delete does not, and takes the collection's aliases with it); Points Upsert, Delete (ids or
filter), Get, Count, Scroll, SetPayload, OverwritePayload, DeletePayload, ClearPayload,
CreateFieldIndex, DeleteFieldIndex, UpdateBatch, Search, SearchBatch, Query and QueryBatch (dense,
sparse, by point id, prefetch with RRF/DBSF fusion, order_by, filters); Qdrant HealthCheck. Other
methods answer UNIMPLEMENTED. Updates are applied before the reply (wait=false is acknowledged).

`QdrantServer` runs a real Qdrant server binary on loopback (free ports, its own storage folder),
with kill, freeze and restart, for tests against the production path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import qdrant_edge as qe
from qdrant_client import grpc as qg

from qflume import _testing_convert as cv
from qflume.exceptions import InvalidInputError, QflumeIOError, SinkError, StateError

if TYPE_CHECKING:  # pragma: no cover
    from qdrant_client import QdrantClient

__all__ = ["QdrantGrpcServer", "QdrantServer"]

_EDGE_CONFIG = "edge_config.json"
_ALIASES = "aliases.json"  # the server's aliases, beside its collections' folders


def _server_version() -> str:
    # Report the installed client's version so clients see a compatible server.
    try:
        return version("qdrant-client")
    except PackageNotFoundError:  # pragma: no cover
        return "1.15.0"


@dataclass
class _Fault:
    remaining: int
    code: grpc.StatusCode
    methods: frozenset[str] | None
    message: str


def _method_key(full: str) -> str:
    """'/qdrant.Points/Upsert' -> 'Points/Upsert'."""
    service, _, method = full.lstrip("/").partition("/")
    return f"{service.rpartition('.')[2]}/{method}"


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Collection:
    """One collection: a Qdrant Edge shard in its own directory."""

    def __init__(self, name: str, path: Path, shard: qe.EdgeShard) -> None:
        self.name = name
        self.path = path
        self.shard = shard
        self.lock = threading.RLock()  # serializes updates (Qdrant applies them in order)

    def config(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / _EDGE_CONFIG).read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, op: qe.UpdateOperation) -> None:
        with self.lock:
            self.shard.update(op)

    def lookup_vector(self, pid: int | str, using: str | None) -> Any:
        records = self.shard.retrieve([pid], False, [using or ""])
        if not records or records[0].vector is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"No point with id {pid} found")
        vec = records[0].vector
        return vec.get(using or "") if isinstance(vec, dict) else vec


class _Store:
    """The collections of a server: name -> shard under `root`, and its aliases (alias ->
    collection, kept in `root`/aliases.json), which every Points call and collection info
    resolve as Qdrant does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        self.collections: dict[str, _Collection] = {}
        self.aliases: dict[str, str] = {}
        for child in sorted(root.iterdir()) if root.exists() else []:
            if (child / _EDGE_CONFIG).exists():
                self.collections[child.name] = _Collection(
                    child.name, child, qe.EdgeShard.load(str(child))
                )
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((root / _ALIASES).read_text("utf-8"))
            self.aliases = {
                str(a): str(c) for a, c in dict(data).items() if str(c) in self.collections
            }

    def resolve(self, name: str) -> str:
        """The collection `name` names: itself, or the collection an alias `name` points to."""
        with self.lock:
            return self.aliases.get(name, name)

    def get(self, name: str) -> _Collection:
        with self.lock:
            coll = self.collections.get(self.aliases.get(name, name))
        if coll is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Collection `{name}` doesn't exist!")
        return coll

    def create(self, name: str, config: qe.EdgeConfig) -> None:
        if not name or "/" in name or name in (".", "..") or name == _ALIASES:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid collection name {name!r}")
        with self.lock:
            if name in self.collections:
                raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"Collection `{name}` already exists!")
            if name in self.aliases:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Wrong input: Can't create collection with name {name}. Alias with the same "
                    "name already exists",
                )
            path = self.root / name
            if path.exists():
                shutil.rmtree(path)
            self.collections[name] = _Collection(name, path, qe.EdgeShard.create(str(path), config))

    def _save_aliases(self) -> None:
        tmp = self.root / (_ALIASES + ".tmp")
        tmp.write_text(json.dumps(self.aliases, sort_keys=True), "utf-8")
        tmp.replace(self.root / _ALIASES)

    def change_aliases(self, actions: Iterable[qg.AliasOperations]) -> None:
        """Apply alias actions all at once or not at all (Qdrant's UpdateAliases)."""
        with self.lock:
            new = dict(self.aliases)
            for op in actions:
                kind = op.WhichOneof("action")
                if kind == "create_alias":
                    a, c = op.create_alias.alias_name, op.create_alias.collection_name
                    if c not in self.collections:
                        raise _Abort(grpc.StatusCode.NOT_FOUND, f"Collection `{c}` doesn't exist!")
                    if a in self.collections:
                        raise _Abort(
                            grpc.StatusCode.ALREADY_EXISTS, f"Collection `{a}` already exists!"
                        )
                    new[a] = c
                elif kind == "rename_alias":
                    old, a = op.rename_alias.old_alias_name, op.rename_alias.new_alias_name
                    if old not in new:
                        raise _Abort(grpc.StatusCode.NOT_FOUND, f"Alias `{old}` doesn't exist!")
                    if a in self.collections:
                        raise _Abort(
                            grpc.StatusCode.ALREADY_EXISTS, f"Collection `{a}` already exists!"
                        )
                    new[a] = new.pop(old)
                elif kind == "delete_alias":
                    new.pop(op.delete_alias.alias_name, None)
                else:
                    raise cv.UnsupportedRequest(f"alias action {kind!r} is not supported")
            self.aliases = new
            self._save_aliases()

    def delete(self, name: str) -> bool:
        with self.lock:
            coll = self.collections.pop(name, None)
            if coll is not None and any(c == name for c in self.aliases.values()):
                # like Qdrant: the collection's aliases go with it
                self.aliases = {a: c for a, c in self.aliases.items() if c != name}
                self._save_aliases()
        if coll is None:
            return False
        with coll.lock:
            coll.shard.close()
        shutil.rmtree(coll.path, ignore_errors=True)
        return True

    def close(self) -> None:
        with self.lock:
            for coll in self.collections.values():
                with coll.lock:
                    with contextlib.suppress(Exception):
                        coll.shard.flush()
                    coll.shard.close()
            self.collections.clear()


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn conversion and engine errors into gRPC statuses, as a Qdrant server would."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except _Abort as e:
            context.abort(e.code, e.message)
        except cv.UnsupportedRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (TypeError, ValueError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Wrong input: {e}")
        except Exception as e:  # the engine raises plain Exception for bad input
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Wrong input: {e}")

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


_FIELD_TYPES = {
    qg.FieldType.FieldTypeKeyword: qe.PayloadSchemaType.Keyword,
    qg.FieldType.FieldTypeInteger: qe.PayloadSchemaType.Integer,
    qg.FieldType.FieldTypeFloat: qe.PayloadSchemaType.Float,
    qg.FieldType.FieldTypeGeo: qe.PayloadSchemaType.Geo,
    qg.FieldType.FieldTypeText: qe.PayloadSchemaType.Text,
    qg.FieldType.FieldTypeBool: qe.PayloadSchemaType.Bool,
    qg.FieldType.FieldTypeDatetime: qe.PayloadSchemaType.Datetime,
    qg.FieldType.FieldTypeUuid: qe.PayloadSchemaType.Uuid,
}
# Edge schema type -> qdrant.PayloadSchemaType (named like Edge's: Keyword, Integer, ...)
_SCHEMA_OUT = {
    str(v): qg.PayloadSchemaType.Value(str(v).rpartition(".")[2]) for v in _FIELD_TYPES.values()
}


def _done(start: float) -> dict[str, Any]:
    return {"time": time.perf_counter() - start}


def _filled(resp: Any, items: Iterable[Any], out: Callable[[Any, Any], Any]) -> Any:
    """``resp`` with ``out(item, slot)`` written into a new ``resp.result`` slot per item."""
    for item in items:
        out(item, resp.result.add())
    return resp


def _update_response(start: float, request: Any) -> qg.PointsOperationResponse:
    # Updates are applied before the reply either way; like Qdrant, wait=false answers Acknowledged.
    status = qg.UpdateStatus.Completed if request.wait else qg.UpdateStatus.Acknowledged
    return qg.PointsOperationResponse(
        result=qg.UpdateResult(operation_id=0, status=status), **_done(start)
    )


def _selector_op(
    sel: qg.PointsSelector,
    by_ids: Callable[[list[Any]], qe.UpdateOperation],
    by_filter: Callable[[qe.Filter], qe.UpdateOperation],
) -> qe.UpdateOperation:
    kind = sel.WhichOneof("points_selector_one_of")
    if kind == "points":
        ids: list[Any] = [cv.point_id_in(p) for p in sel.points.ids]
        return by_ids(ids)
    if kind == "filter":
        return by_filter(cv.filter_in(sel.filter))
    raise cv.UnsupportedRequest("a points selector needs ids or a filter")


def _refuse(request: Any, field: str, what: str | None = None) -> None:
    """Refuse a request that sets ``field``, an option the test server does not implement."""
    if request.HasField(field):
        raise cv.UnsupportedRequest(f"{what or field} is not supported by the test server")


def _query_rpc(
    response: Any, build: Callable[[Any, _Collection], list[Any]], batch: bool
) -> Callable[..., Any]:
    """A search/query RPC of `_Points`: the queries ``build(request, collection)`` makes, run by
    `_Points._answer` into a ``response``."""

    def rpc(self: _Points, request: Any, context: Any) -> Any:
        return self._answer(request, response, lambda coll: build(request, coll), batch)

    rpc.__name__ = response.__name__.removesuffix("Response")
    return _guard(rpc)


class _Points(qg.PointsServicer):
    def __init__(self, store: _Store) -> None:
        self.store = store

    # updates

    def _upsert(self, coll: _Collection, points: Iterable[qg.PointStruct]) -> None:
        batch = [
            qe.Point(cv.point_id_in(p.id), cv.vectors_in(p.vectors), cv.payload_in(p.payload))
            for p in points
        ]
        coll.update(qe.UpdateOperation.upsert_points(batch))

    @_guard
    def Upsert(self, request: qg.UpsertPoints, context: Any) -> Any:
        start = time.perf_counter()
        coll = self.store.get(request.collection_name)
        _refuse(request, "update_filter")
        self._upsert(coll, request.points)
        return _update_response(start, request)

    def _update(self, request: Any, apply: Callable[[_Collection], None]) -> Any:
        """``apply`` the update to the request's collection; the reply."""
        start = time.perf_counter()
        apply(self.store.get(request.collection_name))
        return _update_response(start, request)

    @staticmethod
    def _delete_op(sel: Any) -> qe.UpdateOperation:
        return _selector_op(
            sel, qe.UpdateOperation.delete_points, qe.UpdateOperation.delete_points_by_filter
        )

    @staticmethod
    def _clear_op(sel: Any) -> qe.UpdateOperation:
        return _selector_op(
            sel, qe.UpdateOperation.clear_payload, qe.UpdateOperation.clear_payload_by_filter
        )

    @_guard
    def Delete(self, request: qg.DeletePoints, context: Any) -> Any:
        return self._update(request, lambda coll: coll.update(self._delete_op(request.points)))

    def _set_payload(self, coll: _Collection, request: Any, overwrite: bool) -> None:
        payload = cv.payload_in(request.payload)
        key = request.key if request.HasField("key") and request.key else None
        if overwrite:
            ids_op, filter_op = (
                qe.UpdateOperation.overwrite_payload,
                qe.UpdateOperation.overwrite_payload_by_filter,
            )
        else:
            ids_op, filter_op = (
                qe.UpdateOperation.set_payload,
                qe.UpdateOperation.set_payload_by_filter,
            )
        op = _selector_op(
            request.points_selector,
            lambda ids: ids_op(ids, payload, key),
            lambda f: filter_op(f, payload, key),
        )
        coll.update(op)

    @_guard
    def SetPayload(self, request: qg.SetPayloadPoints, context: Any) -> Any:
        return self._update(request, lambda coll: self._set_payload(coll, request, False))

    @_guard
    def OverwritePayload(self, request: qg.SetPayloadPoints, context: Any) -> Any:
        return self._update(request, lambda coll: self._set_payload(coll, request, True))

    @staticmethod
    def _delete_payload_op(request: Any) -> qe.UpdateOperation:
        keys = list(request.keys)
        return _selector_op(
            request.points_selector,
            lambda ids: qe.UpdateOperation.delete_payload(ids, keys),
            lambda f: qe.UpdateOperation.delete_payload_by_filter(f, keys),
        )

    @_guard
    def DeletePayload(self, request: qg.DeletePayloadPoints, context: Any) -> Any:
        return self._update(request, lambda coll: coll.update(self._delete_payload_op(request)))

    @_guard
    def ClearPayload(self, request: qg.ClearPayloadPoints, context: Any) -> Any:
        return self._update(request, lambda coll: coll.update(self._clear_op(request.points)))

    @_guard
    def UpdateBatch(self, request: qg.UpdateBatchPoints, context: Any) -> Any:
        start = time.perf_counter()
        coll = self.store.get(request.collection_name)
        results = []
        for op in request.operations:
            kind = op.WhichOneof("operation")
            if kind == "upsert":
                self._upsert(coll, op.upsert.points)
            elif kind in ("delete_points", "delete_deprecated"):
                sel = op.delete_points.points if kind == "delete_points" else op.delete_deprecated
                coll.update(self._delete_op(sel))
            elif kind in ("set_payload", "overwrite_payload"):
                self._set_payload(coll, getattr(op, kind), overwrite=kind == "overwrite_payload")
            elif kind == "delete_payload":
                coll.update(self._delete_payload_op(op.delete_payload))
            elif kind in ("clear_payload", "clear_payload_deprecated"):
                sel = (
                    op.clear_payload.points
                    if kind == "clear_payload"
                    else op.clear_payload_deprecated
                )
                coll.update(self._clear_op(sel))
            else:
                raise cv.UnsupportedRequest(f"update operation {kind!r} is not supported")
            results.append(qg.UpdateResult(operation_id=0, status=qg.UpdateStatus.Completed))
        return qg.UpdateBatchResponse(result=results, **_done(start))

    @_guard
    def CreateFieldIndex(self, request: qg.CreateFieldIndexCollection, context: Any) -> Any:
        def apply(coll: _Collection) -> None:
            schema = _FIELD_TYPES.get(request.field_type)  # unset = 0 = FieldTypeKeyword
            if schema is None:
                raise cv.UnsupportedRequest(f"field type {request.field_type} is not supported")
            coll.update(qe.UpdateOperation.create_field_index(request.field_name, schema))

        return self._update(request, apply)

    @_guard
    def DeleteFieldIndex(self, request: qg.DeleteFieldIndexCollection, context: Any) -> Any:
        return self._update(
            request,
            lambda coll: coll.update(qe.UpdateOperation.delete_field_index(request.field_name)),
        )

    # reads

    @_guard
    def Get(self, request: qg.GetPoints, context: Any) -> Any:
        start = time.perf_counter()
        coll = self.store.get(request.collection_name)
        with_payload = cv.with_payload_in(request.with_payload, request.HasField("with_payload"))
        if not request.HasField("with_payload"):
            with_payload = True  # Qdrant's default for Get
        records = coll.shard.retrieve(
            [cv.point_id_in(p) for p in request.ids],
            with_payload,
            cv.with_vectors_in(request.with_vectors, request.HasField("with_vectors")),
        )
        return _filled(qg.GetResponse(**_done(start)), records, cv.record_out)

    @_guard
    def Count(self, request: qg.CountPoints, context: Any) -> Any:
        start = time.perf_counter()
        coll = self.store.get(request.collection_name)
        n = coll.shard.count(qe.CountRequest(exact=True, filter=cv.optional_filter(request)))
        return qg.CountResponse(result=qg.CountResult(count=n), **_done(start))

    @_guard
    def Scroll(self, request: qg.ScrollPoints, context: Any) -> Any:
        start = time.perf_counter()
        coll = self.store.get(request.collection_name)
        _refuse(request, "order_by", "scroll with order_by")
        with_payload = cv.with_payload_in(request.with_payload, request.HasField("with_payload"))
        if not request.HasField("with_payload"):
            with_payload = True
        records, next_offset = coll.shard.scroll(
            qe.ScrollRequest(
                offset=cv.point_id_in(request.offset) if request.HasField("offset") else None,
                limit=request.limit if request.HasField("limit") else 10,
                filter=cv.optional_filter(request),
                with_payload=with_payload,
                with_vector=cv.with_vectors_in(
                    request.with_vectors, request.HasField("with_vectors")
                ),
            )
        )
        resp = _filled(qg.ScrollResponse(**_done(start)), records, cv.record_out)
        if next_offset is not None:
            resp.next_page_offset.CopyFrom(cv.point_id_out(next_offset))
        return resp

    def _query(self, coll: _Collection, requests: list[qe.QueryRequest]) -> list[list[Any]]:
        if len(requests) == 1:
            return [coll.shard.query(requests[0])]
        return coll.shard.query_batch(qe.QueryBatchRequest(requests))

    def _answer(
        self, request: Any, response: Any, build: Callable[[_Collection], list[Any]], batch: bool
    ) -> Any:
        """Run the queries ``build`` makes on the request's collection into a ``response``: the
        one query's points, or (``batch``) a list of points per query."""
        start = time.perf_counter()
        coll = self.store.get(request.collection_name)
        results = self._query(coll, build(coll))
        resp = response(**_done(start))
        if not batch:
            return _filled(resp, results[0], cv.scored_point_out)
        for points in results:
            _filled(resp.result.add(), points, cv.scored_point_out)
        return resp

    Search = _query_rpc(qg.SearchResponse, lambda req, coll: [cv.search_points_in(req)], False)
    SearchBatch = _query_rpc(
        qg.SearchBatchResponse,
        lambda req, coll: [cv.search_points_in(r) for r in req.search_points],
        True,
    )
    Query = _query_rpc(
        qg.QueryResponse, lambda req, coll: [cv.query_points_in(req, coll.lookup_vector)], False
    )
    QueryBatch = _query_rpc(
        qg.QueryBatchResponse,
        lambda req, coll: [cv.query_points_in(r, coll.lookup_vector) for r in req.query_points],
        True,
    )


class _Collections(qg.CollectionsServicer):
    def __init__(self, store: _Store) -> None:
        self.store = store

    @_guard
    def Create(self, request: qg.CreateCollection, context: Any) -> Any:
        start = time.perf_counter()
        self.store.create(request.collection_name, cv.edge_config_in(request))
        return qg.CollectionOperationResponse(result=True, **_done(start))

    @_guard
    def Delete(self, request: qg.DeleteCollection, context: Any) -> Any:
        start = time.perf_counter()
        deleted = self.store.delete(request.collection_name)
        return qg.CollectionOperationResponse(result=deleted, **_done(start))

    @_guard
    def UpdateAliases(self, request: qg.ChangeAliases, context: Any) -> Any:
        start = time.perf_counter()
        self.store.change_aliases(request.actions)
        return qg.CollectionOperationResponse(result=True, **_done(start))

    @_guard
    def ListAliases(self, request: qg.ListAliasesRequest, context: Any) -> Any:
        start = time.perf_counter()
        with self.store.lock:
            pairs = sorted(self.store.aliases.items())
        return qg.ListAliasesResponse(
            aliases=[qg.AliasDescription(alias_name=a, collection_name=c) for a, c in pairs],
            **_done(start),
        )

    @_guard
    def ListCollectionAliases(self, request: qg.ListCollectionAliasesRequest, context: Any) -> Any:
        start = time.perf_counter()
        name = self.store.get(request.collection_name).name
        with self.store.lock:
            pairs = sorted((a, c) for a, c in self.store.aliases.items() if c == name)
        return qg.ListAliasesResponse(
            aliases=[qg.AliasDescription(alias_name=a, collection_name=c) for a, c in pairs],
            **_done(start),
        )

    @_guard
    def CollectionExists(self, request: qg.CollectionExistsRequest, context: Any) -> Any:
        start = time.perf_counter()
        with self.store.lock:
            exists = self.store.resolve(request.collection_name) in self.store.collections
        return qg.CollectionExistsResponse(
            result=qg.CollectionExists(exists=exists), **_done(start)
        )

    @_guard
    def List(self, request: qg.ListCollectionsRequest, context: Any) -> Any:
        start = time.perf_counter()
        with self.store.lock:
            names = sorted(self.store.collections)
        return qg.ListCollectionsResponse(
            collections=[qg.CollectionDescription(name=n) for n in names], **_done(start)
        )

    @_guard
    def Get(self, request: qg.GetCollectionInfoRequest, context: Any) -> Any:
        start = time.perf_counter()
        coll = self.store.get(request.collection_name)
        info = coll.shard.info()
        resp = qg.GetCollectionInfoResponse(**_done(start))
        r = resp.result
        r.status = qg.CollectionStatus.Green
        r.optimizer_status.ok = True
        r.segments_count = info.segments_count
        r.points_count = info.points_count
        r.indexed_vectors_count = info.indexed_vectors_count
        for field, index in info.payload_schema.items():
            entry = r.payload_schema[field]
            entry.data_type = _SCHEMA_OUT.get(
                str(index.data_type), qg.PayloadSchemaType.UnknownType
            )
            entry.points = index.points
        cv.collection_params_out(coll.config(), r.config.params)
        r.config.hnsw_config.m = 16
        r.config.hnsw_config.ef_construct = 100
        r.config.hnsw_config.full_scan_threshold = 10000
        r.config.optimizer_config.deleted_threshold = 0.2
        r.config.optimizer_config.vacuum_min_vector_number = 1000
        r.config.optimizer_config.default_segment_number = 0
        r.config.optimizer_config.flush_interval_sec = 5
        r.config.wal_config.wal_capacity_mb = 32
        r.config.wal_config.wal_segments_ahead = 0
        return resp


class _Root(qg.QdrantServicer):
    def HealthCheck(self, request: qg.HealthCheckRequest, context: Any) -> Any:
        return qg.HealthCheckReply(
            title="qdrant - vector search engine (qflume test server on Qdrant Edge)",
            version=_server_version(),
            commit="qflume-testing",
        )


class _Faults(grpc.ServerInterceptor):
    """Counts calls, checks the API key, injects latency and failures before the handler runs."""

    def __init__(self, server: QdrantGrpcServer) -> None:
        self.server = server

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        key = _method_key(details.method)
        metadata = dict(details.invocation_metadata or ())
        server = self.server
        inner = handler.unary_unary

        def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
            code, message, delay = server._on_call(key, metadata)
            if delay > 0:
                time.sleep(delay)
            if code is not None:
                context.abort(code, message)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class QdrantGrpcServer:
    """An in-process Qdrant gRPC server on loopback, backed by Qdrant Edge shards.

    `path`: where the shards live (a temporary directory, removed on close, if None); reopening a
    server on the same path finds its collections again. `port=0` picks a free port, kept across
    `stop()`/`start()` and `drop_connections()`. With `api_key`, calls without a matching
    `api-key` metadata fail with UNAUTHENTICATED.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        max_workers: int = 16,
    ) -> None:
        self.host = host
        self.api_key = api_key
        self._requested_port = port
        self._port: int | None = None
        self._max_workers = max_workers
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="qflume-qdrant-")
            self.path = Path(self._tmp.name)
        else:
            self.path = Path(path)
            self.path.mkdir(parents=True, exist_ok=True)
        self._store: _Store | None = None
        self._server: grpc.Server | None = None
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._latency = 0.0
        self._latency_methods: frozenset[str] | None = None
        self.calls: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    # lifecycle

    def start(self) -> QdrantGrpcServer:
        """Start listening (again, on the same port after `stop()`); a no-op if running."""
        with self._lock:
            if self._server is not None:
                return self
            if self._store is None:
                self._store = _Store(self.path)
            from concurrent.futures import ThreadPoolExecutor

            server = grpc.server(
                ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="qdrant-test"),
                interceptors=[_Faults(self)],
                options=[
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.so_reuseport", 0),
                ],
            )
            qg.add_PointsServicer_to_server(_Points(self._store), server)
            qg.add_CollectionsServicer_to_server(_Collections(self._store), server)
            qg.add_QdrantServicer_to_server(_Root(), server)
            want = self._port if self._port is not None else self._requested_port
            bound = server.add_insecure_port(f"{self.host}:{want}")
            if bound == 0:
                raise QflumeIOError(
                    f"QdrantGrpcServer: cannot listen on {self.host}:{want} (is the port taken?)"
                )
            server.start()
            self._port = bound
            self._server = server
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop listening (in-flight calls are cancelled); the data stays for `start()`."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()

    def drop_connections(self) -> None:
        """Cut every connection and in-flight call, then listen again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, close the shards, and remove the temporary directory if the server made one."""
        self.stop()
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> QdrantGrpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise StateError("QdrantGrpcServer is not started: call start() or use `with`")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def client(self, **kwargs: Any) -> QdrantClient:
        """A qdrant_client.QdrantClient talking gRPC to this server (extra kwargs passed on)."""
        from qdrant_client import QdrantClient

        kwargs.setdefault("api_key", self.api_key)
        kwargs.setdefault("https", False)  # the server listens in plain text on loopback
        kwargs.setdefault("check_compatibility", False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*insecure connection.*")
            return QdrantClient(host=self.host, grpc_port=self.port, prefer_grpc=True, **kwargs)

    # fault injection

    def fail_next(
        self,
        n: int = 1,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        methods: Iterable[str] | None = None,
        message: str | None = None,
    ) -> None:
        """Fail the next `n` calls (to `methods` only, if given) with status `code`.

        Method names are matched as 'Upsert', 'Points/Upsert' or '/qdrant.Points/Upsert'.
        Faults queue up: each call consumes the first pending fault that matches it.
        """
        if n < 1:
            raise InvalidInputError(f"fail_next: n must be >= 1, got {n}")
        names = None if methods is None else frozenset(_normalize(m) for m in methods)
        with self._lock:
            self._faults.append(
                _Fault(n, code, names, message or f"injected {code.name} (qflume test server)")
            )

    def set_latency(self, seconds: float, methods: Iterable[str] | None = None) -> None:
        """Delay every call (to `methods` only, if given) by `seconds` before it runs; 0 clears."""
        if seconds < 0:
            raise InvalidInputError(f"set_latency: seconds must be >= 0, got {seconds}")
        with self._lock:
            self._latency = float(seconds)
            self._latency_methods = (
                None if methods is None else frozenset(_normalize(m) for m in methods)
            )

    def clear_faults(self) -> None:
        """Drop pending failures and latency."""
        with self._lock:
            self._faults.clear()
            self._latency = 0.0
            self._latency_methods = None

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()
            self.failed.clear()

    def _on_call(
        self, key: str, metadata: dict[str, Any]
    ) -> tuple[grpc.StatusCode | None, str, float]:
        method = key.partition("/")[2]
        with self._lock:
            self.calls[key] += 1
            delay = 0.0
            if self._latency > 0 and (
                self._latency_methods is None
                or key in self._latency_methods
                or method in self._latency_methods
            ):
                delay = self._latency
            if self.api_key is not None and metadata.get("api-key") != self.api_key:
                self.failed[key] += 1
                return grpc.StatusCode.UNAUTHENTICATED, "Invalid api-key", delay
            for fault in self._faults:
                if fault.methods is None or key in fault.methods or method in fault.methods:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    self.failed[key] += 1
                    return fault.code, fault.message, delay
        return None, "", delay


def _normalize(method: str) -> str:
    if method.startswith("/"):
        return _method_key(method)
    return method


# --------------------------------------------------------------------------- a real server


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGKILL when the process that started it dies, however it dies."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class QdrantServer:
    """A real Qdrant server process (a ``qdrant`` binary) on loopback, for tests and benches.

    It listens on 127.0.0.1 only, on free ports (``http_port`` for REST, ``grpc_port`` for gRPC:
    ``url`` is the gRPC one, what qflume's ``--url`` takes), over its own storage folder (``root``,
    a temporary folder removed by ``close()`` if None), with telemetry off. ``start()`` waits until
    it answers ``/readyz``; the storage outlives ``kill()`` + ``start()``, so a restart finds what
    the server had acknowledged. It is stopped by its pid, and on Linux it dies with the process
    that started it even when that one is SIGKILLed::

        with QdrantServer(os.environ["QDRANT_BIN"]) as server:
            Pipeline("docs", url=server.url).ingest(["docs/"])
            server.freeze(); ...; server.thaw()   # SIGSTOP / SIGCONT: a server that hangs
            server.kill(); server.start()         # a crash and a restart
    """

    def __init__(
        self,
        binary: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        *,
        ready_timeout: float = 60.0,
    ) -> None:
        self.binary = Path(binary).resolve()
        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise QflumeIOError(
                errno.ENOENT, f"no executable qdrant server at {self.binary}", str(self.binary)
            )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="qflume-qdrant-server-")
            root = self._tmp.name
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.http_port = _free_port(self.host)
        self.grpc_port = _free_port(self.host)
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The gRPC endpoint, as qflume's ``url=`` / ``--url`` takes it."""
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def log(self) -> Path:
        return self.root / "qdrant.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def version(self) -> str:
        """``qdrant --version`` (e.g. ``qdrant 1.18.3``)."""
        out = subprocess.run(
            [str(self.binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        return out.stdout.strip() or out.stderr.strip()

    def start(self) -> QdrantServer:
        """Start the process (again, on the same ports and storage) and wait until it is ready."""
        if self.pid is not None:
            return self
        env = dict(
            os.environ,
            QDRANT__SERVICE__HOST=self.host,
            QDRANT__SERVICE__HTTP_PORT=str(self.http_port),
            QDRANT__SERVICE__GRPC_PORT=str(self.grpc_port),
            QDRANT__STORAGE__STORAGE_PATH=str(self.root / "storage"),
            QDRANT__STORAGE__SNAPSHOTS_PATH=str(self.root / "snapshots"),
            QDRANT__TELEMETRY_DISABLED="true",
        )
        with open(self.log, "ab") as log:  # the process keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [str(self.binary)],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.http_url}/readyz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        tail = self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
        self.stop()
        raise SinkError(f"qdrant at {self.binary} did not become ready; its log ends:\n{tail}")

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its connections open and answers nothing."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash; ``start()`` brings it back over the same storage."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise StateError("the qdrant server is not running: start() it first")
        self.proc.send_signal(sig)

    def __enter__(self) -> QdrantServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"QdrantServer({str(self.binary)!r}, url={self.url!r}, pid={self.pid})"
