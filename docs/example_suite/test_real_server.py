"""The same round trip against a real Qdrant server (skipped unless QDRANT_URL or QDRANT_BIN)."""

from __future__ import annotations

from pathlib import Path


def test_round_trip_on_a_real_server(
    qflume_pipeline, qflume_real_server, docs: Path, sources: set[str]
):
    with qflume_pipeline(server=qflume_real_server, sparse="bm25") as pipeline:
        report = pipeline.ingest([docs])
        assert report.documents_new == len(sources)
        assert pipeline.status()["points"] == report.chunks_total
        (hits,) = pipeline.search(
            ["Unchanged files are recognised by size and time"], mode="sparse"
        )
        assert hits[0].source == "faq.txt"
        assert pipeline.ingest([docs]).points_upserted == 0
