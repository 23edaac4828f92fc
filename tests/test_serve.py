"""`qflume serve` over real HTTP on loopback: uvicorn in a thread, httpx as the client, a Qdrant
Edge store in tmp_path and the real default model."""

from __future__ import annotations

import http.server
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

import qflume  # noqa: E402
from qflume.serve import ServeConfig, Service, asgi  # noqa: E402

DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def _paragraphs(n: int, *, skip: int = 0) -> list[str]:
    """n real paragraphs of 300..900 characters (one chunk each), each from another file."""
    if DOCS.is_dir():
        files = sorted(DOCS.rglob("*.rst.txt"))
    else:  # the stdlib is always there
        import sysconfig

        files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    out: list[str] = []
    seen: set[str] = set()
    for f in files:
        for para in f.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            para = para.strip()
            if 300 <= len(para) <= 900 and para not in seen:
                seen.add(para)
                out.append(para)
                if len(out) == n + skip:
                    return out[skip:]
                break
    raise AssertionError("not enough real text on this machine")


def _records(texts: list[str], prefix: str) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "text": t, "metadata": {"n": i}} for i, t in enumerate(texts)]


class Server:
    """uvicorn serving a Service on a free loopback port, in a thread."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(asgi(service), log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn did not start"
            assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "uvicorn did not stop"
        self.sock.close()

    def wait_job(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            r = self.client.get(f"/jobs/{job_id}")
            assert r.status_code == 200, r.text
            doc = r.json()
            if doc["status"] in ("done", "failed"):
                return doc
            assert time.monotonic() < deadline, f"job {job_id} not finished: {doc}"
            time.sleep(0.05)


def _start(tmp: Path, embedder: Any, **kw: Any) -> Server:
    kw.setdefault("slice_records", 8)
    kw.setdefault("chunk_chars", 1000)  # the point counts below assume one chunk per short record
    config = ServeConfig.of("docs", store=str(tmp / "store"), **kw)
    return Server(Service(config, embedder=embedder))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> Iterator[Server]:
    srv = _start(tmp_path_factory.mktemp("serve"), embedder)
    yield srv
    srv.stop()


def test_store_poll_search_update_delete(served: Server) -> None:
    c = served.client
    texts = _paragraphs(6)
    r = c.post("/batch/store", json={"records": _records(texts, "doc")})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and job["items"] == 6
    assert r.headers["location"] == f"/jobs/{job['id']}"
    done = served.wait_job(job["id"])
    assert done["status"] == "done", done
    assert done["result"]["documents_new"] == 6
    assert done["result"]["points_upserted"] >= 6

    # A sentence taken verbatim from a record finds it first; one result list per query.
    probe = [texts[3][:200], texts[5][:200]]
    r = c.post("/batch/search", json={"queries": probe, "limit": 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2 and all(len(row) == 3 for row in results)
    assert results[0][0]["source"] == "doc3" and results[1][0]["source"] == "doc5"
    hit = results[0][0]
    assert hit["page_content"] in texts[3] and hit["metadata"]["n"] == 3
    assert {"id", "score", "start", "end"} <= set(hit)

    # Filters are the Python API's.
    r = c.post("/batch/search", json={"queries": probe[:1], "filter": {"source": "doc1"}})
    assert [h["source"] for h in r.json()["results"][0]] == ["doc1"]

    # Storing the same records again (waiting for the job) changes nothing.
    r = c.post("/batch/store?wait=true", json={"records": _records(texts, "doc")})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["documents_unchanged"] == 6
    assert r.json()["result"]["points_upserted"] == 0

    # Updates: per-item results, a bad item fails alone.
    r = c.post(
        "/batch/update",
        json={
            "updates": [
                {"source": "doc2", "set": {"metadata.tag": "red"}, "increment": {"metadata.n": 5}},
                {"id": "not-a-uuid", "set": {"metadata.tag": "x"}},
                {"source": "doc4", "set": {"page_content": "no"}},
            ]
        },
    )
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["ok"] == 1 and res["failed"] == 2
    items = res["results"]
    assert items[0]["ok"] and items[0]["points"] >= 1
    assert not items[1]["ok"] and "not-a-uuid" in items[1]["error"]
    assert not items[2]["ok"] and "page_content" in items[2]["error"]
    r = c.post("/batch/search", json={"queries": probe[:1], "filter": {"metadata": {"tag": "red"}}})
    hits = r.json()["results"][0]
    assert hits and all(h["source"] == "doc2" and h["metadata"]["n"] == 7 for h in hits)

    # Deletes: by source, per-item results; then the document is gone from searches.
    r = c.post("/batch/delete", json={"sources": ["doc3", "never-stored"]})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert [x["ok"] for x in res["results"]] == [True, True]
    assert res["results"][0]["deleted"] >= 1 and res["results"][1]["deleted"] == 0
    r = c.post("/batch/search", json={"queries": probe[:1], "limit": 10})
    assert "doc3" not in {h["source"] for h in r.json()["results"][0]}


def test_bad_input_gets_4xx_naming_the_item(served: Server) -> None:
    c = served.client
    hdr = {"content-type": "application/json"}
    r = c.post("/batch/store", content=b'{"records": [', headers=hdr)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]

    # A bad record is skipped with its index and reason; its neighbours are stored.
    recs: list[Any] = [
        {"id": "bad-a", "text": "a fine record about the lighthouse keeper"},
        {"id": "bad-b"},
        {"id": "bad-c", "text": "   "},
        {"id": True, "text": "x"},
        {"id": "bad-e", "text": "x", "meta": {}},
        7,
        {"id": "bad-g", "text": "x", "metadata": [1]},
        {"id": "bad-h", "text": "another fine record about the harbour master"},
    ]
    r = c.post("/batch/store?wait=true", json={"records": recs})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["documents_new"] == 2 and res["documents_skipped"] == 6, res
    why = {s["index"]: (s["key"], s["reason"]) for s in res["skipped"]}
    assert why[1] == ("bad-b", "records[1].text: Field required")
    assert why[2] == ("bad-c", "records[2].text: text is empty")
    assert why[3][0] == "records[3]" and "records[3].id" in why[3][1]
    assert "records[4].meta" in why[4][1] and "records[5]" in why[5][1]
    assert "records[6].metadata" in why[6][1]
    r = c.post(
        "/batch/store", json={"records": [{"id": "d", "text": "x"}, {"id": "d", "text": "y"}]}
    )
    assert r.status_code == 422 and "repeats records[0].id" in r.json()["error"]
    r = c.post("/batch/store", json={"records": {"id": "a"}})
    assert r.status_code == 422 and "records" in r.json()["error"]
    r = c.post("/batch/store", json=[1, 2])
    assert r.status_code == 422 and "JSON object" in r.json()["error"]

    r = c.post("/batch/search", json={"queries": ["ok", 3]})
    assert r.status_code == 422 and "queries[1]" in r.json()["error"]
    r = c.post("/batch/search", json={"queries": ["ok"], "mode": "fuzzy"})
    assert r.status_code == 422 and "mode" in r.json()["error"]
    r = c.post("/batch/search", json={"queries": ["ok"], "mode": "hybrid"})
    assert r.status_code == 422 and "--sparse bm25" in r.json()["error"]
    r = c.post("/batch/search", json={"queries": ["ok"], "limit": 0})
    assert r.status_code == 422 and "limit" in r.json()["error"]
    r = c.post("/batch/search", json={"queries": ["ok"], "filter": {"colour": "red"}})
    assert r.status_code == 422 and "colour" in r.json()["error"]

    r = c.post("/batch/update", json={"updates": [{"id": "x"}, 5]})
    assert r.status_code == 422 and "updates[1]" in r.json()["error"]
    r = c.post("/batch/delete", json={})
    assert r.status_code == 422 and "ids, sources or filter" in r.json()["error"]
    r = c.post("/batch/delete", json={"filter": {}})
    assert r.status_code == 422 and "filter" in r.json()["error"]

    # Callbacks only to the configured host:port pairs; nothing is sent to check this.
    body = {"records": [{"id": "cb", "text": "x"}], "callback_url": "http://192.0.2.7/hook"}
    r = c.post("/batch/store", json=body)
    assert r.status_code == 422 and "192.0.2.7" in r.json()["error"]

    r = c.get("/jobs/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_size_limits_413(tmp_path: Path, embedder: Any) -> None:
    srv = _start(tmp_path, embedder, max_body_bytes=2000, max_items=3, max_queries=2)
    try:
        c = srv.client
        big = {"records": [{"id": "a", "text": "x" * 3000}]}
        r = c.post("/batch/store", json=big)
        assert r.status_code == 413
        assert "limit is 2000 bytes" in r.json()["error"]

        # A chunked body (no Content-Length) is cut off at the limit too.
        def chunks() -> Iterator[bytes]:
            yield b'{"records": [{"id": "a", "text": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        r = c.post("/batch/store", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "2000" in r.json()["error"]

        four = {"records": [{"id": str(i), "text": "t"} for i in range(4)]}
        r = c.post("/batch/store", json=four)
        assert r.status_code == 413 and "4 records" in r.json()["error"]
        r = c.post("/batch/search", json={"queries": ["a", "b", "c"]})
        assert r.status_code == 413 and "3 queries" in r.json()["error"]
        r = c.post("/batch/delete", json={"ids": ["a", "b"], "sources": ["c", "d"]})
        assert r.status_code == 413 and "4 ids and sources" in r.json()["error"]
        # Under the limits all is well.
        assert c.post("/batch/search", json={"queries": ["a"]}).status_code == 200
    finally:
        srv.stop()


def test_search_and_small_update_go_first_during_a_bulk_store(
    tmp_path: Path, embedder: Any
) -> None:
    srv = _start(tmp_path, embedder, slice_records=8)
    try:
        c = srv.client
        texts = _paragraphs(120, skip=10)
        r = c.post("/batch/store", json={"records": _records(texts, "bulk")})
        assert r.status_code == 202
        job_id = r.json()["id"]
        # Wait until the first slice is stored (so there is something to update and find).
        deadline = time.monotonic() + 60
        while True:
            doc = c.get(f"/jobs/{job_id}").json()
            if doc["items_done"] >= 8:
                break
            assert doc["status"] in ("queued", "running"), doc
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert doc["status"] == "running", "the bulk store finished too early for this test"

        r = c.post("/batch/search", json={"queries": [texts[2][:200]], "limit": 1})
        assert r.status_code == 200
        assert r.json()["results"][0][0]["source"] == "bulk2"
        r = c.post(
            "/batch/update", json={"updates": [{"source": "bulk1", "set_now": "metadata.seen"}]}
        )
        assert r.status_code == 200 and r.json()["result"]["ok"] == 1
        # Both were served while the bulk job was still at work.
        doc = c.get(f"/jobs/{job_id}").json()
        assert doc["status"] == "running" and doc["items_done"] < doc["items"], doc

        final = srv.wait_job(job_id, timeout=120)
        assert final["status"] == "done" and final["result"]["documents_new"] == 120
    finally:
        srv.stop()


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []  # noqa: RUF012

    def do_POST(self) -> None:
        n = int(self.headers["content-length"])
        type(self).received.append(json.loads(self.rfile.read(n)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _Gate:
    """The embedder, but a call waits while `open` is clear (and says it came in `entered`):
    the test decides when a job's first step may finish, not the machine's speed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: Any) -> Any:
        if not self.open.is_set():
            self.entered.set()
            assert self.open.wait(60), "the gate was never opened"
        return self.inner.embed(texts)


