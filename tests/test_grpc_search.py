"""Batch search over gRPC: GrpcSink.query_batch against the in-process Qdrant gRPC server.

The same points go into a GrpcSink (test server) and an EdgeSink (Qdrant Edge in process); every
search, dense, sparse or hybrid, with every filter form, must give the same hits in the same order
with the same scores. Then the wire (one QueryBatch for N queries), retries, bad input, and an end
to end search of ingested Python docs with the real model.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from qdrant_client import models

import qflume
from qflume.pipeline import Pipeline
from qflume.sinks import CollectionSpec, EdgeSink, GrpcSink, QueryRequest, ScoredPoint, SparseBatch
from qflume.testing import QdrantGrpcServer
from realserver import real_server

DIM = 16
N = 90
FAST: dict[str, Any] = {"retries": 3, "backoff": (0.01, 0.05), "timeout": 10.0}
SPEC = CollectionSpec(dim=DIM, sparse=("bm25",))
DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def _ids(n: int) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (n, 16), dtype=np.uint8)


def _payload(i: int) -> dict[str, Any]:
    folder = ("lib", "docs", "src")[i % 3]
    meta: dict[str, Any] = {
        "source": f"{folder}/f{i % 9}.md",
        "chunk_index": i,
        "n": i,
        "weight": i / 7,
        "lang": "en" if i % 4 else "de",
        "tags": [f"t{i % 5}", "all"] if i % 6 else [],
        "note": None if i % 5 == 0 else f"note {i}",
        "updated": f"2024-{1 + i % 12:02d}-15T12:00:00Z",
        "parts": [{"k": i % 4, "name": "a"}, {"k": (i + 1) % 4, "name": "b"}],
        "flag": i % 2 == 0,
    }
    if i % 10 == 3:
        del meta["note"]  # absent, not null
    return {"page_content": f"chunk {i} of {meta['source']}: ünïcode text", "metadata": meta}


def _points() -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], SparseBatch]:
    rng = np.random.default_rng(11)
    dense = rng.standard_normal((N, DIM)).astype(np.float32)
    nnz = rng.integers(1, 6, N)
    indptr = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
    indices = np.concatenate([rng.choice(40, k, replace=False) for k in nnz]).astype(np.uint32)
    values = rng.random(int(indptr[-1])).astype(np.float32) + 0.1
    return _ids(N), dense, [_payload(i) for i in range(N)], SparseBatch(indptr, indices, values)


@pytest.fixture(scope="module")
def server() -> Iterator[QdrantGrpcServer]:
    with QdrantGrpcServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def sinks(
    server: QdrantGrpcServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GrpcSink, EdgeSink]]:
    """A GrpcSink and an EdgeSink holding the same points."""
    ids, dense, payloads, sparse = _points()
    with (
        GrpcSink(server.url, "same", **FAST) as remote,
        EdgeSink(tmp_path_factory.mktemp("edge"), "same", spec=SPEC) as local,
    ):
        remote.ensure_collection(SPEC)
        for s in (remote, local):
            s.upsert(ids, dense, payloads, sparse={"bm25": sparse})
            s.flush()
        yield remote, local


@pytest.fixture
def collection(request: pytest.FixtureRequest) -> str:
    return f"t_{request.node.name.replace('[', '_').replace(']', '')}_{uuid.uuid4().hex[:6]}"


def _sparse_q(seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(40, 4, replace=False).astype(np.uint32)
    return "bm25", idx, rng.random(4).astype(np.float32) + 0.5


def _dense_q(seed: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).standard_normal(DIM).astype(np.float32)


def _requests(flt: dict[str, Any] | None = None, limit: int = 7) -> list[QueryRequest]:
    return [
        QueryRequest(dense=_dense_q(0), limit=limit, filter=flt),
        QueryRequest(dense=_dense_q(1), limit=limit, filter=flt),
        QueryRequest(sparse=_sparse_q(2), limit=limit, filter=flt),
        QueryRequest(sparse=_sparse_q(3), limit=limit, filter=flt),
        QueryRequest(dense=_dense_q(4), sparse=_sparse_q(4), limit=limit, filter=flt),
        QueryRequest(
            dense=_dense_q(5), sparse=_sparse_q(5), limit=limit, prefetch_limit=9, filter=flt
        ),
    ]


def _assert_same(
    got: list[list[ScoredPoint]],
    want: list[list[ScoredPoint]],
    more: list[list[ScoredPoint]] | None = None,
) -> None:
    """Same hits, order and scores. Equal scores (RRF ties often) have no defined order: there the
    ids must match as sets. `more` (the reference with a higher limit) shows which points tie with
    the last hit, so a tie cut by the limit may keep any of them."""
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert len(a) == len(b), f"query #{k}: {len(a)} hits, expected {len(b)}"
        sa, sb = np.array([h.score for h in a]), np.array([h.score for h in b])
        np.testing.assert_allclose(sa, sb, rtol=0, atol=1e-5, err_msg=f"query #{k}")
        ext = more[k] if more is not None else b
        lo = 0
        while lo < len(b):
            hi = lo + 1
            while hi < len(b) and abs(sb[hi] - sb[lo]) <= 1e-5:
                hi += 1
            ids_a, ids_b = [h.id for h in a[lo:hi]], [h.id for h in b[lo:hi]]
            if hi == len(b):  # the last group: its tie may go on past the limit
                ids_b = [h.id for h in ext if abs(h.score - sb[lo]) <= 1e-5]
            if len(ids_b) == 1:
                assert ids_a == ids_b, f"query #{k}: hit {lo} differs"
            else:
                assert set(ids_a) <= set(ids_b), f"query #{k}: tie at hits {lo}..{hi - 1} differs"
            lo = hi
        by_id = {h.id: h for h in ext}
        for ha in a:
            hb = by_id[ha.id]
            assert ha.payload == hb.payload, f"query #{k}: payload of {ha.id} differs"
            if hb.vector is None:
                assert ha.vector is None
            else:
                assert ha.vector is not None and ha.vector.dtype == np.float32
                np.testing.assert_allclose(ha.vector, hb.vector, atol=1e-6)


def _compare(
    remote: GrpcSink,
    local: EdgeSink,
    reqs: list[QueryRequest],
    local_reqs: list[QueryRequest] | None = None,
) -> list[list[ScoredPoint]]:
    """Runs `reqs` on both sinks (`local_reqs` on Edge if given), checks they agree, returns the
    gRPC answers."""
    got = remote.query_batch(reqs)
    reqs = local_reqs or reqs
    more = [
        replace(q, limit=q.limit + 10, prefetch_limit=q.prefetch_limit or 4 * q.limit) for q in reqs
    ]
    _assert_same(got, local.query_batch(reqs), local.query_batch(more))
    return got


def test_dense_sparse_hybrid_match_qdrant_edge(sinks: tuple[GrpcSink, EdgeSink]) -> None:
    remote, local = sinks
    reqs = _requests()
    got = _compare(remote, local, reqs)
    assert all(len(hits) == 7 for hits in got)
    assert all(isinstance(h.id, str) and uuid.UUID(h.id) for h in got[0])
    assert got[0] == sorted(got[0], key=lambda h: -h.score)
    # The hybrid branches really run: RRF scores, not cosine ones.
    assert got[4][0].score != got[0][0].score


FILTERS: dict[str, dict[str, Any]] = {
    "value": {"must": [{"key": "metadata.source", "match": {"value": "lib/f3.md"}}]},
    "value_int": {"must": [{"key": "metadata.n", "match": {"value": 12}}]},
    "any": {"must": [{"key": "metadata.source", "match": {"any": ["lib/f0.md", "docs/f4.md"]}}]},
    "any_int": {"must": [{"key": "metadata.n", "match": {"any": [1, 2, 3, 50, 51, 80]}}]},
    "except": {"must": [{"key": "metadata.lang", "match": {"except": ["en"]}}]},
    "array_value": {"must": [{"key": "metadata.tags", "match": {"value": "t2"}}]},
    "text": {"must": [{"key": "page_content", "match": {"text": "docs/f1.md"}}]},
    "prefix": {"must": [{"key": "metadata.source", "match": {"prefix": "lib/"}}]},
    "range": {"must": [{"key": "metadata.n", "range": {"gte": 20, "lt": 60}}]},
    "range_float": {"must": [{"key": "metadata.weight", "range": {"gt": 2.5}}]},
    "range_datetime": {
        "must": [{"key": "metadata.updated", "range": {"gte": "2024-03-01T00:00:00Z"}}]
    },
    "values_count": {"must": [{"key": "metadata.tags", "values_count": {"gte": 1}}]},
    "is_empty": {"must": [{"is_empty": {"key": "metadata.tags"}}]},
    "is_null": {"must": [{"is_null": {"key": "metadata.note"}}]},
    "has_id": {"must": [{"has_id": [str(uuid.UUID(bytes=r.tobytes())) for r in _ids(30)]}]},
    "should": {
        "should": [
            {"key": "metadata.lang", "match": {"value": "de"}},
            {"key": "metadata.n", "range": {"lt": 10}},
        ]
    },
    "must_not": {"must_not": [{"key": "metadata.source", "match": {"prefix": "docs/"}}]},
    "min_should": {
        "min_should": {
            "conditions": [
                {"key": "metadata.source", "match": {"prefix": "docs/"}},
                {"key": "metadata.lang", "match": {"value": "de"}},
                {"key": "metadata.n", "range": {"gte": 45}},
            ],
            "min_count": 2,
        }
    },
    "nested_bool": {
        "must": [
            {
                "should": [
                    {"key": "metadata.source", "match": {"prefix": "src/"}},
                    {"must_not": [{"key": "metadata.lang", "match": {"value": "en"}}]},
                ]
            },
            {"key": "metadata.n", "range": {"lte": 70}},
        ]
    },
    "nested_array": {
        "must": [
            {
                "nested": {
                    "key": "metadata.parts",
                    "filter": {
                        "must": [
                            {"key": "k", "match": {"value": 1}},
                            {"key": "name", "match": {"value": "a"}},
                        ]
                    },
                }
            }
        ]
    },
    "single_condition": {"must": {"key": "metadata.lang", "match": {"value": "de"}}},
}


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_every_filter_form_matches_qdrant_edge(sinks: tuple[GrpcSink, EdgeSink], name: str) -> None:
    remote, local = sinks
    flt = FILTERS[name]
    selected = local.count(filter=flt)
    assert 0 < selected < N, f"the {name} filter must select some points, not all"
    assert remote.count(filter=flt) == selected
    reqs = _requests(flt, limit=min(7, selected))
    got = _compare(remote, local, reqs)
    assert got[0] and got[1]  # dense queries always find the selected points


EXTRA_FILTERS: dict[str, dict[str, Any]] = {
    "value_bool": {"must": [{"key": "metadata.flag", "match": {"value": False}}]},
    "except_int": {"must_not": [{"key": "metadata.n", "match": {"except": [1, 2]}}]},
    "text_any": {"must": [{"key": "page_content", "match": {"text_any": "chunk text"}}]},
    "phrase": {"must": [{"key": "page_content", "match": {"phrase": "ünïcode text"}}]},
    "datetime_date": {"must": [{"key": "metadata.updated", "range": {"lt": "2024-06-01"}}]},
    "datetime_offset": {
        "must": [{"key": "metadata.updated", "range": {"gt": "2024-06-01T10:00:00+02:00"}}]
    },
    "has_vector": {"must": [{"has_vector": "bm25"}]},
    "has_id_int": {"must": [{"has_id": [1, 2, 3]}]},
    "field_is_empty": {"must": [{"key": "metadata.tags", "is_empty": True}]},
    "geo": {
        "should": [
            {
                "key": "loc",
                "geo_bounding_box": {
                    "top_left": {"lon": 1.0, "lat": 50.0},
                    "bottom_right": {"lon": 2.0, "lat": 40.0},
                },
            },
            {"key": "loc", "geo_radius": {"center": {"lon": 1.5, "lat": 45.0}, "radius": 1000.0}},
            {
                "key": "loc",
                "geo_polygon": {
                    "exterior": {
                        "points": [
                            {"lon": 0.0, "lat": 0.0},
                            {"lon": 1.0, "lat": 0.0},
                            {"lon": 1.0, "lat": 1.0},
                            {"lon": 0.0, "lat": 0.0},
                        ]
                    },
                },
            },
        ]
    },
}


@pytest.mark.parametrize("name", sorted(FILTERS) + sorted(EXTRA_FILTERS))
def test_filters_convert_like_qdrant_client(name: str) -> None:
    """The converter builds the same qdrant.Filter as qdrant-client's own REST -> gRPC path."""
    from qdrant_client.conversions.conversion import RestToGrpc

    from qflume.sinks._grpc_query import grpc_filter

    flt = FILTERS.get(name) or EXTRA_FILTERS[name]
    want = RestToGrpc.convert_filter(models.Filter(**flt))
    assert grpc_filter(flt) == want


