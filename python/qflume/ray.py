"""qflume on Ray: the same incremental, exactly-once ingest, spread over a Ray cluster.

    driver  scan -> hash -> diff against the state (SQLite, one writer)   -> units of documents
    tasks   read + chunk + hash + ids (the Rust core, GIL released)         `ChunkUnits`
    actors  dense (and sparse) vectors, the model loaded once per actor     `EmbedUnits`
    tasks   Rust-packed gRPC upserts, then deletes and payload updates      `write_units`
    driver  commit what the server acknowledged                             `acknowledged`

The stages are the local pipeline's own (qflume.stages: `plan_files` / `plan_records`,
`group_planned`, `chunk_docs` with its Rust diff, `send_slice`): only the runner differs. The runner is Ray core, one loop on the driver: each unit is chunked
by a task, its chunk hashes are written ahead in the state by the driver (what may land in the
collection, as the local write stage does before sending), then it is embedded by an actor of a
pool that lives for the whole run and written by a task (chained through the object store), and
committed on the driver as soon as the server acknowledged it. Units of at most two waves of
about ``wave_chunks`` chunks are in flight. A task retried or an actor restarted sends the same
deterministic point ids again; a driver killed at any moment leaves a state that the next run
repairs (pending hashes it deletes or sends again).

For pipelines a user builds with Ray Data, the same stages are `map_batches` callables
(`ChunkUnits`, `EmbedUnits`) and a `Datasink` (`QflumeDatasink`, whose write is `write_units` and
whose `on_write_complete` hands `acknowledged` results to a commit).

A unit is a group of whole documents of about ``batch_chunks`` chunks, pickled: the same groups
the local pipeline embeds together, so the vectors are the same bits. Only a Qdrant server
(``url``) can be written from many nodes: the embedded store is one process's files, so
``store`` is refused.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    # Only Ray core here: every worker process imports this module to run the stages, and
    # ray.data would cost each one ~1.5 s and ~110 MiB. QflumeDatasink (a ray.data class) lives
    # in qflume._ray_datasink, imported on first use.
    import ray
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "qflume.ray needs Ray Data: pip install 'qflume[ray]' (or 'ray[data]')"
    ) from e

from qflume.exceptions import InvalidInputError, QflumeError, QflumeIOError
from qflume.pipeline import Pipeline
from qflume.report import IngestReport, record
from qflume.stages.batch import Batch, Doc
from qflume.stages.chunk import Chunking, Unit, chunk_docs, group_planned, make_chunker
from qflume.stages.context import Run
from qflume.stages.plan import plan_files, plan_records
from qflume.stages.read import read_ahead, take_read
from qflume.stages.write import ensure_collection, send_slice
from qflume.state import DocUpdate

if TYPE_CHECKING:
    from qflume._ray_datasink import QflumeDatasink

__all__ = [
    "ChunkSettings",
    "ChunkUnits",
    "EmbedUnits",
    "QflumeDatasink",
    "SinkSettings",
    "acknowledged",
    "ingest",
    "plan_rows",
    "run",
    "write_ahead",
    "write_units",
]

#: Chunks per wave by default: what is chunked, written ahead, embedded and committed together.
DEFAULT_WAVE_CHUNKS = 65536

STORE_REFUSED = (
    "the Ray engine writes from many workers, and the embedded store (store=, --store) is one "
    "process's files: give url= / --url (a Qdrant server), or use the local engine"
)


# ---------------------------------------------------------------------------------------------
# Chunk + hash + ids: CPU tasks


@dataclass(frozen=True)
class ChunkSettings:
    """What a chunk task rebuilds its Chunker from (plain data, sent to every task)."""

    chunk_chars: int | None
    chunk_tokens: int | None
    overlap: int
    tokenizer: str | None  # tokenizer.json, at the same path on every node
    fingerprint: str
    reader_fingerprint: str
    batch_chunks: int

    @classmethod
    def of(cls, pipe: Pipeline) -> ChunkSettings:
        c = pipe.config
        tok = None if c.chunk_tokens is None else str(pipe.model_folder() / "tokenizer.json")
        return cls(
            c.chunk_chars, c.chunk_tokens, c.overlap, tok, pipe.fingerprint(),
            pipe.reader_fingerprint(), c.batch_chunks,
        )  # fmt: skip

    def chunking(self) -> Chunking:
        """The chunk stage's settings, with the Chunker built here (in the task)."""
        chunker = make_chunker(self.chunk_chars, self.chunk_tokens, self.overlap, self.tokenizer)
        return Chunking(chunker, self.fingerprint, self.reader_fingerprint, self.batch_chunks)