def test_shutdown_persists_queued_jobs_and_restart_resumes_them(
    tmp_path: Path, embedder: Any
) -> None:
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    callback = f"http://127.0.0.1:{hook.server_address[1]}/done"
    texts = _paragraphs(48, skip=140)
    gate = _Gate(embedder)
    try:
        hook_target = f"127.0.0.1:{hook.server_address[1]}"
        srv = _start(tmp_path, gate, slice_records=4, callback_hosts=(hook_target,))
        gate.open.clear()  # from here on the first model call waits until the server is stopping
        c = srv.client
        first = c.post("/batch/store", json={"records": _records(texts[:40], "a")}).json()
        second = c.post(
            "/batch/store",
            json={"records": _records(texts[40:], "b"), "callback_url": callback},
        ).json()
        assert gate.entered.wait(60), "the first job never reached the model"
        # drain=0: the step in progress finishes, the rest stays queued on disk.
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        deadline = time.monotonic() + 30
        while not srv.service.jobs._stopping:
            assert time.monotonic() < deadline, "the job queue was never told to stop"
            time.sleep(0.01)
        gate.open.set()
        stopper.join(90)
        assert not stopper.is_alive()

        jobs_file = tmp_path / "store" / "docs.jobs.sqlite"
        with sqlite3.connect(jobs_file) as db:
            rows = dict(db.execute("SELECT id, status FROM jobs").fetchall())
        assert rows[first["id"]] == "queued" and rows[second["id"]] == "queued"
        assert not _Hook.received

        srv = _start(tmp_path, embedder, slice_records=4)
        try:
            assert srv.service.jobs.resumed == 2
            a = srv.wait_job(first["id"])
            b = srv.wait_job(second["id"])
            assert a["status"] == b["status"] == "done" and a["resumed"] and b["resumed"]
            assert a["items_done"] == 40 and b["items_done"] == 8
            assert srv.service.pipeline.sink.count() == 48
            deadline = time.monotonic() + 30
            while not _Hook.received:
                assert time.monotonic() < deadline, "callback not delivered"
                time.sleep(0.05)
            got = _Hook.received[0]
            assert got["id"] == second["id"] and got["status"] == "done"
            deadline = time.monotonic() + 10
            while srv.client.get(f"/jobs/{second['id']}").json()["callback"]["state"] != (
                "delivered"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            srv.stop()
    finally:
        hook.shutdown()
        hook.server_close()


def test_metrics_health_openapi(served: Server) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    c = served.client
    assert c.post("/batch/search", json={"queries": ["warm up"]}).status_code == 200
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    lat = families["qflume_operation_duration_seconds"]
    routes = {s.labels.get("route") for s in lat.samples if s.labels.get("op") == "serve_request"}
    assert "/batch/search" in routes
    assert any(s.labels.get("status") == "done" for s in families["qflume_serve_jobs"].samples)
    j = c.get("/metrics", params={"format": "json"}).json()
    assert any(o["op"] == "serve_request" for o in j["operations"])

    r = c.get("/health")
    assert r.status_code == 200, r.text
    h = r.json()
    assert 0 <= h["score"] <= 100 and isinstance(h["problems"], list)
    assert h["jobs"]["worker_alive"] is True and h["checks"]["points"] >= 1

    spec = c.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("/batch/store", "/batch/search", "/batch/update", "/batch/delete"):
        assert "post" in paths[p], p
    for p in ("/jobs/{job_id}", "/health", "/metrics"):
        assert "get" in paths[p], p
    schemas = spec["components"]["schemas"]
    assert {"StoreRequest", "Record", "SearchRequest", "JobModel"} <= set(schemas)
    body = paths["/batch/store"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"] == "#/components/schemas/StoreRequest"


def test_bearer_token_on_every_route_but_health(tmp_path: Path, embedder: Any) -> None:
    srv = _start(tmp_path, embedder, token="s3cret-token")
    try:
        c = srv.client
        body = {"queries": ["anything"], "limit": 1}
        for method, path, kw in (
            ("post", "/batch/search", {"json": body}),
            ("post", "/batch/store", {"json": {"records": [{"id": "a", "text": "x"}]}}),
            ("post", "/batch/delete", {"json": {"ids": ["a"]}}),
            ("get", "/jobs/nope", {}),
            ("get", "/metrics", {}),
            ("get", "/docs", {}),
            ("get", "/openapi.json", {}),
        ):
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "s3cret-token"},
            ):
                r = getattr(c, method)(path, headers=headers, **kw)
                assert r.status_code == 401, (path, headers, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["error"]
        assert c.get("/health").status_code in (200, 503)  # probes need no token
        ok = {"Authorization": "Bearer s3cret-token"}
        assert c.post("/batch/search", json=body, headers=ok).status_code == 200
        assert c.get("/jobs/nope", headers=ok).status_code == 404
    finally:
        srv.stop()


def test_a_public_host_needs_a_token_and_callbacks_need_the_allow_list(
    tmp_path: Path, embedder: Any
) -> None:
    from qflume.serve import _parser, config_from_args

    args = _parser().parse_args(["-c", "docs", "--host", "0.0.0.0"])
    args.token = None
    with pytest.raises(qflume.InvalidInputError, match=r"--host 0\.0\.0\.0 .* --token"):
        config_from_args(args)
    args.token = "t"
    assert config_from_args(args).token == "t"
    loop = _parser().parse_args(["-c", "docs", "--callback-host", "127.0.0.1:9"])
    loop.token = None
    assert config_from_args(loop).callback_hosts == ("127.0.0.1:9",)
    with pytest.raises(qflume.InvalidInputError, match="HOST:PORT"):
        config_from_args(_parser().parse_args(["-c", "d", "--callback-host", "example.org"]))

    srv = _start(tmp_path, embedder, callback_hosts=("127.0.0.1:9",))
    try:
        rec = {"records": [{"id": "cb", "text": "x"}]}
        # Qdrant's own REST port on loopback is not a callback target by default
        r = srv.client.post("/batch/store", json={**rec, "callback_url": "http://127.0.0.1:6333/x"})
        assert r.status_code == 422 and "127.0.0.1:6333 is not an allowed" in r.json()["error"]
        url = "http://user:hunter2@127.0.0.1:9/hook"
        r = srv.client.post("/batch/store", json={**rec, "callback_url": url})
        assert r.status_code == 202, r.text
        doc = srv.wait_job(r.json()["id"])
        assert doc["callback"]["url"] == "http://***@127.0.0.1:9/hook"
        deadline = time.monotonic() + 60
        while srv.client.get(f"/jobs/{doc['id']}").json()["callback"]["state"] == "pending":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        shown = srv.client.get(f"/jobs/{doc['id']}").text
        assert "hunter2" not in shown and "user:" not in shown
        r = srv.client.post("/batch/store", json={**rec, "callback_url": "http://u:p@10.1.2.3:9/"})
        assert r.status_code == 422 and "hunter2" not in r.text and "u:p" not in r.text
    finally:
        srv.stop()


def test_deep_json_is_a_400_and_duplicate_ids_a_422(served: Server) -> None:
    c = served.client
    deep = "[" * 5000 + "]" * 5000
    for path in ("/batch/store", "/batch/search", "/batch/update", "/batch/delete"):
        r = c.post(path, content=b'{"records": ' + deep.encode() + b"}")
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"], (path, r.text)
    recs = [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}, {"id": "a", "text": "three"}]
    r = c.post("/batch/store", json={"records": recs})
    assert r.status_code == 422
    assert "records[2].id: id 'a' repeats records[0].id" in r.json()["error"]
    # a record whose metadata nests past the limit is a named skip; its neighbours are stored
    nested: Any = 1
    for _ in range(40):
        nested = {"x": nested}
    recs = [{"id": "n1", "text": "fine one"}, {"id": "n2", "text": "deep", "metadata": nested},
            {"id": "n3", "text": "fine three", "metadata": {"v": "ok"}}]  # fmt: skip
    r = c.post("/batch/store?wait=true", json={"records": recs})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["documents_new"] == 2
    assert [s["key"] for s in result["skipped"]] == ["n2"]
    assert "nested deeper than 32" in result["skipped"][0]["reason"]
    r = c.post("/batch/search", json={"queries": ["fine three"], "limit": 1})
    assert r.status_code == 200


