"""Bad input is refused where it enters, with a reason that names it; its neighbours are ingested and
the store keeps working (status, search) afterwards.

Each case here failed on the code before this test: deep metadata bricked the embedded store, NaN
or a lone surrogate failed the whole run, a file name that is not UTF-8 aborted the scan's run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qflume
from qflume import _validate
from qflume.pipeline import Pipeline
from qflume.settings import PipelineConfig


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def _nested_list(depth: int) -> list[Any]:
    value: list[Any] = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


BAD_RECORDS = {  # id: (record, words of the reason)
    "deep": ({"text": "deep metadata", "metadata": _nested(130)}, "nested deeper than 32"),
    "deep-list": ({"text": "deep list", "metadata": {"l": _nested_list(40)}}, "nested deeper"),
    "nan": ({"text": "not a number", "metadata": {"v": [1.0, math.nan]}}, "metadata.v[1]: nan"),
    "inf": ({"text": "infinite", "metadata": {"v": {"w": -math.inf}}}, "metadata.v.w: -inf"),
    "key": ({"text": "bad key", "metadata": {"k\udc80": 1}}, "not valid Unicode"),
    "value": ({"text": "bad value", "metadata": {"k": "v\ud800"}}, "metadata.k is not valid"),
    "text": ({"text": "lone \ud801 surrogate"}, "not-utf8"),
    "big": ({"text": "big integer", "metadata": {"n": 2**64}}, "does not fit in 64 bits"),
    "object": ({"text": "an object", "metadata": {"o": object()}}, "is not a JSON value"),
}


def _records() -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = [{"id": "good-1", "text": "The first good record."}]
    recs += [{"id": rid, **rec} for rid, (rec, _) in BAD_RECORDS.items()]
    recs.append({"id": "surrogate \ud800 id", "text": "a record whose id cannot be stored"})
    recs.append({"id": "good-2", "text": "The second good record.", "metadata": _nested(32)})
    return recs


def test_bad_records_are_skipped_by_name_and_neighbours_ingested(tmp_path: Path, embedder) -> None:
    store = tmp_path / "store"
    with Pipeline("r", store=store, embedder=embedder, progress=False) as p:
        report = p.ingest_records(_records())
        reasons = {s["key"]: s["reason"] for s in report.skipped}
        assert report.documents_new == 2, reasons
        for rid, (_, words) in BAD_RECORDS.items():
            assert words in reasons[rid], (rid, reasons[rid])
        (surrogate,) = [k for k in reasons if k not in BAD_RECORDS]
        assert surrogate.startswith("#") and "not valid Unicode" in reasons[surrogate]
        json.dumps(report.as_dict())  # the report itself always encodes
        assert p.status()["documents"] == 2
    # a new process opens the store, searches and verifies it: nothing was bricked
    with Pipeline("r", store=store, embedder=embedder, progress=False) as p:
        (hits,) = p.search(["the first good record"], limit=2)
        assert {h.source for h in hits} == {"good-1", "good-2"}
        assert p.verify()["missing"] == 0


def test_lone_surrogates_in_queries_and_texts_are_refused_by_name(embedder, tmp_path) -> None:
    with pytest.raises(qflume.InvalidInputError, match=r"text 1 is not valid Unicode"):
        embedder.embed(["fine", "bad \ud800"])
    with Pipeline("r", store=tmp_path / "s", embedder=embedder, progress=False) as p:
        p.ingest_records([{"id": "a", "text": "something"}])
        with pytest.raises(qflume.InvalidInputError, match=r"query #1 .* not valid Unicode"):
            p.search(["ok", "bad \udcff query"])


def test_records_file_with_nan_and_surrogates_through_the_cli(tmp_path: Path) -> None:
    lines = [
        '{"id": "a", "text": "alpha text"}',
        '{"id": "b", "text": "beta text", "metadata": {"x": NaN}}',
        '{"id": "c\\ud800", "text": "gamma text"}',
        '{"id": "d", "text": "delta text"}',
    ]
    src = tmp_path / "recs.jsonl"
    src.write_text("\n".join(lines) + "\n")
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "qflume"]
    res = subprocess.run(
        [*cmd, "ingest", str(src), "--records", "-c", "r", "--store", str(store), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["documents_new"] == 2 and rep["documents_skipped"] == 2
    assert "Traceback" not in res.stderr
    res = subprocess.run(
        [*cmd, "search", "alpha", "-c", "r", "--store", str(store), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0 and "alpha text" in res.stdout, res.stderr


def test_a_file_name_that_is_not_utf8_is_a_named_skip(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("A good file with real text in it.\n")
    bad = os.fsencode(docs) + b"/bad\xff\xfe.txt"
    with open(bad, "w") as f:
        f.write("A file whose name is not UTF-8.\n")
    (entry,) = [e for e in qflume.scan([docs]) if not e.ok]
    assert entry.skip == "bad-filename" and "bad\\xff\\xfe.txt" in (entry.detail or "")
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "qflume", "ingest", str(docs), "-c", "f", "--store", str(store)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "skipped bad\\xff\\xfe.txt: bad-filename" in res.stdout + res.stderr
    res = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=False)
    rep = json.loads(res.stdout)
    assert rep["documents_unchanged"] == 1 and rep["skipped"] == [
        {
            "key": "bad\\xff\\xfe.txt",
            "reason": "bad-filename",
            "detail": "file name is not valid UTF-8: bad\\xff\\xfe.txt",
        }
    ]


def test_validation_limits() -> None:
    assert _validate.metadata_problem(_nested(_validate.MAX_DEPTH)) is None
    assert "nested deeper" in (_validate.metadata_problem(_nested(_validate.MAX_DEPTH + 1)) or "")
    assert _validate.metadata_problem({"n": 2**63 - 1, "m": -(2**63), "f": 1e308}) is None
    assert _validate.printable("a\udcffb") == "a\\xffb"
    assert _validate.printable("a\ud800b") == "a\\ud800b"
    # the walk is iterative: far past Python's recursion limit it still answers
    assert "nested deeper" in (_validate.metadata_problem(_nested(100_000)) or "")


# --------------------------------------------------------------------------- property


_surrogate_text = st.text(
    st.characters(codec=None, categories=["Lu", "Ll", "Nd", "Zs", "Cs", "So"]), max_size=12
)
_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _surrogate_text
_json = st.recursive(
    _leaf,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_surrogate_text, kids, max_size=3),
    max_leaves=40,
)
_record = st.fixed_dictionaries(
    {"id": _surrogate_text | st.integers(), "text": _surrogate_text},
    optional={"metadata": st.dictionaries(_surrogate_text, _json, max_size=4) | _json},
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(records=st.lists(_record, min_size=1, max_size=8))
def test_any_records_are_ingested_or_skipped_with_a_reason(tmp_path_factory, embedder, records):
    store = tmp_path_factory.mktemp("prop")
    with Pipeline("p", store=store, embedder=embedder, progress=False) as p:
        report = p.ingest_records(records)
        json.dumps(report.as_dict())
        handled = report.documents_new + report.documents_changed + report.documents_unchanged
        assert handled + report.documents_skipped == len(records)
        assert all(s["reason"] for s in report.skipped)
        p.status()
        p.search(["anything"], limit=1)


# --------------------------------------------------------------------------- concurrent use


def _docs(root: Path, n: int) -> None:
    from test_pipeline import _real_texts

    root.mkdir()
    for name, text in _real_texts(n):
        (root / name).write_text(text, encoding="utf-8")


def _point_set(store: Path, embedder) -> dict[str, tuple[bytes, str]]:
    from test_pipeline import _points

    return _points(store, embedder)


def test_readers_during_an_ingest_never_harm_it(tmp_path: Path, embedder) -> None:
    """One ingest writes the embedded store while status and search loop on it: each reader
    answers or refuses at once with "store busy: ingest pid N"; the writer ends with exit 0 and
    exactly the point set of an undisturbed run."""
    import time

    docs = tmp_path / "docs"
    _docs(docs, 10)
    cmd = [sys.executable, "-m", "qflume"]
    ref = tmp_path / "ref"
    base = ["-c", "docs", "--sparse", "bm25"]
    subprocess.run([*cmd, "ingest", str(docs), *base, "--store", str(ref)], check=True,
                   capture_output=True)  # fmt: skip
    store = tmp_path / "store"
    writer = subprocess.Popen(
        [*cmd, "ingest", str(docs), *base, "--store", str(store), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    answered = refused = 0
    deadline = time.monotonic() + 120
    readers = [["status", "-c", "docs"], ["search", "some query", "-c", "docs"]]
    while writer.poll() is None and time.monotonic() < deadline:
        for reader in readers:
            res = subprocess.run(
                [*cmd, *reader, "--store", str(store)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert "Traceback" not in res.stderr, res.stderr
            if res.returncode == 0:
                answered += 1
            else:
                assert res.returncode == 1 and "store busy: ingest pid" in res.stderr, res.stderr
                assert f"pid {writer.pid}" in res.stderr
                refused += 1
    _, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    assert refused > 0, "no reader ran while the writer did: the test proved nothing"
    assert _point_set(store, embedder) == _point_set(ref, embedder)
    # once the writer is done, readers answer again
    res = subprocess.run([*cmd, "status", "-c", "docs", "--store", str(store)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_readers_share_and_a_second_writer_is_refused(tmp_path: Path) -> None:
    from qflume.state import State

    path = tmp_path / "c.state.sqlite"
    reader = State(path, lock="shared")
    State(path, lock="shared").close()  # readers share
    reader.close()
    writer = State(path)
    with pytest.raises(qflume.StoreBusyError, match=rf"store busy: ingest pid {os.getpid()}"):
        State(path, lock="shared")
    with pytest.raises(qflume.StateLockedError, match=rf"holds this state \(pid {os.getpid()}\)"):
        State(path)
    writer.close()
    State(path, lock="shared").close()  # the writer left no pid behind


def test_the_same_key_under_two_roots_is_refused_naming_both(tmp_path: Path, embedder) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    for root, word in ((a, "Alpha"), (b, "Beta")):
        root.mkdir()
        (root / "README.md").write_text(f"{word} readme: the text of the {word} project.\n")
    (b / "other.md").write_text("Another document that only B has.\n")
    with Pipeline("t", store=tmp_path / "s", embedder=embedder, progress=False) as p:
        p.ingest([a])
        report = p.ingest([b])
        (skip,) = report.skipped
        assert skip["key"] == "README.md" and skip["reason"].startswith("key-conflict")
        assert str(a) in skip["reason"] and str(b) in skip["reason"]
        assert report.documents_new == 1 and report.points_deleted == 0
        (hits,) = p.search(["Alpha readme"], limit=3)
        assert any("Alpha" in h.page_content for h in hits)  # A's points are kept
        # a record with a file's key is refused the same way
        rec = p.ingest_records([{"id": "other.md", "text": "a record"}])
        assert rec.skipped[0]["reason"].startswith("key-conflict")
        # files given as roots collide the same way
        one = p.ingest([b / "other.md"])
        assert one.documents_unchanged == 1
        c = tmp_path / "C"
        c.mkdir()
        (c / "other.md").write_text("A different file with the same name.\n")
        clash = p.ingest([c / "other.md"])
        assert clash.skipped[0]["reason"].startswith("key-conflict"), clash.skipped
        # the folder moved away: the same key under the new root is the document moved
        a.rename(tmp_path / "A-moved")
        moved = p.ingest([b])
        assert moved.documents_changed == 1 and not moved.skipped
        (hits,) = p.search(["Beta readme"], limit=1)
        assert "Beta" in hits[0].page_content


def _cli(store: Path, *args: str, json_out: bool = True) -> subprocess.CompletedProcess[str]:
    """``qflume ARGS -c docs --store STORE [--json]`` in a child process."""
    cmd = [sys.executable, "-m", "qflume", *args, "-c", "docs", "--store", str(store)]
    extra = ["--json"] if json_out else []
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, check=False)


def test_verify_repair_really_repairs_a_collection_whose_files_were_lost(tmp_path: Path) -> None:
    import shutil

    docs = tmp_path / "docs"
    _docs(docs, 4)
    store = tmp_path / "store"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _cli(store, *args)

    first = json.loads(run("ingest", str(docs)).stdout)
    assert first["points_upserted"] > 0
    shutil.rmtree(store / "docs")  # the collection's files are gone, the state is not
    res = run("verify", "--repair")
    rep = json.loads(res.stdout)
    assert res.returncode == 0 and rep["repaired"] and rep["missing"] == first["points_upserted"]
    assert len(rep["documents_to_rebuild"]) == 4
    after = json.loads(run("verify").stdout)
    assert not after["ok"] and after["documents_pending"] == 4  # not complete until ingested
    again = json.loads(run("ingest", str(docs)).stdout)
    assert again["points_upserted"] == first["points_upserted"]  # every point back
    assert again["chunks_embedded"] == 0  # from the embedding cache
    final = json.loads(run("verify").stdout)
    assert (
        final["ok"]
        and final["missing"] == 0
        and final["points_expected"] == first["points_upserted"]
    )
    assert json.loads(run("ingest", str(docs)).stdout)["points_upserted"] == 0


def test_a_damaged_state_is_named_and_rebuilt_from_the_collection(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    _docs(docs, 4)
    store = tmp_path / "store"

    def run(*args: str, json_out: bool = True) -> subprocess.CompletedProcess[str]:
        return _cli(store, *args, json_out=json_out)

    first = json.loads(run("ingest", str(docs)).stdout)
    state = store / "docs.state.sqlite"
    for junk in (b"garbage, not SQLite", state.read_bytes()[:3000]):  # garbage, then truncated
        for extra in ("-wal", "-shm"):
            state.with_name(state.name + extra).unlink(missing_ok=True)
        state.write_bytes(junk)
        for command in (["status"], ["search", "a query"], ["ingest", str(docs)], ["verify"]):
            res = run(*command, json_out=False)
            assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
            assert "state database is damaged" in res.stderr and "verify --repair" in res.stderr
        res = run("verify", "--repair")
        assert res.returncode == 0, res.stderr
        rep = json.loads(res.stdout)
        assert rep["state_rebuilt"]["documents"] == 4 and rep["missing"] == 0
        assert Path(rep["state_rebuilt"]["damaged_file"]).exists()
        assert rep["points_expected"] == first["points_upserted"]
        again = json.loads(run("ingest", str(docs)).stdout)
        assert again["chunks_embedded"] == 0  # nothing embedded again: the cache has it all
        final = json.loads(run("verify").stdout)
        assert final["ok"] and final["documents_recovered"] == 0
        assert final["points_expected"] == first["points_upserted"]


@pytest.mark.parametrize("blocked", ["fastapi", "uvicorn"])
def test_serve_without_the_extra_says_so_in_one_line(blocked: str) -> None:
    code = (
        f"import sys; sys.modules[{blocked!r}] = None; from qflume.cli import main; "
        "sys.exit(main(['serve', '--collection', 'c']))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"qflume serve: needs the serve extra ({blocked} is not installed): "
        "pip install 'qflume[serve]'"
    ]


# --------------------------------------------------------------------------- Rust panics


def _deep_payload_shard(path: Path):
    """A Qdrant Edge shard holding a payload nested past serde's recursion limit, written
    through Qdrant Edge directly (qflume refuses to write one): reading it panics in Rust."""
    import qdrant_edge as qe

    shard = qe.EdgeShard.create(
        str(path), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=4, distance=qe.Distance.Cosine))
    )
    deep: dict[str, Any] = {"k": 1}
    for _ in range(130):
        deep = {"x": deep}
    point = qe.Point("00000000-0000-0000-0000-000000000001", [1.0, 0.0, 0.0, 0.0], deep)
    shard.update(qe.UpdateOperation.upsert_points([point]))
    return shard


def test_a_rust_panic_in_qdrant_edge_becomes_a_qflume_error(tmp_path: Path) -> None:
    import numpy as np

    from qflume.sinks import CollectionSpec, EdgeSink
    from qflume.sinks.edge import _PanicGuard

    with EdgeSink(tmp_path, "c", spec=CollectionSpec(dim=4)) as sink:
        with pytest.raises(qflume.InvalidInputError, match=r"payload of point 1\..*deeper than"):
            ids = np.arange(32, dtype=np.uint8).reshape(2, 16)
            sink.upsert(ids, np.ones((2, 4), np.float32), [{"k": 1}, _nested(40)])
        assert sink.count() == 0  # nothing of that call was written
    guarded = _PanicGuard(_deep_payload_shard(tmp_path / "raw"), tmp_path / "raw")
    import qdrant_edge as qe

    flt = qe.Filter(must=[qe.FieldCondition(key="k", match=qe.MatchValue(value=1))])
    with pytest.raises(qflume.RustPanicError, match=r"Qdrant Edge panicked in count\(\)"):
        guarded.count(qe.CountRequest(exact=True, filter=flt))


def test_the_job_worker_survives_a_step_that_panics(tmp_path: Path) -> None:
    from qflume.jobs import JobQueue, StepResult

    class PanicException(BaseException):  # PyO3's class is named so; it is a BaseException
        pass

    def boom(job: Any, payload: Any) -> StepResult:
        if payload == "panic":
            raise PanicException("called `Option::unwrap()` on a `None` value")
        return StepResult(items_done=1, result={"ok": payload}, finished=True)

    q = JobQueue(tmp_path / "jobs.sqlite", {"step": boom})
    q.start()
    try:
        bad = q.submit("step", "panic", items=1)
        good = q.submit("step", "fine", items=1)
        assert bad.future.result(timeout=30).status == "failed"
        assert bad.error.startswith("RustPanicError: called `Option::unwrap()`")
        assert good.future.result(timeout=30).status == "done"  # the worker lived on
    finally:
        q.close()


# --------------------------------------------------------------------------- output and URLs


def test_names_with_control_characters_are_escaped_and_skip_details_kept(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("Some ordinary text.\n")
    fake = "evil\ningested: 99 documents seen\x1b[2K.txt"
    (docs / fake).write_bytes(b"abcde\x00binary")
    cmd = [sys.executable, "-m", "qflume", "ingest", str(docs), "-c", "o",
           "--store", str(tmp_path / "s")]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert not any(line.startswith("ingested: 99") for line in lines), res.stdout
    assert "\x1b" not in res.stdout
    (skip_line,) = [line for line in lines if line.startswith("  skipped ")]
    assert "evil\\ningested: 99 documents seen\\x1b[2K.txt: binary" in skip_line
    assert "NUL byte at offset 5" in skip_line  # the detail is kept
    rep = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, text=True).stdout)
    (skip,) = rep["skipped"]
    assert skip["key"] == fake and "offset 5" in skip["detail"]


def test_credentials_in_the_url_are_refused_and_never_shown(tmp_path: Path) -> None:
    url = "http://admin:s3cret-key@127.0.0.1:6334"
    with pytest.raises(qflume.InvalidInputError, match="carries credentials") as err:
        Pipeline("c", url=url, state_dir=tmp_path / "st")
    assert "s3cret" not in str(err.value) and "admin" not in str(err.value)
    from qflume.sinks import GrpcSink

    with pytest.raises(qflume.InvalidInputError, match=r"'http://\*\*\*@127\.0\.0\.1:6334'"):
        GrpcSink(url, "c")
    res = subprocess.run(
        [sys.executable, "-m", "qflume", "status", "-c", "c", "--url", url],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert res.returncode == 1 and "carries credentials" in res.stderr
    assert "s3cret" not in res.stderr + res.stdout
    assert not any("s3cret" in str(p) for p in tmp_path.rglob("*"))  # no folder named after it
    with pytest.raises(qflume.InvalidInputError, match=r"(?i)port out of range"):
        GrpcSink("http://127.0.0.1:99999", "c")


# --------------------------------------------------------------------------- one large document


def _points(p: Pipeline) -> dict[str, Any]:
    import numpy as np

    return {str(r.id): (r.payload, list(np.round(r.vector, 5)))
            for r in p.sink.scroll(with_payload=True, with_vectors=True)}  # fmt: skip


def _small_stream(m: pytest.MonkeyPatch) -> None:
    """Files over 1000 bytes are streamed, in 4 KiB blocks (the config's floor is 1 MiB)."""
    m.setattr(PipelineConfig, "stream_bytes", property(lambda c: 1000))
    m.setattr(PipelineConfig, "stream_block", property(lambda c: 4096))


def _never_whole(path: Any) -> str:
    raise AssertionError(f"{path} was read whole")


def test_a_file_over_the_stream_size_is_streamed_with_the_same_result(
    tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file larger than Pipeline.stream_bytes is read, chunked and sent block by block (never
    whole in memory): its points, and its state after edits that move, add and drop chunks, are
    those of the same file read whole; an unchanged rerun sends nothing."""
    from qflume.testing import QdrantGrpcServer
    from test_pipeline import _real_texts

    docs = tmp_path / "docs"
    docs.mkdir()
    parts = [t for _, t in _real_texts(8)]
    path = docs / "long.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(parts).encode())  # with a byte order mark
    streamed_runs: list[int] = []

    def run(server: QdrantGrpcServer, name: str, stream: bool) -> dict[str, Any]:
        with Pipeline(name, url=server.url, state_dir=tmp_path / name, embedder=embedder,
                      progress=False, batch_chunks=8) as p:  # fmt: skip
            if stream:
                calls = server.calls["Points/Upsert"]
            with monkeypatch.context() as m:
                if stream:  # the file is never read whole
                    _small_stream(m)
                    m.setattr(sys.modules["qflume.scan"], "read_text", _never_whole)
                report = p.ingest([docs])
            assert not report.skipped, report.skipped
            if stream:
                streamed_runs.append(report.points_upserted)
                assert server.calls["Points/Upsert"] - calls >= report.points_upserted // 8
            assert p.verify()["ok"]
            return _points(p)

    with QdrantGrpcServer() as server:
        assert run(server, "streamed", True) == run(server, "whole", False)
        # an edit at the top moves every later chunk; one in the middle drops and adds some
        path.write_text("A new first paragraph.\n\n" + "\n\n".join(parts[:3] + parts[4:]))
        assert run(server, "streamed", True) == run(server, "whole", False)
        assert run(server, "streamed", True) == run(server, "whole", False)
        assert streamed_runs[-1] == 0  # unchanged: nothing sent again


def test_a_streamed_file_that_breaks_midway_is_skipped_and_taken_back(
    tmp_path: Path, embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file changed after the scan so that it cannot be read to its end: the document is
    skipped as unreadable, the points sent of it are deleted again and its committed version
    stays what it was."""
    from qflume.testing import QdrantGrpcServer
    from test_pipeline import _real_texts

    docs = tmp_path / "docs"
    docs.mkdir()
    path = docs / "long.txt"
    text = "\n\n".join(t for _, t in _real_texts(6))
    path.write_text(text)
    with QdrantGrpcServer() as server, Pipeline(
        "c", url=server.url, state_dir=tmp_path / "s", embedder=embedder, progress=False,
        batch_chunks=8) as p:  # fmt: skip
        _small_stream(monkeypatch)
        p.ingest([docs])
        before = _points(p)
        # The scan reads a valid file; the stream then meets a broken one (a writer replaced it).
        scan_mod = sys.modules["qflume.scan"]
        real_scan = scan_mod.scan

        def scan_then_break(*a: Any, **kw: Any) -> Any:
            out = real_scan(*a, **kw)
            path.write_bytes(b"Changed top.\n\n" + text.encode()[: len(text) // 2] + b"\xff\xfe")
            return out

        path.write_text("Changed top.\n\n" + text)
        scan_mod.scan = scan_then_break
        try:
            report = p.ingest([docs])
        finally:
            scan_mod.scan = real_scan
        assert [s["reason"][:11] for s in report.skipped] == ["unreadable:"]
        assert "long.txt" in report.skipped[0]["reason"]
        assert report.points_upserted > 0  # the blocks before the break were sent ...
        assert _points(p) == before  # ... and taken back
        path.write_text(text)
        p.ingest([docs])
        assert _points(p) == before
        assert p.verify()["ok"]


def test_a_large_document_is_sent_in_slices_with_the_same_result(tmp_path: Path, embedder) -> None:
    """A document of many chunks travels in slices of batch_chunks (bounded memory in flight);
    the point set equals one sent whole, and an edit that drops chunks still deletes them."""
    from qflume.testing import QdrantGrpcServer
    from test_pipeline import _real_texts

    docs = tmp_path / "docs"
    docs.mkdir()
    text = "\n\n".join(t for _, t in _real_texts(4))
    (docs / "long.txt").write_text(text)

    def run(server: QdrantGrpcServer, name: str, **kw: Any) -> dict[str, Any]:
        with Pipeline(name, url=server.url, state_dir=tmp_path / name, embedder=embedder,
                      progress=False, **kw) as p:  # fmt: skip
            p.ingest([docs])
            return {str(r.id): (r.payload, list(np.round(r.vector, 5))) for r in
                    p.sink.scroll(with_payload=True, with_vectors=True)}  # fmt: skip

    import numpy as np

    with QdrantGrpcServer() as server:
        whole = run(server, "whole", batch_chunks=10_000)
        before = server.calls["Points/Upsert"]
        sliced = run(server, "sliced", batch_chunks=4)
        assert server.calls["Points/Upsert"] - before >= len(sliced) // 4 > 1
        assert sliced == whole
        (docs / "long.txt").write_text(text[: len(text) // 3])  # drops two thirds of the chunks
        assert run(server, "sliced", batch_chunks=4) == run(server, "whole", batch_chunks=10_000)
        with Pipeline("sliced", url=server.url, state_dir=tmp_path / "sliced", embedder=embedder,
                      progress=False) as p:  # fmt: skip
            assert p.verify()["ok"]
