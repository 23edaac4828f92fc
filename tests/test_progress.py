"""Progress wherever the output goes: lines on a non-TTY stderr, a bar on demand, the same events
for Python callers, and a callback that raises never harms the ingest.

Runs use the tiny BERT (tests/tiny_bert.py) and a corpus of its words, so an ingest lasts a few
seconds; the progress interval is cut to a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import qflume
from qflume.progress import Progress, ProgressEvent, resolve_interval, resolve_mode
from tiny_bert import tiny_corpus

LINE = re.compile(
    r"^qflume: (scanning, \d\d:\d\d elapsed"
    r"|[\d,]+/[\d,]+ docs  [\d,]+(/~?[\d,]+)? chunks  [\d,]+\.\d chunks/s  ETA (\d\d:\d\d|--:--))$"
)
FINAL = re.compile(
    r"^qflume: done in \d\d:\d\d: ([\d,]+)/([\d,]+) docs  ([\d,]+) chunks  .* chunks/s$"
)


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_corpus(tmp_path_factory.mktemp("corpus") / "docs", 120)


def _cli(
    *args: str, interval: str = "0.1", stdout: object = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    """The CLI with stderr to a pipe (not a TTY: what a CI log gets), decoded as is (text=True
    would turn the bar's \r into newlines)."""
    env = dict(os.environ, QFLUME_PROGRESS_INTERVAL=interval)
    res = subprocess.run(
        [sys.executable, "-m", "qflume", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        check=False,
    )
    out = res.stdout.decode() if isinstance(res.stdout, bytes) else ""
    return subprocess.CompletedProcess(res.args, res.returncode, out, res.stderr.decode())


def test_a_non_tty_run_prints_progress_lines_to_stderr(tmp_path: Path, model: Path, corpus) -> None:
    """The issue's case: stdout goes to a log file, stderr is no terminal. Lines come every
    interval, plain text (no \\r, no escapes), and a final line; stdout stays pure JSON."""
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        res = _cli(
            "ingest", str(corpus), "-c", "p", "--store", str(tmp_path / "s"),
            "--model", str(model), "--chunk-chars", "100", "--json",
            "--max-memory", "1",  # one batch per queue: planning stays ahead of the writes
            stdout=out,
        )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(log.read_text())  # one JSON object, nothing else
    # --max-memory 1 is also the memory alerts' budget: their lines (a check every 5 s, when
    # the run lasts that long) are not progress
    lines = [ln for ln in res.stderr.splitlines() if not ln.startswith("qflume: alert ")]
    assert "\r" not in res.stderr and "\x1b" not in res.stderr
    progress, final = lines[:-1], lines[-1]
    assert len(progress) >= 3, res.stderr
    for line in progress:
        assert LINE.match(line), line
    m = FINAL.match(final)
    assert m, final
    assert int(m[1]) == int(m[2]) == 120
    assert int(m[3].replace(",", "")) == report["points_upserted"] > 0
    # while running, the lines show work advancing with a rate and an ETA
    ingest = [ln for ln in progress if "docs" in ln]
    assert any("ETA --:--" not in ln and " 0.0 chunks/s" not in ln for ln in ingest)
    assert any("/~" in ln for ln in ingest), "no estimated chunk total while planning"


def test_interval_sets_the_cadence_and_none_silences(tmp_path: Path, model: Path, corpus) -> None:
    common = ["-c", "p", "--model", str(model), "--chunk-chars", "100"]
    slow = _cli("ingest", str(corpus), "--store", str(tmp_path / "a"), *common, interval="60")
    assert slow.returncode == 0, slow.stderr
    (only,) = slow.stderr.splitlines()  # the final line alone: no interval went by
    assert FINAL.match(only), only
    for flag in (["--progress", "none"], ["--no-progress"]):
        store = tmp_path / flag[-1]
        quiet = _cli("ingest", str(corpus), "--store", str(store), *common, *flag)
        assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    both = _cli("ingest", str(corpus), "--progress", "lines", "--no-progress", *common)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    bad = _cli("ingest", str(corpus), "--store", str(tmp_path / "b"), *common, interval="soon")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "qflume: error: $QFLUME_PROGRESS_INTERVAL='soon' is not a number of seconds (e.g. 5 or 0.5)"
    )


def test_bar_is_drawn_in_place_when_asked(tmp_path: Path, model: Path, corpus) -> None:
    res = _cli(
        "ingest", str(corpus), "-c", "p", "--store", str(tmp_path / "s"), "--model", str(model),
        "--chunk-chars", "100", "--progress", "bar",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.count("\r[") >= 2  # redrawn on one line
    assert "done in" in res.stderr.rsplit("\r", 1)[-1]


@pytest.fixture(scope="module")
def embedder(model: Path) -> qflume.Embedder:
    return qflume.Embedder(model)


def test_python_callers_get_the_same_events(tmp_path: Path, embedder, corpus) -> None:
    events: list[ProgressEvent] = []
    with qflume.Pipeline(
        "p", store=tmp_path / "s", embedder=embedder, chunk_chars=100, max_memory=1,
        progress="none", on_progress=events.append, progress_interval=0.05,
    ) as p:  # fmt: skip
        report = p.ingest(corpus)
    assert len(events) >= 3
    *running, final = events
    assert final.final and final.phase == "done" and not any(e.final for e in running)
    assert final.docs_done == final.docs_total == 120
    assert final.chunks_done == final.chunks_total == report.points_upserted > 0
    assert final.eta_s is None or final.eta_s == 0
    for a, b in itertools.pairwise(running):
        assert b.docs_done >= a.docs_done and b.chunks_done >= a.chunks_done
        assert b.elapsed_s >= a.elapsed_s
    # the total is extrapolated from the bytes planned: the corpus is uniform, so it is close
    estimated = [e for e in running if e.chunks_estimated]
    assert estimated
    for e in estimated:
        assert e.chunks_total is not None
        assert abs(e.chunks_total - final.chunks_done) <= 0.25 * final.chunks_done
    with pytest.raises(dataclasses.FrozenInstanceError):
        final.docs_done = 0  # type: ignore[misc]


def test_a_raising_callback_is_logged_dropped_and_harms_nothing(
    tmp_path: Path, embedder, corpus, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def bad(ev: ProgressEvent) -> None:
        calls.append(ev)
        raise ValueError("the user's bug")

    with caplog.at_level(logging.WARNING, logger="qflume.progress"):
        with qflume.Pipeline(
            "p", store=tmp_path / "bad", embedder=embedder, chunk_chars=100,
            on_progress=bad, progress_interval=0.02,
        ) as p:  # fmt: skip
            report = p.ingest(corpus)
            assert p.verify()["ok"]
            bad_points = p.sink.count()
    assert len(calls) == 1  # never called again, not even for the final event
    (rec,) = caplog.records
    assert "progress callback" in rec.getMessage() and rec.exc_info is not None
    with qflume.Pipeline(
        "p", store=tmp_path / "good", embedder=embedder, chunk_chars=100, progress=False
    ) as p:
        clean = p.ingest(corpus)
        assert p.sink.count() == bad_points
    assert report.points_upserted == clean.points_upserted == bad_points
    assert report.documents_new == clean.documents_new == 120


def test_final_event_says_stopped_or_failed(tmp_path: Path, embedder, corpus) -> None:
    events: list[ProgressEvent] = []
    holder: dict[str, qflume.Pipeline] = {}

    def stop_at_first(ev: ProgressEvent) -> None:
        events.append(ev)
        if not ev.final:
            holder["p"].stop()

    with qflume.Pipeline(
        "p", store=tmp_path / "s", embedder=embedder, chunk_chars=100,
        on_progress=stop_at_first, progress_interval=0.02,
    ) as p:  # fmt: skip
        holder["p"] = p
        report = p.ingest(corpus)
    assert report.interrupted and events[-1].final and events[-1].phase == "stopped"

    def records():
        yield {"id": "a", "text": "w1 w2 w3"}
        raise RuntimeError("the source broke")

    events.clear()
    with qflume.Pipeline(
        "r", store=tmp_path / "r", embedder=embedder, on_progress=events.append
    ) as p:
        with pytest.raises(RuntimeError, match="the source broke"):
            p.ingest_records(records())
    assert events[-1].final and events[-1].phase == "failed"
    assert events[-1].docs_total is None  # records: counted as read, no total known


def test_bad_options_are_refused_by_name(tmp_path: Path, embedder, monkeypatch) -> None:
    def pipe(**kw):
        return qflume.Pipeline("p", store=tmp_path / "s", embedder=embedder, **kw)

    with pytest.raises(qflume.InvalidInputError, match="progress must be one of auto, bar"):
        pipe(progress="loud")
    with pytest.raises(qflume.InvalidInputError, match="on_progress must be callable"):
        pipe(on_progress="print")
    for bad in (0, -1, float("nan"), float("inf"), "5"):
        with pytest.raises(qflume.InvalidInputError, match="progress_interval"):
            pipe(progress_interval=bad)
    monkeypatch.setenv("QFLUME_PROGRESS_INTERVAL", "-2")
    with pytest.raises(qflume.InvalidInputError, match=r"\$QFLUME_PROGRESS_INTERVAL"):
        resolve_interval(None)
    monkeypatch.setenv("QFLUME_PROGRESS_INTERVAL", "0.5")
    assert resolve_interval(None) == 0.5 and resolve_interval(2) == 2.0


def test_modes_and_lines() -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> int:
            return len(s)

        def flush(self) -> None:
            pass

    pipe = open(os.devnull, "w")
    try:
        assert resolve_mode("auto", Tty()) == "bar" and resolve_mode("auto", pipe) == "lines"
        assert resolve_mode(None, Tty()) == "bar" and resolve_mode(None, pipe) == "none"
        assert resolve_mode(True, pipe) == "bar" and resolve_mode(False, Tty()) == "none"
    finally:
        pipe.close()
    ev = ProgressEvent("ingest", 120, 900, 3400, 25000, True, 310.24, 70.0, 12.0)
    assert ev.line() == "qflume: 120/900 docs  3,400/~25,000 chunks  310.2 chunks/s  ETA 01:10"
    ev = dataclasses.replace(ev, docs_total=None, chunks_total=None, eta_s=None)
    assert ev.line() == "qflume: 120 docs  3,400 chunks  310.2 chunks/s  ETA --:--"
    ev = dataclasses.replace(ev, chunks_total=9000, chunks_estimated=False, eta_s=3725.0)
    assert ev.line().endswith("3,400/9,000 chunks  310.2 chunks/s  ETA 1:02:05")
    assert ProgressEvent("scan", 0, None, 0, None, False, 0.0, None, 65.0).line() == (
        "qflume: scanning, 01:05 elapsed"
    )


def test_a_broken_stderr_stops_the_lines_not_the_run() -> None:
    class Broken:
        def isatty(self) -> bool:
            return False

        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

    pr = Progress("lines", stream=Broken(), interval=0.01)  # type: ignore[arg-type]
    pr.add_documents(2, bytes=100)
    pr.add_chunks_planned(5, bytes=100)
    pr.advance(documents=2, chunks=5)
    ev = pr.close()
    assert pr.mode == "none" and ev.final and ev.docs_done == ev.docs_total == 2


def test_async_pipeline_callers_get_events_through_the_loop(tmp_path: Path, embedder, corpus):
    import asyncio

    async def main() -> list[ProgressEvent]:
        loop = asyncio.get_running_loop()
        got: list[ProgressEvent] = []

        def on_progress(ev: ProgressEvent) -> None:  # a worker thread: hand over to the loop
            loop.call_soon_threadsafe(got.append, ev)

        async with qflume.AsyncPipeline(
            "a", store=tmp_path / "s", embedder=embedder, chunk_chars=100,
            on_progress=on_progress, progress_interval=0.05,
        ) as ap:  # fmt: skip
            report = await ap.ingest([corpus])
        await asyncio.sleep(0)  # the last call_soon_threadsafe runs
        assert got[-1].final and got[-1].chunks_done == report.points_upserted
        return got

    events = asyncio.run(main())
    assert len(events) >= 2 and events[-1].phase == "done"
