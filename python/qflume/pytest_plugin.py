"""pytest plugin for suites that test code built on qflume (loaded through the ``pytest11`` entry
point whenever qflume is installed; ``-p no:qflume`` turns it off).

Fixtures, all prefixed ``qflume_`` (see docs/testing.md):

- ``qflume_grpc_server``: an in-process Qdrant gRPC server (:class:`qflume.testing.QdrantGrpcServer`,
  with ``fail_next``, ``set_latency``, ``drop_connections``, ``calls``), new for each test.
- ``qflume_real_server``: a real Qdrant server, from ``QDRANT_URL`` or started from ``QDRANT_BIN``
  once per session; tests using it skip, naming both variables, when neither is set.
- ``qflume_store``: an empty folder for an embedded (Qdrant Edge) store, per test.
- ``qflume_collection``: a collection name of its own for each test.
- ``qflume_model`` / ``qflume_embedder``: the model (``--qflume-model``, ``QFLUME_MODEL``, the
  ``qflume_model`` ini option, else qflume's default) and one Embedder on it per session.
- ``qflume_pipeline``: a factory of Pipelines on ``qflume_store`` (or on a server), closed after
  the test.
- ``qflume_benchmark``: pytest-benchmark's ``benchmark`` around an ingest; records chunks/s,
  tokens/s and per-stage times in ``benchmark.extra_info``.

Nothing heavy is imported until a fixture is used: suites that never ask for these fixtures pay
only for importing this module.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from qflume.pipeline import IngestReport, Pipeline
    from qflume.testing import QdrantGrpcServer, QdrantServer

__all__ = ["IngestBenchmark", "PipelineFactory", "RealServer"]

MODEL_ENV = "QFLUME_MODEL"
NO_SERVER = (
    "no real Qdrant server: set QDRANT_URL to a server's gRPC URL, or QDRANT_BIN to a qdrant "
    "binary to start"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qflume")
    group.addoption(
        "--qflume-model",
        dest="qflume_model",
        default=None,
        metavar="DIR",
        help=f"embedding model folder for the qflume_* fixtures (else ${MODEL_ENV}, else the "
        "qflume_model ini option, else qflume's default model)",
    )
    parser.addini(
        "qflume_model",
        "embedding model folder for the qflume_* fixtures, relative to the ini file "
        f"(--qflume-model and ${MODEL_ENV} take precedence)",
        default="",
    )


def _configured_model(config: pytest.Config) -> str | None:
    """The model folder the options name (None: qflume's default), checked to exist."""
    if option := config.getoption("qflume_model"):
        path, source = Path(option).expanduser(), "--qflume-model"
    elif env := os.environ.get(MODEL_ENV):
        path, source = Path(env).expanduser(), f"${MODEL_ENV}"
    elif ini := str(config.getini("qflume_model") or ""):
        # Relative to the ini file, as pytest's own path options are.
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        path, source = base / Path(ini).expanduser(), f"the qflume_model ini option ({ini!r})"
    else:
        return None
    if not path.is_dir():
        pytest.fail(f"qflume model {path} ({source}) is not a folder", pytrace=False)
    return str(path.resolve())


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class RealServer:
    """A real Qdrant server: ``url`` (gRPC, as ``Pipeline(url=...)`` takes it), ``api_key``
    (``QDRANT_API_KEY``), and ``process``: the :class:`qflume.testing.QdrantServer` the plugin
    started from ``QDRANT_BIN`` (kill, freeze, restart), or None for a server at ``QDRANT_URL``."""

    url: str
    api_key: str | None = None
    process: QdrantServer | None = None

    def drop_collection(self, name: str) -> None:
        """Delete collection ``name`` if it exists, with its versions ``name__vN`` and so its
        alias (qflume.versions; the server is shared by the whole session)."""
        import urllib.parse

        from qdrant_client import QdrantClient

        client = QdrantClient(
            url=self.url,
            api_key=self.api_key,
            prefer_grpc=True,
            grpc_port=urllib.parse.urlsplit(self.url).port or 6334,
            check_compatibility=False,  # the version check speaks REST
            timeout=30,
        )
        try:
            import re

            version = re.compile(re.escape(name) + r"__v[1-9][0-9]*")
            for c in client.get_collections().collections:
                if c.name == name or version.fullmatch(c.name):
                    client.delete_collection(c.name)
        finally:
            client.close()


@pytest.fixture()
def qflume_grpc_server(tmp_path: Path) -> Iterator[QdrantGrpcServer]:
    """An in-process Qdrant gRPC server on loopback (Qdrant Edge shards under the test's
    tmp_path), started for one test: its faults, latency and call counts start clean."""
    from qflume.testing import QdrantGrpcServer

    server = QdrantGrpcServer(tmp_path / "qflume-grpc-server").start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def qflume_real_server() -> Iterator[RealServer]:
    """A real Qdrant server for the session: ``QDRANT_URL`` (with ``QDRANT_API_KEY``) if set,
    else one started from the ``QDRANT_BIN`` binary on loopback and stopped at the end; tests
    using it skip when neither is set."""
    url = os.environ.get("QDRANT_URL")
    if url:
        yield RealServer(url, os.environ.get("QDRANT_API_KEY") or None)
        return
    binary = os.environ.get("QDRANT_BIN")
    if not binary:
        pytest.skip(NO_SERVER)
    from qflume.testing import QdrantServer

    try:
        process = QdrantServer(binary).start()
    except (OSError, RuntimeError) as e:
        pytest.fail(f"QDRANT_BIN={binary}: {e}", pytrace=False)
    try:
        yield RealServer(process.url, None, process)
    finally:
        process.close()


# --------------------------------------------------------------------------- stores and pipelines


@pytest.fixture()
def qflume_store(tmp_path: Path) -> Path:
    """An empty folder for an embedded store (``Pipeline(store=...)``), removed with tmp_path."""
    path = tmp_path / "qflume-store"
    path.mkdir()
    return path


@pytest.fixture()
def qflume_collection(request: pytest.FixtureRequest) -> str:
    """A collection name for this test alone (its name and a random suffix), so tests sharing
    a real server never see each other's points."""
    stem = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name).strip("_")[:40] or "test"
    return f"{stem}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def qflume_model(pytestconfig: pytest.Config) -> str | None:
    """The embedding model folder the fixtures use; None means qflume's default model."""
    return _configured_model(pytestconfig)