def test_nan_and_lone_surrogates_in_a_store_request_skip_only_their_records(
    served: Server,
) -> None:
    body = (
        b'{"records": ['
        b'{"id": "s1", "text": "a fine record about lighthouses"},'
        b'{"id": "s2\\ud800", "text": "surrogate id"},'
        b'{"id": "s3", "text": "nan metadata", "metadata": {"x": NaN}},'
        b'{"id": "s4", "text": "surrogate key", "metadata": {"k\\udc80": 1}},'
        b'{"id": "s5", "text": "surrogate \\ud801 text"},'
        b'{"id": "s6", "text": "another fine record about harbours"}'
        b"]}"
    )
    r = served.client.post("/batch/store?wait=true", content=body)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["documents_new"] == 2 and result["documents_skipped"] == 4, result
    r = served.client.post(
        "/batch/search", content=b'{"queries": ["lighthouses", "bad \\udcff query"]}'
    )
    assert r.status_code == 200, r.text  # the bad query fails alone, named
    assert [(e["index"], e["type"]) for e in r.json()["errors"]] == [(1, "invalid")]
    assert r.json()["results"][0] and r.json()["results"][1] == []
    r = served.client.post("/batch/search", json={"queries": ["harbours"], "limit": 1})
    assert r.json()["results"][0][0]["source"] == "s6"


