"""Ingest speed with pytest-benchmark: chunks/s, tokens/s and stage times in extra_info.

Run with ``pytest --benchmark-only``; under ``--benchmark-disable`` each runs once, unmeasured,
and still records what the run did.
"""

from __future__ import annotations

from pathlib import Path


def test_first_run_speed(qflume_benchmark, docs: Path):
    report = qflume_benchmark.ingest([docs], rounds=2)  # each round into a new, empty store
    info = qflume_benchmark.extra_info
    assert info["chunks_embedded"] == report.chunks_embedded > 0
    assert info["chunks_per_s"] > 0 and info["tokens_per_s"] > 0
    assert set(info["stages"]) == {"plan", "embed", "write"}


def test_records_speed(qflume_benchmark):
    records = [{"id": f"r{i}", "text": f"record number {i} of the batch"} for i in range(50)]
    report = qflume_benchmark.ingest_records(records, rounds=1, warmup_rounds=1)
    assert report.documents_new == 50 and qflume_benchmark.extra_info["rounds"] == 1


def test_any_callable_returning_a_report(qflume_benchmark, qflume_pipeline, docs: Path):
    with qflume_pipeline() as pipeline:
        pipeline.ingest([docs])
        (docs / "faq.txt").write_text("Edited.", encoding="utf-8")
        report = qflume_benchmark(pipeline.ingest, [docs])  # an incremental run, timed
    assert report.documents_changed == 1
    assert qflume_benchmark.extra_info["chunks_embedded"] == report.chunks_embedded