@pytest.fixture(scope="session")
def qflume_embedder(qflume_model: str | None) -> Iterator[Any]:
    """One :class:`qflume.Embedder` on ``qflume_model`` for the whole session (loading a model
    costs far more than most tests)."""
    from qflume.embed import Embedder
    from qflume.exceptions import QflumeError

    try:
        embedder = Embedder(qflume_model)
    except QflumeError as e:
        pytest.fail(f"qflume_embedder: {e}", pytrace=False)
    try:
        yield embedder
    finally:
        embedder.close()


class PipelineFactory:
    """``qflume_pipeline(collection=None, *, server=None, **options)`` -> a
    :class:`qflume.Pipeline`.

    Defaults: the test's ``qflume_collection``, the ``qflume_store`` folder, the session's
    embedder. ``server``: anything with a ``url`` (``qflume_grpc_server``,
    ``qflume_real_server``, a ``QdrantServer``) to write to it instead; its state then lives
    under the test's tmp_path, and collections made on ``qflume_real_server`` are dropped after
    the test. Other keyword arguments go to ``Pipeline``. Every Pipeline made is closed after
    the test; an embedded store admits one open Pipeline at a time, so close one (``with``)
    before opening the next on the same store.
    """

    def __init__(
        self,
        tmp_path: Path,
        store: Path,
        collection: str,
        model: Callable[[], tuple[str | None, Any]],
    ) -> None:
        self._tmp = tmp_path
        self.store = store
        self.collection = collection
        self._model = model
        self._made: list[Pipeline] = []
        self._drops: list[tuple[RealServer, str]] = []

    def __call__(
        self, collection: str | None = None, *, server: Any = None, **options: Any
    ) -> Pipeline:
        from qflume.exceptions import InvalidTypeError
        from qflume.pipeline import Pipeline

        name = collection or self.collection
        if server is not None:
            if "store" in options or "url" in options:
                raise InvalidTypeError("qflume_pipeline: give server, or store / url, not both")
            options["url"] = str(server.url)
            options.setdefault("api_key", getattr(server, "api_key", None))
        if options.get("url") is not None:
            options.setdefault("state_dir", self._tmp / "qflume-state")
        else:
            options.setdefault("store", self.store)
        if "model" not in options and "embedder" not in options:
            # As Pipeline(model=qflume_model) would be, with the model loaded once per session.
            options["model"], options["embedder"] = self._model()
        pipeline = Pipeline(name, **options)
        self._made.append(pipeline)
        if isinstance(server, RealServer):
            self._drops.append((server, name))
        return pipeline

    def close(self) -> None:
        for pipeline in reversed(self._made):
            pipeline.close()
        self._made.clear()
        for server, name in dict.fromkeys(self._drops):
            server.drop_collection(name)
        self._drops.clear()


