"""Search quality on real text: a sentence taken verbatim from an ingested chunk finds that chunk.

Python's own documentation (Debian's python3.11-doc) is ingested with BM25 sparse vectors into an
embedded store; 50 sentences are drawn (seed 1234) from the chunks. The chunk each came from must
be the top hit in >= 90% of cases in dense mode and >= 95% in hybrid mode (issue 6). The same
bar, as a floor, holds over every usable sentence (~420), which is less noisy than 50 draws.

Settings (measured, see CHUNK_TOKENS below): 64-token chunks, all-MiniLM-L6-v2 int8, hybrid = dense
and BM25 prefetches fused by DBSF on the server.
"""

from __future__ import annotations

import random
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qflume.exceptions import InvalidInputError
from qflume.pipeline import Pipeline
from qflume.search import HYBRID_PREFETCH, search
from qflume.sinks.base import QueryRequest, Sink, SparseBatch
from qflume.sinks.grpc import GrpcSink
from qflume.testing import QdrantGrpcServer

DOCS = Path("/usr/share/doc/python3.11/html/_sources")
FILES = [
    "library/base64.rst.txt",
    "library/bisect.rst.txt",
    "library/crypt.rst.txt",
    "library/fnmatch.rst.txt",
    "library/glob.rst.txt",
    "library/heapq.rst.txt",
    "library/numbers.rst.txt",
    "library/pty.rst.txt",
    "library/shlex.rst.txt",
    "library/textwrap.rst.txt",
    "library/uuid.rst.txt",
    "library/zipimport.rst.txt",
    "library/importlib.resources.abc.rst.txt",
    "library/curses.ascii.rst.txt",
    "library/__main__.rst.txt",
]
N_SENTENCES = 50
# all-MiniLM-L6-v2 mean-pools a chunk into one vector, so a sentence finds its chunk by dense search
# only if it is a good part of it. Top-1 over every usable sentence (dense / hybrid DBSF / hybrid
# RRF / BM25; chunks): 1000 chars 73.6 / 95.9 / 87.4 / 97.5 (171 chunks, 74 of them cut at the
# model's 256-token limit); 500 chars 83.7 / 95.7 / 93.6 / 99.2 (351); 300 chars 90.4 / 97.7 /
# 95.3 / 98.4 (602); 64 tokens 92.3 / 98.6 / 96.9 / 98.1 (846); 128 tokens 80.1 / 97.1 / 91.0 /
# 98.7 (434). Only chunks of about 64 tokens (2-3 sentences) reach 90% dense with margin.
CHUNK_TOKENS = 64

pytestmark = pytest.mark.skipif(
    not DOCS.is_dir(), reason=f"needs the Python docs at {DOCS} (apt install python3.11-doc)"
)

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, embedder):
    """(pipeline, {point id: record}) of the docs slice, ingested with dense + BM25."""
    root = tmp_path_factory.mktemp("docs")
    for rel in FILES:
        src = DOCS / rel
        if src.is_file():
            shutil.copy(src, root / src.name)
    assert len(list(root.iterdir())) >= 12, "the Python docs slice is missing files"
    store = tmp_path_factory.mktemp("store")
    p = Pipeline(
        "pydocs",
        store=store,
        embedder=embedder,
        sparse="bm25",
        progress=False,
        chunk_tokens=CHUNK_TOKENS,
    )
    rep = p.ingest(root)
    assert rep.documents_skipped == 0 and rep.points_upserted > 50
    points = {r.id: r for r in p.sink.scroll(with_payload=True, with_vectors=True)}
    yield p, points
    p.close()


def _sentences(points: dict, n: int | None = N_SENTENCES) -> list[tuple[str, str]]:
    """(sentence, id of its chunk): prose sentences found verbatim in exactly one chunk."""
    texts = {pid: r.payload["page_content"] for pid, r in points.items()}
    cands: list[tuple[str, str]] = []
    for pid in sorted(texts):
        for s in _SENT.split(texts[pid]):
            s = " ".join(s.split())
            words = s.split()
            letters = sum(c.isalpha() for c in s)
            if 8 <= len(words) <= 40 and letters > 0.7 * len(s) and s.endswith("."):
                cands.append((s, pid))
    seen = Counter(s for s, _ in cands)
    cands = [(s, pid) for s, pid in cands if seen[s] == 1]
    # Verbatim: the sentence (whitespace as in the chunk) occurs in its chunk only.
    unique = []
    for s, pid in cands:
        pat = re.compile(r"\s+".join(map(re.escape, s.split())))
        if sum(bool(pat.search(t)) for t in texts.values()) == 1:
            unique.append((pat.search(texts[pid]).group(0), pid))  # type: ignore[union-attr]
    assert len(unique) >= N_SENTENCES, f"only {len(unique)} usable sentences"
    return unique if n is None else random.Random(1234).sample(unique, n)


