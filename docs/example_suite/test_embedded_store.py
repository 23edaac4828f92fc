"""Ingest into a temporary embedded store: the first run, a re-run, an edit, a deletion."""

from __future__ import annotations

from pathlib import Path


def test_first_run_sends_every_chunk_and_search_finds_them(
    qflume_pipeline, docs: Path, sources: set[str]
):
    with qflume_pipeline(sparse="bm25") as pipeline:
        report = pipeline.ingest([docs])
        assert report.documents_new == len(sources) and not report.skipped
        assert report.points_upserted == report.chunks_total > 0
        assert pipeline.status()["points"] == report.chunks_total
        # A sentence taken verbatim from a document finds it first (BM25: model-independent).
        (hits,) = pipeline.search(
            ["Unchanged files are recognised by size and time"], mode="sparse"
        )
        assert hits[0].source == "faq.txt"
        (dense,) = pipeline.search(["how do I install it"], limit=2)
        assert len(dense) == 2 and all(h.source in sources for h in dense)


def test_a_rerun_embeds_and_sends_nothing(qflume_pipeline, docs: Path):
    with qflume_pipeline() as pipeline:
        first = pipeline.ingest([docs])
        again = pipeline.ingest([docs])
    assert again.documents_unchanged == first.documents_new
    assert again.chunks_embedded == again.points_upserted == 0


def test_an_edit_re_sends_only_that_document(qflume_pipeline, docs: Path, sources: set[str]):
    with qflume_pipeline() as pipeline:
        pipeline.ingest([docs])
        (docs / "faq.txt").write_text("Is it fast? Yes.", encoding="utf-8")
        report = pipeline.ingest([docs])
        assert (report.documents_changed, report.documents_unchanged) == (1, len(sources) - 1)
        assert report.points_upserted >= 1
        assert pipeline.verify()["ok"]


def test_a_deleted_file_loses_its_points(qflume_pipeline, docs: Path):
    with qflume_pipeline() as pipeline:
        first = pipeline.ingest([docs])
        (docs / "faq.txt").unlink()
        report = pipeline.ingest([docs])
        assert report.documents_deleted == 1 and report.points_deleted >= 1
        assert pipeline.status()["points"] == first.chunks_total - report.points_deleted
