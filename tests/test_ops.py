"""Batch payload updates and deletes (qflume.ops) on Qdrant Edge and over gRPC, per-item results."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import grpc
import pytest

from qflume import ops
from qflume.exceptions import InvalidInputError
from qflume.pipeline import Pipeline
from qflume.testing import QdrantGrpcServer
from realserver import NO_SERVER, drop_collection

DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def _texts(n: int) -> list[str]:
    files = sorted(DOCS.rglob("*.rst.txt")) if DOCS.is_dir() else []
    if not files:
        import sysconfig

        files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out = []
    for f in files:
        if 2500 <= f.stat().st_size <= 6000:
            out.append(f.read_text(encoding="utf-8"))
        if len(out) == n:
            return out
    raise AssertionError("not enough real documents on this machine")


@pytest.fixture(scope="module")
def records():
    return [
        {"id": f"doc{i}", "text": t, "metadata": {"lang": "en", "n": i}}
        for i, t in enumerate(_texts(5))
    ]


@pytest.fixture(params=["edge", "grpc"])
def pipe(request, tmp_path: Path, embedder, records):
    if request.param == "edge":
        p = Pipeline("ops", store=tmp_path / "store", embedder=embedder, progress=False)
        server = None
    else:
        server = QdrantGrpcServer().start()
        p = Pipeline(
            "ops", url=server.url, state_dir=tmp_path / "state", embedder=embedder, progress=False
        )
    p.ingest_records(records)
    p.server = server
    yield p
    p.close()
    if server is not None:
        server.close()


def _by_source(p: Pipeline) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in p.sink.scroll():
        out.setdefault(r.payload["metadata"]["source"], []).append(r)
    return out


def test_set_merge_increment_set_now(pipe: Pipeline) -> None:
    docs = _by_source(pipe)
    one = docs["doc0"][0]
    n1 = len(docs["doc1"])
    res = pipe_update(
        pipe,
        [
            {"id": one.id, "increment": {"metadata.usage_count": 1}, "set_now": ["metadata.seen"]},
            {"id": one.id, "increment": {"metadata.usage_count": 2.5}},
            {"source": "doc1", "set": {"metadata": {"tag": "a"}, "title": "T"}},
            {"source": "doc1", "merge": {"metadata.attrs": {"x": 1}}},
            {"source": "doc1", "merge": {"metadata.attrs": {"y": [1, 2]}}},
            {"source": "doc2", "set_now": {"metadata.when": "iso"}},
        ],
    )
    assert [r["ok"] for r in res] == [True] * 6, res
    assert res[2]["points"] == n1
    meta = pipe.sink.retrieve([one.id])[0].payload["metadata"]
    assert meta["usage_count"] == 3.5
    assert isinstance(meta["seen"], float) and meta["seen"] > 1.7e9
    assert (
        meta["source"] == "doc0" and meta["content_hash"] == one.payload["metadata"]["content_hash"]
    )
    for r in _by_source(pipe)["doc1"]:
        assert r.payload["title"] == "T"
        assert r.payload["metadata"]["tag"] == "a"
        assert r.payload["metadata"]["attrs"] == {"x": 1, "y": [1, 2]}
        assert r.payload["metadata"]["lang"] == "en"  # merged, not replaced
        assert r.payload["page_content"]
    when = _by_source(pipe)["doc2"][0].payload["metadata"]["when"]
    assert when.endswith("Z") and when[4] == "-" and "T" in when
    assert pipe.verify()["ok"]


def pipe_update(p: Pipeline, updates: list[dict]) -> list[dict]:
    return ops.update_payload(p, updates)


def test_partial_failure_reports_each_bad_item_and_commits_the_rest(pipe: Pipeline) -> None:
    docs = _by_source(pipe)
    a, b = docs["doc0"][0].id, docs["doc3"][0].id
    res = ops.update_payload(
        pipe,
        [
            {"id": a, "set": {"metadata.tag": "ok"}},
            {"id": "00000000-0000-4000-8000-000000000000", "set": {"x": 1}},
            {"id": "not-a-uuid", "set": {"x": 1}},
            {"id": a, "set": {"metadata.source": "elsewhere"}},
            {"id": a, "set": {"page_content": "x"}},
            {"id": a, "set": {"metadata..x": 1}},
            {"id": a, "increment": {"metadata.lang": 1}},  # "en" is not a number
            {"id": a, "increment": {"metadata.n": "1"}},
            {"source": "no/such/doc", "set": {"x": 1}},
            {"id": a, "source": "doc0", "set": {"x": 1}},
            {"id": a},
            {"id": a, "sett": {"x": 1}},
            {"id": b, "increment": {"metadata.n": 10}},
            "not an object",
        ],
    )
    assert [r["index"] for r in res] == list(range(14))
    ok = [r["ok"] for r in res]
    assert ok == [True] + [False] * 11 + [True, False], res
    errors = {r["index"]: r["error"] for r in res if not r["ok"]}
    assert "unknown id" in errors[1]
    assert "not a UUID" in errors[2]
    assert "managed by qflume" in errors[3] and "managed by qflume" in errors[4]
    assert "empty segment" in errors[5]
    assert "not a number" in errors[6] and "'en'" in errors[6]
    assert "not a finite number" in errors[7]
    assert "unknown source 'no/such/doc'" in errors[8]
    assert "exactly one" in errors[9]
    assert "nothing to do" in errors[10]
    assert "unknown key" in errors[11] and "sett" in errors[11]
    got = {r.id: r.payload["metadata"] for r in pipe.sink.retrieve([a, b])}
    assert got[a]["tag"] == "ok" and got[a]["source"] == "doc0" and got[a]["lang"] == "en"
    assert got[b]["n"] == 13


def test_identical_writes_share_one_request(pipe: Pipeline, monkeypatch) -> None:
    calls: list[tuple[dict, int, str | None]] = []
    real = pipe.sink.set_payload

    def spy(payload, ids, *, key=None):
        calls.append((dict(payload), len(ids), key))
        return real(payload, ids, key=key)

    monkeypatch.setattr(pipe.sink, "set_payload", spy)
    points = [r.id for r in pipe.sink.scroll(with_payload=False)]
    res = ops.update_payload(
        pipe,
        [{"id": p, "increment": {"metadata.usage_count": 1}} for p in points]
        + [{"id": p, "set_now": ["metadata.last_used"]} for p in points],
    )
    assert all(r["ok"] for r in res)
    # Every point: usage_count 1 and the same timestamp under metadata -> one request.
    assert len(calls) == 1 and calls[0][1] == len(points) and calls[0][2] == "metadata"


def test_concurrent_increments_lose_nothing(pipe: Pipeline) -> None:
    pid = _by_source(pipe)["doc4"][0].id

    def bump() -> None:
        for _ in range(10):
            (r,) = ops.update_payload(pipe, [{"id": pid, "increment": {"metadata.hits": 1}}])
            assert r["ok"], r

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pipe.sink.retrieve([pid])[0].payload["metadata"]["hits"] == 40


def test_delete_by_id_source_and_filter_keeps_the_state_in_step(
    pipe: Pipeline, records: list[dict]
) -> None:
    docs = _by_source(pipe)
    one = docs["doc0"][0].id
    n3 = len(docs["doc3"])
    ops.update_payload(pipe, [{"source": "doc4", "set": {"metadata.kind": "drop"}}])
    before = pipe.sink.count()
    res = ops.delete(
        pipe,
        ids=[one, "00000000-0000-4000-8000-000000000000", "bad id"],
        sources=["doc3", "nope", ""],
        filter={"metadata": {"kind": "drop"}},
    )
    assert [(r["kind"], r["index"], r["ok"]) for r in res] == [
        ("id", 0, True),
        ("id", 1, True),
        ("id", 2, False),
        ("source", 0, True),
        ("source", 1, True),
        ("source", 2, False),
        ("filter", 0, True),
    ]
    assert [r.get("deleted") for r in res] == [1, 0, None, n3, 0, None, len(docs["doc4"])]
    assert "not a UUID" in res[2]["error"]
    left = _by_source(pipe)
    assert "doc3" not in left and "doc4" not in left
    assert one not in {r.id for r in left["doc0"]}
    assert pipe.sink.count() == before - 1 - n3 - len(docs["doc4"])
    # The state mirrors the collection: verify is clean, health sees no drift.
    assert pipe.verify()["ok"]
    assert pipe.state.get("doc3") is None
    assert pipe.state.stats().chunks == pipe.sink.count()
    # A rerun brings back the deleted source (it is still given), not the deleted points.
    rep = pipe.ingest_records(records)
    assert rep.documents_new + rep.documents_changed >= 1
    again = _by_source(pipe)
    assert len(again["doc3"]) == n3
    assert one not in {r.id for r in again["doc0"]}
    assert pipe.verify()["ok"]


def test_deleted_source_comes_back_only_if_its_file_exists(tmp_path: Path, embedder) -> None:
    root = tmp_path / "files"
    root.mkdir()
    for i, t in enumerate(_texts(3)):
        (root / f"f{i}.txt").write_text(t, encoding="utf-8")
    with Pipeline("files", store=tmp_path / "s", embedder=embedder, progress=False) as p:
        p.ingest(root)
        keys = sorted(_by_source(p))
        assert len(keys) == 3
        res = ops.delete(p, sources=keys[:2])
        assert all(r["ok"] and r["deleted"] > 0 for r in res)
        assert sorted(_by_source(p)) == keys[2:]
        (root / "f1.txt").unlink()
        p.ingest(root)
        assert sorted(_by_source(p)) == [keys[0], keys[2]]
        assert p.verify()["ok"]


def test_bad_calls_raise(pipe: Pipeline) -> None:
    with pytest.raises(InvalidInputError, match="needs ids="):
        ops.delete(pipe)
    with pytest.raises(InvalidInputError, match="not one string"):
        ops.delete(pipe, sources="doc0")
    (r,) = ops.delete(pipe, filter={})
    assert not r["ok"] and "refused" in r["error"]
    (r,) = ops.delete(pipe, filter={"colour": "red"})
    assert not r["ok"] and "unknown filter field 'colour'" in r["error"]
    with pytest.raises(InvalidInputError, match="Pipeline or Sink"):
        ops.update_payload(object(), [])


def test_server_failure_is_reported_per_item_and_truthfully(pipe: Pipeline) -> None:
    if pipe.server is None:
        pytest.skip("fault injection needs the gRPC test server")
    docs = _by_source(pipe)
    a, b = docs["doc0"][0].id, docs["doc1"][0].id
    pipe.server.fail_next(1, grpc.StatusCode.INVALID_ARGUMENT, methods=["SetPayload"])
    res = ops.update_payload(
        pipe,
        [{"id": a, "set": {"metadata.tag": "A"}}, {"id": b, "set": {"metadata.tag": "B"}}],
    )
    assert not all(r["ok"] for r in res)
    got = {r.id: r.payload["metadata"].get("tag") for r in pipe.sink.retrieve([a, b])}
    for r, pid, want in zip(res, (a, b), ("A", "B"), strict=True):
        if r["ok"]:
            assert got[pid] == want
        else:
            assert got[pid] is None and "INVALID_ARGUMENT" in r["error"]
    # The sink recovers: the same updates now go through.
    res = ops.update_payload(
        pipe,
        [{"id": a, "set": {"metadata.tag": "A"}}, {"id": b, "set": {"metadata.tag": "B"}}],
    )
    assert all(r["ok"] for r in res)

    pipe.server.fail_next(1, grpc.StatusCode.INVALID_ARGUMENT, methods=["Delete"])
    (r,) = ops.delete(pipe, ids=[a])
    assert not r["ok"] and "INVALID_ARGUMENT" in r["error"]
    assert len(pipe.sink.retrieve([a])) == 1
    assert pipe.verify()["ok"]


@pytest.fixture(params=["edge", "grpc", pytest.param("real", marks=pytest.mark.qdrant_server)])
def open_target(request, tmp_path: Path):
    """Opens Pipelines (keyword arguments: model=, embedder=) on one target: the embedded
    store, the in-process gRPC server, or the real server at QDRANT_URL."""
    server = None
    if request.param == "grpc":
        server = QdrantGrpcServer().start()
        url = server.url
    elif request.param == "real":
        url = os.environ.get("QDRANT_URL")
        if not url:
            pytest.skip(NO_SERVER)
        drop_collection(url, "del")

    def open_pipeline(**kw) -> Pipeline:
        if request.param == "edge":
            return Pipeline("del", store=tmp_path / "store", progress=False, **kw)
        return Pipeline("del", url=url, state_dir=tmp_path / "state", progress=False, **kw)

    yield open_pipeline
    if server is not None:
        server.close()
    if request.param == "real":
        drop_collection(url, "del")


def test_deletes_need_no_collection_and_no_model(
    open_target, tmp_path: Path, embedder, records: list[dict]
) -> None:
    # A model folder that does not exist and one that cannot load: deletes never touch either.
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    (broken / "tokenizer.json").write_text("{}")
    for model in (tmp_path / "no-such-model", broken):
        with open_target(model=model) as p:
            assert p.sink.count() == 0  # no collection yet
            res = p.delete(
                ids=["00000000-0000-4000-8000-000000000000"],
                sources=["never-stored.md", "nor-this"],
                filter={"source": "never-stored.md"},
            )
            assert [(r["kind"], r["ok"], r.get("deleted")) for r in res] == [
                ("id", True, 0),
                ("source", True, 0),
                ("source", True, 0),
                ("filter", True, 0),
            ], res
            assert p._embedder is None, "a delete loaded the model"
    # Once the collection exists (stored with a working model), a Pipeline without one deletes
    # by id, source and filter, and keeps the state in step.
    with open_target(embedder=embedder) as p:
        p.ingest_records(records)
        docs = _by_source(p)
    with open_target(model=tmp_path / "no-such-model") as p:
        one = docs["doc1"][0].id
        res = p.delete(ids=[one], sources=["doc0"], filter={"metadata": {"n": 2}})
        assert [r["deleted"] for r in res] == [1, len(docs["doc0"]), len(docs["doc2"])], res
        assert p.state.get("doc0") is None and p.verify()["ok"]
        assert p._embedder is None, "a delete loaded the model"
