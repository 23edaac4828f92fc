"""Packing Qdrant upserts: qflume's Rust packer vs qdrant-client's Python paths, side by side.

100K points of 384-d float32 with ~1 KB payloads (chunk text cut from the CPython standard
library sources, plus LangChain-style metadata). Each row reports points/s and the peak RSS growth
of one run. Run:

    .venv/bin/python -m pytest benches/bench_pack.py --benchmark-only -q

Peers:
- qdrant-client PointStruct path: models.PointStruct from numpy rows (row.tolist()), converted
  with RestToGrpc.convert_point_struct, serialized as UpsertPoints batches (what `upsert` does).
- qdrant-client upload_collection path: what its gRPC uploader does per batch (grpc.PointStruct
  with convert_vector_struct(row) and payload_to_grpc(payload)), serialized.
- protobuf serialization alone: UpsertPoints(points=prebuilt grpc points).SerializeToString().

Optional (slower) upload comparison to the in-process test server: QFLUME_BENCH_UPLOAD=1.
"""

from __future__ import annotations

import gc
import os
import sysconfig
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qflume import _core, content_hash, get_threads, point_id, set_threads

N = int(os.environ.get("QFLUME_BENCH_POINTS", "100000"))
DIM = 384
BATCH = 256
CHUNK_CHARS = 900
RESULTS: dict[str, tuple[float, float | None]] = {}


# --- corpus -------------------------------------------------------------------------------------


def _corpus_texts(n: int) -> tuple[list[str], list[str], np.ndarray]:
    """n ~900-char chunks of the stdlib sources: (texts, source of each doc, doc index per chunk)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    if not files:
        pytest.skip(f"no Python sources under {root} to build the corpus from")
    texts: list[str] = []
    sources: list[str] = []
    doc_index: list[int] = []
    cycle = 0
    while len(texts) < n:
        for f in files:
            try:
                data = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if len(data) < CHUNK_CHARS:
                continue
            d = len(sources)
            sources.append(str(f.relative_to(root)) + (f"#{cycle}" if cycle else ""))
            for a in range(0, len(data) - CHUNK_CHARS + 1, CHUNK_CHARS):
                texts.append(data[a : a + CHUNK_CHARS])
                doc_index.append(d)
                if len(texts) == n:
                    return texts, sources, np.asarray(doc_index, dtype=np.int64)
        cycle += 1
    return texts, sources, np.asarray(doc_index, dtype=np.int64)


class Data:
    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(0)
        self.texts, sources, self.doc_index = _corpus_texts(n)
        self.doc_metadata = [
            {"source": s, "title": Path(s).stem, "lang": "python", "tags": ["stdlib", "code"]}
            for s in sources
        ]
        self.dense = rng.standard_normal((n, DIM)).astype(np.float32)
        self.chunk_hash = np.frombuffer(
            b"".join(content_hash(t) for t in self.texts), dtype=np.uint8
        ).reshape(n, 16)
        self.uuids = [
            point_id(sources[int(d)], self.chunk_hash[i].tobytes())
            for i, d in enumerate(self.doc_index)
        ]
        self.ids = np.frombuffer(
            b"".join(uuid.UUID(u).bytes for u in self.uuids), dtype=np.uint8
        ).reshape(n, 16)
        first = np.searchsorted(self.doc_index, self.doc_index)
        self.chunk_index = np.arange(n, dtype=np.int64) - first
        self.start = self.chunk_index * CHUNK_CHARS
        self.end = self.start + CHUNK_CHARS

    def payload(self, i: int) -> dict[str, Any]:
        meta = dict(self.doc_metadata[int(self.doc_index[i])])
        meta.update(
            chunk_index=int(self.chunk_index[i]),
            start=int(self.start[i]),
            end=int(self.end[i]),
            content_hash=self.chunk_hash[i].tobytes().hex(),
        )
        return {"page_content": self.texts[i], "metadata": meta}

    def columns(self, a: int, b: int) -> dict[str, Any]:
        d0 = int(self.doc_index[a])
        d1 = int(self.doc_index[b - 1]) + 1
        return {
            "texts": self.texts[a:b],
            "doc_index": self.doc_index[a:b] - d0,
            "doc_metadata": self.doc_metadata[d0:d1],
            "chunk_index": self.chunk_index[a:b],
            "start": self.start[a:b],
            "end": self.end[a:b],
            "chunk_hash": self.chunk_hash[a:b],
        }


@pytest.fixture(scope="module")
def data() -> Data:
    return Data(N)


@pytest.fixture(scope="module")
def payloads(data: Data) -> list[dict[str, Any]]:
    return [data.payload(i) for i in range(N)]


def _writer(config: pytest.Config) -> Callable[[str], None]:
    """Prints past pytest's output capture, so the summary shows in a normal run."""
    capman = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if capman is None:
            print(line)
            return
        with capman.global_and_fixture_disabled():
            print(line, flush=True)

    return write


