"""qflume.ray on a local Ray cluster (2 CPUs, one for the whole file) against the in-process gRPC
test server (reached by the workers over loopback) and a real server when QDRANT_URL is set:
the point set of the local pipeline bit for bit, an actor killed mid-run, the driver SIGKILLed
mid-run then rerun, an unchanged rerun, a changed and a deleted document."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray", reason="qflume[ray] is not installed (pip install 'qflume[ray]')")

import ray

import qflume
from qflume.sinks.grpc import GrpcSink
from qflume.stages.write import ensure_collection
from qflume.testing import QdrantGrpcServer
from realserver import drop_collection, real_server
from tiny_bert import WORDS

import qflume.ray as qray  # isort: skip

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def model(tiny_model: Path) -> str:
    """The tiny BERT built to an fp32 ONNX folder (model.onnx + tokenizer.json)."""
    return str(tiny_model)


@pytest.fixture(scope="module")
def server() -> Iterator[QdrantGrpcServer]:
    with QdrantGrpcServer() as srv:
        yield srv


def _write_corpus(root: Path, n: int = 12, seed: int = 0) -> Path:
    rng = random.Random(seed)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        paras = ["# Title\n"] if i % 3 == 0 else []
        paras += [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(25)]
        folder = root / "sub" if i % 2 else root
        name = f"d{i}.md" if i % 3 == 0 else f"d{i}.txt"
        (folder / name).write_text("\n\n".join(paras), encoding="utf-8")
    return root


def _points(url: str, collection: str) -> dict[str, tuple[bytes, str]]:
    """id -> (vector bytes, payload JSON): the whole point set, bit for bit."""
    with GrpcSink(url, collection) as sink:
        return {
            str(r.id): (
                np.asarray(r.vector, np.float32).tobytes(),
                json.dumps(r.payload, sort_keys=True),
            )
            for r in sink.scroll(with_payload=True, with_vectors=True)
        }


def _local(url: str, collection: str, corpus: Path, model: str, state: Path) -> qflume.IngestReport:
    with qflume.Pipeline(collection, url=url, model=model, state_dir=state, progress=False) as p:
        return p.ingest(corpus)


def _ray(url: str, collection: str, corpus: Path, model: str, state: Path, **kw: Any) -> Any:
    return qray.ingest(corpus, collection, url=url, model=model, state_dir=state, **kw)


def _name() -> str:
    return f"ray_{uuid.uuid4().hex[:8]}"


def _check_same_as_local(url: str, tmp_path: Path, model: str, cluster: str) -> tuple[str, str]:
    corpus = _write_corpus(tmp_path / "corpus")
    local, on_ray = _name(), _name()
    r_local = _local(url, local, corpus, model, tmp_path / "s_local")
    r = _ray(url, on_ray, corpus, model, tmp_path / "s_ray", wave_chunks=150)
    assert r.documents_new == 12 and r.chunks_embedded == r_local.chunks_embedded > 100
    assert r.points_upserted == r_local.points_upserted
    expected = _points(url, local)
    assert _points(url, on_ray) == expected

    # unchanged: nothing planned, nothing embedded, nothing sent
    r = _ray(url, on_ray, corpus, model, tmp_path / "s_ray")
    assert r.documents_unchanged == 12
    assert (r.chunks_embedded, r.points_upserted, r.points_deleted) == (0, 0, 0)

    # a changed and a deleted document, on both paths
    changed = corpus / "d0.md"
    text = changed.read_text(encoding="utf-8").split("\n\n")
    changed.write_text("\n\n".join([*text[:5], "w1 w2 w3 new paragraph", *text[9:]]), "utf-8")
    (corpus / "sub" / "d1.txt").unlink()
    r_local = _local(url, local, corpus, model, tmp_path / "s_local")
    r = _ray(url, on_ray, corpus, model, tmp_path / "s_ray")
    assert (r.documents_changed, r.documents_deleted) == (1, 1)
    assert r.points_deleted == r_local.points_deleted > 0
    assert r.chunks_embedded == r_local.chunks_embedded
    assert r.payload_updates == r_local.payload_updates
    assert _points(url, on_ray) == _points(url, local)
    with qflume.Pipeline(on_ray, url=url, model=model, state_dir=tmp_path / "s_ray") as p:
        assert p.verify()["ok"]
    return local, on_ray


def test_same_points_as_local_unchanged_changed_deleted(
    cluster: str, server: QdrantGrpcServer, model: str, tmp_path: Path
) -> None:
    _check_same_as_local(server.url, tmp_path, model, cluster)


@real_server
def test_real_server(cluster: str, model: str, tmp_path: Path) -> None:
    url = os.environ["QDRANT_URL"]
    names = _check_same_as_local(url, tmp_path, model, cluster)
    for name in names:
        drop_collection(url, name)


def _embed_actors() -> list[Any]:
    import psutil

    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "EmbedUnits" in cmd and proc.pid != os.getpid():
            out.append(proc)
    return out


def test_actor_killed_mid_run(
    cluster: str, server: QdrantGrpcServer, model: str, tmp_path: Path
) -> None:
    corpus = _write_corpus(tmp_path / "corpus", n=16, seed=1)
    local, on_ray = _name(), _name()
    _local(server.url, local, corpus, model, tmp_path / "s_local")
    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        while not done.is_set() and not killed:
            for proc in _embed_actors():
                proc.send_signal(signal.SIGKILL)
                killed.append(proc.pid)
                break
            time.sleep(0.05)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        r = _ray(server.url, on_ray, corpus, model, tmp_path / "s_ray", concurrency=1)
    finally:
        done.set()
        th.join()
    assert killed, "no embedding actor was seen to kill"
    assert r.documents_new == 16
    assert _points(server.url, on_ray) == _points(server.url, local)


def test_one_actor_pool_for_the_whole_run(
    cluster: str, server: QdrantGrpcServer, model: str, tmp_path: Path
) -> None:
    """The embedding actors live across waves: one model load per actor per run, not per wave."""
    corpus = _write_corpus(tmp_path / "corpus", n=12, seed=5)
    pids: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            pids.update(p.pid for p in _embed_actors())
            time.sleep(0.02)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    try:
        r = _ray(server.url, _name(), corpus, model, tmp_path / "s", wave_chunks=8,
                 batch_chunks=16, concurrency=1)  # fmt: skip
    finally:
        done.set()
        th.join()
    assert r.documents_new == 12  # a unit of ~16 KiB of text per wave: 4 waves or more
    assert len(pids) == 1, f"embedding actors started: {sorted(pids)}"


def test_workers_do_not_import_ray_data() -> None:
    """Every task and actor process imports qflume.ray; ray.data would cost each ~110 MiB."""
    code = "import sys, qflume.ray; print('ray.data' in sys.modules)"
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.strip() == "False"
    code = "from qflume.ray import QflumeDatasink; print(QflumeDatasink.__mro__[1].__name__)"
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert got.stdout.strip() == "Datasink", got.stderr[-2000:]


DRIVER = """
import sys, ray
import qflume.ray as qray
ray.init(address=sys.argv[1], log_to_driver=False)
qray.ingest(sys.argv[2], sys.argv[3], url=sys.argv[4], model=sys.argv[5], state_dir=sys.argv[6],
            wave_chunks=30, concurrency=1, batch_chunks=16)