@pytest.fixture()
def qflume_pipeline(
    request: pytest.FixtureRequest, tmp_path: Path, qflume_store: Path, qflume_collection: str
) -> Iterator[PipelineFactory]:
    """A factory of Pipelines (see :class:`PipelineFactory`), closed after the test."""

    # Asked for on first use: a Pipeline given its own model or embedder never loads this one.
    def model() -> tuple[str | None, Any]:
        return request.getfixturevalue("qflume_model"), request.getfixturevalue("qflume_embedder")

    factory = PipelineFactory(tmp_path, qflume_store, qflume_collection, model)
    try:
        yield factory
    finally:
        factory.close()


# --------------------------------------------------------------------------- benchmarks


class IngestBenchmark:
    """pytest-benchmark's ``benchmark`` around runs that return an IngestReport.

    ``qflume_benchmark.ingest(paths, rounds=1, warmup_rounds=0, **pipeline_options)`` times
    ``Pipeline.ingest`` into a new, empty store (or collection, with ``server=``) each round,
    so every round is a first run; opening and closing the Pipeline is not timed.
    ``qflume_benchmark.ingest_records(records, ...)`` does the same for records, and
    ``qflume_benchmark(target, *args, setup=None, teardown=None, rounds=1, warmup_rounds=0,
    **kwargs)`` times any ``target`` returning an IngestReport (``benchmark.pedantic``).

    Each returns the last round's report and records in ``benchmark.extra_info``, over the
    measured rounds (warm-up rounds left out; one round under ``--benchmark-disable``):
    ``chunks_per_s`` and ``tokens_per_s`` (chunks and tokens embedded by the model, per second
    of the reports' own ``elapsed_s``), ``elapsed_s``, ``chunks_embedded``, ``tokens_embedded``,
    ``chunks_total``, ``cache_hits``, ``points_upserted``, ``documents_seen`` (means per round),
    ``rounds``, and ``stages``: per stage (plan, embed, write) ``busy_s`` per round, ``items``
    per round, ``items_per_s`` and ``utilization``, as ``qflume ingest --json`` prints them.
    """

    COUNTS = (
        "chunks_embedded",
        "tokens_embedded",
        "chunks_total",
        "cache_hits",
        "points_upserted",
        "documents_seen",
    )

    def __init__(self, benchmark: Any, pipelines: PipelineFactory, tmp_path: Path) -> None:
        self.benchmark = benchmark
        self._pipelines = pipelines
        self._tmp = tmp_path
        self._runs = 0

    @property
    def extra_info(self) -> dict[str, Any]:
        return dict(self.benchmark.extra_info)

    def __call__(
        self,
        target: Callable[..., IngestReport],
        *args: Any,
        setup: Callable[[], Any] | None = None,
        teardown: Callable[..., Any] | None = None,
        rounds: int = 1,
        warmup_rounds: int = 0,
        **kwargs: Any,
    ) -> IngestReport:
        from qflume.exceptions import InvalidTypeError
        from qflume.pipeline import IngestReport

        if not callable(target):
            raise InvalidTypeError(f"qflume_benchmark: target {target!r} is not callable")
        reports: list[IngestReport] = []

        def run(*a: Any, **kw: Any) -> IngestReport:
            report = target(*a, **kw)
            if not isinstance(report, IngestReport):
                raise InvalidTypeError(
                    f"qflume_benchmark: {getattr(target, '__name__', target)!r} returned "
                    f"{type(report).__name__}, not an IngestReport"
                )
            reports.append(report)
            return report

        result = self.benchmark.pedantic(
            run,
            args=args,
            kwargs=kwargs,
            setup=setup,
            teardown=teardown,
            rounds=rounds,
            warmup_rounds=warmup_rounds,
        )
        measured = reports if self.benchmark.disabled else reports[warmup_rounds:]
        self.benchmark.extra_info.update(summarize(measured))
        return result  # type: ignore[no-any-return]

    def ingest(
        self,
        paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        rounds: int = 1,
        warmup_rounds: int = 0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        **options: Any,
    ) -> IngestReport:
        """Time ``Pipeline(**options).ingest(paths)``, each round on a new, empty target."""
        return self._rounds(
            lambda p: p.ingest(paths, include=include, exclude=exclude),
            rounds,
            warmup_rounds,
            options,
        )

    def ingest_records(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        rounds: int = 1,
        warmup_rounds: int = 0,
        **options: Any,
    ) -> IngestReport:
        """Time ``Pipeline(**options).ingest_records(records)``, each round on a new target."""
        kept = list(records)  # every round ingests them all
        return self._rounds(lambda p: p.ingest_records(kept), rounds, warmup_rounds, options)

    def _rounds(
        self,
        body: Callable[[Pipeline], IngestReport],
        rounds: int,
        warmup_rounds: int,
        options: Mapping[str, Any],
    ) -> IngestReport:
        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            self._runs += 1
            opts = dict(options)
            if opts.get("server") is None and opts.get("url") is None:
                store = self._tmp / f"qflume-bench-{self._runs}"
                store.mkdir()
                opts.setdefault("store", store)
            else:
                opts.setdefault("state_dir", self._tmp / f"qflume-bench-{self._runs}")
            base = opts.pop("collection", None) or self._pipelines.collection
            return (self._pipelines(f"{base}_{self._runs}", **opts),), {}

        def teardown(pipeline: Pipeline) -> None:
            pipeline.close()

        return self(
            body, setup=setup, teardown=teardown, rounds=rounds, warmup_rounds=warmup_rounds
        )


