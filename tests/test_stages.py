"""The stages (qflume.stages) used alone, the way another runner would, and the one config they
and every front (Pipeline, ingest(), the CLI, serve) are built from."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qflume
from qflume.collection import Collection
from qflume.exceptions import InvalidInputError
from qflume.pipeline import Pipeline
from qflume.settings import PipelineConfig, add_arguments, config_from_args
from qflume.stages import Run, batches, embed_batch, plan_files, write_batches

TEXTS = {
    "a.md": "# Rivers\n\nThe Rhine flows north.\n\nThe Danube flows east to the Black Sea.\n",
    "b.txt": "Hills and valleys.\n\nA valley between two hills holds a lake.\n" * 3,
    "c/d.rst": "Mountains\n=========\n\nThe highest mountain is far away.\n",
}


@pytest.fixture(scope="module")
def embedder() -> Any:
    return qflume.Embedder()


def _corpus(root: Path) -> Path:
    for name, text in TEXTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def _points(col: Collection) -> dict[str, tuple[bytes, str]]:
    return {
        str(r.id): (
            np.asarray(r.vector, np.float32).tobytes(),
            json.dumps(r.payload, sort_keys=True),
        )
        for r in col.sink.scroll(with_payload=True, with_vectors=True)
    }


def _by_hand(col: Collection, root: Path) -> Run:
    """plan -> chunk + diff -> embed -> write, each stage called as a function, in one thread."""
    run = Run()
    embedded = []
    for batch in batches(col, run, plan_files(col, run, [str(root.resolve())])):
        embed_batch(batch, col.embedder, run.report)  # no cache: every miss goes to the model
        embedded.append(batch)
    write_batches(col, run, embedded)
    return run


def test_the_stages_run_by_hand_make_the_points_ingest_makes(tmp_path: Path, embedder: Any) -> None:
    corpus = _corpus(tmp_path / "corpus")
    with Pipeline("docs", store=tmp_path / "a", embedder=embedder, progress=False) as p:
        p.ingest(corpus)
        want = _points(p)
    col = Collection(PipelineConfig("docs", store=tmp_path / "b"), embedder=embedder)
    try:
        run = _by_hand(col, corpus)
        assert run.report.documents_new == 3 and run.report.points_upserted == len(want)
        assert _points(col) == want
        # the state the stages committed is the pipeline's: a rerun by hand has nothing to do
        again = _by_hand(col, corpus)
        assert (again.report.documents_unchanged, again.report.points_upserted) == (3, 0)
        # and an edit sends only its new chunks, through the same functions
        (corpus / "b.txt").write_text(TEXTS["b.txt"] + "\nA new last paragraph.\n")
        edited = _by_hand(col, corpus)
        assert edited.report.documents_changed == 1
        assert 0 < edited.report.points_upserted < len(want)
        with Pipeline("docs", store=tmp_path / "a", embedder=embedder, progress=False) as p:
            p.ingest(corpus)
            assert _points(col) == _points(p)
    finally:
        col.close()


def test_ingest_takes_the_pipelines_and_the_operations_options(
    tmp_path: Path, embedder: Any
) -> None:
    corpus = _corpus(tmp_path / "corpus")
    store = tmp_path / "s"
    opts: dict[str, Any] = {"store": store, "embedder": embedder, "progress": False}
    r = qflume.ingest(corpus, "docs", delete_missing=False, include=["*.md", "*.txt"], **opts)
    assert r.documents_new == 2
    (corpus / "a.md").unlink()
    r = qflume.ingest(corpus, "docs", delete_missing=False, **opts)
    assert r.documents_deleted == 0 and r.documents_new == 1  # kept: delete_missing=False
    with pytest.raises(InvalidInputError, match=r"unknown option 'chunk_size'.*chunk_chars"):
        qflume.ingest(corpus, "docs", chunk_size=100, **opts)
    with pytest.raises(InvalidInputError, match="unknown option 'include'"):
        Pipeline("docs", store=store, include=["*.md"])


def test_the_config_is_validated_once_and_frozen(tmp_path: Path) -> None:
    c = PipelineConfig("docs", store=tmp_path, max_memory=64 << 20)
    assert (c.chunk_tokens, c.stream_bytes, c.max_file_size) == (64, 4 << 20, 32 << 20)
    assert c.given == frozenset()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.batch_chunks = 1  # type: ignore[misc]
    assert c.replace(chunk_chars=500).chunk_tokens is None
    for bad in ({"batch_chunks": 0}, {"overlap": -1}, {"max_file_size": True},
                {"chunk_chars": 100, "chunk_tokens": 10}, {"sparse": "splade"},
                {"store": "a", "url": "http://localhost:6334"}):  # fmt: skip
        with pytest.raises(InvalidInputError):
            PipelineConfig("docs", **bad)


def test_the_command_lines_options_are_the_configs(tmp_path: Path) -> None:
    """`qflume ingest` and `qflume serve` get their pipeline options from one definition and
    build the same PipelineConfig from the same flags."""
    from qflume.cli import _parser as cli_parser
    from qflume.serve import _parser as serve_parser
    from qflume.serve import config_from_args as serve_config

    flags = ["-c", "docs", "--url", "http://127.0.0.1:6334", "--chunk-chars", "700",
             "--overlap", "20", "--outage-deadline", "5", "--outbox-bytes", "4096",
             "--max-file-size", "1000", "--sparse", "bm25"]  # fmt: skip
    args = cli_parser().parse_args(["ingest", "x", *flags])
    from_cli = config_from_args(args)
    from_serve = serve_config(serve_parser().parse_args(flags)).pipeline
    fields = ("collection", "url", "chunk_chars", "overlap", "outage_deadline", "outbox_bytes",
              "max_file_size", "sparse")  # fmt: skip
    assert [getattr(from_cli, f) for f in fields] == [getattr(from_serve, f) for f in fields]
    assert from_cli.chunk_chars == 700 and from_serve.outage_deadline == 5.0
    p = argparse.ArgumentParser()
    add_arguments(p, "chunking", target=False, dest_prefix="to_")
    assert p.parse_args(["--chunk-tokens", "32"]).to_chunk_tokens == 32


def test_hostile_settings_are_refused_when_the_config_is_made(tmp_path: Path) -> None:
    """A NaN, negative or text outage deadline, and collection names that are no file name (a
    lone surrogate, a NUL, a control character), fail when the config is made, naming the
    setting, not later inside a run."""
    for deadline in (float("nan"), float("inf"), -1, "x", True):
        with pytest.raises(InvalidInputError, match="outage_deadline"):
            PipelineConfig("docs", store=tmp_path, outage_deadline=deadline)
    assert PipelineConfig("docs", store=tmp_path, outage_deadline=0).outage_deadline == 0
    for name in ("a\ud800", "a\x00b", "tab\there", "new\nline"):
        with pytest.raises(InvalidInputError, match="collection name"):
            PipelineConfig(name, store=tmp_path)
    assert PipelineConfig("Übersicht-2026_v", store=tmp_path).collection == "Übersicht-2026_v"