def _top1(p: Pipeline, sample: list[tuple[str, str]], mode: str) -> float:
    """Share of sentences whose chunk is the top hit; mode "hybrid-rrf" is hybrid fused by RRF."""
    fusion = "rrf" if mode == "hybrid-rrf" else "dbsf"
    queries = [s for s, _ in sample]
    results = search(p, queries, limit=3, mode=mode.removesuffix("-rrf"), fusion=fusion)
    assert len(results) == len(sample)
    return sum(
        bool(hits) and hits[0].id == pid for hits, (_, pid) in zip(results, sample, strict=True)
    ) / len(sample)


# Measured over every usable sentence (469) with the settings above: dense 93.0%, hybrid (DBSF)
# 98.7%, hybrid (RRF) 97.0%, sparse 98.5%. The floors hold the issue's bar over all of them; RRF
# (ties between the branches) and BM25 alone are guarded against regressions.
FLOOR = {"dense": 0.90, "hybrid": 0.95, "hybrid-rrf": 0.93, "sparse": 0.95}
BAR = {"dense": 0.90, "hybrid": 0.95}


def test_sentences_find_their_chunk_over_all_sentences(corpus) -> None:
    p, points = corpus
    every = _sentences(points, None)
    rates = {mode: _top1(p, every, mode) for mode in FLOOR}
    print(f"top-1 over {len(every)} sentences: {rates}")
    for mode, floor in FLOOR.items():
        assert rates[mode] >= floor, f"{mode} top-1 {rates[mode]:.1%} < {floor:.0%}: {rates}"
    # Hits carry what a caller needs: text, source, offsets into the source, metadata.
    (hits,) = p.search([every[0][0]], limit=1, mode="hybrid")
    h = hits[0]
    doc = p.state.get(h.source) if h.source else None
    assert h.page_content and h.metadata["source"] == h.source and doc is not None
    src = Path(doc.root) / h.source
    if not src.is_file():
        src = Path(h.source)
    assert src.read_text(encoding="utf-8")[h.start : h.end] == h.page_content


def test_sentences_find_their_chunk_issue_bar(corpus) -> None:
    p, points = corpus
    sample = _sentences(points)
    rates = {mode: _top1(p, sample, mode) for mode in BAR}
    print(f"top-1 over {len(sample)} sentences: {rates}")
    for mode, bar in BAR.items():
        assert rates[mode] >= bar, f"{mode} top-1 {rates[mode]:.0%} < {bar:.0%}: {rates}"


def test_hybrid_is_deterministic_and_fusion_is_checked(corpus) -> None:
    p, points = corpus
    queries = [s for s, _ in _sentences(points)[:20]]
    a = p.search(queries, limit=5, mode="hybrid")
    b = p.search(queries, limit=5, mode="hybrid")
    assert [[(h.id, h.score) for h in r] for r in a] == [[(h.id, h.score) for h in r] for r in b]
    # DBSF scores are sums of normalized branch scores, RRF scores sums of 1 / (2 + rank).
    (rrf,) = search(p, queries[:1], limit=1, mode="hybrid", fusion="rrf")
    assert rrf[0].score <= 2 * (1 / 2) + 1e-6
    with pytest.raises(InvalidInputError, match="'borda'"):
        search(p, queries[:1], mode="hybrid", fusion="borda")
    vec = p.embedder.embed(queries[:1])[0]
    sparse = ("bm25", np.array([1], np.uint32), np.ones(1, np.float32))
    with pytest.raises(InvalidInputError, match="'borda'"):
        p.sink.query_batch([QueryRequest(dense=vec, sparse=sparse, fusion="borda")])


def test_filters_restrict_the_hits(corpus) -> None:
    p, points = corpus
    sources = sorted({r.payload["metadata"]["source"] for r in points.values()})
    target = next(s for s in sources if "heapq" in s)
    (hits,) = p.search(["a heap queue"], limit=5, filter={"source": target}, mode="hybrid")
    assert hits and {h.source for h in hits} == {target}


