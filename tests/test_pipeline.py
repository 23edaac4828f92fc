"""The pipeline end to end on the embedded store (Qdrant Edge) with the real default model.

Corpora are small real documents (the Python docs when installed, else CPython's own .py sources)
so that every run stays within seconds on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qflume.exceptions import StateLockedError
from qflume.pipeline import Pipeline
from realserver import drop_collection, real_server

DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def _real_texts(n: int, max_bytes: int = 6000) -> list[tuple[str, str]]:
    """(name, text) of n small real documents."""
    if DOCS.is_dir():
        files = sorted(DOCS.rglob("*.rst.txt"))
    else:  # the stdlib is always there
        import sysconfig

        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out = []
    for f in files:
        size = f.stat().st_size
        if 1500 <= size <= max_bytes:
            out.append((f.name, f.read_text(encoding="utf-8")))
        if len(out) == n:
            break
    assert len(out) == n, "not enough real documents on this machine"
    return out


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for i, (name, text) in enumerate(_real_texts(6)):
        folder = root / "sub" if i % 2 else root
        (folder / name).write_text(text, encoding="utf-8")
    return root


def _pipe(store: Path, embedder, **kw) -> Pipeline:
    kw.setdefault("progress", False)
    return Pipeline("docs", store=store, embedder=embedder, **kw)


def _points(store: Path, embedder, **target: Any) -> dict[str, tuple[bytes, str]]:
    """id -> (vector bytes, payload JSON) of every point in the collection (of the embedded
    store, or of the server given by url=, collection=, state_dir=)."""
    opened = (
        Pipeline(target.pop("collection"), embedder=embedder, lock=False, progress=False, **target)
        if target
        else _pipe(store, embedder, lock=False)
    )
    with opened as p:
        out = {}
        for rec in p.sink.scroll(with_payload=True, with_vectors=True):
            vec = np.asarray(rec.vector, np.float32).round(5).tobytes()
            out[str(rec.id)] = (vec, json.dumps(rec.payload, sort_keys=True))
        return out


def test_first_run_rerun_edit_delete(tmp_path: Path, corpus: Path, embedder) -> None:
    store = tmp_path / "store"
    with _pipe(store, embedder) as p:
        r1 = p.ingest(corpus)
        assert r1.documents_seen == 6 and r1.documents_new == 6
        assert r1.chunks_embedded > 6 and r1.points_upserted == r1.chunks_embedded
        n_points = p.sink.count()
        assert n_points == r1.points_upserted
        # Payload layout LangChain's Qdrant store reads.
        rec = next(iter(p.sink.scroll(with_payload=True)))
        assert set(rec.payload) == {"page_content", "metadata"}
        meta = rec.payload["metadata"]
        src = (corpus / meta["source"]).read_text(encoding="utf-8")
        assert src[meta["start"] : meta["end"]] == rec.payload["page_content"]

        # Unchanged re-run: nothing embedded, nothing sent.
        r2 = p.ingest(corpus)
        assert r2.documents_unchanged == 6
        assert (r2.chunks_embedded, r2.points_upserted, r2.points_deleted) == (0, 0, 0)

        # Edit one paragraph of one file: only that chunk's point is replaced.
        victim = sorted(corpus.glob("*.*"))[0]
        text = victim.read_text(encoding="utf-8")
        cut = text.index("\n\n", len(text) // 3)
        victim.write_text(text[:cut] + "\n\nA brand new paragraph about qflume." + text[cut:])
        r3 = p.ingest(corpus)
        assert r3.documents_changed == 1
        assert 1 <= r3.points_upserted <= 2
        assert r3.points_deleted <= 2
        # Offsets of the chunks after the edit moved: their payloads follow.
        for rec in p.sink.scroll(with_payload=True):
            m = rec.payload["metadata"]
            src = (corpus / m["source"]).read_text(encoding="utf-8")
            assert src[m["start"] : m["end"]] == rec.payload["page_content"]

        # Remove a file: its points go, nothing else does.
        gone = sorted((corpus / "sub").iterdir())[0]
        gone_key = f"sub/{gone.name}"
        gone.unlink()
        r4 = p.ingest(corpus)
        assert r4.documents_deleted == 1 and r4.points_deleted >= 1
        sources = {rec.payload["metadata"]["source"] for rec in p.sink.scroll()}
        assert gone_key not in sources and len(sources) == 5
        assert p.verify()["ok"]


def test_bad_inputs_are_reported_and_nothing_is_lost(tmp_path: Path, corpus: Path, embedder):
    store = tmp_path / "store"
    (corpus / "blob.bin").write_bytes(b"\x00\x01\x02" * 1000)
    (corpus / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (corpus / "empty.md").write_text("")
    with _pipe(store, embedder) as p:
        r = p.ingest(corpus)
        reasons = {s["key"]: s["reason"] for s in r.skipped}
        assert reasons["blob.bin"].startswith("binary")
        assert reasons["latin1.txt"].startswith("not-utf8")
        assert reasons["empty.md"].startswith("empty")
        before = p.sink.count()
        # A file that was ingested and then turns binary keeps its points and is reported.
        first = sorted(corpus.glob("*.rst.txt")) or sorted(corpus.glob("*.py"))
        first[0].write_bytes(b"\x00" * 100)
        r2 = p.ingest(corpus)
        assert any(s["key"] == first[0].name for s in r2.skipped)
        assert r2.points_deleted == 0 and p.sink.count() == before


def test_second_concurrent_run_fails_at_once(tmp_path: Path, embedder) -> None:
    store = tmp_path / "store"
    with _pipe(store, embedder):
        with pytest.raises(StateLockedError):
            _pipe(store, embedder)


def test_records_metadata_change_is_a_payload_update(tmp_path: Path, embedder) -> None:
    docs = _real_texts(3)
    recs = [{"id": i, "text": t, "metadata": {"name": n}} for i, (n, t) in enumerate(docs)]
    with _pipe(tmp_path / "store", embedder) as p:
        r1 = p.ingest_records(recs)
        assert r1.documents_new == 3 and r1.chunks_embedded > 0
        recs[1]["metadata"] = {"name": "renamed", "lang": "en"}
        r2 = p.ingest_records(recs)
        assert r2.documents_changed == 1 and r2.chunks_embedded == 0 and r2.cache_hits > 0
        for rec in p.sink.scroll():
            m = rec.payload["metadata"]
            if m["source"] == "1":
                assert m["name"] == "renamed" and m["lang"] == "en"
        bad = p.ingest_records([{"id": "x"}, {"text": "no id"}, "nope"])
        assert bad.documents_skipped == 3
        r3 = p.ingest_records(recs[:2], delete_missing=True)
        assert r3.documents_deleted == 1


def test_close_leaves_a_callers_embedder_open(tmp_path: Path, embedder) -> None:
    class Spy:
        closed = 0

        def __getattr__(self, name: str):
            return getattr(embedder, name)

        def close(self) -> None:
            Spy.closed += 1

    with _pipe(tmp_path / "store", Spy()) as p:
        p.ingest_records([{"id": "a", "text": "Some text to embed."}])
    assert Spy.closed == 0
    with Pipeline("c", store=tmp_path / "own", progress=False) as p:
        p.ingest_records([{"id": "a", "text": " ".join(["Some text to embed."] * 40)}])
        assert p.embedder._pool is not None
    # The pipeline's own embedder is closed with it (a later call would start its threads again).
    assert p.embedder._pool is None


def test_dry_run_spends_nothing(tmp_path: Path, corpus: Path, embedder) -> None:
    with _pipe(tmp_path / "store", embedder) as p:
        plan = p.ingest(corpus, dry_run=True)
        assert plan.documents_new == 6 and plan.chunks_embedded > 0 and plan.tokens_embedded > 0
        assert p.state.stats().documents == 0
        real = p.ingest(corpus)
        assert real.chunks_embedded == plan.chunks_embedded


CRASH_SCRIPT = r"""
import sys
from qflume.pipeline import Pipeline
store, corpus = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:  # a Qdrant server: url, collection; the state lives in `store`
    target = dict(url=sys.argv[3], state_dir=store)
    name = sys.argv[4]