# --------------------------------------------------------------------------- property, over HTTP

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.text(st.characters(codec=None, categories=["Lu", "Ll", "Nd", "Zs", "Cs", "So"]),
                max_size=12)  # fmt: skip
_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | _text
_json = st.recursive(
    _leaf,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_text, kids, max_size=3),
    max_leaves=40,
)
_huge = st.builds(lambda t, n: (t or "y") * n, _text, st.integers(1000, 20_000))
_deep = st.integers(30, 200).map(lambda n: json.loads("[" * n + "1" + "]" * n))
_record = st.fixed_dictionaries(
    {"id": _text | st.integers(-(2**70), 2**70), "text": _text | _huge},
    optional={"metadata": st.dictionaries(_text, _json | _deep, max_size=4) | _json},
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(_record, min_size=1, max_size=8))
def test_any_records_sent_over_http_are_stored_or_skipped_with_a_reason(
    served: Server, records: list[dict[str, Any]]
) -> None:
    """Random JSON values as records (depths, floats incl. NaN/inf, huge ints, lone surrogates,
    long strings) in one /batch/store request: the request answers 200, every record is stored
    or skipped with a reason naming it, and search, health and status keep working."""
    for i, rec in enumerate(records):  # unique ids: duplicates are a 422 of their own
        rec["id"] = f"p{i}:{rec['id']}"
    # json.dumps writes NaN/Infinity and escapes lone surrogates as \udXXX, as a lying client does
    body = json.dumps({"records": records}, ensure_ascii=True, allow_nan=True).encode()
    r = served.client.post("/batch/store?wait=true", content=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "done", doc
    res = doc["result"]
    handled = res["documents_new"] + res["documents_changed"] + res["documents_unchanged"]
    assert handled + res["documents_skipped"] == len(records), res
    assert all(s["reason"] and s["key"] for s in res["skipped"]), res["skipped"]
    r = served.client.post("/batch/search", json={"queries": ["anything"], "limit": 1})
    assert r.status_code == 200, r.text
    assert served.client.get("/health").status_code == 200
    assert served.client.get("/status").status_code == 200


# --------------------------------------------------------------------------- batch semantics


def _check_errors(result: dict[str, Any], total: int) -> list[dict[str, Any]]:
    """`summary` and `errors` as every batch answer has them; the errors, by index."""
    errors = result["errors"]
    assert result["summary"] == {
        "total": total,
        "successful": total - len(errors),
        "failed": len(errors),
    }, result["summary"]
    for e in errors:
        assert isinstance(e["index"], int) and e["reason"] and e["type"] in (
            "invalid", "not_found", "conflict", "target_error", "job_failed"
        ), e  # fmt: skip
    return errors


def test_every_batch_answer_has_summary_and_per_item_errors(served: Server) -> None:
    c = served.client
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    recs: list[Any] = [
        {"id": "sum-a", "text": "a record about the tides of the northern sea"},
        {"id": "sum-b"},
        {"id": "sum-c", "text": "deep", "metadata": {"x": deep}},
        7,
        {"id": "sum-e", "text": "a record about the moons of the outer planets"},
    ]
    r = c.post("/batch/store?wait=true", json={"records": recs})
    assert r.status_code == 200, r.text
    doc = r.json()
    errors = _check_errors(doc["result"], 5)
    assert [(e["index"], e.get("key"), e["type"]) for e in errors] == [
        (1, "sum-b", "invalid"),
        (2, "sum-c", "invalid"),
        (3, None, "invalid"),
    ]
    assert "records[1].text" in errors[0]["reason"] and "deeper than 32" in errors[1]["reason"]
    # the older fields stay, now with the index of a skip found while storing too
    assert doc["result"]["documents_new"] == 2 and doc["result"]["documents_skipped"] == 3
    assert {s["index"] for s in doc["result"]["skipped"]} == {1, 2, 3}
    # GET /jobs/{id} is the same document
    assert c.get(f"/jobs/{doc['id']}").json()["result"]["summary"] == doc["result"]["summary"]

    r = c.post(
        "/batch/update",
        json={
            "updates": [
                {"source": "sum-a", "set": {"metadata.tag": "t"}},
                {"source": "nope", "set": {"metadata.tag": "t"}},
                {"id": "not-a-uuid", "set": {"metadata.tag": "t"}},
                {"source": "sum-e", "set": {"page_content": "no"}},
            ]
        },
    )
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    errors = _check_errors(res, 4)
    assert [(e["index"], e.get("key"), e.get("id"), e["type"]) for e in errors] == [
        (1, "nope", None, "not_found"),
        (2, None, "not-a-uuid", "invalid"),
        (3, "sum-e", None, "invalid"),
    ]
    assert res["ok"] == 1 and res["failed"] == 3 and len(res["results"]) == 4

    r = c.post(
        "/batch/delete",
        json={"ids": ["bad id", "00000000-0000-4000-8000-000000000000"], "sources": ["sum-a", ""]},
    )
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    errors = _check_errors(res, 4)
    assert [(e["kind"], e["index"], e.get("id"), e["type"]) for e in errors] == [
        ("id", 0, "bad id", "invalid"),
        ("source", 1, None, "invalid"),
    ]
    assert res["deleted"] >= 1

    # Search: a query that cannot be searched fails alone; its row is empty.
    body = b'{"queries": ["the moons of the outer planets", "  ", "bad \\udcff query"]}'
    r = c.post("/batch/search", content=body)
    assert r.status_code == 200, r.text
    out = r.json()
    errors = _check_errors(out, 3)
    assert [(e["index"], e["type"]) for e in errors] == [(1, "invalid"), (2, "invalid")]
    assert "queries[1] is empty" in errors[0]["reason"] and "\\udcff" in errors[1]["reason"]
    assert out["results"][0][0]["source"] == "sum-e" and out["results"][1:] == [[], []]
    r = c.post("/batch/search", json={"queries": ["", "moons"], "filter": {"colour": "x"}})
    assert r.status_code == 422 and "colour" in r.json()["error"]  # the request's own settings

    # The shape is in the OpenAPI document.
    spec = c.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"summary", "errors"} <= set(schemas["SearchResponse"]["properties"])
    assert {"summary", "errors"} <= set(schemas["BatchResult"]["properties"])
    assert set(schemas["Summary"]["properties"]) == {"total", "successful", "failed"}
    assert {"index", "id", "key", "reason", "type"} <= set(schemas["ItemError"]["properties"])
    for route in ("/batch/store", "/batch/update", "/batch/delete"):
        assert "429" in spec["paths"][route]["post"]["responses"], route