#: A worker process's chunk stages by settings: a task (or a map_batches task, which gets its
#: callable unpickled anew) reuses the Chunker, and its tokenizer, of the task before.
_STAGES: dict[ChunkSettings, Chunking] = {}


def _chunk_stage(settings: ChunkSettings) -> Chunking:
    stage = _STAGES.get(settings)
    if stage is None:
        if len(_STAGES) >= 4:
            _STAGES.clear()
        stage = _STAGES[settings] = settings.chunking()
    return stage


def _objects(values: Iterable[Any]) -> np.ndarray:
    out = np.empty(len(values := list(values)), object)
    out[:] = values
    return out


class ChunkUnits:
    """`map_batches` callable (a task): rows {"unit", "docs": pickled ([Doc], deleted)} ->
    {"unit", "data": pickled [Batch slices], "ahead": pickled {key: (root, hashes)},
    "report": pickled counts}. Reads, chunks (Rust), hashes, ids, and diffs each document
    against the state row it carries."""

    def __init__(self, settings: ChunkSettings) -> None:
        self.settings = settings
        self._stage: Chunking | None = None

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if self._stage is None:
            self._stage = _chunk_stage(self.settings)
        data, ahead, reports = [], [], []
        for blob in batch["docs"]:
            docs, deleted = pickle.loads(blob)
            report = IngestReport()
            chunked = chunk_docs(self._stage, docs, Run(report))
            chunked.deleted = deleted
            ahead.append(
                pickle.dumps(
                    {
                        p.doc.key: (p.doc.root, p.upsert_hashes)
                        for p in chunked.plans
                        if p.upsert_hashes
                    }
                )
            )
            for p in chunked.plans:  # what the write needs of a document: its metadata
                p.doc.text, p.doc.prev, p.doc.structure, p.doc.reader = None, None, None, None
            slices = list(chunked.slices(self.settings.batch_chunks))
            data.append(pickle.dumps(slices, protocol=5))
            reports.append(
                pickle.dumps(
                    {
                        "chunks_total": report.chunks_total,
                        "texts": len(chunked.texts),
                        "bytes": sum(p.doc.size for p in chunked.plans),
                        "documents_skipped": report.documents_skipped,
                        "skipped": report.skipped,
                    }
                )
            )
        return {
            "unit": np.asarray(batch["unit"]),
            "data": _objects(data),
            "ahead": _objects(ahead),
            "report": _objects(reports),
        }


# ---------------------------------------------------------------------------------------------
# Embed: an actor pool


class EmbedUnits:
    """`map_batches` callable class (an actor, the model loaded once): fills each slice of each
    unit with its dense vectors (and sparse ones), the same calls the local embed stage makes."""

    def __init__(
        self, model: str | None, sparse: str = "none", sparse_model: str | None = None
    ) -> None:
        from qflume.embed import Embedder

        self.embedder = Embedder(model)
        self.sparse_kind = sparse
        self.sparse_model: Any = None
        if sparse == "bm25":
            from qflume.sparse import Bm25

            self.sparse_model = Bm25()
        elif sparse == "splade":
            from qflume.sparse import Splade

            self.sparse_model = Splade(sparse_model)  # type: ignore[arg-type]

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out, stats = [], []
        for blob in batch["data"]:
            data, st = self.embed_unit(blob)
            out.append(data)
            stats.append(st)
        return {
            "unit": np.asarray(batch["unit"]),
            "data": _objects(out),
            "embedded": _objects(stats),
        }

    def embed_unit(self, blob: bytes) -> tuple[bytes, bytes]:
        """One unit (a pickled list of slices) -> (the same, embedded; pickled counts)."""
        emb = self.embedder
        slices: list[Batch] = pickle.loads(blob)
        t = time.perf_counter()
        n = tokens = 0
        for s in slices:
            if not s.texts:
                continue
            before = int(getattr(emb, "tokens_embedded", 0))
            s.dense = emb.embed(s.texts)
            tokens += int(getattr(emb, "tokens_embedded", 0)) - before
            n += len(s.texts)
            if self.sparse_model is not None:
                s.sparse = {self.sparse_kind: self.sparse_model.embed(s.texts)}
        stats = {"chunks": n, "tokens": tokens, "s": time.perf_counter() - t}
        return pickle.dumps(slices, protocol=5), pickle.dumps(stats)