def summarize(reports: Sequence[IngestReport]) -> dict[str, Any]:
    """The ``extra_info`` of :class:`IngestBenchmark` for the measured ``reports``."""
    n = len(reports)
    if n == 0:
        return {"rounds": 0}
    elapsed = sum(r.elapsed_s for r in reports)

    def rate(total: float, seconds: float) -> float:
        return round(total / seconds, 2) if seconds > 0 else 0.0

    def mean(total: float) -> float | int:
        value = total / n
        return int(value) if value == int(value) else round(value, 3)

    info: dict[str, Any] = {
        "rounds": n,
        "chunks_per_s": rate(sum(r.chunks_embedded for r in reports), elapsed),
        "tokens_per_s": rate(sum(r.tokens_embedded for r in reports), elapsed),
        "elapsed_s": round(elapsed / n, 4),
    }
    for key in IngestBenchmark.COUNTS:
        info[key] = mean(sum(getattr(r, key) for r in reports))
    stages: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(s for r in reports for s in r.stages):
        busy = sum(r.stages[name].busy_s for r in reports if name in r.stages)
        items = sum(r.stages[name].items for r in reports if name in r.stages)
        stages[name] = {
            "busy_s": round(busy / n, 4),
            "items": mean(items),
            "items_per_s": rate(items, busy),
            "utilization": round(busy / elapsed, 3) if elapsed > 0 else 0.0,
        }
    info["stages"] = stages
    return info


@pytest.fixture()
def qflume_benchmark(
    benchmark: Any, qflume_pipeline: PipelineFactory, tmp_path: Path
) -> IngestBenchmark:
    """pytest-benchmark's ``benchmark`` around ingests (see :class:`IngestBenchmark`)."""
    # ``benchmark`` is a parameter, not looked up at run time: pytest-benchmark picks the tests
    # that use it (``--benchmark-only``, ``--benchmark-skip``) by their fixture names.
    return IngestBenchmark(benchmark, qflume_pipeline, tmp_path)
