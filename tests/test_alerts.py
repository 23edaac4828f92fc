"""Alerts (qflume.alerts), resources, the limiting stage and KPIs of an ingest, on the real
pipeline with the tiny BERT: the in-process gRPC test server made slow and failing, the
embedded store, the CLI in a subprocess."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import qflume
from qflume import alerts, analysis, metrics
from qflume.alerts import AlertMonitor, Threshold
from qflume.exceptions import InvalidInputError
from qflume.metrics import Metrics
from qflume.pipeline import Pipeline
from qflume.testing import QdrantGrpcServer
from tiny_bert import WORDS, make_tiny_bert, tiny_corpus

parser = pytest.importorskip("prometheus_client.parser")


@pytest.fixture(scope="module")
def tiny_dir(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("tiny-emb")
    make_tiny_bert(root / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QFLUME_CACHE_DIR", str(root / "cache"))
        mp.setenv("QFLUME_MODEL_KIND", "fp32")  # no measuring of int8 against fp32 here
        emb = qflume.Embedder(root / "model")
        yield emb
        emb.close()


def _records(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i}", "text": " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12))}
        for i in range(n)
    ]


def _wait(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------------------- thresholds


def test_thresholds_parse_with_units_and_refuse_bad_ones_naming_them() -> None:
    t = Threshold.parse("latency:qdrant_rpc{method=Upsert}.p99>500ms:high")
    assert (t.kind, t.metric, t.op, t.value, t.severity) == (
        "latency",
        "qdrant_rpc{method=Upsert}.p99",
        ">",
        0.5,
        "high",
    )
    assert Threshold.parse(t.name) == t  # the name reads back as the same threshold
    assert Threshold.parse("memory:rss>2GiB:critical").value == 2 * 1024**3
    assert Threshold.parse("error_rate:*>=5%").value == pytest.approx(0.05)
    assert Threshold.parse("error_rate:*>=5%").severity == "medium"
    assert Threshold.parse("queue_depth:jobs>=80").op == ">="
    assert Threshold.from_dict(
        {"kind": "memory", "metric": "budget", "op": ">", "value": "90%", "severity": "low"}
    ) == Threshold("memory", "budget", ">", 0.9, "low")
    bad = {
        "latency:search>1x": "'1x' is not a number",
        "latency search > 1": "write KIND:METRIC OP VALUE",
        "speed:search>1": "kind must be one of latency, error_rate, queue_depth, memory",
        "latency:search>1:urgent": "severity must be one of low, medium, high, critical",
        "latency:*>1": "latency needs one operation",
        "latency:search.p42>1": "metric must name an operation",
        "error_rate:search.p95>1": "metric must name an operation",
        "queue_depth:plan>1": "metric must be one of embed, write, jobs, *",
        "memory:heap>1": "metric must be one of rss, budget",
        "latency:search>nan": "'nan' is not a number",
    }
    for spec, why in bad.items():
        with pytest.raises(InvalidInputError, match="alert threshold") as e:
            Threshold.parse(spec)
        assert why in str(e.value), (spec, str(e.value))
    with pytest.raises(InvalidInputError, match="value must be a finite number"):
        Threshold("latency", "search", ">", float("inf"))
    with pytest.raises(InvalidInputError, match="window must be positive"):
        Threshold("latency", "search", ">", 1.0, window=0)
    with pytest.raises(InvalidInputError, match="op must be one of"):
        Threshold("latency", "search", ["x"], 1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="unknown key 'sev'"):
        Threshold.from_dict({"kind": "memory", "metric": "rss", "op": ">", "value": 1, "sev": 1})
    with pytest.raises(InvalidInputError, match="interval must be positive"):
        AlertMonitor(interval=0)
    with pytest.raises(InvalidInputError, match="on_alert must be callable"):
        AlertMonitor(on_alert="print")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the monitor


def test_an_alert_is_raised_then_resolved_delivered_and_published() -> None:
    reg = Metrics()
    got: list[dict[str, Any]] = []
    mon = AlertMonitor(
        [
            Threshold("latency", "search.p95", ">", 0.05, "high", window=0.3),
            Threshold("error_rate", "search", ">", 0.2, "critical", window=0.3, min_count=4),
        ],
        registry=reg,
        on_alert=got.append,
    )
    assert mon.check() == []  # no calls: nothing to judge
    for _ in range(5):
        reg.observe("search", 0.2)
    reg.observe("search", 0.01, error=True)
    events = mon.check()
    assert [(e["kind"], e["state"]) for e in events] == [("latency", "raised")]
    assert (
        events[0]["value"] == pytest.approx(0.2) and "p95 latency of search" in events[0]["message"]
    )
    assert got == events
    assert reg.gauges("alerts", kind="latency", severity="high") == [1.0]
    assert reg.counter("alerts_raised", kind="latency") == 1
    # still firing: no new event, the same alert
    assert mon.check() == [] and len(mon.active()) == 1
    reg.observe("search", 0.01, error=True)
    reg.observe("search", 0.01, error=True)  # 3 of 8 calls failed
    (err,) = mon.check()
    assert err["kind"] == "error_rate" and err["severity"] == "critical"
    assert [a["severity"] for a in mon.active()] == ["critical", "high"]  # most severe first
    time.sleep(0.35)  # the window has passed: no calls left to judge
    resolved = mon.check()
    assert {(e["kind"], e["state"]) for e in resolved} == {
        ("latency", "resolved"),
        ("error_rate", "resolved"),
    }
    assert all(e["resolved_at"] >= e["raised_at"] for e in resolved)
    assert mon.active() == [] and reg.gauges("alerts", kind="latency", severity="high") == [0.0]
    assert [a["state"] for a in mon.alerts()] == ["resolved", "resolved"]


def test_a_failing_callback_is_logged_and_the_monitor_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = Metrics()
    reg.gauge("queue_depth", 7, stage="embed")

    def boom(event: dict[str, Any]) -> None:
        raise RuntimeError("receiver down")

    mon = AlertMonitor(["queue_depth:embed>=5:low"], registry=reg, on_alert=boom, interval=0.02)
    with caplog.at_level(logging.ERROR, logger="qflume.alerts"), mon:
        _wait(lambda: mon.active(), "the queue alert")
        reg.gauge("queue_depth", 0, stage="embed")
        _wait(lambda: not mon.active(), "the queue alert to resolve")
    assert mon.checks >= 2 and not mon.running
    assert "the alert callback failed (receiver down)" in caplog.text
    assert "queue depth of embed is 7" in caplog.text  # the alert itself is not lost


def test_a_memory_alert_runs_a_collection_and_records_it() -> None:
    reg = Metrics()
    mon = AlertMonitor(
        ["memory:rss>1MB:critical", "memory:budget>100%:high"],
        registry=reg,
        on_alert=lambda e: None,
        memory_budget=10 << 20,
    )
    garbage = [[i] for i in range(20_000)]
    garbage.append(garbage)  # a cycle only the collector frees
    del garbage
    events = mon.check()
    assert {e["name"] for e in events} == {"memory:rss>1000000:critical", "memory:budget>1:high"}
    budget = next(e for e in events if e["metric"] == "budget")
    assert budget["value"] > 1 and "share of the budget" in budget["message"]
    cols = mon.collections()
    assert len(cols) == 2 and all(c["rss_before"] > 0 and c["rss_after"] > 0 for c in cols)
    assert cols[0]["objects_collected"] > 0  # the cycle above
    assert all(
        e["collection"]["rss_before"] == c["rss_before"] for e, c in zip(events, cols, strict=True)
    )
    assert reg.counter("memory_collections") == 2


# ------------------------------------------------------------------- a slow, failing server


def test_alerts_fire_on_a_slow_and_a_failing_server_and_the_report_names_them(
    tmp_path: Path, tiny: Any
) -> None:
    metrics.reset()
    got: list[dict[str, Any]] = []
    with QdrantGrpcServer() as srv:
        srv.set_latency(0.2, ["Upsert"])
        srv.fail_next(3, grpc.StatusCode.UNAVAILABLE, methods=["Upsert"])
        mon = AlertMonitor(
            [
                "latency:qdrant_rpc{method=Upsert}.p50>150ms:high",
                Threshold(
                    "error_rate", "qdrant_rpc{method=Upsert}", ">", 0.1, "critical", min_count=3
                ),
            ],
            interval=0.05,
            on_alert=got.append,
        )
        with (
            Pipeline(
                "slow", url=srv.url, embedder=tiny, state_dir=tmp_path, batch_chunks=4,
                progress=False,
            ) as p,
            mon,
        ):  # fmt: skip
            report = p.ingest_records(_records(60))
            _wait(lambda: len(got) >= 2, "both alerts")
            assert {(e["kind"], e["severity"], e["state"]) for e in got[:2]} == {
                ("latency", "high", "raised"),
                ("error_rate", "critical", "raised"),
            }
            # listed by health (not ok: high and critical), and in Prometheus
            h = metrics.health(p, alerts=mon)
            assert {a["kind"] for a in h["alerts"]} == {"latency", "error_rate"}
            assert not h["ok"] and h["score"] == 100 - 15 - 30 and h["problems"] == []
            assert {a["kind"] for a in metrics.health(p)["alerts"]} == {"latency", "error_rate"}
            fams = {
                f.name: f for f in parser.text_string_to_metric_families(metrics.to_prometheus())
            }
            gauge = {
                (s.labels["kind"], s.labels["severity"]): s.value
                for s in fams["qflume_alerts"].samples
            }
            assert gauge[("latency", "high")] == 1 and gauge[("error_rate", "critical")] == 1
            assert gauge[("memory", "low")] == 0 and len(gauge) == 16
        assert report.points_upserted == 60
        d = report.as_dict()
        # the report lists the alerts of its run, the sink's retries and error types
        assert {a["kind"] for a in d["alerts"]} == {"latency", "error_rate"}
        assert d["retried"] == 3 and d["sink_errors"] == {"UNAVAILABLE": 3}
        # bytes each way: at least the packed points, and what the meter counted
        meter = p.sink.meter.snapshot()
        assert 60 * tiny.dim * 4 < d["bytes_sent"] <= meter["bytes_sent"]
        assert 0 < d["bytes_received"] <= meter["bytes_received"]
        # the server's figures after the run
        assert d["storage"]["points"] == 60 and d["storage"]["optimizer"] == "ok"
        assert d["storage"]["segments"] >= 1
        # the slow server is the limit, and the report says what to change
        b = d["bottleneck"]
        assert b["stage"] == "write", b
        assert b["line"].startswith(f"write-bound: {b['utilization']['write']:.0%} busy")
        assert any("in flight" in s or "the server" in s for s in d["suggestions"]), d
    # the run's KPIs
    assert d["documents_per_s"] == pytest.approx(60 / d["elapsed_s"], rel=0.02)
    assert d["s_per_document"] == pytest.approx(d["elapsed_s"] / 60, rel=0.02)
    assert d["cache_hit_rate"] == 0.0 and d["cpu_s"] > 0
    assert set(d["stages"]["write"]) >= {"busy_s", "cpu_s", "utilization"}
    assert all(d["stages"][k]["cpu_s"] > 0 for k in ("plan", "embed", "write"))


def test_report_kpis_cache_storage_and_metrics_on_the_embedded_store(
    tmp_path: Path, tiny: Any
) -> None:
    metrics.reset()
    recs = _records(30)
    with Pipeline(
        "kpi", store=tmp_path / "s", embedder=tiny, chunk_chars=1000, progress=False
    ) as p:
        first = p.ingest_records(recs).as_dict()
    # the same texts under other ids: every vector comes from the embedding cache
    with Pipeline(
        "kpi", store=tmp_path / "s", embedder=tiny, chunk_chars=1000, progress=False
    ) as p:
        second = p.ingest_records(recs).as_dict()
        again = p.ingest_records([{**r, "id": "x" + r["id"]} for r in recs]).as_dict()
        status = metrics.status_report(p)
    assert first["cache_hit_rate"] == 0.0 and first["chunks_embedded"] == 30
    assert second["documents_unchanged"] == 30 and second["cache_hit_rate"] is None
    assert again["cache_hit_rate"] == 1.0 and again["chunks_embedded"] == 0
    assert first["bytes_sent"] == 0 and first["sink_errors"] == {}  # no server
    disk = first["storage"]["disk_bytes"]
    assert disk > 30 * tiny.dim * 4 and first["storage"]["points"] == 30
    assert again["storage"]["points"] == 60 and again["storage"]["disk_bytes"] >= disk
    # status shows the storage, the last run's figures and its alerts
    assert status["collection_info"]["disk_bytes"] > 0
    assert status["last_run"]["documents_per_s"] == again["documents_per_s"]
    assert status["alerts"] == {"active": [], "last_run": []}
    # and so does the metrics registry
    reg = metrics.REGISTRY
    assert reg.counter("ingest_documents") == 60  # the unchanged ones were no work
    assert reg.counter("embed_cache_hits") == 30 and reg.counter("embed_cache_misses") == 30
    assert reg.gauges("collection_disk_bytes", collection="kpi") == [again["storage"]["disk_bytes"]]
    assert reg.gauges("ingest_last_cache_hit_rate") == [1.0]
    assert reg.counter("ingest_stage_cpu_seconds", stage="embed") > 0
    text = metrics.to_prometheus()
    fams = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert fams["qflume_embed_cache_hits"].type == "counter"
    assert fams["qflume_process_cpu_seconds"].samples[0].value > 0
    assert fams["qflume_collection_segments"].samples[0].labels == {"collection": "kpi"}


# ------------------------------------------------------------------------------ bottlenecks


def _stages(plan: float, embed: float, write: float) -> dict[str, dict[str, float]]:
    return {
        "plan": {"utilization": plan},
        "embed": {"utilization": embed},
        "write": {"utilization": write},
    }


def test_the_limiting_stage_and_a_suggestion_for_each() -> None:
    b = analysis.bottleneck(_stages(0.03, 0.94, 0.12), {}, {"per_text": True, "cores": 2})
    assert b["bottleneck"]["line"] == "embed-bound: 94% busy, write 12%, plan 3%"
    assert b["bottleneck"]["stage"] == "embed"
    assert "one text per call on each of 2 cores" in b["suggestions"][0]
    small = analysis.bottleneck(_stages(0.1, 0.9, 0.1), {}, {"batch_tokens": 128})
    assert "a larger token budget: Embedder(batch_tokens=512) (now 128)" in small["suggestions"][0]
    gpu = analysis.bottleneck(_stages(0.1, 0.9, 0.1), {}, {"batch_tokens": 16384})
    assert "Embedder(batch_tokens=32768); now 16384" in gpu["suggestions"][0]
    server = {"target": "server", "adaptive": False, "in_flight": 4}
    w = analysis.bottleneck(_stages(0.1, 0.2, 0.97), {"sink_errors": {"UNAVAILABLE": 2}}, server)
    assert w["bottleneck"]["line"].startswith("write-bound: 97% busy")
    assert "GrpcSink(max_in_flight=8) (now 4)" in w["suggestions"][0]
    assert "failed 2 requests (UNAVAILABLE 2)" in w["suggestions"][1]
    capped = {"target": "server", "adaptive": True, "in_flight": 32, "in_flight_max": 32}
    tip = analysis.bottleneck(_stages(0, 0, 0.9), {}, capped)["suggestions"][0]
    assert "in_flight_bounds=(1, 64)" in tip
    waiting = analysis.bottleneck(_stages(0, 0, 0.9), {}, {"target": "server", "wait": True})
    assert waiting["suggestions"][0].startswith("--wait makes each request wait")
    edge = analysis.bottleneck(_stages(0.1, 0.3, 0.8), {}, {"target": "embedded"})
    assert "--url" in edge["suggestions"][0] and "searches" in edge["suggestions"][0]
    plan = analysis.bottleneck(_stages(0.85, 0.3, 0.1), {}, {"chunking": "tokens"})
    assert "--chunk-chars" in plan["suggestions"][0]
    idle = analysis.bottleneck(_stages(0.1, 0.3, 0.2), {}, {})
    assert idle["bottleneck"]["stage"] is None and idle["suggestions"] == []
    assert idle["bottleneck"]["line"].startswith("no stage was the limit (embed 30%")
    assert analysis.bottleneck(_stages(0, 0, 0), {}, {}) == {"bottleneck": None, "suggestions": []}
    assert analysis.bottleneck(_stages(0.1, 0.9, 0), {"dry_run": True}, {})["bottleneck"] is None


# --------------------------------------------------------------------------------- the CLI


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qflume", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "QFLUME_PROGRESS_INTERVAL": "60"},
        check=False,
        timeout=300,
    )


def test_ingest_logs_config_alerts_and_prints_kpis_bottleneck_and_resources(
    tmp_path: Path,
    tiny_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = tmp_path / "job"
    tiny_corpus(job / "docs", 12, paragraphs=6)
    (job / "qflume.toml").write_text(
        f'collection = "cli"\nmodel = "{tiny_dir}"\n[target]\nstore = "st"\n'
        '[chunking]\nchars = 200\n[[sources]]\npath = "docs"\n'
        "[alerts]\ninterval = 0.02\ndefaults = false\n"
        'thresholds = ["memory:budget>0%:low",\n'  # both hold from the first check on
        '  {kind = "memory", metric = "rss", op = ">", value = "1MB", severity = "high"}]\n'
    )
    res = _cli(job, "ingest")
    assert res.returncode == 0, res.stderr
    assert "qflume: alert raised [low] memory (share of the budget) is" in res.stderr
    assert "qflume: alert raised [high] resident memory is" in res.stderr
    out = res.stdout
    assert " chunks/s, " in out and " documents/s (" in out and "ms per document)" in out
    assert "cache hit rate 0%" in out and "; stage threads: plan " in out
    assert "collection: " in out and " on disk, " in out
    assert "-bound: " in out or "no stage was the limit" in out
    assert "alert [high] resident memory is" in out  # the run's alerts in its report
    from qflume.cli import main

    monkeypatch.chdir(job)
    assert main(["status"]) == 0
    st = capsys.readouterr().out
    assert "last run: " in st and "documents/s" in st and "alert [high] resident memory" in st
    assert main(["status", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert {a["severity"] for a in js["alerts"]["last_run"]} == {"low", "high"}
    assert js["collection_info"]["disk_bytes"] > 0
    # a bad threshold in the file is one line naming the file and the key
    (job / "qflume.toml").write_text(
        f'collection = "cli"\nmodel = "{tiny_dir}"\n[[sources]]\npath = "docs"\n'
        '[alerts]\nthresholds = ["latency:search>fast"]\n'
    )
    assert main(["ingest"]) == 1
    err = capsys.readouterr().err
    assert "'alerts.thresholds[1]' is not usable" in err and "'fast' is not a number" in err


def test_the_running_monitors_are_what_active_and_during_list() -> None:
    reg = Metrics()
    reg.gauge("queue_depth", 9, stage="write")
    mon = AlertMonitor(["queue_depth:write>5:medium"], registry=reg, on_alert=lambda e: None)
    t0 = time.time()
    mon.check()
    assert alerts.active() == []  # not started: not listed process-wide
    with mon:
        assert [a["name"] for a in alerts.active()] == ["queue_depth:write>5:medium"]
        assert [a["state"] for a in alerts.during(t0, time.time())] == ["raised"]
        assert alerts.during(t0 - 20, t0 - 10) == []  # raised after that
    assert alerts.active() == []


# ------------------------------------------------------------------------- the status page


def test_the_status_page_shows_an_active_alert_and_the_storage(tmp_path: Path, tiny: Any) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("websockets.sync.client")
    import test_status_page as page

    if page.CHROMIUM is None:
        pytest.skip("needs Debian's chromium package (apt-get install chromium)")
    from qflume.serve import ServeConfig, Service

    config = ServeConfig.of(
        "docs",
        store=str(tmp_path / "store"),
        token=page.TOKEN,
        chunk_chars=1000,
        max_memory=10 << 20,
        alerts=(Threshold.parse("memory:budget>100%:critical"),),
        default_alerts=False,
        alert_interval=0.05,
    )
    srv = page.Server(Service(config, embedder=tiny))
    chrome = None
    try:
        r = srv.client.post(
            "/batch/store?wait=true", json={"records": _records(3)}, headers=page.AUTH
        )
        assert r.status_code == 200, r.text
        chrome = page.Chrome(tmp_path / "profile")
        chrome.call("Page.navigate", url=f"{srv.url}/#token={page.TOKEN}")
        level = chrome.wait(page._text("#alerts .alert.critical .level"), "the alert")
        assert level == "critical"
        assert chrome.js(page._text("#alerts .alert.critical .code")) == "memory:budget>1:critical"
        shown = chrome.js(page._text("#alerts .alert.critical"))
        assert "memory (share of the budget) is" in shown and "since " in shown
        # the health problem the same budget gives is listed below it, as a warning
        assert "memory_over_budget" in chrome.js(page._text("#alerts .alert.warning .code"))
        storage = chrome.wait(page._text("#collection-body .v-storage"), "the storage row")
        assert storage.endswith("MiB on disk")
    finally:
        if chrome is not None:
            chrome.close()
        srv.stop()
