from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Lets tests import small helper modules that live beside them.
sys.path.insert(0, str(Path(__file__).parent))

#: One real Qdrant server for the whole run, started here when QDRANT_BIN names a qdrant binary
#: and QDRANT_URL names none (the test command sets QDRANT_BIN to ../shared/bin/qdrant when that
#: file exists). Tests that need a server skip with a one-line reason when there is neither.
_SERVER = None


def pytest_configure(config: pytest.Config) -> None:
    global _SERVER
    binary = os.environ.get("QDRANT_BIN")
    if binary and not os.environ.get("QDRANT_URL"):
        from qflume.testing import QdrantServer

        _SERVER = QdrantServer(binary).start()
        os.environ["QDRANT_URL"] = _SERVER.url


def pytest_unconfigure(config: pytest.Config) -> None:
    global _SERVER
    if _SERVER is not None:
        _SERVER.close()  # stopped by its pid, whatever the tests did
        os.environ.pop("QDRANT_URL", None)
        _SERVER = None


@pytest.fixture(scope="session")
def embedder() -> Iterator[Any]:
    """The default model (all-MiniLM-L6-v2, this CPU's build), loaded once for the whole run
    and shared by every test that embeds with it (none of them changes it)."""
    import qflume

    emb = qflume.Embedder()
    yield emb
    emb.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT of tiny_bert.py built once to an fp32 ONNX folder (model.onnx + tokenizer):
    the fast model of the end-to-end runs. Read only: a test that changes a model builds its own."""
    from tiny_bert import built_tiny_model

    return built_tiny_model(tmp_path_factory.mktemp("tiny-model"))


#: nodeid -> outcome of every test marked qdrant_server, listed by name at the end of the run.
_REAL_SERVER_TESTS: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "qdrant_server" not in report.keywords:
        return
    if report.when == "call" or report.outcome != "passed":
        outcome = "error" if report.failed and report.when != "call" else report.outcome
        _REAL_SERVER_TESTS.setdefault(report.nodeid, outcome)
        if outcome != "passed":  # a failed teardown after a passed call
            _REAL_SERVER_TESTS[report.nodeid] = outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REAL_SERVER_TESTS:
        terminalreporter.section("the tests against a real Qdrant server")
        for nodeid, outcome in _REAL_SERVER_TESTS.items():
            terminalreporter.write_line(f"{outcome.upper():8} {nodeid}")


def pytest_report_header(config: pytest.Config) -> str:
    if _SERVER is not None:
        return f"real Qdrant server: {_SERVER.version()} (pid {_SERVER.pid}) at {_SERVER.url}"
    if os.environ.get("QDRANT_URL"):
        return f"real Qdrant server: QDRANT_URL={os.environ['QDRANT_URL']}"
    return "real Qdrant server: none (set QDRANT_BIN or QDRANT_URL); its tests skip"