else:
    target, name = dict(store=store), "docs"
with Pipeline(name, batch_chunks=4, progress=False, **target) as p:
    p.ingest(corpus)
"""


def test_sigkill_at_random_moments_converges_exactly(tmp_path: Path, embedder) -> None:
    """Kill ingest with SIGKILL at many moments; the rerun ends with the uninterrupted point set."""
    _sigkill_converges(tmp_path, embedder, server=None)


@real_server
def test_sigkill_at_random_moments_converges_exactly_on_a_real_server(
    tmp_path: Path, embedder
) -> None:
    """The same against a real Qdrant server (QDRANT_URL, gRPC), in two fresh collections."""
    url = os.environ["QDRANT_URL"]
    names = [f"qflume_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    try:
        _sigkill_converges(tmp_path, embedder, server=(url, names))
    finally:
        for name in names:
            drop_collection(url, name)


def _sigkill_converges(tmp_path: Path, embedder, server: tuple[str, list[str]] | None) -> None:
    def args(store: Path) -> list[str]:
        return [str(store), str(corpus)] + ([server[0], server[1][1]] if server else [])

    def points(store: Path, k: int) -> dict[str, tuple[bytes, str]]:
        if server is None:
            return _points(store, embedder)
        return _points(store, embedder, url=server[0], collection=server[1][k], state_dir=store)

    def uninterrupted() -> None:
        """The reference: CRASH_SCRIPT's run, uninterrupted, in this process (the same model,
        the same batches)."""
        target: dict[str, Any] = (
            dict(url=server[0], state_dir=ref_store) if server else dict(store=ref_store)
        )
        name = server[1][0] if server else "docs"
        with Pipeline(name, batch_chunks=4, progress=False, embedder=embedder, **target) as p:
            p.ingest(corpus)

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in _real_texts(8, max_bytes=4000):
        (corpus / name).write_text(text, encoding="utf-8")
    ref_store = tmp_path / "ref"

    store = tmp_path / "crashy"
    rng = np.random.default_rng(7)
    env = dict(os.environ)
    for i, delay in enumerate(rng.uniform(0.3, 4.0, size=8)):
        if i == 4:  # change the corpus half-way: a crash may leave pending chunks behind
            victim = sorted(corpus.iterdir())[0]
            victim.write_text(victim.read_text(encoding="utf-8") + "\n\nAppended text.\n")
            shutil.copy(victim, tmp_path / "victim")
        proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, *args(store)], env=env)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    subprocess.run([sys.executable, "-c", CRASH_SCRIPT, *args(store)], check=True)
    uninterrupted()  # of the corpus as it is now, edit included
    expected = points(ref_store, 0)
    assert expected
    got = points(store, 1)
    assert set(got) == set(expected)
    assert got == expected


def test_cli_json_and_python_m(tmp_path: Path, corpus: Path) -> None:
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "qflume"]
    out = subprocess.run(
        [*cmd, "ingest", str(corpus), "--collection", "c", "--store", str(store), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    rep = json.loads(out.stdout)
    for k in (
        "documents_seen",
        "documents_changed",
        "documents_deleted",
        "documents_skipped",
        "chunks_embedded",
        "cache_hits",
        "points_upserted",
        "points_deleted",
        "elapsed_s",
        "stages",
    ):
        assert k in rep
    assert rep["points_upserted"] > 0
    st = subprocess.run(
        [*cmd, "status", "--collection", "c", "--store", str(store), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    status = json.loads(st.stdout)
    assert status["documents"] == 6 and status["points"] == rep["points_upserted"]
    qs = subprocess.run(
        [
            *cmd,
            "search",
            "what is this about",
            "second query",
            "-c",
            "c",
            "--store",
            str(store),
            "--json",
            "--limit",
            "3",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    res = json.loads(qs.stdout)["results"]
    assert len(res) == 2 and all(len(h) == 3 for h in res)
    assert {"score", "page_content", "metadata"} <= set(res[0][0])
    bad = subprocess.run(
        [*cmd, "ingest", str(tmp_path / "nope"), "-c", "c", "--store", str(store)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "nope" in bad.stderr


def test_ctrl_c_drains_commits_and_resumes(tmp_path: Path, embedder) -> None:
    """First SIGINT: stop reading, finish what is in flight, commit, exit 130 with a message."""
    import signal
    import time

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in _real_texts(40, max_bytes=8000):
        (corpus / name).write_text(text, encoding="utf-8")
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "qflume", "ingest", str(corpus), "-c", "docs"]
    cmd += ["--store", str(store), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = store / "docs.state.sqlite"
    deadline = time.monotonic() + 60
    while not state.exists() and time.monotonic() < deadline:  # started for real
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # it finished before the signal landed: nothing to check
        pytest.skip("ingest finished before SIGINT arrived")
    assert proc.returncode == 130, err
    assert "stopping" in err
    rep = json.loads(out)
    assert rep["interrupted"] is True
    with _pipe(store, embedder) as p:
        assert p.verify()["ok"]  # what was sent is exactly what the state says
        done = p.state.stats().documents
        final = p.ingest(corpus)
        assert final.documents_unchanged == done
        assert p.state.stats().documents == len(list(corpus.iterdir()))
        assert p.verify()["ok"]


def test_a_run_that_only_deletes_never_loads_the_model(tmp_path: Path, corpus: Path, embedder):
    store = tmp_path / "store"
    with _pipe(store, embedder) as p:
        p.ingest(corpus)
    victim = sorted(corpus.glob("*.*"))[0]
    victim.unlink()
    with Pipeline("docs", store=store, progress=False) as p:  # no embedder handed in
        r = p.ingest(corpus)
        assert r.documents_deleted == 1 and r.points_deleted >= 1
        assert r.documents_unchanged == 5
        assert p._embedder is None, "the model was loaded for a run that only deletes"


def test_touched_and_changed_files_in_one_run(tmp_path: Path, corpus: Path, embedder) -> None:
    """mtime-only changes are recorded (plan thread) while changed files are written (writer)."""
    with _pipe(tmp_path / "store", embedder, batch_chunks=2) as p:
        p.ingest(corpus)
        files = sorted(f for f in corpus.rglob("*") if f.is_file())
        for i, f in enumerate(files):
            if i % 2:
                os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
            else:
                f.write_text(f.read_text(encoding="utf-8") + "\n\nAnother paragraph.\n")
        r = p.ingest(corpus)
        assert r.documents_unchanged == len(files) // 2
        assert r.documents_changed == len(files) - len(files) // 2
        again = p.ingest(corpus)
        assert again.documents_unchanged == len(files) and again.points_upserted == 0
        assert p.verify()["ok"]


def test_an_edit_at_the_top_sends_moved_offsets_in_a_bounded_number_of_requests(
    tmp_path: Path, embedder
) -> None:
    """Every chunk after an edit near the top of a long document moves: their new offsets go as
    payload updates batched into a few requests (UpdateBatch of up to 256 operations), not one
    request per chunk; the payloads then hold the new offsets."""
    from qflume.testing import QdrantGrpcServer

    docs = tmp_path / "docs"
    docs.mkdir()
    paras = [f"Paragraph {i} tells of lighthouse number {i} and its keeper." for i in range(300)]
    (docs / "long.txt").write_text("\n\n".join(paras))
    with QdrantGrpcServer() as server, Pipeline(
        "c", url=server.url, state_dir=tmp_path / "s", embedder=embedder, progress=False,
        chunk_chars=80) as p:  # fmt: skip
        first = p.ingest([docs])
        assert first.chunks_total == 300
        (docs / "long.txt").write_text("A new opening line.\n\n" + "\n\n".join(paras))
        server.reset_calls()
        report = p.ingest([docs])
        # the new line joins paragraph 0 in one new chunk; the 299 after it moved
        assert report.points_upserted == 1 and report.points_deleted == 1
        assert report.payload_updates == 299
        assert server.calls["Points/SetPayload"] == 0
        assert server.calls["Points/UpdateBatch"] == 2  # 256 + 43 operations
        text = (docs / "long.txt").read_text()
        for r in p.sink.scroll(with_payload=True):
            md = r.payload["metadata"]
            assert text[md["start"] : md["end"]] == r.payload["page_content"]
        assert p.verify()["ok"]
