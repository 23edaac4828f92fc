"""Peak memory (VmHWM) of ingesting one large file: a single line of words (no line or paragraph
breaks), or one paragraph of short lines (no blank line).

Each run is a fresh `qflume ingest` process into a real Qdrant server (QDRANT_BIN, started here:
the store's own memory then lives in the server's process, so what is measured is qflume's) or,
without one, into the embedded store (whose in-process segment then counts too).

    QDRANT_BIN=../shared/bin/qdrant .venv/bin/python -m pytest benches/bench_big_file.py \\
        --benchmark-only -s
    QFLUME_BENCH_BIG_MB=100 ...          # file size in MB (default 5)
    QFLUME_BENCH_MODEL=tiny ...          # a tiny random BERT (2 layers, 32 dims) instead of the
                                         # default model: isolates the pipeline's memory, and a
                                         # 100 MB file (~400k chunks) embeds in minutes
    QFLUME_BENCH_MAX_MEMORY=268435456 ...  # --max-memory (default 256 MiB)

Reported: peak RSS of the ingest process, its baseline (the same command on a 1 KB file), the
difference per MB of input, and the --max-memory it ran under.
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
MAX_MEMORY = int(os.environ.get("QFLUME_BENCH_MAX_MEMORY", str(256 << 20)))
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


def _write(path: Path, size: int, shape: str) -> None:
    """``size`` bytes of words: one line, or lines of ~80 characters with no blank line."""
    rng = random.Random(1)
    with open(path, "w", encoding="ascii") as f:
        written = 0
        while written < size:
            words = [rng.choice(WORDS) for _ in range(20_000)]
            if shape == "one-line":
                block = " ".join(words) + " "
            else:
                block = "\n".join(" ".join(words[i : i + 12]) for i in range(0, 20_000, 12))
                block += "\n"
            f.write(block[: size - written])
            written += len(block)


@pytest.fixture(scope="module")
def target() -> Iterator[list[str]]:
    if os.environ.get("QDRANT_BIN"):
        with QdrantServer(os.environ["QDRANT_BIN"]) as server:
            yield ["--url", server.url]
    else:
        yield []


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if os.environ.get("QFLUME_BENCH_MODEL", "default") != "tiny":
        return []
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_bert import make_tiny_bert

    src = tmp_path_factory.mktemp("tiny-bert")
    make_tiny_bert(src)
    return ["--model", str(src), "--chunk-chars", "256"]


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


@pytest.mark.parametrize("shape", ["one-line", "one-paragraph"])
def test_peak_memory_of_one_large_file(
    benchmark: Any, tmp_path: Path, target: list[str], model: list[str], shape: str
) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    _write(small / "one.txt", 1000, shape)
    _write(big / "one.txt", MB * 1_000_000, shape)
    where = "a real Qdrant server" if target else "the embedded store"

    def run(folder: Path, name: str) -> int:
        store = [] if target else ["--store", str(tmp_path / f"store-{name}")]
        state = ["--state-dir", str(tmp_path / f"state-{name}")] if target else []
        limits = ["--max-memory", str(MAX_MEMORY), "--max-file-size", str(4 * MB << 20)]
        args = [str(folder), "-c", name, "--no-progress", *target, *store, *state, *model]
        return _peak_kb([*args, *limits])

    base = run(small, "small")
    peaks: list[int] = []
    counter = iter(range(1000))
    benchmark.pedantic(lambda: peaks.append(run(big, f"big{next(counter)}")), rounds=1,
                       iterations=1)  # fmt: skip
    peak = peaks[-1]
    extra = (peak - base) / 1024
    benchmark.extra_info.update(
        {
            "mb": MB,
            "shape": shape,
            "target": where,
            "model": "tiny" if model else "default",
            "max_memory_mb": MAX_MEMORY >> 20,
            "peak_mb": round(peak / 1024),
            "base_mb": round(base / 1024),
        }
    )
    print(
        f"\n{MB} MB {shape} file into {where} ({'tiny' if model else 'default'} model, "
        f"--max-memory {MAX_MEMORY >> 20} MiB): peak RSS {peak / 1024:.0f} MB, baseline "
        f"{base / 1024:.0f} MB, +{extra:.0f} MB ({extra / MB:.2f} MB per MB of input)"
    )
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
