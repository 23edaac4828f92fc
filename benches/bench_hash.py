"""Content hashing on one core: qflume.content_hash (XXH3-128) vs hashlib.sha256, blake3, xxhash.

Corpus: the Python documentation sources (Debian's python3.11-doc, ~12 MB of .rst.txt).

Groups (same bytes, same run):

- ``doc-bulk``    the whole corpus as one buffer, one call per round: raw GB/s of each hash
- ``doc-each``    one call per document (~500 documents, ~25 KB each): GB/s with the Python
                  call per document included (what a scan-like Python loop pays)
- ``chunk-1k``    one call per ~1 KB chunk from Python: the per-call cost dominates every peer
- ``rust-chunk``  the same algorithms timed inside Rust (benches/hash_chunks.rs, built with
                  ``cargo bench --profile ci``): XXH3-128 vs BLAKE3 per call, 64 B to 1 MiB.
                  This is the cost qflume pays per chunk when it hashes chunks in Rust.

blake3 is used single-threaded (its default; ``max_threads=1``). Run:

    .venv/bin/python -m pytest benches/bench_hash.py --benchmark-only -q -s

A table of GB/s is printed at the end.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import qflume
from _corpus import doc_files, require_docs

ROOT = Path(__file__).resolve().parent.parent
RESULTS: dict[str, dict[str, float]] = {}

require_docs()

xxhash = pytest.importorskip("xxhash", reason="pip install xxhash (a bench peer)")
try:
    import blake3 as blake3_mod
except ImportError:  # pragma: no cover - optional peer
    blake3_mod = None


def _docs() -> list[bytes]:
    return [p.read_bytes() for p in doc_files()]


DOC_LIST = _docs()
CORPUS = b"".join(DOC_LIST)
CHUNKS = [CORPUS[i : i + 1024] for i in range(0, len(CORPUS) - 1024, 1024)][:8000]


def _sha256(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _blake3(b: bytes) -> bytes:
    assert blake3_mod is not None
    return blake3_mod.blake3(b).digest(length=16)


def _xxh3(b: bytes) -> bytes:
    return xxhash.xxh3_128_digest(b)


HASHES: dict[str, Callable[[bytes], bytes]] = {
    "qflume": qflume.content_hash,
    "xxhash_xxh3_128": _xxh3,
    "blake3": _blake3,
    "hashlib_sha256": _sha256,
}
PEERS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            name == "blake3" and blake3_mod is None, reason="pip install blake3 (a bench peer)"
        ),
    )
    for name in HASHES
]


def _record(group: str, name: str, benchmark, nbytes: int) -> None:  # type: ignore[no-untyped-def]
    s = benchmark.stats.stats.min
    RESULTS.setdefault(group, {})[name] = nbytes / s / 1e9
    benchmark.extra_info["GB/s"] = round(nbytes / s / 1e9, 2)


def test_qflume_hash_is_xxh3_128() -> None:
    assert qflume.content_hash(CORPUS) == xxhash.xxh3_128_digest(CORPUS)


@pytest.mark.parametrize("name", PEERS)
def test_doc_bulk(benchmark, name: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "doc-bulk"
    f = HASHES[name]
    benchmark(f, CORPUS)
    _record("doc-bulk", name, benchmark, len(CORPUS))


@pytest.mark.parametrize("name", PEERS)
def test_doc_each(benchmark, name: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "doc-each"
    f = HASHES[name]
    benchmark(lambda: [f(d) for d in DOC_LIST])
    _record("doc-each", name, benchmark, len(CORPUS))


@pytest.mark.parametrize("name", PEERS)
def test_chunk_1k_from_python(benchmark, name: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "chunk-1k"
    f = HASHES[name]
    benchmark(lambda: [f(c) for c in CHUNKS])
    _record("chunk-1k", name, benchmark, sum(map(len, CHUNKS)))
    benchmark.extra_info["ns/chunk"] = round(benchmark.stats.stats.min / len(CHUNKS) * 1e9, 1)


def test_rust_chunk_cost_xxh3_vs_blake3(benchmark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Runs benches/hash_chunks.rs once; its own timings (best of 7) go into extra_info."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.skip("cargo is not installed: the Rust-side measurement needs it")
    benchmark.group = "rust-chunk"
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(CORPUS)
    cmd = [
        cargo,
        "bench",
        "-q",
        "--profile",
        "ci",
        "--no-default-features",
        "--bench",
        "hash_chunks",
        "--",
        str(corpus),
    ]
    out: list[str] = []

    def run() -> None:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ)
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        out.append(proc.stdout)

    benchmark.pedantic(run, rounds=1, iterations=1)
    for m in re.finditer(r"^RESULT (\S+) (\d+) ([\d.]+) ([\d.]+)$", out[-1], re.M):
        name, size, ns, gbs = m.group(1), int(m.group(2)), float(m.group(3)), float(m.group(4))
        benchmark.extra_info[f"{name}@{size}B ns"] = ns
        RESULTS.setdefault(f"rust {size} B", {})[name] = gbs
        RESULTS.setdefault(f"rust {size} B ns/call", {})[name] = ns
    assert RESULTS.get("rust 1024 B"), out[-1]


def teardown_module() -> None:
    if not RESULTS:
        return
    print(f"\n\ncorpus: {len(DOC_LIST)} documents, {len(CORPUS) / 1e6:.1f} MB, one core")
    for group, row in RESULTS.items():
        unit = "ns" if group.endswith("ns/call") else "GB/s"
        cells = ", ".join(
            f"{k} {v:.2f} {unit}" for k, v in sorted(row.items(), key=lambda kv: kv[1])
        )
        print(f"{group:24s} {cells}")