def test_qdrant_client_filter_models_are_accepted(sinks: tuple[GrpcSink, EdgeSink]) -> None:
    remote, local = sinks
    flt = models.Filter(
        must=[models.FieldCondition(key="metadata.source", match=models.MatchText(text="lib"))],
        must_not=[models.FieldCondition(key="metadata.n", range=models.Range(lt=30))],
    )
    as_json = {
        "must": [{"key": "metadata.source", "match": {"text": "lib"}}],
        "must_not": [{"key": "metadata.n", "range": {"lt": 30}}],
    }
    _compare(remote, local, _requests(flt), _requests(as_json))  # type: ignore[arg-type]
    assert remote.count(filter=flt) == local.count(filter=as_json) > 0


def test_payload_vectors_and_thresholds(sinks: tuple[GrpcSink, EdgeSink]) -> None:
    remote, local = sinks
    reqs = [
        QueryRequest(dense=_dense_q(0), limit=3, with_payload=False, with_vectors=True),
        QueryRequest(sparse=_sparse_q(1), limit=4, with_vectors=True),
        QueryRequest(dense=_dense_q(2), sparse=_sparse_q(2), limit=3, with_vectors=True),
        QueryRequest(dense=_dense_q(3), limit=50, score_threshold=0.3),
        QueryRequest(dense=_dense_q(4), sparse=_sparse_q(4), limit=20, score_threshold=0.4),
    ]
    got = _compare(remote, local, reqs)
    assert got[0][0].payload is None and got[0][0].vector is not None
    assert got[0][0].vector.shape == (DIM,)
    assert got[1][0].vector is not None and got[1][0].payload is not None
    assert 0 < len(got[3]) < 50 and all(h.score >= 0.3 for h in got[3])
    assert all(h.score >= 0.4 for h in got[4])


