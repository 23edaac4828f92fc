"""Scan throughput: qflume.scan vs a Python os.walk + read + check + hash loop.

Corpora (found on the machine; the bench skips with a message when one is missing):

- ``docs``    the Python documentation sources (Debian's python3.11-doc), ~500 files, 12 MB
- ``stdlib``  the CPython standard library (``sysconfig.get_paths()["stdlib"]`` without
              site-packages): ~7.7K files, ~250 MB (sources, tests, data, __pycache__)
- ``many``    a generated tree of QFLUME_BENCH_SCAN_MANY (default 100000) small text files:
              the per-file cost, FileEntry creation included

Cases per corpus (same file set: ignore files off and hidden entries skipped on both sides;
the file counts are checked to be equal):

- ``qflume``          qflume.scan on all cores, page cache warm
- ``qflume_1thread``  the same with qflume.set_threads(1)
- ``qflume_cold``     all cores, every file's pages dropped first (posix_fadvise DONTNEED):
                      reads come from the disk, only metadata is cached
- ``py_sha256``       os.walk, open+read, NUL/UTF-8 check, hashlib.sha256: the usual Python way
- ``py_xxh3``         the same loop with xxhash.xxh3_128 (qflume's hash), when installed
- ``unchanged``       qflume.scan(known=previous entries): stat() only, no file is opened
- ``py_stat``         the floor for that: os.walk + os.stat of every file in Python

Run:  .venv/bin/python -m pytest benches/bench_scan.py --benchmark-only -q -s
A table of files/s and MB/s is printed at the end.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import qflume

DOCS = Path("/usr/share/doc/python3.11/html/_sources")
STDLIB = Path(sysconfig.get_paths()["stdlib"])
MAX = 64 * 2**20
N_MANY = int(os.environ.get("QFLUME_BENCH_SCAN_MANY", "100000"))
RESULTS: dict[str, dict[str, tuple[float, float]]] = {}

try:
    import xxhash
except ImportError:  # pragma: no cover - optional peer
    xxhash = None


def _walk(root: Path) -> Iterator[str]:
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x != "site-packages"]
        for f in files:
            if not f.startswith("."):
                yield os.path.join(d, f)


def _py_scan(root: Path, digest: Callable[[bytes], bytes]) -> list[tuple[str, bytes | None]]:
    """What a careful Python scanner does per file: stat, read, binary/UTF-8 check, hash."""
    out = []
    for p in _walk(root):
        try:
            st = os.stat(p)
            if st.st_size == 0 or st.st_size > MAX:
                out.append((p, None))
                continue
            with open(p, "rb") as f:
                data = f.read()
        except OSError:
            out.append((p, None))
            continue
        if b"\0" in data[:8192]:
            out.append((p, None))
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            out.append((p, None))
            continue
        out.append((p, digest(data)))
    return out


def _py_stat(root: Path) -> list[tuple[int, int]]:
    return [(st.st_size, st.st_mtime_ns) for st in map(os.stat, _walk(root))]


def _drop_pages(root: Path) -> None:
    for p in _walk(root):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _make_many(root: Path, n: int) -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    for i in range(n):
        d = root / f"d{i % 100:02d}" / f"e{i % 7}"
        if i < 700:
            d.mkdir(parents=True, exist_ok=True)
        text = " ".join(words[(i + k) % len(words)] for k in range(8 + i % 40))
        (d / f"f{i}.md").write_text(f"# Note {i}\n\n{text}\n")


@pytest.fixture(scope="module", params=["docs", "stdlib", "many"])
def corpus(request: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    if name == "docs":
        if not DOCS.is_dir():
            pytest.skip(f"{DOCS} is missing: install the Debian package python3.11-doc")
        return name, DOCS
    if name == "stdlib":
        if not (STDLIB / "os.py").is_file():
            pytest.skip(f"no CPython standard library sources at {STDLIB}")
        return name, STDLIB
    root = tmp_path_factory.mktemp("many")
    _make_many(root, N_MANY)
    return name, root


SCAN_OPTS: dict[str, Any] = {"ignore_files": False, "exclude": ["site-packages/"]}


def _record(corpus: str, case: str, benchmark: Any, files: int, nbytes: int) -> None:
    s = benchmark.stats.stats.min
    RESULTS.setdefault(corpus, {})[case] = (files / s, nbytes / s / 1e6)
    benchmark.extra_info["files/s"] = round(files / s)
    benchmark.extra_info["MB/s"] = round(nbytes / s / 1e6, 1)


def _totals(entries: list[qflume.FileEntry]) -> tuple[int, int]:
    return len(entries), sum(e.size for e in entries)


@pytest.mark.parametrize("threads", [0, 1], ids=["qflume", "qflume_1thread"])
def test_qflume_warm(benchmark: Any, corpus: tuple[str, Path], threads: int) -> None:
    name, root = corpus
    benchmark.group = f"scan-{name}"
    qflume.set_threads(threads)
    try:
        qflume.scan(root, **SCAN_OPTS)  # warm the page cache
        entries = benchmark.pedantic(lambda: qflume.scan(root, **SCAN_OPTS), rounds=3)
    finally:
        qflume.set_threads(0)
    assert len(entries) == sum(1 for _ in _walk(root))
    _record(name, "qflume_1thread" if threads else "qflume", benchmark, *_totals(entries))


def test_qflume_cold(benchmark: Any, corpus: tuple[str, Path]) -> None:
    name, root = corpus
    benchmark.group = f"scan-{name}"
    entries = benchmark.pedantic(
        lambda: qflume.scan(root, **SCAN_OPTS), setup=lambda: _drop_pages(root), rounds=2
    )
    _record(name, "qflume_cold", benchmark, *_totals(entries))


@pytest.mark.parametrize("peer", ["py_sha256", "py_xxh3"])
def test_python_baseline(benchmark: Any, corpus: tuple[str, Path], peer: str) -> None:
    name, root = corpus
    benchmark.group = f"scan-{name}"
    if peer == "py_xxh3":
        if xxhash is None:
            pytest.skip("pip install xxhash (a bench peer)")
        digest: Callable[[bytes], bytes] = xxhash.xxh3_128_digest
    else:
        digest = lambda b: hashlib.sha256(b).digest()  # noqa: E731
    _py_scan(root, digest)
    out = benchmark.pedantic(lambda: _py_scan(root, digest), rounds=3)
    nbytes = sum(os.stat(p).st_size for p, _ in out)
    _record(name, peer, benchmark, len(out), nbytes)
    if peer == "py_xxh3":
        # Same answers as qflume: same files hashed, same hashes.
        mine = {e.path: e.hash for e in qflume.scan(root, **SCAN_OPTS)}
        assert {p: h for p, h in out if h is not None} == {
            p: h for p, h in mine.items() if h is not None
        }


def test_unchanged_fast_path(benchmark: Any, corpus: tuple[str, Path]) -> None:
    name, root = corpus
    benchmark.group = f"scan-{name}"
    first = qflume.scan(root, **SCAN_OPTS)
    # The previous entries as state: hashes, and binary/not-utf8 verdicts, are reused.
    known = {e.key: e for e in first}
    entries = benchmark.pedantic(lambda: qflume.scan(root, known=known, **SCAN_OPTS), rounds=5)
    reusable = sum(e.hash is not None or e.skip in ("binary", "not-utf8") for e in first)
    assert sum(e.unchanged for e in entries) == reusable
    _record(name, "unchanged", benchmark, *_totals(entries))


def test_python_stat_floor(benchmark: Any, corpus: tuple[str, Path]) -> None:
    name, root = corpus
    benchmark.group = f"scan-{name}"
    out = benchmark.pedantic(lambda: _py_stat(root), rounds=5)
    _record(name, "py_stat", benchmark, len(out), sum(s for s, _ in out))


def teardown_module() -> None:
    if not RESULTS:
        return
    print(f"\n\n{'corpus':8s} {'case':16s} {'files/s':>12s} {'MB/s':>10s}")
    for corpus, rows in RESULTS.items():
        for case, (fps, mbs) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
            print(f"{corpus:8s} {case:16s} {fps:12,.0f} {mbs:10.1f}")
