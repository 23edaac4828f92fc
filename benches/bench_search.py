"""Batch search and bulk payload updates: qflume vs qdrant-client, same store, same model.

Search: the Python docs (Debian's python3.11-doc; a slice of ~40 library pages) are ingested
with the default model (all-MiniLM-L6-v2) into an embedded store and copied into qflume's test
gRPC server (Qdrant Edge behind Qdrant's gRPC API on loopback). 100 queries (real sentences) run:

- qflume: `Pipeline.search(queries)`: the 100 queries embedded in one model call and sent as one
  QueryBatch request (through the test server; also on the embedded store);
- qdrant-client: 100 single searches, each query embedded with the same Embedder then
  `query_points` (one request each), and, as a second peer, `query_batch_points` with one request.

Payload updates: 10K points in the test server; qflume's `update_payload` (set, and increments:
read-modify-write) vs a loop of qdrant-client `set_payload` calls, one per point.

    .venv/bin/python -m pytest benches/bench_search.py --benchmark-only -q -s

The gRPC contenders also run with 2 ms added to every request by the test server (a LAN round
trip), where one request instead of 100 shows. queries/s, p50/p99 latency (for a batch, every query waits for the whole batch) and points/s are
in each benchmark's extra_info and printed at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from _corpus import DOCS, require_docs

qdrant_client = pytest.importorskip("qdrant_client")
from qdrant_client import models as m  # noqa: E402

import qflume  # noqa: E402
from qflume import ops  # noqa: E402
from qflume.pipeline import Pipeline  # noqa: E402
from qflume.sinks.base import CollectionSpec, Sink, SparseBatch  # noqa: E402
from qflume.sinks.grpc import GrpcSink  # noqa: E402
from qflume.testing import QdrantGrpcServer  # noqa: E402

N_FILES = int(os.environ.get("QFLUME_BENCH_FILES", "40"))
N_QUERIES = 100
N_UPDATE = int(os.environ.get("QFLUME_BENCH_UPDATE_POINTS", "10000"))
RESULTS: dict[str, dict[str, Any]] = {}

require_docs()


def _lat(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {
        "p50_ms": round(float(np.percentile(a, 50)) * 1e3, 2),
        "p99_ms": round(float(np.percentile(a, 99)) * 1e3, 2),
    }


@pytest.fixture(scope="module")
def embedder():
    return qflume.Embedder()


@pytest.fixture(scope="module")
def docs(tmp_path_factory, embedder):
    """(embedded pipeline, gRPC pipeline, server, queries)."""
    root = tmp_path_factory.mktemp("docs")
    files = sorted(
        f for f in (DOCS / "library").glob("*.rst.txt") if 4000 <= f.stat().st_size <= 30000
    )
    step = max(1, len(files) // N_FILES)
    for f in files[::step][:N_FILES]:
        shutil.copy(f, root / f.name)
    local = Pipeline(
        "bench",
        store=tmp_path_factory.mktemp("store"),
        embedder=embedder,
        sparse="bm25",
        progress=False,
    )
    rep = local.ingest(root)
    print(f"\ningested {rep.documents_seen} docs, {rep.points_upserted} points")
    server = QdrantGrpcServer().start()
    remote = Pipeline(
        "bench",
        url=server.url,
        state_dir=tmp_path_factory.mktemp("state"),
        embedder=embedder,
        sparse="bm25",
        progress=False,
    )
    recs = list(local.sink.scroll(with_payload=True, with_vectors=True))
    sink = remote.sink
    sink.ensure_collection(CollectionSpec(dim=embedder.dim, sparse=("bm25",)))
    indptr, idx, val = [0], [], []
    for r in recs:
        i, v = (r.sparse or {}).get("bm25", ([], []))
        idx.extend(i)
        val.extend(v)
        indptr.append(len(idx))
    sink.upsert(
        [r.id for r in recs],
        np.stack([r.vector for r in recs]).astype(np.float32),
        [r.payload for r in recs],
        sparse={
            "bm25": SparseBatch(
                np.asarray(indptr, np.int64),
                np.asarray(idx, np.uint32),
                np.asarray(val, np.float32),
            )
        },
    )
    sink.flush()
    sentences = []
    for r in recs:
        for s in re.split(r"(?<=\.)\s+(?=[A-Z])", r.payload["page_content"]):
            s = " ".join(s.split())
            if 8 <= len(s.split()) <= 30:
                sentences.append(s)
                break
    queries = sentences[:: max(1, len(sentences) // N_QUERIES)][:N_QUERIES]
    assert len(queries) == N_QUERIES
    yield local, remote, server, queries
    remote.close()
    local.close()
    server.close()


def _grpc_search() -> bool:
    return GrpcSink.query_batch is not Sink.query_batch


RTT = pytest.mark.parametrize("rtt_ms", [0, 2], ids=["loopback", "rtt2ms"])


def _timed(
    benchmark: Any,
    fn: Callable[[], Any],
    rounds: int,
    warmup_rounds: int = 1,
    check: Callable[[Any], None] | None = None,
) -> list[float]:
    """Run `fn` under `benchmark.pedantic`; the wall time of each call (the warm-up's included).

    `check`, if given, gets each call's result after its time is taken.
    """
    times: list[float] = []

    def run() -> None:
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        if check is not None:
            check(out)

    benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup_rounds)
    return times


def _timed_each(
    benchmark: Any, items: Any, fn: Callable[[Any], Any], rounds: int = 3
) -> tuple[list[float], list[float]]:
    """`fn` on each item in turn under `benchmark.pedantic`: (time of each round, of each call)."""
    per_call: list[float] = []
    round_times: list[float] = []

    def run() -> None:
        t0 = time.perf_counter()
        for item in items:
            t = time.perf_counter()
            fn(item)
            per_call.append(time.perf_counter() - t)
        round_times.append(time.perf_counter() - t0)

    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
    return round_times, per_call


def _all_answered(out: Any) -> None:
    assert len(out) == N_QUERIES and all(out)


@RTT
def test_qflume_batch_search_grpc(benchmark, docs, rtt_ms: int) -> None:
    if not _grpc_search():
        pytest.skip("GrpcSink.query_batch is not implemented yet")
    _, remote, server, queries = docs
    server.set_latency(rtt_ms / 1000)
    times = _timed(benchmark, lambda: remote.search(queries, limit=10), 5, check=_all_answered)
    server.set_latency(0)
    _record(benchmark, f"qflume search, 100 as one batch (gRPC, +{rtt_ms} ms)", times, False)


def test_qflume_batch_search_embedded(benchmark, docs) -> None:
    local, _, _, queries = docs
    times = _timed(benchmark, lambda: local.search(queries, limit=10), 5, check=_all_answered)
    _record(benchmark, "qflume search, 100 as one batch (embedded Edge)", times, per_query=False)


@RTT
def test_qdrant_client_single_searches(benchmark, docs, embedder, rtt_ms: int) -> None:
    _, _, server, queries = docs
    client = server.client()
    server.set_latency(rtt_ms / 1000)

    def one(q: str) -> None:
        vec = embedder.embed([q])[0]
        hits = client.query_points("bench", query=vec.tolist(), limit=10, with_payload=True)
        assert hits.points

    rounds, per_query = _timed_each(benchmark, queries, one)
    server.set_latency(0)
    _record(benchmark, f"qdrant-client, 100 single query_points (+{rtt_ms} ms)", rounds, per_query)
    client.close()


@RTT
def test_qdrant_client_query_batch(benchmark, docs, embedder, rtt_ms: int) -> None:
    _, _, server, queries = docs
    client = server.client()
    server.set_latency(rtt_ms / 1000)

    def run() -> None:
        vecs = embedder.embed(queries)
        res = client.query_batch_points(
            "bench",
            [m.QueryRequest(query=v.tolist(), limit=10, with_payload=True) for v in vecs],
        )
        assert len(res) == N_QUERIES

    times = _timed(benchmark, run, 5)
    server.set_latency(0)
    _record(benchmark, f"qdrant-client, query_batch_points (+{rtt_ms} ms)", times, False)
    client.close()


@pytest.fixture(scope="module")
def query_vectors(docs, embedder):
    return embedder.embed(docs[3])


@RTT
def test_search_only_qdrant_client_single(benchmark, docs, query_vectors, rtt_ms: int) -> None:
    """Without the model: 100 pre-embedded queries, one request each."""
    server = docs[2]
    client = server.client()
    server.set_latency(rtt_ms / 1000)
    rounds, per_query = _timed_each(
        benchmark,
        query_vectors,
        lambda v: client.query_points("bench", query=v.tolist(), limit=10, with_payload=True),
    )
    server.set_latency(0)
    _record(
        benchmark, f"no model: qdrant-client 100 query_points (+{rtt_ms} ms)", rounds, per_query
    )
    client.close()


@RTT
def test_search_only_qdrant_client_batch(benchmark, docs, query_vectors, rtt_ms: int) -> None:
    server = docs[2]
    client = server.client()
    server.set_latency(rtt_ms / 1000)
    reqs = [m.QueryRequest(query=v.tolist(), limit=10, with_payload=True) for v in query_vectors]
    times = _timed(benchmark, lambda: client.query_batch_points("bench", reqs), 5)
    server.set_latency(0)
    _record(benchmark, f"no model: qdrant-client query_batch_points (+{rtt_ms} ms)", times, False)
    client.close()


@RTT
def test_search_only_qflume_sink_grpc(benchmark, docs, query_vectors, rtt_ms: int) -> None:
    if not _grpc_search():
        pytest.skip("GrpcSink.query_batch is not implemented yet")
    from qflume.sinks.base import QueryRequest

    remote, server = docs[1], docs[2]
    server.set_latency(rtt_ms / 1000)
    reqs = [QueryRequest(dense=v, limit=10) for v in query_vectors]
    times = _timed(benchmark, lambda: remote.sink.query_batch(reqs), 5)
    server.set_latency(0)
    _record(benchmark, f"no model: qflume GrpcSink.query_batch (+{rtt_ms} ms)", times, False)


def test_search_only_qflume_sink_embedded(benchmark, docs, query_vectors) -> None:
    from qflume.sinks.base import QueryRequest

    local = docs[0]
    reqs = [QueryRequest(dense=v, limit=10) for v in query_vectors]
    times = _timed(benchmark, lambda: local.sink.query_batch(reqs), 5)
    _record(benchmark, "no model: qflume EdgeSink.query_batch (embedded)", times, False)


def _record(benchmark: Any, name: str, rounds: list[float], per_query: Any) -> None:
    best = float(np.median(rounds))
    info: dict[str, Any] = {"queries_per_s": round(N_QUERIES / best, 1)}
    if per_query is False:  # a batch: each query's latency is the whole batch
        info.update(_lat(rounds))
    else:
        info.update(_lat(per_query))
    benchmark.extra_info.update(info)
    RESULTS[name] = info


# --- bulk payload updates -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def update_store():
    """N_UPDATE points (random 384-d vectors, doc-like payloads) in a fresh test server."""
    server = QdrantGrpcServer().start()
    sink = GrpcSink(server.url, "upd")
    sink.ensure_collection(CollectionSpec(dim=384))
    rng = np.random.default_rng(0)
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(N_UPDATE)]
    for lo in range(0, N_UPDATE, 1000):
        part = ids[lo : lo + 1000]
        sink.upsert(
            part,
            rng.standard_normal((len(part), 384)).astype(np.float32),
            [
                {
                    "page_content": f"chunk {lo + i}",
                    "metadata": {"source": f"doc{(lo + i) // 20}", "chunk_index": i},
                }
                for i in range(len(part))
            ],
        )
    sink.flush()
    yield server, sink, ids
    sink.close()
    server.close()


def _all_ok(res: Any) -> None:
    assert all(r["ok"] for r in res)


def test_qflume_update_payload_set(benchmark, update_store) -> None:
    _, sink, ids = update_store
    times = _timed(
        benchmark,
        lambda: ops.update_payload(
            sink, [{"id": p, "set": {"metadata.reviewed": True}} for p in ids]
        ),
        3,
        warmup_rounds=0,
        check=_all_ok,
    )
    _record_update(benchmark, "qflume update_payload set, 10K points", times)


def test_qflume_update_payload_increment(benchmark, update_store) -> None:
    _, sink, ids = update_store

    def run() -> Any:
        return ops.update_payload(
            sink,
            [
                {"id": p, "increment": {"metadata.usage_count": 1}, "set_now": ["metadata.used"]}
                for p in ids
            ],
        )

    times = _timed(benchmark, run, 3, warmup_rounds=0, check=_all_ok)
    _record_update(benchmark, "qflume update_payload increment+set_now, 10K", times)
    (rec,) = sink.retrieve([ids[0]])
    assert rec.payload["metadata"]["usage_count"] == 3


def test_qdrant_client_set_payload_loop(benchmark, update_store) -> None:
    server, _, ids = update_store
    client = server.client()

    def run() -> None:
        for p in ids:
            client.set_payload("upd", payload={"reviewed": True}, points=[p], key="metadata")

    times = _timed(benchmark, run, 1, warmup_rounds=0)
    _record_update(benchmark, "qdrant-client set_payload loop, 10K", times)
    client.close()


def _record_update(benchmark: Any, name: str, times: list[float]) -> None:
    best = float(np.median(times))
    info = {"points_per_s": round(N_UPDATE / best, 1), "seconds": round(best, 3)}
    benchmark.extra_info.update(info)
    RESULTS[name] = info


def teardown_module() -> None:
    if RESULTS:
        print("\n--- bench_search results ---")
        for name, info in RESULTS.items():
            print(f"{name:50s} {info}")
