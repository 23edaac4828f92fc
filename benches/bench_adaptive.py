"""Adaptive batching on the write path: GrpcSink with a fixed 4 requests in flight vs adaptive
(AIMD on requests in flight and points per request), against qflume's test server made slow or
flaky. The same N points (384-d float32 vectors, short texts) for both, one run each.

- slow: every upsert answered 200 ms late (QdrantGrpcServer.set_latency), whatever the load,
  as a remote server or a loaded one behind a network would;
- flaky: one upsert in ten fails with UNAVAILABLE (retried by the sink after a backoff).

    .venv/bin/python -m pytest benches/bench_adaptive.py --benchmark-only -s
    QFLUME_BENCH_POINTS=40000 ...

Reported: points/s (N / seconds, flush included) and where the adaptive sink ended.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

import grpc
import numpy as np
import pytest

from qflume.sinks import CollectionSpec, GrpcSink, PointBatch
from qflume.testing import QdrantGrpcServer

N = int(os.environ.get("QFLUME_BENCH_POINTS", "32768"))
BATCH = 256
DIM = 384
RESULTS: dict[str, float] = {}


def _batches() -> list[PointBatch]:
    rng = np.random.default_rng(7)
    out = []
    for b in range(N // BATCH):
        n = BATCH
        out.append(
            PointBatch(
                ids=rng.integers(0, 256, (n, 16), dtype=np.uint8),
                dense=rng.standard_normal((n, DIM)).astype(np.float32),
                texts=[f"chunk {b}-{i} of the adaptive batching bench" for i in range(n)],
                doc_index=np.zeros(n, np.int64),
                doc_metadata=[{"source": f"bench/{b}.txt"}],
                chunk_index=np.arange(n, dtype=np.int64),
                start=np.arange(n, dtype=np.int64) * 10,
                end=np.arange(n, dtype=np.int64) * 10 + 9,
                chunk_hash=rng.integers(0, 256, (n, 16), dtype=np.uint8),
            )
        )
    return out


@pytest.fixture(scope="module")
def batches() -> list[PointBatch]:
    return _batches()


@pytest.mark.parametrize("fault", ["slow", "flaky"])
@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_upload_under_faults(
    benchmark: Any, batches: list[PointBatch], fault: str, mode: str
) -> None:
    rng = random.Random(3)
    with QdrantGrpcServer(max_workers=64) as server:
        if fault == "slow":
            server.set_latency(0.2, methods=["Upsert"])
        name = f"b_{uuid.uuid4().hex[:8]}"
        sink = GrpcSink(server.url, name, adaptive=mode == "adaptive", backoff=(0.05, 1.0))
        sink.ensure_collection(CollectionSpec(dim=DIM))

        def run() -> float:
            t = time.perf_counter()
            for b in batches:
                if fault == "flaky" and rng.random() < 0.1:
                    server.fail_next(1, grpc.StatusCode.UNAVAILABLE, methods=["Upsert"])
                sink.upsert_batch(b)
            sink.flush()
            return time.perf_counter() - t

        took: list[float] = []
        benchmark.pedantic(lambda: took.append(run()), rounds=1, iterations=1)
        assert sink.count() == len(batches) * BATCH
        rate = len(batches) * BATCH / took[-1]
        ad = sink.adaptive
        where = (
            f"ended at {ad.in_flight} in flight, {ad.points} points/request"
            if ad is not None
            else "4 in flight, 256 points/request"
        )
        benchmark.extra_info.update({"points_per_s": round(rate), "retried": sink.retried})
        RESULTS[f"{fault}/{mode}"] = rate
        print(f"\n{fault:5} {mode:8}: {rate:9,.0f} points/s ({where}; {sink.retried} retries)")
        sink.close()
