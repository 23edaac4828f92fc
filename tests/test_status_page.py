"""The status page of `qflume serve` (GET /) in headless Chromium, driven over the DevTools
protocol: a real service on loopback with a bearer token, the tiny BERT, a Qdrant Edge store in
tmp_path. The page shows a store job's live progress, finds a record by search with its source,
shows a skip whose record id is HTML as text, and its screenshot shows the progress bar and the
hit. The HTTP side (no data without the token, the page's headers) needs no browser."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import qflume
from qflume.pipeline import Pipeline
from qflume.serve import ServeConfig, Service
from test_serve import Server
from tiny_bert import WORDS, make_tiny_bert

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium package (apt-get install chromium)"
)
TOKEN = "page-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# A record id that is markup, a right-to-left override and an escape: shown as text, the
# invisible characters as escapes.
HOSTILE_ID = "<img src=x onerror=\"document.title='pwned'\">\u202e\x1b[2K"


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The tiny BERT as an Embedder (built into a cache of this module's own)."""
    root = tmp_path_factory.mktemp("tiny")
    make_tiny_bert(root / "model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QFLUME_CACHE_DIR", str(root / "cache"))
        emb = qflume.Embedder(root / "model")
        yield emb
        emb.close()


def _records(n: int) -> list[dict[str, Any]]:
    """n records of 12 tiny-vocabulary words each (one chunk each, all different)."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        words = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 12))
        out.append({"id": f"doc-{i:02d}", "text": words, "metadata": {"n": i}})
    return out


class _Budget:
    """The pipeline's embedder, but once `budget` texts went through, a call waits until `open`
    is set: the test decides how long a store job stays at work, not the machine's speed."""

    def __init__(self, inner: Any, budget: int) -> None:
        self.inner = inner
        self.budget = budget
        self.passed = 0
        self.open = threading.Event()
        self.waiting = threading.Event()
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: Any) -> Any:
        texts = list(texts)
        with self.lock:
            over = self.passed >= self.budget
            self.passed += len(texts)
        if over:
            self.waiting.set()
            assert self.open.wait(60), "the embedder was never let go on"
        return self.inner.embed(texts)


def _serve(tmp: Path, pipeline_embedder: Any, search_embedder: Any) -> tuple[Server, Pipeline]:
    config = ServeConfig.of(
        "docs", store=str(tmp / "store"), token=TOKEN, slice_records=8, chunk_chars=1000
    )
    pipeline = Pipeline(
        "docs", store=tmp / "store", embedder=pipeline_embedder, chunk_chars=1000, progress=False
    )
    try:
        return Server(Service(config, pipeline=pipeline, embedder=search_embedder)), pipeline
    except BaseException:
        pipeline.close()
        raise