def _copy_points(points: dict, sink: GrpcSink) -> None:
    from qflume.sinks.base import CollectionSpec

    sink.ensure_collection(CollectionSpec(dim=384, sparse=("bm25",)))
    recs = list(points.values())
    indptr = [0]
    idx: list[int] = []
    val: list[float] = []
    for r in recs:
        i, v = (r.sparse or {}).get("bm25", ([], []))
        idx.extend(i)
        val.extend(v)
        indptr.append(len(idx))
    sparse = SparseBatch(
        np.asarray(indptr, np.int64), np.asarray(idx, np.uint32), np.asarray(val, np.float32)
    )
    sink.upsert(
        [r.id for r in recs],
        np.stack([r.vector for r in recs]).astype(np.float32),
        [r.payload for r in recs],
        sparse={"bm25": sparse},
    )
    sink.flush()


def _same(x: float, y: float) -> bool:
    """Equal scores as the engine's float32 sees them."""
    return abs(x - y) <= 1e-6 * max(1.0, abs(x), abs(y))


def branch_ties(p: Pipeline, query: str, limit: int) -> tuple[set[str], bool]:
    """The hits of the dense and BM25 prefetches of a hybrid search for `query` (at `limit`)
    that tie with another hit of their branch, and whether a tie straddles a prefetch's edge."""
    prefetch = max(4 * limit, HYBRID_PREFETCH)  # as qflume.search sizes it
    tied: set[str] = set()
    edge = False
    for mode in ("dense", "sparse"):
        # One past the prefetch: a tie across its edge decides which hit gets in.
        (hits,) = search(p, [query], limit=prefetch + 1, mode=mode)
        scores = [h.score for h in hits]
        for i, h in enumerate(hits):
            if sum(_same(x, scores[i]) for x in scores) > 1:
                tied.add(h.id)
        if len(scores) > prefetch:
            edge |= _same(scores[prefetch - 1], scores[prefetch])
    return tied, edge


def test_same_search_through_the_grpc_server(corpus, embedder, tmp_path: Path) -> None:
    if GrpcSink.query_batch is Sink.query_batch:
        pytest.skip("GrpcSink.query_batch is not implemented yet")
    p, points = corpus
    sample = _sentences(points)[:8]
    with QdrantGrpcServer() as server:
        remote = Pipeline(
            "pydocs",
            url=server.url,
            state_dir=tmp_path,
            embedder=embedder,
            sparse="bm25",
            progress=False,
        )
        try:
            _copy_points(points, remote.sink)  # type: ignore[arg-type]
            queries = [s for s, _ in sample]
            for mode, fusion in (("dense", "dbsf"), ("hybrid", "dbsf"), ("hybrid", "rrf")):
                # Limit 10, compared on the first 3: a tie with a hit just past the limit would
                # let either one in.
                local = search(p, queries, limit=10, mode=mode, fusion=fusion)
                over_grpc = search(remote, queries, limit=10, mode=mode, fusion=fusion)
                assert len(over_grpc) == len(local)
                exact = 0
                for q, a, b in zip(queries, over_grpc, local, strict=True):
                    sa, sb = [h.score for h in a], [h.score for h in b]
                    assert len(sa) == len(sb)
                    if mode == "dense":
                        assert sa == pytest.approx(sb, rel=1e-4, abs=1e-6)
                        exact += 1
                    else:
                        # The engine breaks ties between equal branch scores by storage order,
                        # which differs between the two stores. DBSF does not look at ranks,
                        # so its scores must agree unless a tie decides what enters a
                        # prefetch; RRF's must agree for every hit that ties with none.
                        ties, edge = branch_ties(p, q, limit=10)
                        if edge:
                            continue
                        if fusion == "dbsf":
                            assert sa == pytest.approx(sb, rel=1e-4, abs=1e-6)
                        else:
                            mine = {h.id: h.score for h in b if h.id not in ties}
                            theirs = {h.id: h.score for h in a if h.id in mine}
                            assert len(theirs) >= min(5, len(mine)), (theirs, mine)
                            assert theirs == pytest.approx({k: mine[k] for k in theirs}, rel=1e-4)
                        exact += 1
                    # Equal scores (RRF ties, near-duplicate chunks) may come in either order.
                    for i, (ha, hb) in enumerate(zip(a[:3], b[:3], strict=True)):
                        if sum(_same(x, sb[i]) for x in sb) == 1:
                            assert ha.id == hb.id and ha.page_content == hb.page_content
                print(f"{mode}/{fusion}: {exact} of {len(queries)} compared exactly")
                assert exact >= len(queries) // 2
            assert server.calls["Points/QueryBatch"] >= 3
            vec = embedder.embed(queries[:1])[0]
            sparse = ("bm25", np.array([1], np.uint32), np.ones(1, np.float32))
            with pytest.raises(InvalidInputError, match=r"query #0.*'borda'"):
                remote.sink.query_batch([QueryRequest(dense=vec, sparse=sparse, fusion="borda")])
        finally:
            remote.close()