def test_one_request_on_the_wire_for_many_queries(
    server: QdrantGrpcServer, sinks: tuple[GrpcSink, EdgeSink]
) -> None:
    remote, _ = sinks
    reqs = _requests() * 5 + _requests(FILTERS["prefix"]) * 5
    server.reset_calls()
    got = remote.query_batch(reqs)
    assert len(got) == len(reqs) == 60
    assert server.calls["Points/QueryBatch"] == 1
    assert sum(server.calls.values()) == 1  # no per-query call, no collection lookup
    # Same queries, same answers, in request order (dense ones have no ties to reorder).
    assert got[0] == got[6] == got[24] and got[1] == got[7] and got[0] != got[1]
    assert [[h.score for h in r] for r in got[:30]] == [[h.score for h in r] for r in got[:6]] * 5
    assert remote.query_batch([]) == [] and sum(server.calls.values()) == 1


def test_big_batches_split_by_request_size(server: QdrantGrpcServer, collection: str) -> None:
    ids, dense, payloads, sparse = _points()
    with GrpcSink(server.url, collection, batch_bytes=4096, **FAST) as sink:
        sink.ensure_collection(SPEC)
        sink.upsert(ids, dense, payloads, sparse={"bm25": sparse})
        reqs = _requests() * 20
        server.reset_calls()
        got = sink.query_batch(reqs)
        calls = server.calls["Points/QueryBatch"]
        assert 1 < calls < len(reqs)
        one = sink.query_batch(_requests())
        assert [[h.score for h in r] for r in got] == [[h.score for h in r] for r in one] * 20
        assert got[0] == one[0] and got[-5] == one[1]


