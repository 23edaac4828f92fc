"""AsyncPipeline: same results as Pipeline, and a slow Qdrant never blocks the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qflume
from qflume.aio import AsyncPipeline
from qflume.exceptions import InvalidInputError
from qflume.pipeline import Pipeline
from qflume.sinks.base import Sink
from qflume.sinks.grpc import GrpcSink
from qflume.testing import QdrantGrpcServer

TEXTS = [
    "The garbage collector frees objects that are no longer reachable from any root.",
    "Sockets let two processes exchange bytes over a network connection.",
    "A decorator wraps a function to change what it does without editing it.",
    "Regular expressions match patterns of characters inside strings.",
]


def _records() -> list[dict]:
    return [{"id": f"r{i}", "text": t, "metadata": {"i": i}} for i, t in enumerate(TEXTS)]


def test_same_semantics_as_pipeline(tmp_path: Path, embedder) -> None:
    async def main() -> None:
        async with qflume.AsyncPipeline(
            "a", store=tmp_path / "s", embedder=embedder, progress=False
        ) as ap:
            rep = await ap.ingest_records(_records())
            assert rep.points_upserted == len(TEXTS)
            (hits,) = await ap.search(["how are unreachable objects freed?"], limit=2)
            assert hits[0].source == "r0"
            pid = hits[0].id
            res = await ap.update_payload([{"id": pid, "increment": {"metadata.uses": 1}}])
            assert res == [{"index": 0, "ok": True, "points": 1}]
            res = await ap.delete(sources=["r3"])
            assert res[0]["ok"] and res[0]["deleted"] == 1
            st = await ap.status()
            assert st["points"] == len(TEXTS) - 1 and st["documents"] == len(TEXTS) - 1
            assert (await ap.health())["ok"]
            assert (await ap.verify())["ok"]

    asyncio.run(main())

    with Pipeline("a", store=tmp_path / "s", embedder=embedder, progress=False) as p:
        (hits,) = p.search(["how are unreachable objects freed?"], limit=1)
        assert hits[0].metadata["uses"] == 1


def test_async_iterable_records_and_files(tmp_path: Path, embedder) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(TEXTS[1], encoding="utf-8")

    async def gen():
        for r in _records():
            await asyncio.sleep(0)
            yield r

    async def main() -> None:
        async with AsyncPipeline(
            "b", store=tmp_path / "s", embedder=embedder, progress=False
        ) as ap:
            rep = await ap.ingest_records(gen())
            assert rep.documents_new == len(TEXTS)
            rep = await ap.ingest(tmp_path / "docs")
            assert rep.documents_new == 1
            assert (await ap.status())["points"] == len(TEXTS) + 1

    asyncio.run(main())


def _has_grpc_search() -> bool:
    return GrpcSink.query_batch is not Sink.query_batch


@pytest.mark.parametrize("op", ["search", "update_payload", "status"])
def test_slow_qdrant_does_not_block_the_event_loop(tmp_path: Path, embedder, op: str) -> None:
    if op == "search" and not _has_grpc_search():
        pytest.skip("GrpcSink.query_batch is not implemented yet")
    with QdrantGrpcServer() as server:

        async def main() -> tuple[int, float, object]:
            ap = AsyncPipeline(
                "slow", url=server.url, state_dir=tmp_path, embedder=embedder, progress=False
            )
            await ap.ingest_records(_records())
            server.set_latency(0.5)
            ticks = 0
            done = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not done.is_set():
                    await asyncio.sleep(0.01)
                    ticks += 1

            t = asyncio.create_task(ticker())
            t0 = time.perf_counter()
            if op == "search":
                result: object = await ap.search(["sockets", "decorators"], limit=1)
            elif op == "update_payload":
                result = await ap.update_payload([{"source": "r1", "set": {"metadata.k": 1}}])
            else:
                result = await ap.status()
            took = time.perf_counter() - t0
            done.set()
            await t
            server.set_latency(0)
            await ap.aclose()
            return ticks, took, result

        ticks, took, result = asyncio.run(main())
    assert took >= 0.5  # the call really waited on the slow server
    # The loop kept running the whole time: at 10 ms per tick, 0.5 s is ~50 ticks; a blocked
    # loop gets at most one or two.
    assert ticks >= 10, (ticks, took)
    if op == "search":
        assert [h[0].source for h in result] == ["r1", "r2"]  # type: ignore[index, attr-defined]
    elif op == "update_payload":
        assert result == [{"index": 0, "ok": True, "points": 1}]


def test_cancelling_an_ingest_stops_it_cleanly(tmp_path: Path, embedder) -> None:
    many = [{"id": f"d{i}", "text": f"{TEXTS[i % 4]} Number {i}."} for i in range(400)]

    async def main() -> None:
        ap = AsyncPipeline(
            "c", store=tmp_path / "s", embedder=embedder, progress=False, batch_chunks=8
        )
        task = asyncio.create_task(ap.ingest_records(many))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await ap.aclose()  # waits for the run to drain and commit

    asyncio.run(main())
    with Pipeline("c", store=tmp_path / "s", embedder=embedder, progress=False) as p:
        assert p.verify()["ok"]
        rep = p.ingest_records(many)  # finishes the job: nothing twice, nothing lost
        assert p.state.stats().documents == 400
        assert rep.documents_unchanged + rep.documents_new == 400


def test_bad_construction() -> None:
    with pytest.raises(InvalidInputError, match="collection name or pipeline"):
        AsyncPipeline()
    with pytest.raises(InvalidInputError, match="read_threads"):
        AsyncPipeline(pipeline=object(), read_threads=0)


async def _while_ticking(work: Any) -> tuple[Any, int, float, float]:
    """Await `work` while a task ticks every ~1 ms: (result, ticks, longest gap, seconds)."""
    ticks, gap = 0, 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks, gap
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            ticks, gap, last = ticks + 1, max(gap, now - last), now

    t = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker is running before the work starts
    t0 = time.perf_counter()
    result = await work
    took = time.perf_counter() - t0
    done.set()
    await t
    return result, ticks, gap, took


def _many_texts() -> list[str]:
    return [f"{TEXTS[i % 4]} Item {i} of the list, with a few more words." for i in range(100)]


def test_aembed_never_blocks_the_event_loop(embedder) -> None:
    texts = _many_texts()
    want = embedder.embed(texts)

    async def main() -> tuple[Any, ...]:
        out = await _while_ticking(embedder.aembed(texts))
        q = await embedder.aembed_query(TEXTS[1])
        both = await asyncio.gather(embedder.aembed(texts[:50]), embedder.aembed(texts[50:60]))
        return (*out, q, both)

    got, ticks, gap, took, q, both = asyncio.run(main())
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(q, embedder.embed_query(TEXTS[1]))
    assert np.array_equal(both[0], want[:50]) and np.array_equal(both[1], want[50:60])
    # A blocked loop ticks once or twice in the whole call; a free one ~once per ms, less
    # the time the GIL is held by the tokenizer's Python side.
    assert took > 0.1, "too little work to tell"
    assert ticks >= 20 and gap < max(0.1, took / 3), (ticks, gap, took)
    with pytest.raises(InvalidInputError, match="aembed_query"):
        asyncio.run(embedder.aembed("one text"))


def test_async_pipeline_aembed_loads_the_model_off_the_loop(tmp_path: Path, embedder) -> None:
    texts = _many_texts()
    want = embedder.embed(texts)
    loads = []

    class Counted(Pipeline):
        @property
        def embedder(self) -> Any:  # the lazy load, counted, and where it runs
            loads.append(threading.current_thread().name)
            return embedder

    async def main() -> tuple[Any, ...]:
        ap = AsyncPipeline(pipeline=Counted("e", store=tmp_path / "s", progress=False))
        out = await _while_ticking(ap.aembed(texts))
        q = await ap.aembed_query(TEXTS[2])
        await ap.aclose()
        return (*out, q)

    got, ticks, gap, took, q = asyncio.run(main())
    assert np.array_equal(got, want) and np.array_equal(q, embedder.embed_query(TEXTS[2]))
    assert loads and all(name.startswith("qflume-aio-read") for name in loads), loads
    assert took > 0.1 and ticks >= 20 and gap < max(0.1, took / 3), (ticks, gap, took)
