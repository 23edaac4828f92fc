"""Qdrant outages during ingest, against a real Qdrant server process this test starts, kills,
freezes and restarts itself.

Runs when QDRANT_BIN names a qdrant server binary (no such package exists in the registries
this project installs from; a binary built from qdrant/qdrant works). A killed server makes the
run fail with an error naming the server; a frozen one is waited out by the sink's retries;
either way the next run ends with exactly the point set of an uninterrupted run (ids, vectors,
payloads), paying again for no embedding the cache holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qflume.pipeline import Pipeline
from qflume.testing import QdrantServer
from realserver import needs_binary

pytestmark = needs_binary

DOCS = Path("/usr/share/doc/python3.11/html/_sources/library")


@pytest.fixture()
def server(tmp_path: Path):
    with QdrantServer(os.environ["QDRANT_BIN"], tmp_path / "qdrant") as s:
        yield s


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DOCS.is_dir():
        pytest.skip(f"needs the Python docs at {DOCS} (apt install python3.11-doc)")
    root = tmp_path_factory.mktemp("corpus")
    for src in sorted(DOCS.glob("*.rst.txt"))[:24]:
        (root / src.name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    return root


def _ingest(
    server: QdrantServer, collection: str, state: Path, corpus: Path, *extra: str
) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "qflume", "ingest", str(corpus), "-c", collection,
           "--url", server.url, "--state-dir", str(state), "--sparse", "bm25", "--json",
           "--no-progress", *extra]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _points(
    server: QdrantServer, collection: str, state: Path
) -> dict[str, tuple[bytes, bytes, str]]:
    with Pipeline(collection, url=server.url, state_dir=state, lock=False, progress=False) as p:
        out = {}
        for rec in p.sink.scroll(with_payload=True, with_vectors=True):
            i, v = rec.sparse["bm25"]
            out[str(rec.id)] = (
                np.asarray(rec.vector, np.float32).tobytes(),
                np.asarray(v, np.float32).tobytes() + np.asarray(i, np.uint32).tobytes(),
                json.dumps(rec.payload, sort_keys=True),
            )
        return out


def _wait_for_upserts(state: Path, collection: str, proc: subprocess.Popen[str]) -> None:
    """Until the run has had some points acknowledged (its state holds documents)."""
    import sqlite3

    db = state / f"{collection}.state.sqlite"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            with sqlite3.connect(db) as con:
                try:
                    if con.execute("SELECT count(*) FROM documents").fetchone()[0] > 0:
                        return
                except sqlite3.OperationalError:
                    pass
        time.sleep(0.05)
    raise AssertionError("the run acknowledged nothing before it ended")


@pytest.fixture(scope="module")
def expected(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """The point set of a run nothing interrupts (collection "ref" on a server of its own): the
    same for every test here, which all ingest the same corpus with the same options."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    with QdrantServer(os.environ["QDRANT_BIN"], tmp / "qdrant") as server:
        ref = _ingest(server, "ref", tmp / "s_ref", corpus)
        _, err = ref.communicate(timeout=600)
        assert ref.returncode == 0, err
        points = _points(server, "ref", tmp / "s_ref")
    assert points
    return points


def test_killed_server_fails_the_run_clearly_and_the_rerun_converges(
    server, corpus, expected, tmp_path
):
    """Killed for longer than --outage-deadline: the run spools, then fails naming the server
    and the deadline; the rerun converges."""
    state = tmp_path / "s_out"
    run = _ingest(server, "out", state, corpus, "--outage-deadline", "3")
    _wait_for_upserts(state, "out", run)
    server.kill()
    _, err = run.communicate(timeout=600)
    assert run.returncode != 0
    assert f"Qdrant at {server.url}" in err and "collection 'out'" in err, err
    assert "stayed unreachable for" in err and "outage_deadline=3 s" in err, err
    assert "Traceback" not in err
    server.start()  # same storage: what the server acknowledged survived
    rerun = _ingest(server, "out", state, corpus)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    report = json.loads(out)
    assert report["cache_hits"] > 0  # what was embedded before the outage is not paid again
    assert _points(server, "out", state) == expected


def test_frozen_server_is_waited_out(server, corpus, expected, tmp_path):
    state = tmp_path / "s_frozen"
    run = _ingest(server, "frozen", state, corpus)
    _wait_for_upserts(state, "frozen", run)
    server.freeze()  # accepts connections, answers nothing
    time.sleep(5)
    server.thaw()
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    assert _points(server, "frozen", state) == expected


def test_restarted_server_is_ridden_through(server, corpus, expected, tmp_path):
    """Killed and back a moment later, while the run goes on: the sink's retries reconnect and the
    run ends with exit 0 and the uninterrupted point set."""
    state = tmp_path / "s_restart"
    run = _ingest(server, "restart", state, corpus)
    _wait_for_upserts(state, "restart", run)
    server.kill()
    server.start()  # same ports, same storage
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    assert _points(server, "restart", state) == expected


def test_a_server_down_for_a_while_is_spooled_through(server, corpus, expected, tmp_path):
    """Killed, and started again only once the run has spooled updates to its outbox: the run
    goes on embedding meanwhile, sends the outbox in order when the server is back and ends
    with exit 0 and the uninterrupted point set."""
    state = tmp_path / "s_spool"
    run = _ingest(server, "spool", state, corpus)
    _wait_for_upserts(state, "spool", run)
    server.kill()
    box = state / "spool.outbox"
    deadline = time.monotonic() + 300
    while not (box.exists() and box.stat().st_size > 0):
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "the run spooled nothing"
        time.sleep(0.05)
    server.start()
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    report = json.loads(out)
    assert report["outages"] >= 1 and report["spooled_requests"] > 0, report
    assert not box.exists()
    assert _points(server, "spool", state) == expected
