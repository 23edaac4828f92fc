"""A server that goes away mid-run: the ingest goes on embedding and spools its updates to an
outbox on disk, sends them in order when the server is back, and commits the state only for
what the server acknowledged. Against the in-process gRPC server (stopped and started again on
the same port and storage) and, with QDRANT_BIN, a real Qdrant server killed and restarted.

Each test compares the final point set (ids, vectors, payloads) with an undisturbed run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qflume.exceptions import SinkError
from qflume.pipeline import Pipeline
from qflume.sinks.grpc import GrpcSink
from qflume.testing import QdrantGrpcServer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_pipeline import _real_texts

    root = tmp_path_factory.mktemp("corpus")
    for name, text in _real_texts(24):
        (root / name).write_text(text, encoding="utf-8")
    return root


def _points(url: str, collection: str) -> dict[str, tuple[bytes, str]]:
    with GrpcSink(url, collection) as sink:
        return {
            str(r.id): (
                np.asarray(r.vector, np.float32).tobytes(),
                json.dumps(r.payload, sort_keys=True),
            )
            for r in sink.scroll(with_payload=True, with_vectors=True)
        }


def _sink(url: str, collection: str, state: Path, **kw: Any) -> GrpcSink:
    kw.setdefault("outage_deadline", 120.0)
    return GrpcSink(url, collection, outbox=state / f"{collection}.outbox", retries=2,
                    backoff=(0.01, 0.05), probe_interval=0.1, **kw)  # fmt: skip


def _pipeline(url: str, collection: str, state: Path, embedder: Any, **kw: Any) -> Pipeline:
    return Pipeline(collection, url=url, state_dir=state, embedder=embedder, progress=False,
                    batch_chunks=16, sink=_sink(url, collection, state, **kw))  # fmt: skip


def _wait(cond: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(corpus: Path, embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The point set of an undisturbed run (ids, vectors, payloads)."""
    tmp = tmp_path_factory.mktemp("ref")
    with QdrantGrpcServer(tmp / "qdrant") as server:
        with _pipeline(server.url, "docs", tmp / "state", embedder) as p:
            p.ingest([corpus])
        yield _points(server.url, "docs")


def test_an_outage_mid_run_is_spooled_and_sent_when_the_server_is_back(
    corpus: Path, embedder: Any, reference: Any, tmp_path: Path
) -> None:
    with QdrantGrpcServer(tmp_path / "qdrant") as server:
        pipe = _pipeline(server.url, "docs", tmp_path / "state", embedder)
        sink = pipe.sink
        assert isinstance(sink, GrpcSink)
        out: dict[str, Any] = {}
        run = threading.Thread(target=lambda: out.update(report=pipe.ingest([corpus])))
        run.start()
        _wait(lambda: server.calls["Points/Upsert"] >= 2, "the first upserts")
        server.stop()
        # the run goes on: planned and embedded batches land in the outbox, in order
        _wait(lambda: sink.spooled >= 4, "updates spooled while the server is down")
        assert sink.spooling and run.is_alive()
        box = tmp_path / "state" / "docs.outbox"
        assert box.stat().st_size > 0
        server.start()
        run.join(300)
        assert not run.is_alive()
        report = out["report"]
        assert report.outages == 1 and report.spooled_requests >= 4 and report.outage_s > 0
        assert not sink.spooling
        assert not box.exists() or box.stat().st_size == 0  # drained
        pipe.close()
        assert not box.exists()
        assert _points(server.url, "docs") == reference
        with _pipeline(server.url, "docs", tmp_path / "state", embedder) as p:
            again = p.ingest([corpus])
            assert again.documents_unchanged == len(list(corpus.iterdir()))
            assert again.points_upserted == 0
            assert p.verify()["ok"]


def test_an_outage_past_the_deadline_fails_clearly_and_the_rerun_converges(
    corpus: Path, embedder: Any, reference: Any, tmp_path: Path
) -> None:
    with QdrantGrpcServer(tmp_path / "qdrant") as server:
        with _pipeline(server.url, "docs", tmp_path / "state", embedder, outage_deadline=1.0) as p:
            sink = p.sink
            assert isinstance(sink, GrpcSink)
            stopper = threading.Thread(
                target=lambda: (
                    _wait(lambda: server.calls["Points/Upsert"] >= 2, "upserts"),
                    server.stop(),
                )
            )
            stopper.start()
            with pytest.raises(SinkError) as info:
                p.ingest([corpus])
            stopper.join()
        msg = str(info.value)
        assert f"Qdrant at {server.url}" in msg and "stayed unreachable for" in msg, msg
        assert "outage_deadline=1 s" in msg and "the next run sends them again" in msg, msg
        server.start()
        with _pipeline(server.url, "docs", tmp_path / "state", embedder) as p:
            report = p.ingest([corpus])
            assert report.cache_hits > 0  # what was embedded during the outage is not paid again
        assert _points(server.url, "docs") == reference


def test_a_full_outbox_fails_clearly(corpus: Path, embedder: Any, tmp_path: Path) -> None:
    with QdrantGrpcServer(tmp_path / "qdrant") as server:
        with _pipeline(server.url, "docs", tmp_path / "state", embedder, outbox_bytes=50_000) as p:
            stopper = threading.Thread(
                target=lambda: (
                    _wait(lambda: server.calls["Points/Upsert"] >= 1, "upserts"),
                    server.stop(),
                )
            )
            stopper.start()
            with pytest.raises(SinkError, match=r"the outbox is full \(50000 bytes\)"):
                p.ingest([corpus])
            stopper.join()
            # the run failed: closing does not wait out the outage (outage_deadline is 120 s
            # here); nothing of the outbox was committed, the next run sends it again
            t = time.monotonic()
            p.close()
            assert time.monotonic() - t < 30
        server.start()  # for the with-block's stop


def test_sigkill_while_spooled_then_rerun_converges(
    corpus: Path, embedder: Any, reference: Any, tmp_path: Path
) -> None:
    """The ingest process is killed while its updates wait in the outbox: nothing of them was
    committed, so the rerun (the server back) plans them again, discards the stale outbox and
    ends with the undisturbed point set."""
    state = tmp_path / "state"
    with QdrantGrpcServer(tmp_path / "qdrant") as server:
        cmd = [sys.executable, "-m", "qflume", "ingest", str(corpus), "-c", "docs", "--url",
               server.url, "--state-dir", str(state), "--no-progress", "--chunk-tokens", "64"]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            _wait(lambda: server.calls["Points/Upsert"] >= 2 or child.poll() is not None,
                  "the child's first upserts", 300)  # fmt: skip
            assert child.poll() is None, child.communicate()
            server.stop()
            box = state / "docs.outbox"
            _wait(lambda: (box.exists() and box.stat().st_size > 0) or child.poll() is not None,
                  "the child spooling", 300)  # fmt: skip
            assert child.poll() is None, child.communicate()
            os.kill(child.pid, signal.SIGKILL)
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
            child.communicate()
        assert box.stat().st_size > 0  # killed with requests in the outbox
        server.start()
        with Pipeline("docs", url=server.url, state_dir=state, embedder=embedder,
                      progress=False) as p:  # fmt: skip
            p.ingest([corpus])
            assert p.verify()["ok"]
        assert not box.exists()
        assert _points(server.url, "docs") == reference