# ---------------------------------------------------------------------------------------------
# Write: a Datasink on the workers, commit on the driver


@dataclass(frozen=True)
class SinkSettings:
    """Where and how a write task sends (plain data, sent to every write task)."""

    url: str
    collection: str
    api_key: str | None = None
    wait: bool = False
    options: tuple[tuple[str, Any], ...] = ()


#: The worker process's open sink, kept from one write to the next (its channel stays
#: connected); `write_units` flushes it before returning, so nothing is left in flight.
_SINKS: dict[SinkSettings, Any] = {}


def write_units(
    settings: SinkSettings, units: Iterable[tuple[bytes, bytes | None]]
) -> dict[str, Any]:
    """Send units ((pickled embedded slices, pickled embed counts or None)) to the server over
    gRPC (Rust-packed upserts, `qflume.sinks.GrpcSink`), each slice exactly as the local write
    stage sends it. Returns the document updates and deleted keys only after the server
    acknowledged all it was sent: what `acknowledged` hands to the commit on the driver."""
    from qflume.sinks.grpc import GrpcSink

    updates: list[DocUpdate] = []
    deleted: list[str] = []
    counts = {
        "points_upserted": 0,
        "points_deleted": 0,
        "payload_updates": 0,
        "chunks_embedded": 0,
        "tokens_embedded": 0,
    }
    embed_s = 0.0
    t = time.perf_counter()
    sink = _SINKS.pop(settings, None)
    if sink is None:
        sink = GrpcSink(
            settings.url,
            settings.collection,
            api_key=settings.api_key,
            wait=settings.wait,
            **dict(settings.options),
        )
    retried = sink.retried
    try:
        for blob, st in units:
            if st is not None:
                e = pickle.loads(st)
                counts["chunks_embedded"] += e["chunks"]
                counts["tokens_embedded"] += e["tokens"]
                embed_s += e["s"]
            for s in pickle.loads(blob):
                n, lost, changed = send_slice(sink, s)
                counts["points_upserted"] += n
                counts["points_deleted"] += lost
                counts["payload_updates"] += changed
                if s.final:
                    updates.extend(p.update for p in s.plans if p.update is not None)
                    deleted.extend(k for k, _ in s.deleted)
        sink.flush()  # everything sent is acknowledged: only now may it be committed
        counts["retried"] = sink.retried - retried
    except BaseException:
        sink.close()  # a sink that failed is not reused
        raise
    for other in _SINKS.values():  # one open channel per worker process: the last target's
        with contextlib.suppress(QflumeError):
            other.close()
    _SINKS.clear()
    _SINKS[settings] = sink
    return {
        "updates": updates,
        "deleted": deleted,
        "counts": counts,
        "write_s": time.perf_counter() - t,
        "embed_s": embed_s,
    }


def acknowledged(result: Mapping[str, Any]) -> tuple[list[DocUpdate], list[str], dict[str, Any]]:
    """A `write_units` result as the commit takes it: (updates, deleted keys, counts)."""
    counts = {**result["counts"], "write_s": result["write_s"], "embed_s": result["embed_s"]}
    return result["updates"], result["deleted"], counts


def __getattr__(name: str) -> Any:
    if name == "QflumeDatasink":  # a ray.data class: imported only by who uses it
        from qflume._ray_datasink import QflumeDatasink

        return QflumeDatasink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# The runner (the driver)


def _units(pipe: Pipeline, run: Run, items: Iterator[Any]) -> Iterator[Unit]:
    """The planned documents grouped as the local pipeline groups them into batches (about
    batch_chunks chunks of text each); a file it would stream is a unit of its own."""
    c = pipe.config
    for u in group_planned(items, run, text_chars=c.batch_text_chars, stream_bytes=c.stream_bytes):
        d = u.alone
        if d is None:
            yield u
            continue
        if d.pages_total:  # a long PDF: the local pipeline streams it; here, read whole
            d = take_read(d, run.readers_pool().read(d.reader, d.path, 1 << 30), run)
            if d is None:
                continue
        yield Unit(docs=[d], chars=u.chars)


