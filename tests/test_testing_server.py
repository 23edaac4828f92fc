"""qflume.testing.QdrantGrpcServer: the official qdrant-client against it, and fault injection."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import grpc as qg
from qdrant_client import models as m

from qflume.testing import QdrantGrpcServer

DIM = 8


@pytest.fixture
def server() -> Iterator[QdrantGrpcServer]:
    with QdrantGrpcServer() as s:
        yield s


@pytest.fixture
def client(server: QdrantGrpcServer) -> Iterator[QdrantClient]:
    c = server.client()
    yield c
    c.close()


def _make(client: QdrantClient, name: str = "docs", sparse: bool = True) -> None:
    client.create_collection(
        name,
        vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE),
        sparse_vectors_config={"bm25": m.SparseVectorParams(modifier=m.Modifier.IDF)}
        if sparse
        else None,
    )


def _points(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[m.PointStruct]]:
    rng = np.random.default_rng(seed)
    ids = [str(uuid.UUID(bytes=rng.bytes(16))) for _ in range(n)]
    dense = rng.standard_normal((n, DIM)).astype(np.float32)
    points = [
        m.PointStruct(
            id=ids[i],
            vector={
                "": dense[i].tolist(),
                "bm25": m.SparseVector(indices=[i, 100 + i % 3], values=[1.0, 0.5]),
            },
            payload={
                "page_content": f"chunk {i}",
                "metadata": {"source": f"doc{i % 3}.md", "chunk_index": i},
            },
        )
        for i in range(n)
    ]
    return ids, dense, points


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined, no-any-return]


def test_collections_lifecycle(client: QdrantClient) -> None:
    assert not client.collection_exists("docs")
    _make(client)
    assert client.collection_exists("docs")
    assert [c.name for c in client.get_collections().collections] == ["docs"]
    info = client.get_collection("docs")
    assert info.status == m.CollectionStatus.GREEN
    assert info.points_count == 0
    vectors = info.config.params.vectors
    assert isinstance(vectors, m.VectorParams)
    assert vectors.size == DIM and vectors.distance == m.Distance.COSINE
    sparse = info.config.params.sparse_vectors
    assert sparse is not None and sparse["bm25"].modifier == m.Modifier.IDF
    with pytest.raises(grpc.RpcError) as exc:
        _make(client)
    assert _code(exc) == grpc.StatusCode.ALREADY_EXISTS
    assert client.delete_collection("docs")
    assert not client.collection_exists("docs")


def test_upsert_count_retrieve_roundtrip(client: QdrantClient) -> None:
    _make(client)
    ids, dense, points = _points(20)
    payload = {
        "s": "text ü ✓",
        "i": -(2**40),
        "f": 1.25,
        "b": False,
        "n": None,
        "l": [1, "two", 3.5, [True], {"k": "v"}],
        "o": {"deep": {"deeper": [1, 2]}},
    }
    points[0] = m.PointStruct(id=ids[0], vector=points[0].vector, payload=payload)
    client.upsert("docs", points)
    assert client.count("docs").count == 20
    assert client.get_collection("docs").points_count == 20
    got = {p.id: p for p in client.retrieve("docs", ids[:5], with_vectors=True)}
    assert set(got) == set(ids[:5])
    assert got[ids[0]].payload == payload
    for i in range(5):
        vec = got[ids[i]].vector
        assert isinstance(vec, dict)
        np.testing.assert_allclose(vec[""], dense[i] / np.linalg.norm(dense[i]), rtol=1e-5)
        assert vec["bm25"] == m.SparseVector(indices=[i, 100 + i % 3], values=[1.0, 0.5])
    assert got[ids[1]].payload == {
        "page_content": "chunk 1",
        "metadata": {"source": "doc1.md", "chunk_index": 1},
    }
    # Integer ids work too, and an upsert replaces.
    client.upsert("docs", [m.PointStruct(id=7, vector={"": [1.0] * DIM}, payload={"a": 1})])
    client.upsert("docs", [m.PointStruct(id=7, vector={"": [1.0] * DIM}, payload={"a": 2})])
    (p,) = client.retrieve("docs", [7])
    assert p.payload == {"a": 2}
    assert client.count("docs").count == 21


def test_unnamed_dense_only_collection(client: QdrantClient) -> None:
    _make(client, "plain", sparse=False)
    client.upsert("plain", [m.PointStruct(id=1, vector=[0.5] * DIM, payload={"x": 1})])
    (p,) = client.retrieve("plain", [1], with_vectors=True)
    assert isinstance(p.vector, list)
    np.testing.assert_allclose(p.vector, [DIM**-0.5] * DIM, rtol=1e-5)


def test_scroll_pages_through_everything(client: QdrantClient) -> None:
    _make(client)
    ids, _, points = _points(25)
    client.upsert("docs", points)
    seen: list[str] = []
    offset = None
    while True:
        records, offset = client.scroll("docs", limit=7, offset=offset)
        seen.extend(str(r.id) for r in records)
        assert all(r.payload and "page_content" in r.payload for r in records)
        if offset is None:
            break
    assert sorted(seen) == sorted(ids)
    filtered, _ = client.scroll(
        "docs",
        limit=100,
        scroll_filter=m.Filter(
            must=[m.FieldCondition(key="metadata.source", match=m.MatchValue(value="doc0.md"))]
        ),
    )
    assert len(filtered) == 9


def test_query_dense_sparse_hybrid_and_filters(client: QdrantClient) -> None:
    _make(client)
    ids, dense, points = _points(30)
    client.upsert("docs", points)
    hits = client.query_points("docs", query=dense[4].tolist(), limit=3).points
    assert hits[0].id == ids[4] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload is not None and hits[0].payload["page_content"] == "chunk 4"
    sparse_hits = client.query_points(
        "docs", query=m.SparseVector(indices=[9], values=[1.0]), using="bm25", limit=5
    ).points
    assert [h.id for h in sparse_hits] == [ids[9]]
    flt = m.Filter(
        must=[m.FieldCondition(key="metadata.source", match=m.MatchValue(value="doc1.md"))]
    )
    hybrid = client.query_points(
        "docs",
        prefetch=[
            m.Prefetch(query=dense[4].tolist(), limit=10),
            m.Prefetch(query=m.SparseVector(indices=[7], values=[1.0]), using="bm25", limit=10),
        ],
        query=m.FusionQuery(fusion=m.Fusion.RRF),
        query_filter=flt,
        limit=5,
    ).points
    assert hybrid and all(
        h.payload and h.payload["metadata"]["source"] == "doc1.md" for h in hybrid
    )
    assert hybrid[0].id in (ids[4], ids[7])  # ids[7] is doc1.md and the sparse winner
    assert ids[7] in [h.id for h in hybrid]
    ranged = client.count(
        "docs",
        count_filter=m.Filter(
            must=[m.FieldCondition(key="metadata.chunk_index", range=m.Range(gte=10, lt=20))]
        ),
    )
    assert ranged.count == 10
    batch = client.query_batch_points(
        "docs",
        [
            m.QueryRequest(query=dense[1].tolist(), limit=1),
            m.QueryRequest(query=dense[2].tolist(), limit=2, filter=flt),
        ],
    )
    assert batch[0].points[0].id == ids[1]
    assert len(batch[1].points) == 2
    # A point id as the query: its vector is looked up and the point itself left out.
    by_id = client.query_points("docs", query=ids[3], limit=2).points
    expected = client.query_points("docs", query=dense[3].tolist(), limit=3).points
    assert [h.id for h in by_id] == [h.id for h in expected[1:]]
    client.create_payload_index("docs", "metadata.source", m.PayloadSchemaType.KEYWORD)
    schema = client.get_collection("docs").payload_schema
    assert schema["metadata.source"].data_type == m.PayloadSchemaType.KEYWORD
    assert client.count("docs", count_filter=flt).count == 10


def test_payload_updates_and_deletes(client: QdrantClient) -> None:
    _make(client)
    ids, _, points = _points(9)
    client.upsert("docs", points)
    client.set_payload("docs", {"tag": "x"}, points=ids[:2], key="metadata")
    (p,) = client.retrieve("docs", ids[:1])
    assert p.payload == {
        "page_content": "chunk 0",
        "metadata": {"source": "doc0.md", "chunk_index": 0, "tag": "x"},
    }
    client.overwrite_payload("docs", {"only": True}, points=ids[2:3])
    assert client.retrieve("docs", ids[2:3])[0].payload == {"only": True}
    client.delete_payload("docs", ["page_content"], points=ids[3:4])
    assert client.retrieve("docs", ids[3:4])[0].payload == {
        "metadata": {"source": "doc0.md", "chunk_index": 3}
    }
    client.delete("docs", ids[:1])
    assert client.count("docs").count == 8
    client.delete(
        "docs",
        m.FilterSelector(
            filter=m.Filter(
                must=[
                    m.FieldCondition(
                        key="metadata.source", match=m.MatchAny(any=["doc1.md", "doc2.md"])
                    )
                ]
            )
        ),
    )
    assert client.count("docs").count == 3  # ids 3 and 6 (doc0.md) and 2 (no source left)
    client.batch_update_points(
        "docs",
        [
            m.UpsertOperation(upsert=m.PointsList(points=points[:1])),
            m.DeleteOperation(delete=m.PointIdsList(points=ids[3:4])),
        ],
    )
    assert sorted(str(r.id) for r in client.scroll("docs")[0]) == sorted([ids[0], ids[2], ids[6]])


def test_errors_are_statuses(client: QdrantClient) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        client.count("missing")
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    _make(client)
    with pytest.raises(grpc.RpcError) as exc:
        client.upsert("docs", [m.PointStruct(id=1, vector=[1.0, 2.0], payload={})])
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert "dim" in exc.value.details()  # type: ignore[attr-defined]


def test_fail_next_and_call_counts(server: QdrantGrpcServer, client: QdrantClient) -> None:
    _make(client)
    server.fail_next(2, grpc.StatusCode.UNAVAILABLE, methods=["Count"])
    client.upsert("docs", _points(3)[2])  # other methods are not affected
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as exc:
            client.count("docs")
        assert _code(exc) == grpc.StatusCode.UNAVAILABLE
    assert client.count("docs").count == 3
    assert server.calls["Points/Count"] == 3
    assert server.failed["Points/Count"] == 2
    assert server.calls["Points/Upsert"] == 1
    server.fail_next(1, grpc.StatusCode.RESOURCE_EXHAUSTED)  # any method
    with pytest.raises(grpc.RpcError) as exc:
        client.retrieve("docs", [1])
    assert _code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
    server.reset_calls()
    assert client.count("docs").count == 3
    assert dict(server.calls) == {"Points/Count": 1}


def test_latency_makes_deadlines_expire(server: QdrantGrpcServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = qg.QdrantStub(channel)
        server.set_latency(0.5, methods=["HealthCheck"])
        with pytest.raises(grpc.RpcError) as exc:
            stub.HealthCheck(qg.HealthCheckRequest(), timeout=0.05)
        assert _code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED
        server.set_latency(0)
        assert stub.HealthCheck(qg.HealthCheckRequest(), timeout=5).version


def test_stop_start_and_drop_connections(server: QdrantGrpcServer, client: QdrantClient) -> None:
    _make(client)
    client.upsert("docs", _points(4)[2])
    port = server.port
    server.drop_connections()
    assert server.port == port
    assert client.count("docs").count == 4  # the client reconnects
    server.stop()
    assert not server.running
    with pytest.raises(grpc.RpcError) as exc:
        client.count("docs", timeout=2)
    assert _code(exc) == grpc.StatusCode.UNAVAILABLE
    server.start()
    assert server.port == port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = qg.PointsStub(channel).Count(qg.CountPoints(collection_name="docs"), timeout=5)
    assert reply.result.count == 4


def test_api_key() -> None:
    with QdrantGrpcServer(api_key="secret") as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = qg.CollectionsStub(channel)
            with pytest.raises(grpc.RpcError) as exc:
                stub.List(qg.ListCollectionsRequest(), timeout=5)
            assert _code(exc) == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as exc:
                stub.List(qg.ListCollectionsRequest(), metadata=[("api-key", "wrong")], timeout=5)
            assert _code(exc) == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.List(qg.ListCollectionsRequest(), metadata=[("api-key", "secret")], timeout=5)
            assert list(ok.collections) == []
        client = server.client()  # sends the server's api_key
        assert client.get_collections().collections == []
        client.close()


def test_collections_persist_under_path(tmp_path: object) -> None:
    path = str(tmp_path)
    with QdrantGrpcServer(path) as server:
        client = server.client()
        _make(client)
        client.upsert("docs", _points(5)[2])
        client.close()
    with QdrantGrpcServer(path) as server:
        client = server.client()
        assert client.count("docs").count == 5
        assert client.get_collection("docs").config.params.sparse_vectors is not None
        client.close()


def test_fault_arguments_are_checked(server: QdrantGrpcServer) -> None:
    with pytest.raises(ValueError, match="n must be"):
        server.fail_next(0)
    with pytest.raises(ValueError, match="seconds"):
        server.set_latency(-1)
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_wait_false_is_acknowledged_and_applied(client: QdrantClient) -> None:
    _make(client)
    result = client.upsert("docs", _points(6)[2], wait=False)
    assert result.status == m.UpdateStatus.ACKNOWLEDGED
    assert client.count("docs").count == 6
    assert client.upsert("docs", _points(1)[2]).status == m.UpdateStatus.COMPLETED
