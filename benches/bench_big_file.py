"""Peak memory (VmHWM) of ingesting one large file: a single line of words, no paragraph breaks.

Each run is a fresh `qflume ingest` process into a real Qdrant server (QDRANT_BIN, started here:
the store's own memory then lives in the server's process, so what is measured is qflume's) or,
without one, into the embedded store (whose in-process segment then counts too). The model is the
real default one, so a run embeds every chunk: sizes are kept moderate.

    QDRANT_BIN=../shared/bin/qdrant .venv/bin/python -m pytest benches/bench_big_file.py \\
        --benchmark-only -s
    QFLUME_BENCH_BIG_MB=20 ...     # file size in MB (default 5)

Reported: peak RSS of the ingest process, its baseline (the same command on a 1 KB file) and
the difference per MB of input.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qflume.testing import QdrantServer

MB = int(os.environ.get("QFLUME_BENCH_BIG_MB", "5"))
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


def _one_line(path: Path, size: int) -> None:
    rng = random.Random(1)
    with open(path, "w", encoding="ascii") as f:
        written = 0
        while written < size:
            block = " ".join(rng.choice(WORDS) for _ in range(20_000)) + " "
            f.write(block[: size - written])
            written += len(block)


@pytest.fixture(scope="module")
def target() -> Iterator[list[str]]:
    if os.environ.get("QDRANT_BIN"):
        with QdrantServer(os.environ["QDRANT_BIN"]) as server:
            yield ["--url", server.url]
    else:
        yield []


def _peak_kb(args: list[str]) -> int:
    """ru_maxrss (VmHWM, KB) of one child process running ``qflume ingest``."""
    code = (
        "import resource, subprocess, sys; "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "qflume", "ingest", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


def test_peak_memory_of_one_large_line(benchmark: Any, tmp_path: Path, target: list[str]) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    _one_line(small / "one.txt", 1000)
    _one_line(big / "one.txt", MB * 1_000_000)
    where = "a real Qdrant server" if target else "the embedded store"

    def run(folder: Path, name: str) -> int:
        store = [] if target else ["--store", str(tmp_path / f"store-{name}")]
        state = ["--state-dir", str(tmp_path / f"state-{name}")] if target else []
        return _peak_kb([str(folder), "-c", name, "--no-progress", *target, *store, *state])

    base = run(small, "small")
    peaks: list[int] = []
    counter = iter(range(1000))
    benchmark.pedantic(lambda: peaks.append(run(big, f"big{next(counter)}")), rounds=1,
                       iterations=1)  # fmt: skip
    peak = peaks[-1]
    extra = (peak - base) / 1024
    benchmark.extra_info.update(
        {"mb": MB, "target": where, "peak_mb": round(peak / 1024), "base_mb": round(base / 1024)}
    )
    print(
        f"\n{MB} MB one-line file into {where}: peak RSS {peak / 1024:.0f} MB, baseline "
        f"{base / 1024:.0f} MB, +{extra:.0f} MB ({extra / MB:.1f} MB per MB of input)"
    )
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