def _waves(units: Iterator[Unit], chars_per_wave: int) -> Iterator[list[Unit]]:
    wave: list[Unit] = []
    chars = 0
    for u in units:
        wave.append(u)
        chars += u.chars
        if chars >= chars_per_wave:
            yield wave
            wave, chars = [], 0
    if wave:
        yield wave


def _ship(d: Doc) -> Doc:
    """A document as a task needs it: a reader's document carries its text (read on the
    driver), and the reader itself stays here (only whether there was one matters)."""
    if d.reader is not None:
        d.reader = "read"
    return d


def run(
    pipe: Pipeline,
    source: Any,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    delete_missing: bool | None = None,
    dry_run: bool = False,
    concurrency: int | tuple[int, int] | None = None,
    num_gpus: float | None = None,
    wave_chunks: int = DEFAULT_WAVE_CHUNKS,
    address: str | None = None,
) -> IngestReport:
    """Ingest ``source`` (paths every node sees, or a `ray.data.Dataset` / iterable of
    {"id", "text", "metadata"} records) with ``pipe``'s settings, state and target, on Ray.

    ``concurrency``: embedding actors, ``(min, max)`` or a fixed count (default: 1 to the
    cluster's GPUs, or CPUs / 2). ``num_gpus`` per actor (default 1 when the cluster has GPUs).
    """
    if pipe.url is None:
        raise InvalidInputError(STORE_REFUSED)
    if isinstance(wave_chunks, bool) or not isinstance(wave_chunks, int) or wave_chunks < 1:
        raise InvalidInputError(f"wave_chunks must be a positive int, got {wave_chunks!r}")
    if isinstance(concurrency, list):
        concurrency = tuple(concurrency)
    if concurrency is not None:
        _pool(concurrency)  # a bad one is refused before any work
    records = not isinstance(source, (str, os.PathLike, list, tuple))
    if dry_run:  # the plan is the local pipeline's own
        if records:
            return pipe.ingest_records(
                _records(source), delete_missing=bool(delete_missing), dry_run=True
            )
        return pipe.ingest(source, include=include, exclude=exclude, dry_run=True)
    if not records:
        roots = _roots(source)
    _connect(address)
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    if num_gpus is None:
        num_gpus = 1.0 if gpus >= 1 else 0.0
    if concurrency is None:
        most = int(gpus // num_gpus) if num_gpus else max(1, int(resources.get("CPU", 1)) // 2)
        concurrency = (1, max(1, most))

    t0 = time.perf_counter()
    run = pipe.new_run()
    report = run.report
    if records:
        planner = plan_records(pipe, run, _records(source), bool(delete_missing))
    else:
        keep = True if delete_missing is None else delete_missing
        planner = plan_files(pipe, run, roots, include, exclude, keep)
    settings = ChunkSettings.of(pipe)
    c = pipe.config
    chars_per_chunk = c.chunk_chars or 4 * (c.chunk_tokens or 256)
    outcome = "failed"
    try:
        items = read_ahead(planner, run, c.stream_bytes)
        waves = _waves(_units(pipe, run, items), wave_chunks * chars_per_chunk)
        _run_waves(pipe, run, waves, settings, concurrency, num_gpus)
        outcome = "done"
    finally:
        run.close_readers()
        run.progress.close(outcome)
        report.elapsed_s = time.perf_counter() - t0
    pipe.state.set_meta("last_run", report.as_dict())
    return report


def plan_rows(
    pipe: Pipeline,
    source: Any,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    delete_missing: bool | None = None,
) -> tuple[list[dict[str, Any]], Run]:
    """For a Ray Data pipeline of one's own: the driver's plan of ``source`` (paths, or records)
    as the rows `ChunkUnits` takes, ``{"unit": i, "docs": <pickled documents and deletions>}``,
    one per unit (about ``batch_chunks`` chunks), and the run whose report counts the plan.
    Then: ``map_batches(ChunkUnits(ChunkSettings.of(pipe)))``, materialize, `write_ahead`,
    ``map_batches(EmbedUnits, ...)``, ``write_datasink(QflumeDatasink(..., on_commit=...))``."""
    if isinstance(source, (str, os.PathLike, list, tuple)):
        roots = _roots(source)
        run = pipe.new_run()
        keep = True if delete_missing is None else delete_missing
        planned = plan_files(pipe, run, roots, include, exclude, keep)
    else:
        run = pipe.new_run()
        planned = plan_records(pipe, run, _records(source), bool(delete_missing))
    try:
        units = _units(pipe, run, read_ahead(planned, run, pipe.config.stream_bytes))
        rows = [
            {"unit": i, "docs": pickle.dumps(([_ship(d) for d in u.docs], u.deleted), protocol=5)}
            for i, u in enumerate(units)
        ]
    finally:
        run.close_readers()
    return rows, run


def write_ahead(pipe: Pipeline, chunked: Any) -> None:
    """Record in the state, before anything is sent, the chunks `ChunkUnits` chose to send
    (its "ahead" column; ``chunked``: its materialized dataset): a run killed after this is
    repaired by the next one, as the local write stage guarantees."""
    for row in chunked.select_columns(["ahead"]).iter_rows():
        pipe.state.write_ahead(pickle.loads(row["ahead"]))


def _roots(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The absolute roots of a path or paths to ingest; one that does not exist is refused."""
    paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    roots = [str(Path(p).resolve()) for p in paths]
    for r in roots:
        if not os.path.exists(r):
            raise QflumeIOError(2, f"{r}: no such file or folder to ingest")
    return roots


def _records(source: Any) -> Iterator[Mapping[str, Any]]:
    data = sys.modules.get("ray.data")  # a Dataset's maker imported it
    if data is not None and isinstance(source, data.Dataset):
        return iter(source.iter_rows())
    return iter(source)


def _connect(address: str | None) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address, log_to_driver=False, include_dashboard=False if address is None else None
    )


@ray.remote(num_returns=2)
def _chunk_task(settings: ChunkSettings, unit: bytes) -> tuple[tuple[bytes, bytes, float], bytes]:
    """`ChunkUnits` on one unit: (what the driver takes: ahead, report, seconds), the data
    (which stays in the object store for the embedding actor)."""
    t = time.perf_counter()
    out = ChunkUnits(settings)({"unit": [0], "docs": [unit]})
    return (out["ahead"][0], out["report"][0], time.perf_counter() - t), out["data"][0]


@ray.remote
def _write_task(settings: SinkSettings, data: bytes, stats: bytes | None) -> dict[str, Any]:
    """`write_units` on one unit, in a worker: the result once the server acknowledged it."""
    return write_units(settings, [(data, stats)])


class _EmbedUnitsActor:
    """`EmbedUnits` as an actor of the runner's pool. A model that cannot load fails each call
    with its error (a QflumeError the driver raises as is) instead of killing the actor, which
    Ray would only report as a lost actor."""

    def __init__(self, model: str | None, sparse: str, sparse_model: str | None) -> None:
        self.error: QflumeError | None = None
        try:
            self.units: EmbedUnits | None = EmbedUnits(model, sparse, sparse_model)
        except QflumeError as e:
            self.units, self.error = None, e

    @ray.method(num_returns=2)
    def embed(self, blob: bytes) -> tuple[bytes, bytes]:
        if self.units is None:
            raise self.error  # type: ignore[misc]
        return self.units.embed_unit(blob)


class _Actors:
    """The embedding actors: ``lo`` started with the first document to chunk (their process
    start and model load overlap the driver's planning and the chunk tasks), more up to ``hi``
    while units wait for them and the cluster has room (one CPU always left to the tasks). They
    live for the whole run, across waves, and are restarted by Ray if they die (their calls are
    retried: a unit's vectors and point ids are the same)."""

    def __init__(self, args: Mapping[str, Any], lo: int, hi: int, num_gpus: float) -> None:
        self.total_cpus = cpus = float(ray.cluster_resources().get("CPU", 0))
        self.cpus = 1.0 if cpus >= lo + 1 else 0.0  # never the CPU the tasks need
        self.gpus = num_gpus
        self.args, self.lo, self.hi = dict(args), lo, hi
        self.handles: list[Any] = []
        self.load: list[int] = []
        self.ready: dict[Any, int] = {}  # an actor's ready ref -> its index, until it is ready
        self.started: list[bool] = []
        self._checked = 0.0

    def _add(self) -> None:
        cls = ray.remote(_EmbedUnitsActor).options(
            num_cpus=self.cpus,
            num_gpus=self.gpus or None,
            max_restarts=-1,
            max_task_retries=-1,
        )
        handle: Any = cls.remote(**self.args)
        self.ready[handle.__ray_ready__.remote()] = len(self.handles)
        self.handles.append(handle)
        self.load.append(0)
        self.started.append(False)

    def task_cpus(self) -> int:
        """Chunk tasks to have running at once: the cluster's CPUs less the actors' (more would
        take the CPU an actor is placed on first, and it would wait for a new worker)."""
        return max(1, int(self.total_cpus - self.cpus * max(self.lo, len(self.handles))))

    def start(self) -> None:
        while len(self.handles) < self.lo:
            self._add()

    def grow(self, waiting: int) -> None:
        n = len(self.handles)
        if not n or n >= self.hi or waiting < 2 * n or time.monotonic() - self._checked < 1.0:
            return
        self._checked = time.monotonic()
        free = ray.available_resources()
        if free.get("CPU", 0) >= self.cpus + 1 and free.get("GPU", 0) >= self.gpus:
            self._add()

    def submit(self, data: Any) -> tuple[int, Any, Any]:
        """The unit to the least loaded actor that has started (any, before one has)."""
        self.start()
        if self.ready:
            done, _ = ray.wait(list(self.ready), num_returns=len(self.ready), timeout=0)
            for ref in done:
                self.started[self.ready.pop(ref)] = True
        pool = [i for i, up in enumerate(self.started) if up] or range(len(self.handles))
        i = min(pool, key=lambda k: self.load[k])
        self.load[i] += 1
        out, stats = self.handles[i].embed.remote(data)
        return i, out, stats

    def close(self) -> None:
        for h in self.handles:
            ray.kill(h)


class _Feeder:
    """Plans on a thread of its own (the driver's scan, read, hash, diff), one unit ahead of
    the runner, so the runner hands out work and commits while the planner reads."""

    _END = object()

    def __init__(self, waves: Iterator[list[Unit]]) -> None:
        self._waves = waves
        self._q: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.finished = False
        self._th = threading.Thread(target=self._loop, name="qflume-ray-plan", daemon=True)
        self._th.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _loop(self) -> None:
        try:
            for n, wave in enumerate(self._waves):
                for u in wave:
                    if not self._put((n, u)):
                        return
        except BaseException as e:  # raised on the runner's thread
            self.error = e
        self._put(self._END)

    def take(self, block: bool) -> tuple[int, Unit] | None:
        """The next (wave number, unit); None when there is none yet (or no more)."""
        if self.finished:
            return None
        try:
            item = self._q.get(block=block)
        except queue.Empty:
            return None
        if item is self._END:
            self.finished = True
            if self.error is not None:
                raise self.error
            return None
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stop.set()
        self._th.join(timeout=5)


def _get(ref: Any) -> Any:
    """ray.get, raising a task's QflumeError as itself (the CLI prints it in one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, QflumeError):
            raise e.cause from None
        raise


def _run_waves(
    pipe: Pipeline,
    run: Run,
    waves: Iterator[list[Unit]],
    settings: ChunkSettings,
    concurrency: int | tuple[int, int],
    num_gpus: float,
) -> None:
    """Ray core, one driver loop: each unit is chunked by a task, written ahead here, embedded
    by an actor and written by a task (chained in the object store: its data never comes to
    the driver), and committed here as soon as its write is acknowledged. Units of at most two
    waves are in flight, and no more than the actors can keep busy wait to be embedded."""
    lo, hi = _pool(concurrency)
    report, progress, c = run.report, run.progress, pipe.config
    embed_args = {
        "model": None if c.model is None else str(c.model),
        "sparse": c.sparse_kind,
        "sparse_model": None if c.sparse_model is None else str(c.sparse_model),
    }
    emb = pipe.loaded_embedder
    if emb is not None:  # a caller's embedder: its folder, rebuilt in each actor
        embed_args["model"] = str(emb.model_path)
    assert c.url is not None
    sink = SinkSettings(c.url, pipe.collection, c.api_key, c.wait)

    def commit(updates: list[DocUpdate], deleted: list[str], counts: dict[str, Any]) -> None:
        pipe.state.commit(updates, deleted)
        for k in ("points_upserted", "points_deleted", "payload_updates", "chunks_embedded",
                  "tokens_embedded", "retried"):  # fmt: skip
            setattr(report, k, getattr(report, k) + int(counts.get(k, 0)))
        report.stages["write"].busy_s += counts["write_s"]
        report.stages["write"].items += counts["points_upserted"]
        report.stages["embed"].busy_s += counts["embed_s"]
        report.stages["embed"].items += counts["chunks_embedded"]
        progress.advance(documents=len(updates) + len(deleted), chunks=counts["points_upserted"])

    ensured = False
    actors = _Actors(embed_args, lo, hi, num_gpus)
    feeder = _Feeder(waves)
    chunking: dict[Any, tuple[Any, int]] = {}  # meta ref -> (data ref, wave)
    embedding: dict[Any, int] = {}  # counts ref -> actor
    writing: dict[Any, int] = {}  # result ref -> wave
    open_units: dict[int, int] = {}  # wave -> its units not yet committed
    held: tuple[int, Unit] | None = None  # taken from the planner, waiting for room
    try:
        while True:
            while (
                len(chunking) + len(embedding) < 4 + 6 * max(1, len(actors.handles))
                and len(chunking) < actors.task_cpus()
            ):
                busy = bool(chunking or embedding or writing)
                if held is None:
                    held = feeder.take(block=not busy)
                if held is None or (open_units and held[0] > min(open_units) + 1):
                    break
                wave, u = held
                held = None
                if u.docs:
                    actors.start()
                blob = pickle.dumps(([_ship(d) for d in u.docs], u.deleted), protocol=5)
                task: Any = _chunk_task.remote(settings, blob)
                meta, data = task
                chunking[meta] = (data, wave)
                open_units[wave] = open_units.get(wave, 0) + 1
            refs = [*chunking, *embedding, *writing]
            if not refs:
                if feeder.finished:
                    break
                continue
            more = held is None and not feeder.finished
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.05 if more else None,
                                fetch_local=False)  # fmt: skip
            for ref in ready:
                if ref in chunking:
                    data, wave = chunking.pop(ref)
                    ahead, counts, chunk_s = _get(ref)
                    pipe.state.write_ahead(pickle.loads(ahead))
                    r = pickle.loads(counts)
                    report.chunks_total += r["chunks_total"]
                    report.documents_skipped += r["documents_skipped"]
                    report.skipped.extend(r["skipped"])
                    progress.add_chunks_planned(r["texts"], bytes=r["bytes"])
                    record(report, "plan", chunk_s, r["texts"], docs=0)
                    stats = None
                    if r["texts"]:
                        if not ensured:
                            ensure_collection(pipe)
                            ensured = True
                        i, data, stats = actors.submit(data)
                        embedding[stats] = i
                    writing[_write_task.remote(sink, data, stats)] = wave
                elif ref in embedding:
                    actors.load[embedding.pop(ref)] -= 1
                else:
                    wave = writing.pop(ref)
                    commit(*acknowledged(_get(ref)))
                    open_units[wave] -= 1
                    if not open_units[wave]:
                        del open_units[wave]
            actors.grow(sum(actors.load))
    except BaseException:
        for ref in [*chunking, *writing]:
            ray.cancel(ref)
        raise
    finally:
        feeder.close()
        actors.close()
    progress.plan_finished()


def _pool(concurrency: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return concurrency, concurrency
    if (
        isinstance(concurrency, tuple)
        and len(concurrency) == 2
        and all(isinstance(c, int) and not isinstance(c, bool) for c in concurrency)
        and 1 <= concurrency[0] <= concurrency[1]
    ):
        return concurrency[0], concurrency[1]
    raise InvalidInputError(
        f"concurrency must be a positive int or (min, max) with 1 <= min <= max, got {concurrency!r}"
    )


def ingest(source: Any, collection: str, **options: Any) -> IngestReport:
    """One-shot ingest on Ray: ``Pipeline(collection, url=..., **options)`` with `run`'s
    options (include, exclude, delete_missing, dry_run, concurrency, num_gpus, wave_chunks,
    address) taken from ``options``."""
    run_keys = ("include", "exclude", "delete_missing", "dry_run", "concurrency", "num_gpus",
                "wave_chunks", "address")  # fmt: skip
    run_opts = {k: options.pop(k) for k in run_keys if k in options}
    if options.get("url") is None:
        raise InvalidInputError(STORE_REFUSED)
    options.setdefault("progress", False)
    with Pipeline(collection, **options) as p:
        return run(p, source, **run_opts)
