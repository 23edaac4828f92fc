"""Upload throughput: N points (384-d float32, ~1 KB chunk text + metadata) into Qdrant.

Targets, side by side in one run:
- a Qdrant Edge shard in process: qflume's EdgeSink.upsert_batch vs the raw qdrant-edge-py loop
  (Point objects from numpy rows + payload dicts, one update per batch);
- qflume's test server (QdrantGrpcServer, Qdrant Edge behind Qdrant's gRPC API on loopback):
  qdrant-client's upload_points vs qflume's GrpcSink (when present), same batch size;
- a real Qdrant server over loopback gRPC (QDRANT_BIN: a qdrant binary this bench starts, or
  QDRANT_URL): qflume's GrpcSink vs qdrant-client's upload_points and upload_collection, the same
  points and batch size (skipped without one).

Texts are ~1 KB slices of the Python documentation (Debian's python3.11-doc), falling back to the
standard library sources. Vectors are random: this measures the upload path, not a model.

    .venv/bin/python -m pytest benches/bench_upload.py --benchmark-only -q
    QFLUME_BENCH_POINTS=20000 .venv/bin/python -m pytest benches/bench_upload.py --benchmark-only
    QDRANT_BIN=../shared/bin/qdrant QFLUME_BENCH_POINTS=20000 \
        .venv/bin/python -m pytest benches/bench_upload.py --benchmark-only -k real -s

Points/s = N / mean seconds (printed in `extra_info` and at the end of the run).
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

qe = pytest.importorskip("qdrant_edge")
qdrant_client = pytest.importorskip("qdrant_client")
from qdrant_client import models as m  # noqa: E402

from qflume.sinks import CollectionSpec, EdgeSink, PointBatch  # noqa: E402
from qflume.sinks.edge import ids_to_strings  # noqa: E402
from qflume.testing import QdrantGrpcServer, QdrantServer  # noqa: E402

N = int(os.environ.get("QFLUME_BENCH_POINTS", "100000"))
DIM = 384
BATCH = 256  # points per request / update, the same for every contender
DOCS = Path("/usr/share/doc/python3.11/html/_sources")
CHUNK_CHARS = 900


def _texts(n: int) -> tuple[list[str], list[str]]:
    """n ~1 KB chunks of real text and the source file of each."""
    files = sorted(DOCS.rglob("*.rst.txt")) if DOCS.is_dir() else []
    if not files:
        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if not files:
        pytest.skip("no corpus: install python3.11-doc (apt) or a CPython stdlib")
    texts: list[str] = []
    sources: list[str] = []
    while len(texts) < n:
        for f in files:
            data = f.read_text("utf-8", errors="replace")
            for lo in range(0, len(data) - CHUNK_CHARS // 2, CHUNK_CHARS):
                texts.append(data[lo : lo + CHUNK_CHARS])
                sources.append(str(f))
                if len(texts) == n:
                    return texts, sources
    return texts, sources


class Corpus:
    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(0)
        self.n = n
        self.ids = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        self.id_strings = ids_to_strings(self.ids)
        self.dense = rng.standard_normal((n, DIM), dtype=np.float32)
        self.texts, sources = _texts(n)
        doc_of: dict[str, int] = {}
        doc_index = np.empty(n, dtype=np.int64)
        chunk_index = np.empty(n, dtype=np.int64)
        counts: dict[int, int] = {}
        for i, s in enumerate(sources):
            d = doc_of.setdefault(s, len(doc_of))
            doc_index[i] = d
            chunk_index[i] = counts.get(d, 0)
            counts[d] = chunk_index[i] + 1
        self.doc_metadata = [
            {"source": s, "title": Path(s).name, "lang": "en"}
            for s in sorted(doc_of, key=doc_of.get)  # type: ignore[arg-type]
        ]
        self.doc_index = doc_index
        self.chunk_index = chunk_index
        self.start = chunk_index * CHUNK_CHARS
        self.end = self.start + np.array([len(t) for t in self.texts], dtype=np.int64)
        self.chunk_hash = rng.integers(0, 256, (n, 16), dtype=np.uint8)

    def batch(self, lo: int, hi: int) -> PointBatch:
        return PointBatch(
            ids=self.ids[lo:hi],
            dense=self.dense[lo:hi],
            texts=self.texts[lo:hi],
            doc_index=self.doc_index[lo:hi],
            doc_metadata=self.doc_metadata,
            chunk_index=self.chunk_index[lo:hi],
            start=self.start[lo:hi],
            end=self.end[lo:hi],
            chunk_hash=self.chunk_hash[lo:hi],
        )

    def payload(self, i: int) -> dict[str, Any]:
        meta = dict(self.doc_metadata[int(self.doc_index[i])])
        meta["chunk_index"] = int(self.chunk_index[i])
        meta["start"] = int(self.start[i])
        meta["end"] = int(self.end[i])
        meta["content_hash"] = self.chunk_hash[i].tobytes().hex()
        return {"page_content": self.texts[i], "metadata": meta}


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(N)


@pytest.fixture(scope="module")
def server() -> Iterator[QdrantGrpcServer]:
    with QdrantGrpcServer() as s:
        yield s


def _report(benchmark: Any, target: str) -> None:
    benchmark.extra_info["target"] = target
    benchmark.extra_info["points"] = N
    mean = benchmark.stats.stats.mean if benchmark.stats else None
    if mean:
        benchmark.extra_info["points_per_s"] = round(N / mean)
        print(f"\n{benchmark.name}: {N / mean:,.0f} points/s into {target} (N={N})")


_counter = iter(range(1_000_000))


def _edge_round(tmp: str) -> tuple[tuple[str], dict[str, Any]]:
    return (os.path.join(tmp, f"c{next(_counter)}"),), {}


def test_edge_qflume_edgesink(benchmark: Any, corpus: Corpus, tmp_path: Path) -> None:
    def run(path: str) -> None:
        with EdgeSink(path, "bench", spec=CollectionSpec(dim=DIM), optimize_threshold=None) as sink:
            for lo in range(0, corpus.n, BATCH):
                sink.upsert_batch(corpus.batch(lo, min(corpus.n, lo + BATCH)))
            sink.flush()
            assert sink.count() == corpus.n

    benchmark.pedantic(run, setup=lambda: _edge_round(str(tmp_path)), rounds=2, iterations=1)
    _report(benchmark, "Qdrant Edge shard (EdgeSink.upsert_batch)")


def test_edge_raw_qdrant_edge_loop(benchmark: Any, corpus: Corpus, tmp_path: Path) -> None:
    def run(path: str) -> None:
        shard = qe.EdgeShard.create(
            path, qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine))
        )
        for lo in range(0, corpus.n, BATCH):
            hi = min(corpus.n, lo + BATCH)
            points = [
                qe.Point(corpus.id_strings[i], corpus.dense[i].tolist(), corpus.payload(i))
                for i in range(lo, hi)
            ]
            shard.update(qe.UpdateOperation.upsert_points(points))
        shard.flush()
        assert shard.count(qe.CountRequest(exact=True)) == corpus.n
        shard.close()

    benchmark.pedantic(run, setup=lambda: _edge_round(str(tmp_path)), rounds=2, iterations=1)
    _report(benchmark, "Qdrant Edge shard (raw qdrant-edge-py loop)")


def _fresh_collection(server: QdrantGrpcServer) -> tuple[tuple[str], dict[str, Any]]:
    name = f"bench{next(_counter)}"
    client = server.client()
    client.create_collection(
        name, vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE)
    )
    client.close()
    return (name,), {}


def test_server_qdrant_client_upload_points(
    benchmark: Any, corpus: Corpus, server: QdrantGrpcServer
) -> None:
    client = server.client(timeout=600)

    def points() -> Iterator[m.PointStruct]:
        for i in range(corpus.n):
            yield m.PointStruct(
                id=corpus.id_strings[i], vector=corpus.dense[i].tolist(), payload=corpus.payload(i)
            )

    def run(name: str) -> None:
        client.upload_points(name, points(), batch_size=BATCH, parallel=1, wait=True)
        assert client.count(name).count == corpus.n
        client.delete_collection(name)

    benchmark.pedantic(run, setup=lambda: _fresh_collection(server), rounds=1, iterations=1)
    client.close()
    _report(benchmark, "qflume test server on loopback gRPC (qdrant-client upload_points)")


def test_server_qflume_grpcsink(benchmark: Any, corpus: Corpus, server: QdrantGrpcServer) -> None:
    grpc_sink = pytest.importorskip("qflume.sinks.grpc", reason="qflume.sinks.grpc not built yet")

    def run(name: str) -> None:
        with grpc_sink.GrpcSink(server.url, name) as sink:
            sink.ensure_collection(CollectionSpec(dim=DIM))
            for lo in range(0, corpus.n, BATCH):
                sink.upsert_batch(corpus.batch(lo, min(corpus.n, lo + BATCH)))
            sink.flush()
            assert sink.count() == corpus.n
        client = server.client()
        client.delete_collection(name)
        client.close()

    benchmark.pedantic(
        run,
        setup=lambda: ((f"sink{next(_counter)}",), {}),
        rounds=1,
        iterations=1,
    )
    _report(benchmark, "qflume test server on loopback gRPC (qflume GrpcSink)")


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def real_url() -> Iterator[str]:
    if os.environ.get("QDRANT_URL"):
        yield os.environ["QDRANT_URL"]
        return
    if not os.environ.get("QDRANT_BIN"):
        pytest.skip("no real Qdrant server: set QDRANT_BIN to a qdrant binary, or QDRANT_URL")
    with QdrantServer(os.environ["QDRANT_BIN"]) as s:
        yield s.url


def _real_client(url: str) -> Any:
    import urllib.parse

    return qdrant_client.QdrantClient(
        url=url,
        api_key=os.environ.get("QDRANT_API_KEY"),
        prefer_grpc=True,
        grpc_port=urllib.parse.urlsplit(url).port or 6334,
        check_compatibility=False,  # the version check speaks REST
        timeout=600,
    )


REAL_PATHS = ["qflume GrpcSink", "qdrant-client upload_collection", "qdrant-client upload_points"]


@pytest.mark.parametrize("path", REAL_PATHS)
def test_real_server_upload(benchmark: Any, corpus: Corpus, real_url: str, path: str) -> None:
    from qflume.sinks import GrpcSink

    client = _real_client(real_url)

    def fresh() -> tuple[tuple[str], dict[str, Any]]:
        name = f"bench_real_{next(_counter)}"
        if path != "qflume GrpcSink":  # GrpcSink creates its own, with the same parameters
            client.create_collection(
                name, vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE)
            )
        return (name,), {}

    def run(name: str) -> None:
        if path == "qflume GrpcSink":
            with GrpcSink(real_url, name, api_key=os.environ.get("QDRANT_API_KEY")) as sink:
                sink.ensure_collection(CollectionSpec(dim=DIM))
                for lo in range(0, corpus.n, BATCH):
                    sink.upsert_batch(corpus.batch(lo, min(corpus.n, lo + BATCH)))
                sink.flush()
        elif path == "qdrant-client upload_collection":
            client.upload_collection(
                name,
                vectors=corpus.dense,
                payload=(corpus.payload(i) for i in range(corpus.n)),
                ids=corpus.id_strings,
                batch_size=BATCH,
                parallel=1,
                wait=True,
            )
        else:
            client.upload_points(
                name,
                (
                    m.PointStruct(
                        id=corpus.id_strings[i],
                        vector=corpus.dense[i].tolist(),
                        payload=corpus.payload(i),
                    )
                    for i in range(corpus.n)
                ),
                batch_size=BATCH,
                parallel=1,
                wait=True,
            )
        assert client.count(name, exact=True).count == corpus.n
        client.delete_collection(name)

    benchmark.pedantic(run, setup=fresh, rounds=3, iterations=1)
    client.close()
    _report(benchmark, f"a real Qdrant server on loopback gRPC ({path})")