def test_reads_see_writes_made_just_before(server: QdrantGrpcServer, collection: str) -> None:
    ids, dense, payloads, sparse = _points()
    with GrpcSink(server.url, collection, max_in_flight=8, batch_points=8, **FAST) as sink:
        sink.ensure_collection(SPEC)
        sink.upsert(ids, dense, payloads, sparse={"bm25": sparse})
        server.reset_calls()
        (hits,) = sink.query_batch([QueryRequest(dense=dense[N - 1], limit=1)])
        assert hits[0].id == str(uuid.UUID(bytes=ids[N - 1].tobytes()))
        assert server.calls["Points/Delete"] == 1  # the barrier ran before the search
        sink.delete(ids[N - 1 :])
        (hits,) = sink.query_batch([QueryRequest(dense=dense[N - 1], limit=1)])
        assert hits[0].id != str(uuid.UUID(bytes=ids[N - 1].tobytes()))


def test_retries_on_unavailable(server: QdrantGrpcServer, sinks: tuple[GrpcSink, EdgeSink]) -> None:
    remote, local = sinks
    reqs = _requests()
    server.reset_calls()
    before = remote.retried
    server.fail_next(2, grpc.StatusCode.UNAVAILABLE, methods=["QueryBatch"])
    _compare(remote, local, reqs)
    assert server.calls["Points/QueryBatch"] == 3 and remote.retried == before + 2


