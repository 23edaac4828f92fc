"""Metrics registry, exports (JSON, Prometheus text checked by prometheus_client's parser), health."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from qflume import metrics
from qflume.metrics import Metrics, health, rss_bytes, status_report
from qflume.pipeline import Pipeline
from qflume.sinks.base import CollectionSpec
from qflume.sinks.edge import EdgeSink
from qflume.testing import QdrantGrpcServer

parser = pytest.importorskip("prometheus_client.parser")


def test_latency_percentiles_counts_errors() -> None:
    m = Metrics(window=1000)
    for i in range(1, 101):  # 1..100 ms
        m.observe("search", i / 1000, items=10, error=(i % 10 == 0))
    (s,) = m.snapshot()["operations"]
    assert s["op"] == "search" and s["count"] == 100 and s["items"] == 1000
    assert s["failed"] == 10 and s["error_rate"] == pytest.approx(0.1)
    want = np.percentile(np.arange(1, 101) / 1000, [50, 90, 95, 99])
    got = [s["p50_s"], s["p90_s"], s["p95_s"], s["p99_s"]]
    assert got == pytest.approx(want, abs=1e-6)
    assert s["max_s"] == pytest.approx(0.1)
    assert s["items_per_s"] > 0 and s["items_per_busy_s"] == pytest.approx(1000 / 5.05, rel=1e-3)


def test_reservoir_is_bounded_and_recent() -> None:
    m = Metrics(window=50)
    for _ in range(1000):
        m.observe("x", 1.0)
    for _ in range(50):
        m.observe("x", 0.001)
    (s,) = m.snapshot()["operations"]
    assert s["count"] == 1050 and s["p99_s"] == pytest.approx(0.001)


def test_item_errors_labels_gauges_and_timer() -> None:
    m = Metrics()
    m.observe("update_payload", 0.01, items=100, errors=3)
    m.observe("ingest", 0.2, items=256, stage="embed")
    m.observe("ingest", 0.1, items=256, stage="write")
    m.gauge("queue_depth", value=3, stage="embed")
    m.gauge("queue_depth", 5, stage="embed")
    with pytest.raises(ZeroDivisionError), m.timer("boom"):
        1 / 0  # noqa: B018
    with m.timer("fine", items=7):
        pass
    snap = m.to_json()
    json.dumps(snap)
    ops = {(o["op"], o["labels"].get("stage")): o for o in snap["operations"]}
    assert ops[("update_payload", None)]["errors"] == 3
    assert ops[("update_payload", None)]["item_error_rate"] == pytest.approx(0.03)
    assert ops[("ingest", "embed")]["items"] == 256 and ops[("ingest", "write")]["count"] == 1
    assert ops[("boom", None)]["failed"] == 1 and ops[("fine", None)]["items"] == 7
    assert snap["gauges"] == [{"name": "queue_depth", "labels": {"stage": "embed"}, "value": 5.0}]
    assert snap["process"]["rss_bytes"] == pytest.approx(rss_bytes(), rel=0.5)
    with pytest.raises(ValueError, match="not a valid name"):
        m.observe("bad name", 1.0)
    with pytest.raises(ValueError, match="give a value"):
        m.gauge("queue_depth", stage="x")


def test_thread_safe() -> None:
    m = Metrics()

    def work() -> None:
        for _ in range(2000):
            m.observe("op", 0.001, items=2)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    (s,) = m.snapshot()["operations"]
    assert s["count"] == 8000 and s["items"] == 16000


def test_prometheus_text_parses() -> None:
    m = Metrics()
    m.observe("search", 0.02, items=100)
    m.observe("ingest", 0.5, items=10, stage='we"ird\\st\nage')
    m.gauge("queue_depth", value=2, stage="embed")
    text = m.to_prometheus()
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    dur = fams["qflume_operation_duration_seconds"]
    assert dur.type == "summary"
    q = {
        (s.labels["op"], s.labels.get("quantile")): s.value
        for s in dur.samples
        if s.name == dur.name
    }
    assert q[("search", "0.5")] == pytest.approx(0.02)
    stages = {s.labels.get("stage") for s in dur.samples}
    assert 'we"ird\\st\nage' in stages
    assert fams["qflume_queue_depth"].samples[0].value == 2
    assert fams["qflume_process_resident_memory_bytes"].samples[0].value > 0
    errors = fams["qflume_operation_errors"]  # the parser strips _total from counters
    assert errors.type == "counter"


def test_module_registry_records_qflume_operations(tmp_path: Path) -> None:
    metrics.reset()
    sink = EdgeSink(tmp_path, "m", spec=CollectionSpec(dim=4))
    from qflume import ops

    ops.update_payload(sink, [{"id": "00000000-0000-4000-8000-000000000000", "set": {"a": 1}}])
    (s,) = metrics.to_json()["operations"]
    assert s["op"] == "update_payload" and s["errors"] == 1
    assert "qflume_operation_duration_seconds" in metrics.to_prometheus()
    sink.close()


def test_health_of_a_sound_pipeline_and_its_problems(tmp_path: Path, embedder) -> None:
    recs = [{"id": "a", "text": "The quick brown fox. " * 40}, {"id": "b", "text": "Lorem ipsum."}]
    with Pipeline(
        "h", store=tmp_path / "s", embedder=embedder, chunk_chars=1000, progress=False
    ) as p:
        p.ingest_records(recs)
        h = health(p)
        assert h == {**h, "ok": True, "score": 100, "problems": []}
        assert h["checks"]["vector_size"] == {"collection": 384, "embedder": 384}
        # Memory budget exceeded, disk "near full" (asks for more than exists).
        h = health(p, max_rss=1024, min_free_ratio=0.999)
        codes = {x["code"] for x in h["problems"]}
        assert "memory_over_budget" in codes and codes & {"disk_near_full", "disk_full"}
        assert not h["ok"] and 0 <= h["score"] < 100
        # Points the state does not know (another writer): state behind the collection.
        p.sink.upsert(
            ["00000000-0000-4000-8000-000000000001"],
            np.ones((1, 384), np.float32),
            [{"page_content": "x", "metadata": {"source": "elsewhere"}}],
        )
        h = health(p)
        assert [x["code"] for x in h["problems"]] == ["state_behind"]
        report = status_report(p)
        assert report["collection_info"]["points"] == report["health"]["checks"]["points"] == 3
        assert report["health"]["problems"][0]["code"] == "state_behind"
        json.dumps(report, default=str)

    # A collection built with another model: vector size mismatch, found without loading it.
    EdgeSink(tmp_path / "s2", "h", spec=CollectionSpec(dim=8)).close()
    with Pipeline("h", store=tmp_path / "s2", progress=False) as p:
        h = health(p)
        assert p._embedder is None  # the model was not loaded to check
        (prob,) = h["problems"]
        assert prob["code"] == "vector_size_mismatch" and "8" in prob["message"]
        assert h["score"] <= 40


def test_health_server_unreachable(tmp_path: Path, embedder) -> None:
    server = QdrantGrpcServer().start()
    url = server.url
    with Pipeline("h", url=url, state_dir=tmp_path, embedder=embedder, progress=False) as p:
        p.ingest_records([{"id": "a", "text": "Some text to store."}])
        assert health(p)["ok"]
        assert status_report(p)["collection_info"]["points"] == 1
        server.close()
        p.sink.timeout = 2.0
        p.sink.retries = 0
        h = health(p)
        assert not h["ok"] and h["score"] == 0
        assert h["problems"][0]["code"] == "server_unreachable"
        assert "h" in h["problems"][0]["message"]


def test_recent_window_counters_cpu_and_the_servers_storage_figures(tmp_path: Path) -> None:
    m = Metrics()
    m.observe("rpc", 0.3, method="Upsert")
    m.observe("rpc", 0.1, error=True, method="Upsert")
    m.observe("rpc", 0.2, method="Get")
    w = m.recent("rpc", 60, method="Upsert")
    assert (w["count"], w["failed"], w["error_rate"]) == (2, 1, 0.5)
    assert w["max_s"] == pytest.approx(0.3) and w["mean_s"] == pytest.approx(0.2)
    assert m.recent("rpc", 60)["count"] == 3 and m.recent("*", 60)["count"] == 3
    assert m.recent("rpc", 1e-9) is None and m.recent("nothing", 60) is None
    m.inc("sent_bytes", 100)
    m.inc("sent_bytes", 24)
    m.inc("errors", code="UNAVAILABLE")
    assert m.counter("sent_bytes") == 124 and m.counter("errors", code="UNAVAILABLE") == 1
    with pytest.raises(ValueError, match="finite value >= 0"):
        m.inc("sent_bytes", -1)
    fams = {f.name: f for f in parser.text_string_to_metric_families(m.to_prometheus())}
    assert fams["qflume_sent_bytes"].type == "counter"
    assert fams["qflume_sent_bytes"].samples[0].value == 124
    assert fams["qflume_errors"].samples[0].labels == {"code": "UNAVAILABLE"}
    assert fams["qflume_process_cpu_seconds"].samples[0].value > 0
    assert m.snapshot()["process"]["cpu_s"] > 0
    # a server's collection: its optimizer status, pending updates and segments
    from qflume.sinks.grpc import GrpcSink

    with QdrantGrpcServer() as srv, GrpcSink(srv.url, "c") as sink:
        sink.ensure_collection(CollectionSpec(dim=4))
        info = metrics.collection_info(sink)
        assert info["optimizer"] == "ok" and info["segments"] >= 1 and info["warnings"] == []
    # the embedded store's size on disk
    edge = EdgeSink(tmp_path, "e", spec=CollectionSpec(dim=4))
    edge.upsert(["00000000-0000-4000-8000-000000000001"], np.ones((1, 4), np.float32), [{}])
    edge.flush()
    assert metrics.collection_info(edge)["disk_bytes"] == metrics.disk_bytes(tmp_path / "e") > 0
    edge.close()


def test_alerts_take_off_the_health_score_but_never_make_it_fatal(tmp_path: Path) -> None:
    from qflume.alerts import AlertMonitor

    reg = Metrics()
    mon = AlertMonitor(
        ["memory:rss>1MB:critical", "memory:rss>2MB:critical", "memory:rss>3MB:high"],
        registry=reg,
        on_alert=lambda e: None,
        collect_memory=False,
    )
    mon.check()
    sink = EdgeSink(tmp_path, "h", spec=CollectionSpec(dim=4))
    h = health(sink, alerts=mon)
    assert h["problems"] == [] and len(h["alerts"]) == 3 and not h["ok"]
    assert h["score"] == 100 - 30 - 30 - 15
    more = AlertMonitor(
        [f"memory:rss>{n}MB:critical" for n in range(1, 6)],
        registry=reg,
        on_alert=lambda e: None,
        collect_memory=False,
    )
    more.check()
    assert health(sink, alerts=more)["score"] == 21  # never the 20 of a fatal problem
    sink.close()