print("finished")
"""


def test_driver_sigkilled_mid_run_then_rerun_converges(
    cluster: str, server: QdrantGrpcServer, model: str, tmp_path: Path
) -> None:
    corpus = _write_corpus(tmp_path / "corpus", n=12, seed=2)
    local, on_ray = _name(), _name()
    _local(server.url, local, corpus, model, tmp_path / "s_local")
    expected = _points(server.url, local)
    state = tmp_path / "s_ray"
    args = [str(corpus), on_ray, server.url, model, str(state)]
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, cluster, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    seen = 0
    sink = GrpcSink(server.url, on_ray, retries=0)
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                seen = sink.count()
            except qflume.QflumeError:
                seen = 0  # the collection is not there yet
            if seen > 0:
                break
            time.sleep(0.01)
    finally:
        sink.close()
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0]
    assert b"finished" not in out, "the driver finished before it could be killed"
    assert 0 < seen < len(expected)
    # edit a document the killed run may have sent: its stray points must go too
    edited = corpus / "d4.txt"
    edited.write_text(edited.read_text("utf-8") + "\n\nw5 w6 w7 added", "utf-8")
    _local(server.url, local, corpus, model, tmp_path / "s_local")
    r = _ray(server.url, on_ray, corpus, model, state)
    assert r.documents_seen == 12
    assert _points(server.url, on_ray) == _points(server.url, local)
    with qflume.Pipeline(on_ray, url=server.url, model=model, state_dir=state) as p:
        assert p.verify()["ok"]


def test_records_dataset(
    cluster: str, server: QdrantGrpcServer, model: str, tmp_path: Path
) -> None:
    rng = random.Random(3)
    records = [
        {
            "id": f"r{i}",
            "text": " ".join(rng.choice(WORDS) for _ in range(300)),
            "metadata": {"n": i},
        }
        for i in range(6)
    ]
    local, on_ray = _name(), _name()
    with qflume.Pipeline(local, url=server.url, model=model, state_dir=tmp_path / "a") as p:
        p.ingest_records(records)
    r = qray.ingest(
        ray.data.from_items(records), on_ray, url=server.url, model=model, state_dir=tmp_path / "b"
    )
    assert r.documents_new == 6
    assert _points(server.url, on_ray) == _points(server.url, local)


def test_cli_engine_ray(cluster: str, server: QdrantGrpcServer, model: str, tmp_path: Path) -> None:
    corpus = _write_corpus(tmp_path / "corpus", n=3, seed=4)
    qflume_bin = [sys.executable, "-m", "qflume"]
    col = _name()
    base = ["ingest", str(corpus), "-c", col, "--model", model, "--engine", "ray"]
    got = subprocess.run(
        [*qflume_bin, *base, "--url", server.url, "--state-dir", str(tmp_path / "s"),
         "--ray-address", cluster, "--json"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-2000:]
    assert json.loads(got.stdout)["documents_new"] == 3
    assert len(_points(server.url, col)) == json.loads(got.stdout)["points_upserted"] > 0
    refused = subprocess.run(
        [*qflume_bin, *base, "--store", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "embedded store" in refused.stderr and "Traceback" not in refused.stderr


def test_bad_options_refused(tmp_path: Path, model: str) -> None:
    with pytest.raises(qflume.InvalidInputError, match="embedded store"):
        qray.ingest(tmp_path, "docs", store=tmp_path / "store", model=model)
    with pytest.raises(qflume.InvalidInputError, match="concurrency"):
        qray.ingest(
            tmp_path, "docs", url="http://127.0.0.1:1", state_dir=tmp_path, concurrency=(3, 1)
        )
    with pytest.raises(qflume.InvalidInputError, match="wave_chunks"):
        qray.ingest(tmp_path, "docs", url="http://127.0.0.1:1", state_dir=tmp_path, wave_chunks=0)


def _own_pipeline(url: str, name: str, corpus: Path, model: str, state: Path) -> int:
    """A user's own Ray Data pipeline from qflume.ray's public pieces: the driver's plan as rows,
    `ChunkUnits` tasks, the write-ahead, `EmbedUnits` actors, `QflumeDatasink` on the workers and
    the commit of what the server acknowledged on the driver. Returns the units planned."""
    import ray.data

    with qflume.Pipeline(name, url=url, model=model, state_dir=state, progress=False) as p:
        rows, run = qray.plan_rows(p, corpus)
        if not rows:
            return 0
        chunked = (
            ray.data.from_items(rows, override_num_blocks=len(rows))
            .map_batches(
                qray.ChunkUnits(qray.ChunkSettings.of(p)), batch_size=1, batch_format="numpy"
            )
            .materialize()
        )
        qray.write_ahead(p, chunked)
        ensure_collection(p)
        committed: list[int] = []

        def commit(updates: list[Any], deleted: list[str], counts: dict[str, Any]) -> None:
            p.state.commit(updates, deleted)
            committed.append(len(updates) + len(deleted))

        embedded = chunked.select_columns(["unit", "data"]).map_batches(
            qray.EmbedUnits, fn_constructor_kwargs={"model": model}, batch_size=1,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1),
        )  # fmt: skip
        embedded.write_datasink(qray.QflumeDatasink(url, name, on_commit=commit))
        assert sum(committed) == run.report.documents_new + run.report.documents_changed + (
            run.report.documents_deleted
        )
        assert p.verify()["ok"]
        return len(rows)


def test_a_users_own_ray_data_pipeline_from_the_public_pieces(
    cluster: str, server: QdrantGrpcServer, model: str, tmp_path: Path
) -> None:
    corpus = _write_corpus(tmp_path / "corpus", n=6)
    local, own = _name(), _name()
    _local(server.url, local, corpus, model, tmp_path / "s_local")
    assert _own_pipeline(server.url, own, corpus, model, tmp_path / "s_own") > 0
    assert _points(server.url, own) == _points(server.url, local)
    # unchanged: nothing to plan; an edit: the same points as the local pipeline's
    assert _own_pipeline(server.url, own, corpus, model, tmp_path / "s_own") == 0
    (corpus / "d0.md").write_text("# Title\n\nA new text for the first document.\n", "utf-8")
    _local(server.url, local, corpus, model, tmp_path / "s_local")
    assert _own_pipeline(server.url, own, corpus, model, tmp_path / "s_own") == 1
    assert _points(server.url, own) == _points(server.url, local)


def test_plan_rows_refuses_a_missing_path(
    server: QdrantGrpcServer, model: str, tmp_path: Path
) -> None:
    with qflume.Pipeline(
        _name(), url=server.url, model=model, state_dir=tmp_path, progress=False
    ) as p:
        with pytest.raises(qflume.QflumeIOError, match="no such file or folder"):
            qray.plan_rows(p, tmp_path / "missing")