def test_retries_spent_or_fatal_errors_raise(
    server: QdrantGrpcServer, sinks: tuple[GrpcSink, EdgeSink]
) -> None:
    remote, _ = sinks
    server.reset_calls()
    server.fail_next(10, grpc.StatusCode.UNAVAILABLE, methods=["QueryBatch"])
    try:
        with pytest.raises(qflume.SinkError, match=r"QueryBatch failed with UNAVAILABLE after 4"):
            remote.query_batch(_requests())
    finally:
        server.clear_faults()
    assert server.calls["Points/QueryBatch"] == 1 + FAST["retries"]
    server.reset_calls()
    server.fail_next(1, grpc.StatusCode.INVALID_ARGUMENT, methods=["QueryBatch"])
    with pytest.raises(qflume.SinkError, match="INVALID_ARGUMENT"):
        remote.query_batch(_requests())
    assert server.calls["Points/QueryBatch"] == 1  # not retried
    assert remote.query_batch(_requests())  # and the sink still works


def test_bad_input_is_named(sinks: tuple[GrpcSink, EdgeSink]) -> None:
    remote, _ = sinks
    ok = QueryRequest(dense=_dense_q(0))
    with pytest.raises(qflume.ShapeError, match=r"query #1: vector has size 3.*size 16"):
        remote.query_batch([ok, QueryRequest(dense=np.zeros(3, np.float32))])
    with pytest.raises(qflume.InvalidInputError, match=r"query #0: .*dense vector, a sparse"):
        remote.query_batch([QueryRequest()])
    with pytest.raises(qflume.InvalidInputError, match="limit must be >= 1"):
        remote.query_batch([QueryRequest(dense=_dense_q(0), limit=0)])
    with pytest.raises(qflume.ShapeError, match="2 indices but 3 values"):
        remote.query_batch(
            [QueryRequest(sparse=("bm25", np.array([1, 2]), np.array([1.0, 2.0, 3.0])))]
        )
    bad: dict[str, dict[str, Any]] = {
        r"filter\.must\[0\]: unknown condition": {"must": [{"bogus": 1}]},
        r"filter: unknown keys \['mst'\]": {"mst": []},
        r"filter\.must\[0\]: unknown match": {"must": [{"key": "a", "match": {"valu": 1}}]},
        r"match value 1\.5": {"must": [{"key": "a", "match": {"value": 1.5}}]},
        r"match any mixes types": {"must": [{"key": "a", "match": {"any": ["x", 1]}}]},
        r"has no test": {"should": [{"key": "a"}]},
        r"not a UUID|neither a UUID": {"must": [{"has_id": ["nope"]}]},
        r"neither a number nor an RFC 3339": {"must": [{"key": "a", "range": {"gt": "soon"}}]},
        r"filter\.should\[1\]: malformed condition .*radius": {
            "should": [
                {"key": "a", "match": {"value": "x"}},
                {"key": "loc", "geo_radius": {"center": {"lon": 1, "lat": 2}}},
            ]
        },
        r"values_count.*7": {"must": [{"key": "a", "values_count": 7}]},
        r"filter\.must\[0\]\.nested\.must\[0\]": {
            "must": [{"nested": {"key": "p", "filter": {"must": [{"x": 1}]}}}]
        },
    }
    for match, flt in bad.items():
        with pytest.raises(qflume.InvalidInputError, match=match):
            remote.query_batch([ok, QueryRequest(dense=_dense_q(0), filter=flt)])
    with pytest.raises(qflume.InvalidInputError, match="mapping"):
        remote.count(filter="metadata.source = 'a'")
    with pytest.raises(qflume.InvalidInputError, match="sequence of QueryRequest"):
        remote.query_batch(ok)  # type: ignore[arg-type]


