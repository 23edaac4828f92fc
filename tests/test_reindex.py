"""Versioned collections (qflume.versions): reindex without downtime, rollback, gc, migrate.

Two tiny random BERTs (seeds 0 and 1: the same tokenizer and size, other weights) stand for an
old and a new embedding model. Each scenario runs on the embedded store and on a server: a real
Qdrant server with QDRANT_URL (the test command starts one from ../shared/bin/qdrant), else
qflume's in-process gRPC test server (the search loop runs on all three): `qflume reindex` runs
as a child process (killed with SIGKILL at chosen and random moments in one test) while this
process searches in a loop.
"""

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qflume.pipeline import Pipeline
from qflume.state import State, reindex_holder
from qflume.testing import QdrantGrpcServer
from realserver import NO_SERVER, drop_collection
from tiny_bert import make_tiny_bert, tiny_corpus

QUERIES = ["w1 w2 w3 w4", "w10 w20 w30", "w5 w50 w15 w25 w35", "w7 w8 w9"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Two built tiny models (fp32 ONNX folders) and the environment the CLI children use."""
    from qflume import model as qmodel

    root = tmp_path_factory.mktemp("reindex-models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QFLUME_CACHE_DIR", str(root / "cache"))
        mp.setenv("QFLUME_MODEL_KIND", "fp32")
        out = []
        for seed in (0, 1):
            make_tiny_bert(root / f"src{seed}", seed=seed)
            out.append(qmodel.build(root / f"src{seed}", out=root / f"m{seed}", quiet=True))
        yield out[0], out[1]


@dataclass
class Where:
    """A target: the embedded store, the in-process test server, or a real server."""

    kind: str
    root: Path
    collection: str = "docs"
    url: str | None = None
    cleanup: list[Any] = field(default_factory=list)

    @property
    def args(self) -> list[str]:
        if self.url is None:
            return ["-c", self.collection, "--store", str(self.root / "store")]
        return ["-c", self.collection, "--url", self.url, "--state-dir", str(self.root / "st")]

    def pipeline(self, **kw: Any) -> Pipeline:
        if self.url is None:
            return Pipeline(self.collection, store=self.root / "store", progress=False, **kw)
        return Pipeline(
            self.collection, url=self.url, state_dir=self.root / "st", progress=False, **kw
        )

    @property
    def state_path(self) -> Path:
        base = self.root / ("store" if self.url is None else "st")
        return base / f"{self.collection}.state.sqlite"

    def live_name(self) -> str | None:
        """What the alias (a server) or the pointer file (the embedded store) names."""
        if self.url is None:
            from qflume.sinks.edge import read_pointer

            got = read_pointer(self.root / "store", self.collection)
            return got[0] if got else None
        from qflume.sinks.grpc import GrpcSink

        with GrpcSink(self.url, self.collection) as s:
            return s.aliases().get(self.collection)

    def sink(self, name: str) -> Any:
        if self.url is None:
            from qflume.sinks.edge import EdgeSink

            return EdgeSink(self.root / "store", name, follow_pointer=False)
        from qflume.sinks.grpc import GrpcSink

        return GrpcSink(self.url, name)

    def exists(self, name: str) -> bool:
        if self.url is None:
            return (self.root / "store" / name / "edge_config.json").exists()
        from qflume.sinks.grpc import GrpcSink

        with GrpcSink(self.url, self.collection) as s:
            return name in s.collections()


#: The targets of the scenarios: the embedded store and a server. With a real server (the test
#: command starts one), the runs on the in-process test server would repeat the real server's
#: through the same client code (GrpcSink, the same CLI), so they run only where there is no
#: real server; the test server's aliases keep their own runs here: the search loop below, the
#: migration and test_the_test_servers_aliases_behave_as_qdrants.
REAL = pytest.param("real", marks=pytest.mark.qdrant_server)
SERVER = REAL if os.environ.get("QDRANT_URL") else "grpc"


@pytest.fixture(params=["edge", SERVER])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    if request.param == "edge":
        yield Where("edge", tmp_path)
    elif request.param == "grpc":
        with QdrantGrpcServer(tmp_path / "server") as server:
            yield Where("grpc", tmp_path, url=server.url)
    else:
        url = os.environ.get("QDRANT_URL")
        if not url:
            pytest.skip(NO_SERVER)
        w = Where("real", tmp_path, collection=f"qflume_rx_{uuid.uuid4().hex[:10]}", url=url)
        try:
            yield w
        finally:
            drop_collection(url, w.collection)


def cli(where: Where, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "qflume", *args, *where.args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def start(where: Where, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "qflume", *args, *where.args, "--json"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def answers(where: Where, **kw: Any) -> tuple[Any, ...]:
    """The hits of QUERIES, by a fresh pipeline (as `qflume search` would): ids and scores."""
    with where.pipeline(lock=False, **kw) as p:
        hits = p.search(QUERIES, limit=5)
    return tuple(tuple((h.id, round(h.score, 4)) for h in row) for row in hits)


def state_ids(where: Where) -> set[str]:
    from qflume._core import point_id

    with State(where.state_path, lock=False) as st:
        return {point_id(d.key, d.chunks[i : i + 16]) for d in st.iter_all()
                for i in range(0, len(d.chunks), 16)}  # fmt: skip


def live_row(where: Where) -> Any:
    with State(where.state_path, lock=False) as st:
        return st.live_version()


def assert_holds_the_state(where: Where, model: Path) -> None:
    """The live version holds exactly the state's points, vectors of ``model``, and the alias
    (or pointer) names it."""
    import qflume

    live = live_row(where)
    assert where.live_name() == live.name
    expected = state_ids(where)
    with where.sink(live.name) as sink:
        recs = list(sink.scroll(with_payload=True, with_vectors=True))
    assert {r.id for r in recs} == expected
    emb = qflume.Embedder(model)
    try:
        sample = recs[:: max(1, len(recs) // 20)]
        want = emb.embed([r.payload["page_content"] for r in sample])
    finally:
        emb.close()
    got = np.stack([r.vector for r in sample])
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-4)


class SearchLoop:
    """Searches QUERIES in a loop on a thread (a fresh pipeline each time) until stopped, at
    most ``limit`` times and ``seconds`` long; records every answer and every failure."""

    def __init__(self, where: Where, limit: int = 400, seconds: float = 240.0, **kw: Any) -> None:
        self.where, self.limit, self.seconds, self.kw = where, limit, seconds, kw
        self.answers: list[tuple[Any, ...]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set() and len(self.answers) + len(self.failures) < self.limit:
            if time.monotonic() - t0 > self.seconds:
                break
            try:
                self.answers.append(answers(self.where, **self.kw))
            except Exception as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            time.sleep(0.02)

    def __enter__(self) -> SearchLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def check(self, old: tuple[Any, ...], new: tuple[Any, ...]) -> None:
        """Zero failed queries; every answer the old version's or the new one's, old ones first."""
        assert old != new, "the two models must answer differently for the test to mean much"
        assert not self.failures, self.failures[:3]
        assert self.answers, "the search loop never ran"
        kinds = []
        for a in self.answers:
            assert a in (old, new), f"an answer from neither version: {a}"
            kinds.append("old" if a == old else "new")
        swapped = kinds.index("new") if "new" in kinds else len(kinds)
        assert all(k == "new" for k in kinds[swapped:]), "an old answer after a new one"


def ingest(where: Where, corpus: Path, model: Path) -> None:
    cli(where, "ingest", str(corpus), "--model", str(model), "--no-progress")


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["edge", "grpc", REAL], indirect=True)
def test_search_loop_during_a_reindex_sees_one_version_at_a_time(
    where: Where, models: tuple[Path, Path], tmp_path: Path
) -> None:
    m0, m1 = models
    corpus = tiny_corpus(tmp_path / "corpus", 24, paragraphs=6)
    ingest(where, corpus, m0)
    old = answers(where)
    first = live_row(where)
    with SearchLoop(where) as loop:
        time.sleep(0.3)  # the loop answers from the old version first
        proc = start(where, "reindex", "--model", str(m1))
        out, err = proc.communicate(timeout=300)
        time.sleep(0.5)  # and from the new one after the swap
    assert proc.returncode == 0, err
    rep = json.loads(out)
    assert rep["swapped"] and rep["path"] == "texts" and rep["previous"] == first.version
    assert rep["documents_read"] == 0 and rep["chunks_made"] == 0  # nothing read or chunked
    assert rep["chunks_embedded"] + rep["cache_hits"] == rep["points"] == len(state_ids(where))
    new = answers(where)
    loop.check(old, new)
    assert loop.answers[-1] == new
    assert_holds_the_state(where, m1)
    assert where.exists(first.name)  # the old version stays for a rollback


def _kill_points() -> list[tuple[str, float]]:
    """When to SIGKILL the reindex: at phases it enters, and at random moments."""
    rng = random.Random(13)
    return [("build", 0.0), ("swap", 0.0), ("time", rng.uniform(0.2, 2.0)),
            ("time", rng.uniform(1.5, 4.0))]  # fmt: skip


def _run_and_kill(where: Where, args: list[str], phase: str, delay: float) -> bool:
    """Start the reindex; kill it when its lock file shows ``phase`` (or after ``delay`` s).
    True when it was killed before it finished."""
    proc = start(where, *args)
    t0 = time.monotonic()
    while proc.poll() is None:
        held = reindex_holder(where.state_path)
        due = (
            held is not None and held[0] == proc.pid and held[1] == phase
            if phase != "time"
            else time.monotonic() - t0 >= delay
        )
        if due:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.communicate()
            return True
        time.sleep(0.002)
    proc.communicate()
    return False


@pytest.mark.parametrize("change", ["model", "chunking"])
def test_a_reindex_killed_at_any_moment_leaves_the_old_version_and_resumes(
    where: Where, models: tuple[Path, Path], tmp_path: Path, change: str
) -> None:
    m0, m1 = models
    corpus = tiny_corpus(tmp_path / "corpus", 16, paragraphs=6)
    ingest(where, corpus, m0)
    old, first = answers(where), live_row(where)
    args = (
        ["reindex", "--model", str(m1)]
        if change == "model"
        else ["reindex", "--chunk-tokens", "24"]
    )
    killed = 0
    with SearchLoop(where) as loop:
        for phase, delay in _kill_points():
            if not _run_and_kill(where, args, phase, delay):
                break
            killed += 1
            live = live_row(where)
            # killed: the alias is still on the old version, unless the state had swapped
            if live.version == first.version:
                assert where.live_name() in (first.name, None)
            else:
                assert live.name != first.name
        proc = start(where, *args)
        out, err = proc.communicate(timeout=300)
        time.sleep(0.5)
    # at least one kill landed mid-run (a loaded machine may finish a run before a later one)
    assert killed >= 1
    assert proc.returncode == 0, err
    rep = json.loads(out)
    assert rep["swapped"] or rep["unchanged"]
    new = answers(where)
    if change == "model":
        loop.check(old, new)
        assert_holds_the_state(where, m1)
    else:
        assert not loop.failures, loop.failures[:3]
        assert live_row(where).settings["chunk_tokens"] == 24
        assert_holds_the_state(where, m0)
    rows = {
        r["version"]: r for r in json.loads(cli(where, "versions", "--json").stdout)["versions"]
    }
    assert [r["status"] for r in rows.values()].count("live") == 1
    assert all(r["status"] != "building" for r in rows.values())


def test_ingests_during_a_reindex_land_in_the_new_version(
    where: Where, models: tuple[Path, Path], tmp_path: Path
) -> None:
    """An ingest between a reindex killed mid-way and its rerun (as one during the build) is
    caught up before the swap; one started while the reindex runs ends up in the new version
    whichever moment it ran at."""
    m0, m1 = models
    corpus = tiny_corpus(tmp_path / "corpus", 16, paragraphs=6)
    ingest(where, corpus, m0)
    assert _run_and_kill(where, ["reindex", "--model", str(m1)], "swap", 0.0)
    with State(where.state_path, lock=False) as st:
        building = [r for r in st.versions() if r.status == "building"]
        assert building and len(st.build_progress(building[0].version)) == 16
    (corpus / "d003.txt").write_text("w1 w2 w3 changed during the reindex\n", encoding="utf-8")
    (corpus / "d005.txt").unlink()
    (corpus / "new.txt").write_text("w9 w8 w7 a new document\n", encoding="utf-8")
    ingest(where, corpus, m0)  # into the old version, the live one
    rep = json.loads(cli(where, "reindex", "--model", str(m1), "--json").stdout)
    assert rep["resumed"] and rep["swapped"]
    assert rep["points_copied"] == 2  # d003 and new.txt again, nothing else
    assert_holds_the_state(where, m1)
    # one started while the reindex runs: it writes the old version during the build (caught
    # up), waits for the swap, or writes the new version after it
    (corpus / "d004.txt").write_text("w4 w44 edited again\n", encoding="utf-8")
    proc = start(where, "reindex", "--sparse", "bm25")
    child = start(where, "ingest", str(corpus), "--no-progress")
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_holds_the_state(where, m1)
    with where.pipeline(lock=False) as p:
        hits = p.search(["w4 w44 edited again"], limit=3, mode="hybrid")[0]
    assert hits and hits[0].source == "d004.txt"


def test_payload_updates_made_during_a_reindex_reach_the_new_version(
    where: Where, models: tuple[Path, Path], tmp_path: Path
) -> None:
    m0, m1 = models
    ingest(where, tiny_corpus(tmp_path / "corpus", 8, paragraphs=4), m0)
    assert _run_and_kill(where, ["reindex", "--model", str(m1)], "swap", 0.0)  # built, unswapped
    with where.pipeline() as p:  # a writer: the update goes to the live version only
        res = p.update_payload([{"source": "d002.txt", "set": {"metadata.tag": "kept"}}])
    assert res[0]["ok"] and res[0]["points"] > 0
    rep = json.loads(cli(where, "reindex", "--model", str(m1), "--json").stdout)
    assert rep["resumed"] and rep["swapped"]
    with where.sink(live_row(where).name) as sink:
        tags = {(r.payload["metadata"]["source"], r.payload["metadata"].get("tag"))
                for r in sink.scroll()}  # fmt: skip
    assert ("d002.txt", "kept") in tags and ("d001.txt", None) in tags
    assert ("d002.txt", None) not in tags
    assert_holds_the_state(where, m1)


def test_rollback_and_gc(where: Where, models: tuple[Path, Path], tmp_path: Path) -> None:
    m0, m1 = models
    corpus = tiny_corpus(tmp_path / "corpus", 12, paragraphs=4)
    ingest(where, corpus, m0)
    old, first = answers(where), live_row(where)
    cli(where, "reindex", "--model", str(m1), "--no-progress")
    new, second = answers(where), live_row(where)
    assert new != old and second.version == first.version + 1
    out = json.loads(cli(where, "rollback", "--json").stdout)
    assert out["version"] == first.version and where.live_name() == first.name
    assert answers(where) == old  # searched with the old model again, no --model needed
    assert_holds_the_state(where, m0)
    # the rolled-back version takes ingests, with its own settings
    (corpus / "d001.txt").write_text("w3 w2 w1 after the rollback\n", encoding="utf-8")
    ingest(where, corpus, m0)
    assert_holds_the_state(where, m0)
    cli(where, "rollback", "--to", str(second.version), "--json")
    cli(where, "ingest", str(corpus), "--no-progress")  # brings it up to date (m1, inherited)
    assert_holds_the_state(where, m1)
    res = cli(where, "ingest", str(corpus), "--model", str(m0), check=False)
    assert res.returncode == 1 and "qflume reindex" in res.stderr and "Traceback" not in res.stderr
    out = json.loads(cli(where, "gc", "--keep", "1", "--json").stdout)
    assert out["dropped"] == [first.version] and out["kept"] == [second.version]
    assert not where.exists(first.name) and where.exists(second.name)
    res = cli(where, "rollback", check=False)
    assert res.returncode == 1 and "dropped" in res.stderr and "Traceback" not in res.stderr
    assert_holds_the_state(where, m1)


def test_a_chunking_change_reads_the_sources_again(
    where: Where, models: tuple[Path, Path], tmp_path: Path
) -> None:
    m0, _ = models
    corpus = tiny_corpus(tmp_path / "corpus", 10, paragraphs=6)
    (corpus / "sub dir [x]").mkdir()
    (corpus / "sub dir [x]" / "odd {name}*.txt").write_text("w1 w2 w3 w4 w5\n\nw6 w7\n")
    (corpus / "not ingested.txt").write_text("w1 w9\n")
    cli(where, "ingest", str(corpus), "--model", str(m0), "--exclude", "not ingested.txt",
        "--no-progress")  # fmt: skip
    before = len(state_ids(where))
    rep = json.loads(cli(where, "reindex", "--chunk-tokens", "16", "--json").stdout)
    assert rep["path"] == "sources" and rep["swapped"]
    assert rep["documents_read"] == 11 and rep["chunks_made"] == rep["points"] > before
    with State(where.state_path, lock=False) as st:
        keys = {d.key for d in st.iter_all()}
    assert "not ingested.txt" not in keys and "sub dir [x]/odd {name}*.txt" in keys
    assert_holds_the_state(where, m0)
    # records have no source file: their texts must be given again
    recs = tmp_path / "r.jsonl"
    recs.write_text(json.dumps({"id": "r1", "text": "w1 w2 w3 w4 w5 w6"}) + "\n")
    cli(where, "ingest", str(recs), "--records", "--no-progress")
    res = cli(where, "reindex", "--chunk-tokens", "8", check=False)
    assert res.returncode == 1 and "--records" in res.stderr and "Traceback" not in res.stderr
    assert where.live_name() == live_row(where).name  # nothing changed
    cli(where, "reindex", "--chunk-tokens", "8", "--records", str(recs), "--no-progress")
    assert live_row(where).settings["chunk_tokens"] == 8
    assert_holds_the_state(where, m0)


def test_a_plain_server_collection_is_migrated_in_one_command(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    m0, m1 = models
    corpus = tiny_corpus(tmp_path / "corpus", 8, paragraphs=4)
    with QdrantGrpcServer(tmp_path / "server") as server:
        where = Where("grpc", tmp_path, url=server.url)
        with where.pipeline(model=m0, versioned=False) as p:  # as qflume made them before
            p.ingest(corpus)
        client = server.client()
        assert client.get_aliases().aliases == []
        old = answers(where, model=m0)  # a plain collection: its model is given
        res = cli(where, "reindex", "--model", str(m1), check=False)
        assert res.returncode == 1 and "qflume migrate" in res.stderr
        with SearchLoop(where, model=m0) as loop:
            out = json.loads(cli(where, "migrate", "--model", str(m0), "--json").stdout)
        assert out["migrated"] and out["name"] == "docs__v1"
        assert [c.name for c in client.get_collections().collections] == ["docs__v1"]
        assert client.get_aliases().aliases[0].collection_name == "docs__v1"
        assert answers(where) == old  # the model is recorded: no need to give it now
        # the moment between the delete and the alias: a search may find nothing, never fail
        assert not loop.failures, loop.failures[:3]
        assert all(a in (old, tuple(() for _ in QUERIES)) for a in loop.answers)
        assert json.loads(cli(where, "migrate", "--json").stdout)["migrated"] is False
        cli(where, "reindex", "--model", str(m1), "--no-progress")
        assert_holds_the_state(where, m1)
        client.close()


def test_the_embedded_store_needs_no_migration(models: tuple[Path, Path], tmp_path: Path) -> None:
    m0, m1 = models
    where = Where("edge", tmp_path)
    ingest(where, tiny_corpus(tmp_path / "corpus", 6, paragraphs=4), m0)
    with State(where.state_path, lock=False) as st:  # as a store from before versions
        st.db.execute("DELETE FROM versions")
    res = cli(where, "reindex", check=False)  # which model made it is not known
    assert res.returncode == 1 and "before qflume recorded its model" in res.stderr
    cli(where, "reindex", "--model", str(m1), "--no-progress")
    assert_holds_the_state(where, m1)
    assert where.live_name() == "docs__v2" and where.exists("docs")


def test_bad_requests_get_one_line(models: tuple[Path, Path], tmp_path: Path) -> None:
    m0, m1 = models
    where = Where("edge", tmp_path)
    res = cli(where, "reindex", "--model", str(m1), check=False)
    assert res.returncode == 1 and "no state" in res.stderr
    ingest(where, tiny_corpus(tmp_path / "corpus", 4, paragraphs=3), m0)
    for args, words in [
        (["reindex"], "nothing to do"),
        (["rollback"], "no version before"),
        (["gc", "--keep", "0"], "keep must be"),
        (["reindex", "--chunk-tokens", "0"], "--chunk-tokens must be"),
        (["reindex", "--records", str(tmp_path / "nope.jsonl"), "--chunk-tokens", "9"], "no such"),
        (["rollback", "--to", "7"], "no other version 7"),
        (["reindex", "--sparse-model", str(m1)], "sparse_model is the SPLADE model"),
    ]:
        res = cli(where, *args, check=False)
        out = res.stdout + res.stderr
        assert words in out and "Traceback" not in out, (args, out)
        assert res.returncode == (0 if words == "nothing to do" else 1), (args, out)
    res = subprocess.run(
        [sys.executable, "-m", "qflume", "reindex", "-c", "docs__v2", "--store",
         str(tmp_path / "store")], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 1 and "is a version of 'docs'" in res.stderr
    # a second reindex while one runs is refused naming it
    proc = start(where, "reindex", "--model", str(m1))
    try:
        deadline = time.monotonic() + 60
        while reindex_holder(where.state_path) is None and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        if proc.poll() is None:
            res = cli(where, "gc", check=False)
            assert res.returncode == 1 or "dropped" in res.stdout
    finally:
        proc.communicate(timeout=300)
    assert proc.returncode == 0


# --- the test server's aliases, as a real server has them ------------------------------------


def test_the_test_servers_aliases_behave_as_qdrants(tmp_path: Path) -> None:
    from qdrant_client import models as qm

    def alias(c: str, a: str) -> Any:
        return qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=c, alias_name=a))

    vp = qm.VectorParams(size=4, distance=qm.Distance.COSINE)
    with QdrantGrpcServer(tmp_path / "s") as server:
        c = server.client()
        for name in ("a__v1", "a__v2", "plain"):
            c.create_collection(name, vectors_config=vp)
        c.update_collection_aliases([alias("a__v1", "a")])
        c.upsert("a", [qm.PointStruct(id=1, vector=[1.0, 0, 0, 0], payload={"v": 1})])
        assert c.count("a__v1").count == 1 and c.collection_exists("a")
        assert c.get_collection("a").points_count == 1
        hits = c.query_points("a", query=[1.0, 0, 0, 0], limit=1).points
        assert hits[0].payload == {"v": 1}
        # one request: all its actions or none
        with pytest.raises(Exception, match="already exists"):
            c.update_collection_aliases([alias("a__v2", "a"), alias("a__v2", "plain")])
        assert c.get_aliases().aliases[0].collection_name == "a__v1"
        c.update_collection_aliases(
            [
                qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name="a")),
                alias("a__v2", "a"),
            ]
        )
        assert c.count("a").count == 0
        with pytest.raises(Exception, match="Alias with the same name"):
            c.create_collection("a", vectors_config=vp)
        with pytest.raises(Exception, match="doesn't exist"):
            c.update_collection_aliases([alias("nope", "x")])
        assert not c.delete_collection("a")  # never through an alias
        assert [x.alias_name for x in c.get_collection_aliases("a__v2").aliases] == ["a"]
        c.close()
    with QdrantGrpcServer(tmp_path / "s") as server:  # aliases are kept with the collections
        c = server.client()
        assert c.get_aliases().aliases[0].collection_name == "a__v2"
        c.delete_collection("a__v2")  # takes its aliases with it
        assert c.get_aliases().aliases == []
        c.close()
