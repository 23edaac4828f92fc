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
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from qflume.pipeline import Pipeline

pytestmark = [
    pytest.mark.qdrant_server,
    pytest.mark.skipif(not os.environ.get("QDRANT_BIN"), reason="QDRANT_BIN is not set"),
]

DOCS = Path("/usr/share/doc/python3.11/html/_sources/library")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A qdrant process on free ports over a storage folder that outlives restarts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.http, self.grpc = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.grpc}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        env = dict(
            os.environ,
            QDRANT__SERVICE__HTTP_PORT=str(self.http),
            QDRANT__SERVICE__GRPC_PORT=str(self.grpc),
            QDRANT__STORAGE__STORAGE_PATH=str(self.root / "storage"),
            QDRANT__STORAGE__SNAPSHOTS_PATH=str(self.root / "snapshots"),
            QDRANT__TELEMETRY_DISABLED="true",
        )
        with open(self.root / "qdrant.log", "ab") as log:  # the process keeps its own copy
            self.proc = subprocess.Popen(
                [os.environ["QDRANT_BIN"]], cwd=self.root, env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"qdrant did not start: see {self.root / 'qdrant.log'}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture()
def server(tmp_path: Path):
    s = Server(tmp_path / "qdrant")
    s.root.mkdir()
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not DOCS.is_dir():
        pytest.skip(f"needs the Python docs at {DOCS} (apt install python3.11-doc)")
    root = tmp_path_factory.mktemp("corpus")
    for src in sorted(DOCS.glob("*.rst.txt"))[:24]:
        (root / src.name).write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    return root


def _ingest(server: Server, collection: str, state: Path, corpus: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "qflume", "ingest", str(corpus), "-c", collection,
           "--url", server.url, "--state-dir", str(state), "--sparse", "bm25", "--json",
           "--no-progress"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _points(server: Server, collection: str, state: Path) -> dict[str, tuple[bytes, bytes, str]]:
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


def _uninterrupted(server: Server, corpus: Path, tmp_path: Path) -> dict[str, tuple]:
    """The point set of a run nothing interrupts, in collection "ref"."""
    ref = _ingest(server, "ref", tmp_path / "s_ref", corpus)
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    return _points(server, "ref", tmp_path / "s_ref")


def test_killed_server_fails_the_run_clearly_and_the_rerun_converges(server, corpus, tmp_path):
    expected = _uninterrupted(server, corpus, tmp_path)
    state = tmp_path / "s_out"
    run = _ingest(server, "out", state, corpus)
    _wait_for_upserts(state, "out", run)
    server.signal(signal.SIGKILL)
    _, err = run.communicate(timeout=600)
    assert run.returncode != 0
    assert f"Qdrant at {server.url}" in err and "collection 'out'" in err, err
    server.start()  # same storage: what the server acknowledged survived
    rerun = _ingest(server, "out", state, corpus)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    report = json.loads(out)
    assert report["cache_hits"] > 0  # what was embedded before the outage is not paid again
    assert _points(server, "out", state) == expected


def test_frozen_server_is_waited_out(server, corpus, tmp_path):
    expected = _uninterrupted(server, corpus, tmp_path)
    state = tmp_path / "s_frozen"
    run = _ingest(server, "frozen", state, corpus)
    _wait_for_upserts(state, "frozen", run)
    server.signal(signal.SIGSTOP)  # accepts connections, answers nothing
    time.sleep(5)
    server.signal(signal.SIGCONT)
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    assert _points(server, "frozen", state) == expected