class _Broken:
    """An embedding model that fails every call (as one whose files went bad would)."""

    dim = 384
    model_id = "broken"

    def embed(self, texts: Any) -> Any:
        raise qflume.ModelError("the model file is damaged")


def test_a_failed_job_counts_every_item_it_did_not_confirm(tmp_path: Path) -> None:
    srv = _start(tmp_path, _Broken(), slice_records=2)
    try:
        recs: list[Any] = [{"id": f"f{i}", "text": f"record number {i}"} for i in range(5)]
        recs.insert(2, {"id": "f-bad"})
        r = srv.client.post("/batch/store?wait=true", json={"records": recs})
        assert r.status_code == 500, r.text
        doc = r.json()
        assert doc["status"] == "failed" and "damaged" in doc["error"]
        errors = _check_errors(doc["result"], 6)
        assert [(e["index"], e["type"]) for e in errors] == [
            (0, "job_failed"), (1, "job_failed"), (2, "invalid"),
            (3, "job_failed"), (4, "job_failed"), (5, "job_failed"),
        ]  # fmt: skip
        assert errors[0]["key"] == "f0" and "damaged" in errors[0]["reason"]
    finally:
        srv.stop()


def test_deletes_over_http_need_no_model(tmp_path: Path) -> None:
    config = ServeConfig.of("docs", store=str(tmp_path / "store"), model=str(tmp_path / "no-model"))
    srv = Server(Service(config))  # the model is loaded on first use: it starts all the same
    try:
        c = srv.client
        r = c.post(
            "/batch/delete",
            json={
                "ids": ["00000000-0000-4000-8000-000000000000"],
                "sources": ["a.md"],
                "filter": {"source": "a.md"},
            },
        )
        assert r.status_code == 200, r.text
        res = r.json()["result"]
        assert res["summary"] == {"total": 3, "successful": 3, "failed": 0} and res["deleted"] == 0
        assert c.get("/health").status_code == 200 and c.get("/status").status_code == 200
        # what needs the model says which model and why
        r = c.post("/batch/search", json={"queries": ["anything"]})
        assert r.status_code == 500 and "no-model" in r.json()["error"], r.text
        r = c.post("/batch/store?wait=true", json={"records": [{"id": "a", "text": "x"}]})
        assert r.status_code == 500 and "no-model" in r.json()["error"]
        assert r.json()["result"]["summary"] == {"total": 1, "successful": 0, "failed": 1}
        r = c.get("/health")  # not fatal: deletes work
        assert r.status_code == 200 and not r.json()["ok"]
        (problem,) = [p for p in r.json()["problems"] if p["code"] == "model_unavailable"]
        assert "no-model" in problem["message"]
    finally:
        srv.stop()


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path, embedder: Any) -> None:
    gate = _Gate(embedder)
    srv = _start(tmp_path, gate, max_queued=2, slice_records=4)
    try:
        c = srv.client
        gate.open.clear()  # the first store's first step waits here: the others stay queued
        texts = _paragraphs(6, skip=200)
        ids = []
        for n in range(3):
            body = {"records": _records(texts[2 * n : 2 * n + 2], f"q{n}-")}
            r = c.post("/batch/store", json=body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
            if n == 0:
                assert gate.entered.wait(60), "the first job never reached the model"
        # Two stores wait (the running one does not count): a third is refused.
        r = c.post("/batch/store", json={"records": [{"id": "late", "text": "too late"}]})
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert "--max-queued 2" in r.json()["error"] and "retry in" in r.json()["error"]
        # Small updates and deletes wait only behind small ones: they still get in.
        r = c.post("/batch/delete?wait=false", json={"sources": ["q0-0"]})
        assert r.status_code == 202, r.text
        small = [r.json()["id"]]
        r = c.post("/batch/update?wait=false", json={"updates": [{"source": "q0-1", "set": {"metadata.t": 1}}]})  # fmt: skip
        assert r.status_code == 202, r.text
        small.append(r.json()["id"])
        r = c.post("/batch/delete?wait=false", json={"sources": ["q1-0"]})
        assert r.status_code == 429 and "retry-after" in r.headers
        assert srv.service.jobs.waiting() == 4  # at most 2 x --max-queued wait
        jobs = c.get("/health").json()["jobs"]
        assert jobs["waiting"] == 4 and jobs["max_queued"] == 2
        gate.open.set()
        for jid in ids + small:
            assert srv.wait_job(jid)["status"] == "done"
        # Room again; the estimate comes from the jobs just run (at least 1 s).
        assert c.post("/batch/store", json={"records": [{"id": "late", "text": "x"}]}).status_code == 202  # fmt: skip
        assert srv.service.jobs.retry_after() >= 1
    finally:
        gate.open.set()
        srv.stop()


def test_retry_after_follows_recent_job_durations(tmp_path: Path) -> None:
    from qflume.jobs import BULK, URGENT, JobQueue, QueueFullError, StepResult

    hold = threading.Event()

    def slow(job: Any, payload: Any) -> StepResult:
        if payload.get("hold"):
            hold.wait(30)
        else:
            time.sleep(payload["s"])
        return StepResult(1, {}, True)

    q = JobQueue(tmp_path / "jobs.sqlite", {"run": slow}, max_queued=1)
    q.start()
    try:
        assert q.retry_after() == 1  # nothing measured yet
        q.submit("run", {"s": 1.2}, items=1).future.result(30)
        assert q.retry_after(BULK) == 2  # 1.2 s, rounded up
        assert q.retry_after(URGENT) == 2  # no urgent job measured yet: any job's
        q.submit("run", {"s": 0.0}, items=1, priority=URGENT).future.result(30)
        assert q.retry_after(URGENT) == 1  # only urgent jobs run ahead of an urgent one
        assert q.retry_after(BULK) == 1  # mean of 1.2 s and ~0 s, rounded up
        q.submit("run", {"hold": True}, items=1)  # runs, holding the worker
        deadline = time.monotonic() + 10
        while q.waiting():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        q.submit("run", {"s": 0}, items=1)
        with pytest.raises(QueueFullError) as e:
            q.submit("run", {"s": 0}, items=1)
        assert e.value.retry_after == 1 and e.value.waiting == 1 and e.value.limit == 1
        q.submit("run", {"s": 0}, items=1, priority=URGENT)  # urgent ones have their own room
    finally:
        hold.set()
        q.stop(drain=10)
        q.close()


def test_max_queued_flag() -> None:
    from qflume.serve import _parser, config_from_args

    assert config_from_args(_parser().parse_args(["-c", "d", "--max-queued", "7"])).max_queued == 7
    assert ServeConfig.of("d").max_queued == 100
    with pytest.raises(qflume.InvalidInputError, match="--max-queued must be positive"):
        config_from_args(_parser().parse_args(["-c", "d", "--max-queued", "0"]))


def test_alerts_over_http_health_metrics_status_and_the_callback(
    tmp_path: Path, embedder: Any
) -> None:
    """A memory alert (the budget, --max-memory, is 10 MiB: always crossed) raised by the
    service's monitor: /health, /metrics, /status and the alert callback all show it, and the
    monitor ran a garbage collection."""
    from prometheus_client.parser import text_string_to_metric_families

    from qflume.alerts import Threshold

    class Hook(_Hook):
        received: list[dict[str, Any]] = []  # noqa: RUF012

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    target = f"127.0.0.1:{hook.server_address[1]}"
    srv = _start(
        tmp_path,
        embedder,
        max_memory=10 << 20,
        alerts=(Threshold.parse("memory:budget>100%:high"),),
        default_alerts=False,
        alert_interval=0.05,
        alert_callback=f"http://{target}/alerts",
        callback_hosts=(target,),
    )
    try:
        c = srv.client
        r = c.post("/batch/store?wait=true", json={"records": [{"id": "a", "text": "some text"}]})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while not Hook.received:
            assert time.monotonic() < deadline, "no alert reached the callback"
            time.sleep(0.05)
        doc = Hook.received[0]
        assert doc["collection"] == "docs" and doc["alert"]["state"] == "raised"
        assert doc["alert"]["name"] == "memory:budget>1:high" and doc["alert"]["value"] > 1
        assert doc["alert"]["collection"]["rss_before"] > 0  # the garbage collection it ran
        h = c.get("/health").json()
        assert h["checks"]["memory"]["budget_bytes"] == 10 << 20  # --max-memory, not 90% of RAM
        assert "memory_over_budget" in {p["code"] for p in h["problems"]}
        assert [a["name"] for a in h["alerts"]] == ["memory:budget>1:high"] and not h["ok"]
        fams = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
        gauge = {
            (s.labels["kind"], s.labels["severity"]): s.value for s in fams["qflume_alerts"].samples
        }
        assert gauge[("memory", "high")] == 1 and gauge[("latency", "high")] == 0
        assert fams["qflume_memory_collections"].samples[0].value >= 1
        status = c.get("/status").json()
        first = status["alerts"][0]
        assert (first["level"], first["source"], first["code"]) == (
            "high",
            "alert",
            "memory:budget>1:high",
        )
        assert status["alert_history"][0]["name"] == "memory:budget>1:high"
        assert status["collections"][0]["disk_bytes"] is not None
    finally:
        srv.stop()
        hook.shutdown()
        hook.server_close()


def test_alert_flags_and_their_errors(tmp_path: Path) -> None:
    from qflume.serve import _parser, config_from_args

    cfg = config_from_args(
        _parser().parse_args(
            [
                "-c",
                "d",
                "--alert",
                "latency:search.p99>250ms:critical",
                "--alert-interval",
                "2",
                "--no-default-alerts",
                "--max-memory",
                "1000000",
            ]
        )
    )
    assert [t.name for t in cfg.alerts] == ["latency:search.p99>0.25:critical"]
    assert (
        cfg.alert_interval == 2.0
        and not cfg.default_alerts
        and cfg.pipeline.max_memory == 1_000_000
    )
    with pytest.raises(qflume.InvalidInputError, match="--alert: alert threshold 'x>1'"):
        config_from_args(_parser().parse_args(["-c", "d", "--alert", "x>1"]))
    with pytest.raises(
        qflume.InvalidInputError, match="--alert-interval must be a positive number"
    ):
        config_from_args(_parser().parse_args(["-c", "d", "--alert-interval", "0"]))
    # an alert callback goes only to a --callback-host, like job callbacks
    with pytest.raises(qflume.InvalidInputError, match=r"--alert-callback: .*--callback-host"):
        Service(ServeConfig.of("d", store=str(tmp_path), alert_callback="http://127.0.0.1:6333/x"))