def test_missing_collection_finds_nothing(server: QdrantGrpcServer, collection: str) -> None:
    with GrpcSink(server.url, collection, **FAST) as sink:
        reqs = [QueryRequest(dense=_dense_q(0)), QueryRequest(sparse=_sparse_q(0))]
        assert sink.query_batch(reqs) == [[], []]
        assert sink.query_batch(reqs[1:]) == [[]]
        assert sink.count(filter=FILTERS["prefix"]) == 0
        with pytest.raises(qflume.InvalidInputError, match="query #1: filter"):
            sink.query_batch([reqs[0], QueryRequest(dense=_dense_q(0), filter={"x": 1})])
        with pytest.raises(qflume.InvalidInputError, match="query #0: expected a QueryRequest"):
            sink.query_batch([{"dense": _dense_q(0)}])  # type: ignore[list-item]


# --- end to end: real documents, the real model ---------------------------------------------------


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _verbatim_sentences(texts: dict[str, str], n: int) -> list[tuple[str, str]]:
    """(sentence, id of the only chunk holding it) for prose sentences of 10-40 words."""
    out = []
    for pid in sorted(texts):
        for s in _SENT.split(texts[pid]):
            words = s.split()
            letters = sum(c.isalpha() for c in s)
            if 10 <= len(words) <= 40 and letters > 0.75 * len(s) and s.endswith("."):
                if sum(s in t for t in texts.values()) == 1:
                    out.append((s, pid))
    assert len(out) >= n, f"only {len(out)} usable sentences"
    step = len(out) // n
    return out[::step][:n]


@pytest.mark.skipif(not DOCS.is_dir(), reason=f"needs the Python docs at {DOCS} (python3.11-doc)")
def test_pipeline_over_grpc_finds_a_verbatim_sentence_first(
    server: QdrantGrpcServer, embedder: Any, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("bisect", "glob", "fnmatch", "heapq"):
        shutil.copy(DOCS / "library" / f"{name}.rst.txt", docs / f"{name}.rst.txt")
    with Pipeline(
        "pydocs",
        url=server.url,
        state_dir=tmp_path / "state",
        sparse="bm25",
        progress=False,
        embedder=embedder,
    ) as p:
        rep = p.ingest(docs)
        assert rep.points_upserted > 20
        texts = {r.id: r.payload["page_content"] for r in p.sink.scroll() if r.payload}
        sample = _verbatim_sentences(texts, 6)
        server.reset_calls()
        results = p.search([s for s, _ in sample], limit=3, mode="hybrid")
        assert server.calls["Points/QueryBatch"] == 1
        # First, or tied for first: with RRF (k=2) dense rank 1 + sparse rank 2 ties with the
        # reverse, and ties have no defined order.
        for (sentence, pid), hits in zip(sample, results, strict=True):
            best = [h.id for h in hits if abs(h.score - hits[0].score) <= 1e-6]
            assert pid in best, f"{sentence!r}: its chunk is not the top hit"
        assert sum(hits[0].id == pid for (_, pid), hits in zip(sample, results, strict=True)) >= 5
        top = results[0][0]
        assert top.page_content == texts[top.id] and top.source and top.source.endswith(".rst.txt")
        assert top.metadata["source"] == top.source and top.start is not None
        # Filters reach the server: only heapq's chunks, dense mode.
        (hits,) = p.search(
            ["a priority queue"], limit=4, mode="dense", filter={"source_prefix": "heapq"}
        )
        assert hits and {h.source for h in hits} == {"heapq.rst.txt"}


# --- a real Qdrant server -----------------------------------------------------------------------


@real_server
def test_real_server_gives_the_same_hits(collection: str, sinks: tuple[GrpcSink, EdgeSink]) -> None:
    _, local = sinks
    url = os.environ["QDRANT_URL"]
    ids, dense, payloads, sparse = _points()
    with GrpcSink(url, collection, api_key=os.environ.get("QDRANT_API_KEY"), **FAST) as sink:
        try:
            sink.ensure_collection(SPEC)
            sink.upsert(ids, dense, payloads, sparse={"bm25": sparse})
            # Exact search (no HNSW approximation) on a fresh, unindexed collection: same hits.
            for flt in (None, FILTERS["value"], FILTERS["range"], FILTERS["should"]):
                reqs = _requests(flt)
                _compare(sink, local, reqs)
            assert sink.count(filter=FILTERS["any"]) == local.count(filter=FILTERS["any"])
        finally:
            _drop(sink)


def _drop(sink: GrpcSink) -> None:
    from qdrant_client import grpc as qg

    req = qg.DeleteCollection(collection_name=sink.collection).SerializeToString()
    sink._call("/qdrant.Collections/Delete", qg.CollectionOperationResponse, req)