@pytest.fixture(scope="module", autouse=True)
def report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not RESULTS:
        return
    write = _writer(request.config)
    base = RESULTS.get("qdrant-client upload_collection path", (0.0, None))[0]
    write("")
    write(f"packing {N} points of {DIM}-d float32 + ~1 KB payload (best run)")
    write(f"{'path':48} {'points/s':>12} {'x numpy path':>13} {'peak RSS +MB':>13}")
    for name, (pps, rss) in RESULTS.items():
        ratio = f"{pps / base:12.1f}x" if base else "            -"
        mem = f"{rss:13.0f}" if rss is not None else "            -"
        write(f"{name:48} {pps:12,.0f} {ratio} {mem}")


# --- measuring ----------------------------------------------------------------------------------


def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb(fn: Callable[[], Any]) -> float | None:
    """Peak RSS growth (MB) while fn runs once (Linux: resets the high-water mark first)."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = _rss_kb("VmRSS")
    fn()
    peak = _rss_kb("VmHWM")
    if before is None or peak is None:
        return None
    return (peak - before) / 1024


def run(benchmark: Any, name: str, fn: Callable[[], Any], rounds: int) -> None:
    mem = peak_rss_mb(fn)
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    pps = N / benchmark.stats.stats.min
    benchmark.extra_info.update(points_per_s=round(pps), peak_rss_mb=mem)
    RESULTS[name] = (pps, mem)


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = get_threads()
    set_threads(1)
    yield
    set_threads(before)


# --- qflume -------------------------------------------------------------------------------------


def test_qflume_stream_columnar_1_thread(benchmark: Any, data: Data, one_thread: None) -> None:
    """What GrpcSink.upsert_batch does: pack a batch, send it, drop it (1024 points per call)."""

    def go() -> int:
        sent = 0
        for a in range(0, N, 1024):
            b = min(a + 1024, N)
            msgs = _core.pack_upsert(
                "bench", data.ids[a:b], data.dense[a:b], max_points=BATCH, **data.columns(a, b)
            )
            sent += sum(map(len, msgs))
        return sent

    run(benchmark, "qflume stream, columnar payload, 1 thread", go, rounds=5)


def test_qflume_all_at_once_columnar_1_thread(benchmark: Any, data: Data, one_thread: None) -> None:
    def go() -> list[bytes]:
        return _core.pack_upsert(
            "bench", data.ids, data.dense, max_points=BATCH, **data.columns(0, N)
        )

    run(benchmark, "qflume all 100K at once, columnar, 1 thread", go, rounds=3)


def test_qflume_all_at_once_columnar_all_threads(benchmark: Any, data: Data) -> None:
    def go() -> list[bytes]:
        return _core.pack_upsert(
            "bench", data.ids, data.dense, max_points=BATCH, **data.columns(0, N)
        )

    run(benchmark, f"qflume all at once, columnar, {get_threads()} threads", go, rounds=3)


def test_qflume_stream_dict_payloads_1_thread(
    benchmark: Any, data: Data, payloads: list[dict[str, Any]], one_thread: None
) -> None:
    def go() -> int:
        sent = 0
        for a in range(0, N, 1024):
            b = min(a + 1024, N)
            msgs = _core.pack_upsert(
                "bench", data.ids[a:b], data.dense[a:b], payloads=payloads[a:b], max_points=BATCH
            )
            sent += sum(map(len, msgs))
        return sent

    run(benchmark, "qflume stream, dict payloads, 1 thread", go, rounds=3)


# --- qdrant-client ------------------------------------------------------------------------------


def test_qdrant_client_pointstruct_path(
    benchmark: Any, data: Data, payloads: list[dict[str, Any]]
) -> None:
    from qdrant_client import grpc as qg
    from qdrant_client import models
    from qdrant_client.conversions.conversion import RestToGrpc

    def go() -> int:
        points = [
            models.PointStruct(id=data.uuids[i], vector=data.dense[i].tolist(), payload=payloads[i])
            for i in range(N)
        ]
        grpc_points = [RestToGrpc.convert_point_struct(p) for p in points]
        sent = 0
        for a in range(0, N, BATCH):
            msg = qg.UpsertPoints(
                collection_name="bench", wait=False, points=grpc_points[a : a + BATCH]
            )
            sent += len(msg.SerializeToString())
        return sent

    run(benchmark, "qdrant-client PointStruct path", go, rounds=1)


def test_qdrant_client_upload_collection_path(
    benchmark: Any, data: Data, payloads: list[dict[str, Any]]
) -> None:
    from qdrant_client import grpc as qg
    from qdrant_client.conversions.conversion import RestToGrpc, payload_to_grpc

    try:
        from qdrant_client.uploader.grpc_uploader import convert_vector_struct
    except ImportError:  # older qdrant-client: the list path

        def convert_vector_struct(v: Any) -> Any:
            return RestToGrpc.convert_vector_struct(v.tolist())

    def go() -> int:
        sent = 0
        for a in range(0, N, BATCH):
            b = min(a + BATCH, N)
            points = [
                qg.PointStruct(
                    id=RestToGrpc.convert_extended_point_id(data.uuids[i]),
                    vectors=convert_vector_struct(data.dense[i]),
                    payload=payload_to_grpc(payloads[i]),
                )
                for i in range(a, b)
            ]
            msg = qg.UpsertPoints(collection_name="bench", wait=False, points=points)
            sent += len(msg.SerializeToString())
        return sent

    run(benchmark, "qdrant-client upload_collection path", go, rounds=3)


def test_protobuf_serialization_alone(
    benchmark: Any, data: Data, payloads: list[dict[str, Any]]
) -> None:
    from qdrant_client import grpc as qg
    from qdrant_client.conversions.conversion import RestToGrpc, payload_to_grpc

    points = [
        qg.PointStruct(
            id=RestToGrpc.convert_extended_point_id(data.uuids[i]),
            vectors=qg.Vectors(vector=qg.Vector(dense=qg.DenseVector(data=data.dense[i]))),
            payload=payload_to_grpc(payloads[i]),
        )
        for i in range(N)
    ]

    def go() -> int:
        sent = 0
        for a in range(0, N, BATCH):
            msg = qg.UpsertPoints(collection_name="bench", wait=False, points=points[a : a + BATCH])
            sent += len(msg.SerializeToString())
        return sent

    run(benchmark, "protobuf serialization alone (prebuilt objects)", go, rounds=3)


# --- upload to the in-process test server (optional) --------------------------------------------

UPLOAD = os.environ.get("QFLUME_BENCH_UPLOAD") == "1"


@pytest.mark.skipif(not UPLOAD, reason="set QFLUME_BENCH_UPLOAD=1 to time uploads")
def test_upload_to_test_server(
    benchmark: Any, request: pytest.FixtureRequest, data: Data, payloads: list[dict[str, Any]]
) -> None:
    from qdrant_client import models

    from qflume.sinks import CollectionSpec, GrpcSink, PointBatch
    from qflume.testing import QdrantGrpcServer

    n = min(N, int(os.environ.get("QFLUME_BENCH_UPLOAD_POINTS", "20000")))
    write = _writer(request.config)
    with QdrantGrpcServer() as server:
        rates = {}
        for in_flight in (1, 4):
            name = f"qflume{in_flight}"
            with GrpcSink(server.url, name, max_in_flight=in_flight, batch_points=BATCH) as sink:
                sink.ensure_collection(CollectionSpec(dim=DIM))
                t = time.perf_counter()
                for a in range(0, n, 1024):
                    b = min(a + 1024, n)
                    sink.upsert_batch(
                        PointBatch(ids=data.ids[a:b], dense=data.dense[a:b], **data.columns(a, b))
                    )
                sink.flush()
                rates[in_flight] = n / (time.perf_counter() - t)
        benchmark.extra_info.update(points_per_s=rates)
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)

        client = server.client()
        client.create_collection(
            "peer", models.VectorParams(size=DIM, distance=models.Distance.COSINE)
        )
        t = time.perf_counter()
        client.upload_collection(
            "peer", vectors=data.dense[:n], payload=payloads[:n], ids=data.uuids[:n],
            batch_size=BATCH, wait=True,
        )  # fmt: skip
        p = n / (time.perf_counter() - t)
        unique = len(set(data.uuids[:n]))  # a repeated chunk of a document is one point
        assert client.count("qflume4").count == unique == client.count("peer").count
        client.close()
    write(
        f"upload of {n} points ({BATCH} per request) to qflume.testing.QdrantGrpcServer "
        f"(in-process Python + Qdrant Edge): qflume GrpcSink {rates[1]:,.0f} points/s with 1 "
        f"request in flight, {rates[4]:,.0f} with 4; qdrant-client upload_collection "
        f"{p:,.0f} points/s"
    )
