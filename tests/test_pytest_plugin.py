"""qflume's pytest plugin: the example suite in docs/ runs green with it, in a pytest of its own.

The runs are subprocesses (a fresh interpreter loads the plugin through its entry point, as a
user's pytest does) on the tiny BERT of tiny_bert.py, so they take seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import qflume
from qflume.pipeline import IngestReport, StageStats
from qflume.pytest_plugin import NO_SERVER, summarize

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "example_suite"
#: Other installed plugins the runs do not need: loading langsmith's and hypothesis's takes
#: seconds, most of a run here (qflume's and pytest-benchmark's stay).
UNRELATED = ["-p", "no:langsmith_plugin", "-p", "no:hypothesispytest", "-p", "no:anyio"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the tiny BERT's built ONNX folder, the model cache it was built in)."""
    from tiny_bert import make_tiny_bert

    base = tmp_path_factory.mktemp("tiny")
    make_tiny_bert(base / "src")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QFLUME_CACHE_DIR", str(base / "cache"))
        embedder = qflume.Embedder(base / "src")
        folder = Path(embedder.model_path)
        embedder.close()
    return folder, base / "cache"


def run_pytest(
    args: list[str],
    cache: Path,
    *,
    cwd: Path = ROOT,
    drop: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m pytest args`` in ``cwd``, in this environment less ``drop`` plus ``env``."""
    run_env = {k: v for k, v in os.environ.items() if k not in drop}
    run_env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)  # what is tested is the entry point
    run_env.pop("PYTEST_ADDOPTS", None)
    run_env.pop("QFLUME_MODEL", None)
    run_env["QFLUME_CACHE_DIR"] = str(cache)
    run_env.update(env or {})
    run_env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ left in docs/
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *UNRELATED, "-rA", *args],
        cwd=cwd,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def outcomes(out: str) -> dict[str, int]:
    last = out.strip().splitlines()[-1]
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}


def test_the_entry_point_registers_the_plugin(pytestconfig: pytest.Config) -> None:
    found = [e for e in entry_points(group="pytest11") if e.name == "qflume"]
    assert [e.value for e in found] == ["qflume.pytest_plugin"]
    assert pytestconfig.pluginmanager.has_plugin("qflume")


def test_loading_the_plugin_imports_nothing_heavy() -> None:
    """Every pytest run in an environment with qflume loads the plugin: no model runtime, gRPC,
    Qdrant client or pipeline until a fixture asks for one."""
    heavy = ("onnxruntime", "grpc", "qdrant_client", "qdrant_edge", "qflume.pipeline", "tokenizers")
    code = f"import sys, qflume.pytest_plugin; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_example_suite_passes(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    folder, cache = tiny
    bench = tmp_path / "bench.json"
    done = run_pytest(
        [
            str(EXAMPLE),
            f"--qflume-model={folder}",
            f"--basetemp={tmp_path / 'basetemp'}",
            f"--benchmark-json={bench}",
        ],
        cache,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    counts = outcomes(done.stdout)
    real = bool(os.environ.get("QDRANT_URL") or os.environ.get("QDRANT_BIN"))
    assert counts == ({"passed": 11} if real else {"passed": 10, "skipped": 1}), out[-2000:]
    for name in (
        "test_grpc_faults.py::test_ingest_converges_through_two_unavailable_replies",
        "test_grpc_faults.py::test_a_run_that_fails_is_finished_by_the_next",
        "test_embedded_store.py::test_a_rerun_embeds_and_sends_nothing",
    ):
        assert f"PASSED docs/example_suite/{name}" in done.stdout
    if real:
        assert "PASSED docs/example_suite/test_real_server.py::" in done.stdout
        assert not left_on_server("test_round_trip_on_a_real_server_")  # dropped after the test

    # What the benchmark helper recorded, as pytest-benchmark saved it.
    saved = {b["name"]: b for b in json.loads(bench.read_text())["benchmarks"]}
    assert set(saved) == {
        "test_first_run_speed",
        "test_records_speed",
        "test_any_callable_returning_a_report",
    }
    first = saved["test_first_run_speed"]
    assert first["stats"]["rounds"] == 2
    info = first["extra_info"]
    assert info["rounds"] == 2
    assert info["chunks_embedded"] == info["chunks_total"] == info["points_upserted"] > 0
    assert info["tokens_embedded"] > info["chunks_embedded"]  # every chunk has several tokens
    assert info["chunks_per_s"] == pytest.approx(
        info["chunks_embedded"] / info["elapsed_s"], rel=0.01
    )
    assert info["tokens_per_s"] == pytest.approx(
        info["tokens_embedded"] / info["elapsed_s"], rel=0.01
    )
    assert set(info["stages"]) == {"plan", "embed", "write"}
    for stage in info["stages"].values():
        assert set(stage) == {"busy_s", "items", "items_per_s", "utilization"}
        assert 0 < stage["busy_s"] < info["elapsed_s"]
    # Warm-up rounds are left out of what is recorded.
    assert saved["test_records_speed"]["extra_info"]["rounds"] == 1
    assert saved["test_records_speed"]["extra_info"]["documents_seen"] == 50


def left_on_server(prefix: str) -> list[str]:
    """Collections named ``prefix...`` on the server at QDRANT_URL."""
    from qdrant_client import QdrantClient

    url = os.environ["QDRANT_URL"]
    client = QdrantClient(
        url=url,
        api_key=os.environ.get("QDRANT_API_KEY"),
        prefer_grpc=True,
        grpc_port=int(url.rsplit(":", 1)[1].rstrip("/")),
        check_compatibility=False,
    )
    try:
        names = [c.name for c in client.get_collections().collections]
    finally:
        client.close()
    return [n for n in names if n.startswith(prefix)]


BINARY_TEST = """
def test_started_from_the_binary(qflume_real_server, qflume_pipeline, tmp_path):
    process = qflume_real_server.process
    assert process is not None and process.pid and qflume_real_server.url == process.url
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("w1 w2 w3")
    with qflume_pipeline(server=qflume_real_server) as pipeline:
        assert pipeline.ingest([docs]).points_upserted == 1
        assert pipeline.status()["points"] == 1
"""


@pytest.mark.qdrant_server
@pytest.mark.skipif(not os.environ.get("QDRANT_BIN"), reason="no qdrant binary: set QDRANT_BIN")
def test_the_real_server_fixture_starts_qdrant_bin(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """Without QDRANT_URL, the fixture starts the binary once for the session and stops it."""
    (tmp_path / "test_binary.py").write_text(BINARY_TEST)
    done = run_pytest(
        ["test_binary.py", f"--qflume-model={tiny[0]}"],
        tiny[1],
        cwd=tmp_path,
        drop=("QDRANT_URL", "QDRANT_API_KEY"),
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert outcomes(done.stdout) == {"passed": 1}


def test_the_real_server_fixture_skips_naming_what_to_set(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    done = run_pytest(
        [str(EXAMPLE / "test_real_server.py"), f"--basetemp={tmp_path / 'basetemp'}"],
        tiny[1],
        drop=("QDRANT_URL", "QDRANT_BIN", "QDRANT_API_KEY"),
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert outcomes(done.stdout) == {"skipped": 1}
    assert f"SKIPPED [1] docs/example_suite/test_real_server.py:8: {NO_SERVER}" in done.stdout
    assert "QDRANT_URL" in NO_SERVER and "QDRANT_BIN" in NO_SERVER


MODEL_TEST = """
import os

def test_model(qflume_model):
    assert qflume_model == os.environ["EXPECTED_MODEL"]
"""


def test_the_model_comes_from_the_cli_then_the_env_then_the_ini(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, cache = tiny
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "test_model.py").write_text(MODEL_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nqflume_model = models/tiny\n")

    def run(expected: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_pytest(
            ["test_model.py", *args], cache, cwd=tmp_path, env={"EXPECTED_MODEL": expected, **env}
        )

    # The ini option, relative to the ini file.
    done = run(str((tmp_path / "models" / "tiny").resolve()))
    assert done.returncode == 0, done.stdout[-2000:]
    # $QFLUME_MODEL beats the ini option.
    done = run(str(folder), QFLUME_MODEL=str(folder))
    assert done.returncode == 0, done.stdout[-2000:]
    # --qflume-model beats both; a folder that is not there fails the test with one line naming
    # it and where it came from, without a traceback.
    done = run("", "--qflume-model=no/such/model", QFLUME_MODEL=str(folder))
    assert done.returncode == 1
    assert "qflume model no/such/model (--qflume-model) is not a folder" in done.stdout
    assert "Traceback" not in done.stdout and "_configured_model" not in done.stdout


MISUSE_TEST = """
import pytest

def test_a_target_that_returns_no_report(qflume_benchmark):
    with pytest.raises(TypeError, match="returned int, not an IngestReport"):
        qflume_benchmark(lambda: 42)

def test_server_and_store_together(qflume_pipeline, qflume_grpc_server, tmp_path):
    with pytest.raises(TypeError, match="give server, or store / url, not both"):
        qflume_pipeline(server=qflume_grpc_server, store=tmp_path)
"""


def test_misuse_is_named(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "test_misuse.py").write_text(MISUSE_TEST)
    done = run_pytest(["test_misuse.py"], tiny[1], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert outcomes(done.stdout) == {"passed": 2}
    # A test using qflume_benchmark is a benchmark to pytest-benchmark: --benchmark-only keeps it.
    done = run_pytest(["test_misuse.py", "--benchmark-only"], tiny[1], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert outcomes(done.stdout) == {"passed": 1, "skipped": 1}
    assert "PASSED test_misuse.py::test_a_target_that_returns_no_report" in done.stdout


def test_tokens_embedded_is_counted_on_real_runs(
    tiny: tuple[Path, Path], qflume_pipeline, tmp_path: Path
) -> None:
    """The helper's tokens/s rests on the report's tokens_embedded: a real run counts what the
    model saw, the same number a dry run counts with the tokenizer (it was 0 outside dry runs)."""
    folder, _ = tiny
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"{i}.txt").write_text(" ".join(f"w{(i * 7 + j) % 60}" for j in range(150)))
    embedder = qflume.Embedder(folder)
    try:
        with qflume_pipeline(embedder=embedder) as pipeline:
            planned = pipeline.ingest([docs], dry_run=True)
            done = pipeline.ingest([docs])
            again = pipeline.ingest([docs])
    finally:
        embedder.close()
    assert done.chunks_embedded == planned.chunks_embedded > 0
    assert done.tokens_embedded == planned.tokens_embedded > done.chunks_embedded
    assert again.tokens_embedded == again.chunks_embedded == 0


def test_the_embedders_token_count_is_per_thread(tiny: tuple[Path, Path]) -> None:
    """A Pipeline measures its own tokens even when another thread embeds on the same Embedder
    (the service's searches do), by the difference of a per-thread counter around its call."""
    import threading

    embedder = qflume.Embedder(tiny[0])
    try:
        texts = ["w1 w2 w3", "w4 w5"]
        expected = int(embedder.count_tokens(texts).sum())
        other: list[int] = []
        thread = threading.Thread(
            target=lambda: (embedder.embed(["w9"] * 50), other.append(embedder.tokens_embedded))
        )
        thread.start()
        before = embedder.tokens_embedded
        embedder.embed(texts)
        thread.join()
        assert embedder.tokens_embedded - before == expected
        assert other == [int(embedder.count_tokens(["w9"]).sum()) * 50]
    finally:
        embedder.close()


def report(chunks: int, tokens: int, elapsed: float, busy: dict[str, float]) -> IngestReport:
    r = IngestReport(chunks_embedded=chunks, tokens_embedded=tokens, elapsed_s=elapsed)
    r.stages = {k: StageStats(busy_s=v, items=chunks) for k, v in busy.items()}
    return r


def test_summarize_rates_over_the_rounds() -> None:
    info = summarize(
        [
            report(10, 100, 1.0, {"plan": 0.5, "embed": 0.25}),
            report(30, 300, 3.0, {"plan": 1.5, "embed": 0.75}),
        ]
    )
    assert info["rounds"] == 2
    assert (info["chunks_per_s"], info["tokens_per_s"]) == (10.0, 100.0)
    assert (info["chunks_embedded"], info["tokens_embedded"], info["elapsed_s"]) == (20, 200, 2.0)
    assert info["stages"]["plan"] == {
        "busy_s": 1.0,
        "items": 20,
        "items_per_s": 20.0,
        "utilization": 0.5,
    }
    assert info["stages"]["embed"]["items_per_s"] == 40.0
    assert summarize([report(3, 0, 0.0, {})])["chunks_per_s"] == 0.0  # no division by zero
    assert summarize([]) == {"rounds": 0}
