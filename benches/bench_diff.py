"""The per-chunk diff: each document's new chunks against its committed state row (which to send,
which moved, which are lost), with a warm state and one edit per file.

Side by side in one run, the same chunk arrays for both:
- ``python-loop``: the diff as it was before (a Python loop per chunk over sets and dicts of
  16-byte hashes, one tuple per row; copied here from the code it replaced, as the reference);
- ``vectorised``: ``qflume.stages.batch.DocDiff.take`` (the diff in Rust, ``_core.DocDiffer``:
  an index of the committed hashes; Python work only per moved or restated chunk).

Corpus: the Python docs (Debian's python3.11-doc, ~500 files), chunked at 256 characters; the
edit replaces one word of the middle line of each file with another of the same length (one
chunk changes, none move), or with ``QFLUME_BENCH_EDIT=top`` inserts a line at the top (every
later chunk moves: a payload update each, for both).

    .venv/bin/python -m pytest benches/bench_diff.py --benchmark-only -s
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qflume import Chunker, point_id
from qflume.ids import HASH_LEN
from qflume.stages.batch import Doc as _Doc
from qflume.stages.batch import DocDiff as _DocDiff
from qflume.state import DocState

DOCS = Path("/usr/share/doc/python3.11/html/_sources")
EDIT = os.environ.get("QFLUME_BENCH_EDIT", "middle")
FP = "bench-fingerprint"


def _edit(text: str) -> str:
    if EDIT == "top":
        return "A line added at the top.\n\n" + text
    lines = text.split("\n")
    mid = len(lines) // 2
    for k in range(mid, len(lines)):
        words = lines[k].split(" ")
        for w, word in enumerate(words):
            if len(word) >= 4 and word.isalpha():
                words[w] = "x" * len(word)
                lines[k] = " ".join(words)
                return "\n".join(lines)
    return text + "\nx"


@pytest.fixture(scope="module")
def corpus() -> list[tuple[_Doc, Any, Any]]:
    if not DOCS.is_dir():
        pytest.skip(f"needs {DOCS} (apt install python3.11-doc)")
    chunker = Chunker(256)
    out = []
    for path in sorted(DOCS.rglob("*.rst.txt")):
        key = str(path.relative_to(DOCS))
        text = path.read_text(encoding="utf-8")
        before = chunker.chunk_batch([text], [key])
        uniq, first = [], set()
        rows = []
        for j in range(len(before)):
            h = before.hashes[j].tobytes()
            if h not in first:
                first.add(h)
                uniq.append(h)
                rows.append((j, *before.offsets[j]))
        prev = DocState(key, "docs", b"", 0, 0, "{}", FP, b"".join(uniq),
                        np.asarray(rows, np.int64).tobytes(), b"")  # fmt: skip
        doc = _Doc(key, "docs", b"", 0, 0, {"source": key}, "{}", prev)
        after = chunker.chunk_batch([_edit(text)], [key])
        out.append((doc, np.asarray(after.hashes), np.asarray(after.offsets)))
    return out


def _python_loop(d: _Doc, hashes: Any, offsets: Any) -> tuple[int, int, int]:
    """The diff before: per chunk, in Python."""
    prev = d.prev
    assert prev is not None
    split = [prev.chunks[i : i + HASH_LEN] for i in range(0, len(prev.chunks), HASH_LEN)]
    committed = set(split)
    prev_offsets = {}
    po = prev.chunk_offsets()
    for j, h in enumerate(split):
        prev_offsets[h] = (int(po[j, 0]), int(po[j, 1]), int(po[j, 2]))
    h_bytes = hashes.tobytes()
    uniq, uniq_rows, upsert, moved, first = [], [], [], [], set()
    for j in range(len(hashes)):
        h = h_bytes[j * HASH_LEN : (j + 1) * HASH_LEN]
        if h in first:
            continue
        first.add(h)
        row = (j, int(offsets[j, 0]), int(offsets[j, 1]))
        uniq.append(h)
        uniq_rows.append(row)
        if h not in committed:
            upsert.append(h)
        elif prev_offsets.get(h) != row:
            moved.append((point_id(d.key, h), {"chunk_index": row[0], "start": row[1]}))
    lost = [point_id(d.key, h) for h in sorted(prev.possibly_present() - first)]
    np.asarray(uniq_rows, np.int64).reshape(-1, 3).tobytes()
    return len(upsert), len(moved), len(lost)


def _vectorised(d: _Doc, hashes: Any, offsets: Any) -> tuple[int, int, int]:
    diff = _DocDiff(d, FP)
    send = diff.take(hashes, offsets)
    plan = diff.finish()
    return len(send), len(plan.moved), len(plan.lost_ids)


RESULTS: dict[str, tuple[float, tuple[int, int, int]]] = {}


@pytest.mark.parametrize("how", ["python-loop", "vectorised"])
def test_diff(benchmark: Any, corpus: list[tuple[_Doc, Any, Any]], how: str) -> None:
    fn = _python_loop if how == "python-loop" else _vectorised

    def run() -> tuple[int, int, int]:
        tot = [0, 0, 0]
        for d, h, o in corpus:
            for i, v in enumerate(fn(d, h, o)):
                tot[i] += v
        return tot[0], tot[1], tot[2]

    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        counts = run()
        best = min(best, time.perf_counter() - t)
    benchmark.pedantic(run, rounds=1, iterations=1)
    chunks = sum(len(h) for _, h, _ in corpus)
    RESULTS[how] = (best, counts)
    benchmark.extra_info.update({"chunks": chunks, "best_s": round(best, 4), "edit": EDIT})
    print(f"\n{how:12} {EDIT} edit: {len(corpus)} docs, {chunks} chunks, best {best * 1e3:.1f} ms "
          f"({chunks / best:,.0f} chunks/s); sent/moved/lost {counts}")  # fmt: skip
    if len(RESULTS) == 2:
        (a, ca), (b, cb) = RESULTS["python-loop"], RESULTS["vectorised"]
        assert ca == cb, (ca, cb)  # the same decisions
        print(f"vectorised is {a / b:.1f}x the python loop")