def _wait_job(srv: Server, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = srv.client.get(f"/jobs/{job_id}", headers=AUTH).json()
        if doc["status"] in ("done", "failed"):
            return doc
        assert time.monotonic() < deadline, f"job {job_id} not finished: {doc}"
        time.sleep(0.05)


def _status(srv: Server) -> dict[str, Any]:
    r = srv.client.get("/status", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------ HTTP only


def test_the_page_holds_no_data_and_its_data_needs_the_token(tmp_path: Path, tiny: Any) -> None:
    srv, pipeline = _serve(tmp_path, tiny, tiny)
    try:
        c = srv.client
        r = c.post("/batch/store?wait=true", json={"records": _records(3)}, headers=AUTH)
        assert r.status_code == 200, r.text

        page = c.get("/")  # no token: the page loads, and holds nothing of the collection
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "doc-0" not in page.text and "docs" not in page.text.replace("/ui/", "")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and page.headers["referrer-policy"] == "no-referrer"
        for asset, media in (("status.js", "text/javascript"), ("status.css", "text/css")):
            r = c.get(f"/ui/{asset}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(media), asset
        # Only the page and its assets are public, and only to read.
        assert c.get("/ui/status.html").status_code == 401
        assert c.get("/ui/..%2fserve.py", headers=AUTH).status_code == 404
        assert c.post("/", json={}).status_code == 401

        r = c.get("/status")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.get("/status", headers=AUTH)
        assert r.status_code == 200, r.text
        doc = r.json()
        (col,) = doc["collections"]
        assert (col["name"], col["documents"], col["points"]) == ("docs", 3, 3)
        assert col["vector_size"] == 32 and col["target"].endswith("store")
        assert doc["health"]["ok"] in (True, False) and "score" in doc["health"]
        assert isinstance(doc["alerts"], list) and doc["jobs"]["active"] == []
        (job,) = doc["jobs"]["finished"]
        assert job["status"] == "done" and job["items_done"] == 3
        assert job["result"]["documents_new"] == 3 and "skipped" not in job["result"]
        assert doc["throughput"]["unit"] == "chunks written/s"
    finally:
        srv.stop()
        pipeline.close()


def test_status_lists_queued_jobs_in_run_order_and_skips_newest_first(
    tmp_path: Path, tiny: Any
) -> None:
    gate = _Budget(tiny, budget=0)  # the first model call waits: every job stays unfinished
    srv, pipeline = _serve(tmp_path, gate, tiny)
    try:
        c = srv.client
        recs = _records(4)
        ids = []
        for lo in (0, 2):
            r = c.post("/batch/store", json={"records": recs[lo : lo + 2]}, headers=AUTH)
            ids.append(r.json()["id"])
        r = c.post("/batch/delete", json={"ids": ["00000000-0000-0000-0000-000000000000"]},
                   headers=AUTH, params={"wait": "false"})  # fmt: skip
        ids.append(r.json()["id"])
        assert gate.waiting.wait(30), "the first store job never reached the model"
        active = _status(srv)["jobs"]["active"]
        # The running store first, then the urgent delete, then the other store.
        assert [j["id"] for j in active] == [ids[0], ids[2], ids[1]]
        assert [j["status"] for j in active] == ["running", "queued", "queued"]
        gate.open.set()
        for jid in ids:
            assert _wait_job(srv, jid)["status"] == "done"

        bad = [{"id": f"bad-{i}", "text": "w1 w2", "metadata": _nested(40)} for i in range(3)]
        bad.append({"id": "long-" + "x" * 100_000, "text": "w1", "metadata": _nested(40)})
        r = c.post("/batch/store?wait=true", json={"records": bad}, headers=AUTH)
        assert r.json()["result"]["documents_skipped"] == 4
        skips = _status(srv)["skips"]
        assert [s["key"][:5] for s in skips[:4]] == ["long-", "bad-2", "bad-1", "bad-0"]
        assert "nested deeper than 32" in skips[1]["reason"]
        # A huge id is cut in its middle: the page gets its start and the reason's end.
        assert len(skips[0]["key"]) <= 1000 and len(skips[0]["reason"]) <= 1000
        assert skips[0]["reason"].startswith("record 'long-x")
        assert skips[0]["reason"].endswith("nested deeper than 32 levels")
    finally:
        gate.open.set()
        srv.stop()
        pipeline.close()


# ------------------------------------------------------------------------------ the browser


class CdpError(Exception):
    """A DevTools command failed, or the page's script threw."""


class Chrome:
    """Headless Chromium on a temporary profile, one page, driven over the DevTools protocol."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 1100) -> None:
        from websockets.sync.client import connect

        args = [CHROMIUM, "--headless=new", f"--user-data-dir={profile}",
                "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                f"--window-size={width},{height}", "--no-first-run", "--no-default-browser-check",
                "--disable-gpu", "--disable-extensions", "--disable-background-networking",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "about:blank"]  # fmt: skip
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._stack = contextlib.ExitStack()
        self._id = 0
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
                assert self.proc.poll() is None, f"chromium exited with {self.proc.returncode}"
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            (page,) = [t for t in targets if t["type"] == "page"]
            url = page["webSocketDebuggerUrl"]
            self.ws = self._stack.enter_context(connect(url, max_size=None, open_timeout=10))
            self.call("Emulation.setDeviceMetricsOverride",
                      width=width, height=height, deviceScaleFactor=1, mobile=False)  # fmt: skip
        except BaseException:
            self.close()
            raise

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise CdpError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise CdpError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 20) -> Any:
        """The expression's value once truthy (a page between two documents counts as falsy)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.js(expression)
            except CdpError:
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"the page never showed {what}"
            time.sleep(0.1)

    def close(self) -> None:
        self._stack.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _text(sel: str) -> str:
    return f"(document.querySelector({json.dumps(sel)}) || {{}}).textContent || ''"


def _rect(chrome: Chrome, sel: str) -> tuple[int, int, int, int]:
    r = chrome.js(
        f"(() => {{ const r = document.querySelector({json.dumps(sel)}).getBoundingClientRect();"
        " return [r.left, r.top, r.right, r.bottom]; })()"
    )
    return tuple(round(v) for v in r)  # type: ignore[return-value]


@needs_chromium
def test_the_page_shows_live_progress_a_search_hit_and_skips_as_text(
    tmp_path: Path, tiny: Any
) -> None:
    Image = pytest.importorskip("PIL.Image")
    pytest.importorskip("websockets.sync.client")
    recs = _records(40)
    recs[2] = {"id": HOSTILE_ID, "text": "w1 w2 w3", "metadata": _nested(40)}  # skipped
    gate = _Budget(tiny, budget=7)  # the first slice's 7 good records, then the job waits
    srv, pipeline = _serve(tmp_path, gate, tiny)
    chrome = None
    try:
        r = srv.client.post("/batch/store", json={"records": recs}, headers=AUTH)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert gate.waiting.wait(30), "the store job never reached its second slice"

        chrome = Chrome(tmp_path / "profile")
        chrome.call("Page.navigate", url=f"{srv.url}/#token={TOKEN}")
        running = f".job.running[data-job='{job_id}']"
        progress = chrome.wait(_text(f"{running} .progress"), "the running job")
        assert progress == "8 / 40 items (20%)"
        # The token left the address bar and lives in this tab's sessionStorage only.
        assert chrome.js("location.href") == f"{srv.url}/"
        assert chrome.js("sessionStorage.getItem('qflume-token')") == TOKEN
        assert chrome.js(_text("#collection-body .v-points")) == "7"

        # A search finds the record by its own text and shows its source and offsets.
        want = recs[5]
        chrome.js(f"document.getElementById('q').value = {json.dumps(want['text'])}")
        chrome.js("document.querySelector('#search-form button').click()")
        source = chrome.wait(_text("#hits .hit .source"), "a search hit")
        assert source == "doc-05"
        assert chrome.js(_text("#hits .hit .offsets")) == f" [0–{len(want['text'])}]"
        assert chrome.js(_text("#hits .hit .snippet")) == want["text"]
        assert float(chrome.js(_text("#hits .hit .score"))) > 0.99

        # The skipped record's id is shown as text: no element made of it, no script run.
        key = chrome.wait(_text("#skips-body .skip .key"), "the skip")
        assert key == HOSTILE_ID.replace("\u202e", "\\u202e").replace("\x1b", "\\x1b")
        assert "nested deeper than 32" in chrome.js(_text("#skips-body .skip .reason"))
        assert chrome.js("document.querySelectorAll('main img').length") == 0
        assert chrome.js("document.title") == "qflume status"
        # The plot has its samples (the first slice's chunks were written at some rate).
        chrome.wait("document.querySelector('#plot polyline') !== null", "the throughput plot")
        deadline = time.monotonic() + 10
        while not any(v > 0 for _, v in _status(srv)["throughput"]["samples"]):
            assert time.monotonic() < deadline, "no throughput sample saw the first slice"
            time.sleep(0.2)

        # The screenshot shows the progress bar (its filled fifth) and the hit.
        shot = chrome.call("Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
        (tmp_path / "status.png").write_bytes(png)
        assert len(png) > 20_000
        img = Image.open(io.BytesIO(png)).convert("RGB")
        assert img.size == (1280, 1100)
        assert len(img.getcolors(1 << 20) or ()) > 100, "the screenshot is nearly blank"
        left, top, right, bottom = _rect(chrome, f"{running} .bar .fill")
        bar = _rect(chrome, f"{running} .bar")
        assert bottom <= 1100 and abs((right - left) - (bar[2] - bar[0]) * 0.2) <= 2
        assert img.getpixel(((left + right) // 2, (top + bottom) // 2)) == (37, 99, 235)
        assert img.getpixel((bar[2] - 4, (top + bottom) // 2)) != (37, 99, 235)  # the rest
        hit = img.crop(_rect(chrome, "#hits .hit"))
        assert len(hit.getcolors(1 << 20) or ()) > 20, "the search hit is not in the screenshot"

        # Live: once the model goes on, the page shows the job done and the points stored.
        gate.open.set()
        chrome.wait(_text(f".job.done[data-job='{job_id}'] .progress"), "the job done", 30)
        assert chrome.js(_text(f".job.done[data-job='{job_id}'] .progress")) == (
            "40 / 40 items (100%)"
        )
        chrome.wait(f"{_text('#collection-body .v-points')} === '39'", "39 points")
        assert chrome.js(_text("#jobs-active")) == "No running or queued jobs."

        # Without a token in this tab the page asks for one, and refuses a wrong one.
        chrome.js("sessionStorage.clear()")
        chrome.call("Page.reload")
        chrome.wait("!document.getElementById('token-form').hidden", "the token form")
        chrome.js("document.getElementById('token').value = 'snow\u2603man'")
        chrome.js("document.querySelector('#token-form button').click()")
        chrome.wait(f"{_text('#token-error')}.includes('cannot be sent')", "the header refusal")
        chrome.js("document.getElementById('token').value = 'wrong'")
        chrome.js("document.querySelector('#token-form button').click()")
        chrome.wait(f"{_text('#token-error')}.includes('refused')", "the refusal")
        chrome.js(f"document.getElementById('token').value = {json.dumps(TOKEN)}")
        chrome.js("document.querySelector('#token-form button').click()")
        chrome.wait(f"{_text('#collection-body .v-points')} === '39'", "the data with the token")
    finally:
        gate.open.set()
        if chrome is not None:
            chrome.close()
        srv.stop()
        pipeline.close()
