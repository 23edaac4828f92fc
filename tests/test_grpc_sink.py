"""GrpcSink against the in-process Qdrant gRPC server; the official qdrant-client reads back."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from qdrant_client import grpc as qg

import qflume
from qflume.sinks import CollectionSpec, GrpcSink, PointBatch, SparseBatch
from qflume.testing import QdrantGrpcServer
from realserver import drop_collection, real_server

FAST = {"retries": 2, "backoff": (0.01, 0.05), "timeout": 10.0}


@pytest.fixture(scope="module")
def server() -> Iterator[QdrantGrpcServer]:
    with QdrantGrpcServer() as srv:
        yield srv


@pytest.fixture
def collection(request: pytest.FixtureRequest) -> str:
    return f"t_{request.node.name.replace('[', '_').replace(']', '')}_{uuid.uuid4().hex[:6]}"


def make_ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16), dtype=np.uint8)


def uuids(ids: np.ndarray) -> list[str]:
    return [str(uuid.UUID(bytes=r.tobytes())) for r in ids]


def batch(n: int, dim: int = 8, docs: int = 3, seed: int = 0) -> PointBatch:
    rng = np.random.default_rng(seed)
    doc_index = np.sort(rng.integers(0, docs, n)).astype(np.int64)
    counts = np.bincount(doc_index, minlength=docs)
    chunk_index = np.concatenate([np.arange(c) for c in counts]).astype(np.int64)
    return PointBatch(
        ids=make_ids(n, seed),
        dense=rng.standard_normal((n, dim)).astype(np.float32),
        sparse={
            "bm25": SparseBatch(
                indptr=np.arange(n + 1, dtype=np.int64) * 2,
                indices=rng.integers(0, 30000, 2 * n).astype(np.uint32),
                values=rng.random(2 * n).astype(np.float32),
            )
        },
        texts=[f"chunk {i}: ünïcode text" for i in range(n)],
        doc_index=doc_index,
        doc_metadata=[{"source": f"docs/{d}.md", "lang": "en", "n": d} for d in range(docs)],
        chunk_index=chunk_index,
        start=chunk_index * 10,
        end=chunk_index * 10 + 9,
        chunk_hash=make_ids(n, seed + 100),
    )


def test_official_client_reads_back_what_qflume_wrote(
    server: QdrantGrpcServer, collection: str
) -> None:
    b = batch(300, dim=8)
    with GrpcSink(server.url, collection, batch_points=64, max_in_flight=3, **FAST) as sink:
        # Dot: Qdrant stores vectors as given (Cosine would normalize them), so floats compare exactly.
        sink.ensure_collection(CollectionSpec(dim=8, distance="Dot", sparse=("bm25",)))
        sink.upsert_batch(b)
        sink.flush()
        assert sink.points_written == 300
    client = server.client()
    try:
        assert client.count(collection, exact=True).count == 300
        got = client.retrieve(collection, uuids(b.ids), with_vectors=True, with_payload=True)
        by_id = {str(p.id): p for p in got}
        assert len(by_id) == 300
        for i, pid in enumerate(uuids(b.ids)):
            p = by_id[pid]
            assert p.payload == b.payload(i)
            assert isinstance(p.vector, dict)
            np.testing.assert_array_equal(np.asarray(p.vector[""], np.float32), b.dense[i])  # type: ignore[index]
            sp = p.vector["bm25"]
            assert b.sparse is not None
            csr = b.sparse["bm25"]
            lo, hi = csr.indptr[i], csr.indptr[i + 1]
            assert (
                dict(zip(sp.indices, sp.values, strict=True))
                == pytest.approx(  # type: ignore[union-attr]
                    dict(zip(csr.indices[lo:hi].tolist(), csr.values[lo:hi].tolist(), strict=True))
                )
            )
        info = client.get_collection(collection)
        assert info.config.params.vectors.size == 8  # type: ignore[union-attr]
        assert "bm25" in (info.config.params.sparse_vectors or {})
    finally:
        client.close()


def test_upsert_dicts_retrieve_scroll_delete_set_payload(
    server: QdrantGrpcServer, collection: str
) -> None:
    ids = make_ids(20)
    dense = np.random.default_rng(1).random((20, 4), dtype=np.float32)
    payloads = [
        {"page_content": f"t{i}", "metadata": {"source": "a.md" if i < 10 else "b.md", "i": i}}
        for i in range(20)
    ]
    with GrpcSink(server.url, collection, **FAST) as sink:
        sink.ensure_collection(CollectionSpec(dim=4, distance="euclid"))
        sink.upsert(uuids(ids), dense, payloads)  # ids as strings work too
        assert sink.count() == 20
        recs = sink.retrieve(ids[:3], with_vectors=True)
        assert {r.id for r in recs} == set(uuids(ids[:3]))
        for r in recs:
            i = uuids(ids).index(r.id)
            assert r.payload == payloads[i]
            assert r.vector is not None
            np.testing.assert_array_equal(r.vector, dense[i])
        assert sorted(r.id for r in sink.scroll(batch=7)) == sorted(uuids(ids))

        sink.set_payload({"tag": "x"}, ids[:2], key="metadata")
        sink.set_payload({"top": 1}, ids[2:3])
        recs = {r.id: r for r in sink.retrieve(ids[:3])}
        assert recs[uuids(ids)[0]].payload["metadata"]["tag"] == "x"  # type: ignore[index]
        assert recs[uuids(ids)[2]].payload["top"] == 1  # type: ignore[index]

        sink.delete_by_source(["a.md"])
        assert sink.count() == 10
        sink.delete(ids[10:15])
        assert sink.count() == 5
        sink.delete(ids[:1])  # missing ids are ignored
        assert sink.count() == 5


def test_delete_is_never_overtaken_by_earlier_upserts(
    server: QdrantGrpcServer, collection: str
) -> None:
    b = batch(200)
    with GrpcSink(server.url, collection, batch_points=10, max_in_flight=8, **FAST) as sink:
        sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
        server.set_latency(0.01, methods=["Upsert"])
        try:
            sink.upsert_batch(b)
            sink.delete(b.ids)
        finally:
            server.clear_faults()
        assert sink.count() == 0


def test_retries_survive_injected_unavailable(server: QdrantGrpcServer, collection: str) -> None:
    b = batch(50)
    with GrpcSink(server.url, collection, batch_points=10, retries=4, backoff=(0.01, 0.05)) as sink:
        sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
        server.fail_next(3, grpc.StatusCode.UNAVAILABLE, methods=["Upsert"])
        sink.upsert_batch(b)
        server.fail_next(1, grpc.StatusCode.RESOURCE_EXHAUSTED, methods=["Upsert"])
        server.fail_next(1, grpc.StatusCode.ABORTED, methods=["Upsert"])
        sink.upsert_batch(b)
        sink.flush()
        assert sink.retried >= 5
        assert sink.count() == 50


def test_retries_spent_raise_a_clear_error(server: QdrantGrpcServer, collection: str) -> None:
    sink = GrpcSink(server.url, collection, retries=2, backoff=(0.01, 0.02))
    sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
    server.reset_calls()
    server.fail_next(10, grpc.StatusCode.UNAVAILABLE, methods=["Upsert"])
    try:
        with pytest.raises(
            qflume.SinkError, match=r"Upsert failed with UNAVAILABLE after 3 attempts"
        ):
            sink.upsert_batch(batch(5))
            sink.flush()
        assert server.calls["Points/Upsert"] == 3  # the first try and 2 retries
    finally:
        server.clear_faults()
        sink.close()


def test_leaving_on_an_error_keeps_that_error(server: QdrantGrpcServer, collection: str) -> None:
    try:
        with pytest.raises(KeyError, match="boom"):
            with GrpcSink(server.url, collection, **FAST) as sink:
                sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
                server.fail_next(10, grpc.StatusCode.UNAVAILABLE, methods=["Upsert", "Delete"])
                sink.upsert_batch(batch(5))
                raise KeyError("boom")  # the failing upsert must not mask this
    finally:
        server.clear_faults()


def test_non_transient_errors_are_not_retried(server: QdrantGrpcServer, collection: str) -> None:
    with GrpcSink(server.url, collection, **FAST) as sink:
        sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
        server.reset_calls()
        server.fail_next(1, grpc.StatusCode.PERMISSION_DENIED, methods=["Upsert"])
        with pytest.raises(qflume.SinkError, match=rf"{collection}.*PERMISSION_DENIED"):
            sink.upsert_batch(batch(5))
            sink.flush()
        assert server.calls["Points/Upsert"] == 1


def test_wrong_vector_size_is_a_clear_error(server: QdrantGrpcServer, collection: str) -> None:
    with GrpcSink(server.url, collection, **FAST) as sink:
        sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
        with pytest.raises(qflume.ShapeError, match=r"size 5 .* size 8"):
            sink.upsert(make_ids(2), np.zeros((2, 5), np.float32), [{}, {}])
        with pytest.raises(qflume.ShapeError, match=r"size 8, but .* size 16"):
            sink.ensure_collection(CollectionSpec(dim=16, sparse=("bm25",)))
        with pytest.raises(qflume.ShapeError, match=r"Cosine distance, but Dot"):
            sink.ensure_collection(CollectionSpec(dim=8, distance="Dot", sparse=("bm25",)))
        with pytest.raises(qflume.ShapeError, match=r"no sparse vector named 'splade'"):
            sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25", "splade")))
    # A second sink that did not create the collection learns its size from the server.
    with GrpcSink(server.url, collection, **FAST) as other:
        with pytest.raises(qflume.ShapeError, match=r"size 3 .* size 8"):
            other.upsert(make_ids(1), np.zeros((1, 3), np.float32), [{}])


def test_missing_collection(server: QdrantGrpcServer, collection: str) -> None:
    with GrpcSink(server.url, collection, **FAST) as sink:
        assert sink.count() == 0
        assert list(sink.scroll()) == []
        assert sink.retrieve(make_ids(2)) == []
        with pytest.raises(qflume.SinkError, match="ensure_collection"):
            sink.upsert(make_ids(1), np.zeros((1, 3), np.float32), [{}])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_is_a_clear_error_quickly() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    sink = GrpcSink(url, "c", retries=1, backoff=(0.01, 0.02), timeout=5.0)
    with pytest.raises(qflume.SinkError, match=rf"{url}.*UNAVAILABLE"):
        sink.ensure_collection(CollectionSpec(dim=4))
    sink.close()


def test_api_key(collection: str) -> None:
    with QdrantGrpcServer(api_key="s3cret") as srv:
        with pytest.raises(qflume.SinkError, match=r"check the api_key.*UNAUTHENTICATED"):
            GrpcSink(srv.url, collection, **FAST).ensure_collection(CollectionSpec(dim=4))
        with GrpcSink(srv.url, collection, api_key="s3cret", **FAST) as sink:
            sink.ensure_collection(CollectionSpec(dim=4))
            sink.upsert(make_ids(3), np.ones((3, 4), np.float32), [{}] * 3)
            assert sink.count() == 3


class _CountOnly(qg.PointsServicer):  # type: ignore[misc]
    """A Points service that answers Count with 7 and records the api-key it was sent."""

    def __init__(self) -> None:
        self.keys: list[str | None] = []

    def Count(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.keys.append(dict(context.invocation_metadata()).get("api-key"))
        return qg.CountResponse(result=qg.CountResult(count=7))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_and_api_key(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    service = _CountOnly()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    qg.add_PointsServicer_to_server(service, server)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        url = f"https://localhost:{port}"
        with GrpcSink(url, "c", api_key="k3y", root_certificates=cert.read_bytes()) as sink:
            assert sink.count() == 7
        assert service.keys == ["k3y"]
        # An untrusted certificate is refused (no retries: it will not get better).
        with GrpcSink(url, "c", retries=0, timeout=5.0) as sink:
            with pytest.raises(qflume.SinkError, match="UNAVAILABLE"):
                sink.count()
        # tls=False against a TLS port fails too, instead of sending the key in clear.
        with GrpcSink(url, "c", tls=False, retries=0, timeout=5.0) as sink:
            with pytest.raises(qflume.SinkError):
                sink.count()
        assert service.keys == ["k3y"]
    finally:
        server.stop(None)


def test_dropped_connections_are_retried(server: QdrantGrpcServer, collection: str) -> None:
    b = batch(40)
    with GrpcSink(server.url, collection, batch_points=10, retries=6, backoff=(0.02, 0.2)) as sink:
        sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
        sink.upsert_batch(b)
        server.drop_connections()
        sink.upsert_batch(batch(40, seed=7))
        assert sink.count() == 80


def test_wait_true_and_closed_sink(server: QdrantGrpcServer, collection: str) -> None:
    sink = GrpcSink(server.url, collection, wait=True, **FAST)
    sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
    sink.upsert_batch(batch(10))
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(qflume.SinkError, match="closed"):
        sink.upsert_batch(batch(1))
    with pytest.raises(qflume.SinkError, match="closed"):
        sink.count()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"batch_bytes": 64 * 1024 * 1024}, "batch_bytes"),
        ({"retries": -1}, "retries"),
    ],
)
def test_bad_options(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(qflume.InvalidInputError, match=match):
        GrpcSink("http://127.0.0.1:6334", "c", **kwargs)


def test_bad_url() -> None:
    with pytest.raises(qflume.InvalidInputError, match="scheme"):
        GrpcSink("ftp://x:1", "c")


@real_server
def test_real_server_round_trip(collection: str) -> None:
    from qdrant_client import QdrantClient

    url = os.environ["QDRANT_URL"]
    key = os.environ.get("QDRANT_API_KEY")
    b = batch(100)
    with GrpcSink(url, collection, api_key=key) as sink:
        sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
        sink.upsert_batch(b)
        sink.flush()
        # QDRANT_URL is the gRPC endpoint: the client's REST version check would speak HTTP/1 to it.
        port = urllib.parse.urlsplit(url).port or 6334
        client = QdrantClient(
            url=url, api_key=key, prefer_grpc=True, grpc_port=port, check_compatibility=False
        )
        try:
            assert client.count(collection, exact=True).count == 100
            (p,) = client.retrieve(collection, uuids(b.ids[:1]), with_vectors=True)
            assert p.payload == b.payload(0)
        finally:
            client.delete_collection(collection)
            client.close()


@real_server
def test_real_server_returns_payload_doubles_within_one_ulp(collection: str) -> None:
    """What users meet on Qdrant itself (README): payload doubles can come back 1 ulp off
    (-1.4000000000000001 as -1.4), never more; integers and strings come back exactly.
    test_pack pins that qflume sends them bit-exact."""
    rng = np.random.default_rng(3)
    values = [float(x) for x in rng.normal(0, 10, 1000)] + [-1.4000000000000001, 0.1 + 0.2]
    ints = [int(x) for x in rng.integers(-(2**62), 2**62, len(values))]
    ids = make_ids(len(values))
    payloads = [{"v": v, "i": i, "s": repr(v)} for v, i in zip(values, ints, strict=True)]
    url = os.environ["QDRANT_URL"]
    with GrpcSink(url, collection, api_key=os.environ.get("QDRANT_API_KEY")) as sink:
        try:
            sink.ensure_collection(CollectionSpec(dim=4))
            sink.upsert(ids, rng.normal(size=(len(values), 4)).astype(np.float32), payloads)
            sink.flush()
            back = {str(r.id): r.payload for r in sink.scroll(with_payload=True)}
        finally:
            drop_collection(url, collection)
    got = [back[u] for u in uuids(ids)]
    assert [g["i"] for g in got] == ints and [g["s"] for g in got] == [p["s"] for p in payloads]
    returned = np.array([g["v"] for g in got])
    ulps = np.abs(returned.view(np.int64) - np.array(values).view(np.int64))
    assert ulps.max() <= 1
    print(f"{int((ulps > 0).sum())} of {len(values)} doubles came back 1 ulp off")


# --------------------------------------------------------------------------- adaptive batching


def _many(sink: GrpcSink, n_batches: int, size: int, seed: int = 1000) -> None:
    for i in range(n_batches):
        sink.upsert_batch(batch(size, seed=seed + i))


def test_adaptive_grows_requests_in_flight_against_a_slow_server(collection: str) -> None:
    """A server that answers every upsert 50 ms late, whatever the load: the sink keeps adding
    requests in flight (up to its bound) and everything lands; a fixed sink stays at 4."""
    with QdrantGrpcServer() as srv:
        srv.set_latency(0.05, methods=["Upsert"])
        with GrpcSink(srv.url, collection, batch_points=32, **FAST) as sink:
            sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
            assert sink.adaptive is not None and sink.adaptive.in_flight == 4
            _many(sink, 60, 32)
            sink.flush()
            assert sink.adaptive.in_flight > 8, vars(sink.adaptive)
            assert sink.count() == 60 * 32
        with GrpcSink(srv.url, collection + "_f", batch_points=32, adaptive=False, **FAST) as sink:
            sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
            _many(sink, 10, 32)
            assert sink._in_flight() == 4


def test_adaptive_backs_off_on_failures_and_timeouts(collection: str) -> None:
    """Overload (a timeout, RESOURCE_EXHAUSTED) halves the requests in flight and the request
    size, a dropped connection takes one request in flight away (the same batches then travel in more, smaller requests); nothing is
    lost, and the size grows back once the server answers again."""
    with QdrantGrpcServer() as srv:
        with GrpcSink(srv.url, collection, batch_points=128, max_in_flight=8, **FAST) as sink:
            sink.ensure_collection(CollectionSpec(dim=8, sparse=("bm25",)))
            ad = sink.adaptive
            assert ad is not None
            srv.fail_next(1, grpc.StatusCode.RESOURCE_EXHAUSTED, methods=["Upsert"])
            sink.upsert_batch(batch(128, seed=1))
            sink.flush()
            assert ad.in_flight == 4 and ad.points == 64, vars(ad)
            before = srv.calls["Points/Upsert"]
            sink.upsert_batch(batch(128, seed=2))
            sink.flush()
            assert srv.calls["Points/Upsert"] - before == 2  # 128 points in two requests of 64
            srv.fail_next(2, grpc.StatusCode.UNAVAILABLE, methods=["Upsert"])
            _many(sink, 4, 128)
            sink.flush()
            assert ad.in_flight <= 3 and ad.shrunk >= 3
            # answers again: the request size grows back to its bound
            _many(sink, 40, 128, seed=2000)
            sink.flush()
            assert ad.points == 128
            assert sink.count() == 2 * 128 + 44 * 128
