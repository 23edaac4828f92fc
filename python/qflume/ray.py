"""qflume on Ray Data: the same incremental, exactly-once ingest, spread over a Ray cluster.

    driver  scan -> hash -> diff against the state (SQLite, one writer)   -> units of documents
    tasks   read + chunk + hash + ids (the Rust core, GIL released)         `ChunkUnits`
    actors  dense (and sparse) vectors, the model loaded once per actor     `EmbedUnits`
    tasks   Rust-packed gRPC upserts, then deletes and payload updates      `QflumeDatasink`
    driver  `on_write_complete`: commit what the server acknowledged

The stages are the local pipeline's own (qflume.stages: `plan_files` / `plan_records`,
`group_planned`, `chunk_docs` with its Rust diff, `embed_batch`, `send_slice`): only the runner
differs. Work goes in waves of about ``wave_chunks`` chunks: a wave is chunked
by tasks, its chunk hashes are written ahead in the state by the driver (what may land in the
collection, as the local write stage does before sending), then it is embedded and written by
the workers, and committed. The next wave is chunked while one is embedded. A task retried or an
actor restarted sends the same deterministic point ids again; a driver killed at any moment
leaves a state that the next run repairs (pending hashes it deletes or sends again).

A unit (one row of the datasets) is a group of whole documents of about ``batch_chunks``
chunks, pickled: the same groups the local pipeline embeds together, so the vectors are the
same bits. Only a Qdrant server (``url``) can be written from many nodes: the embedded store is
one process's files, so ``store`` is refused.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import ray
    import ray.data
    from ray.data.block import BlockAccessor
    from ray.data.datasource.datasink import Datasink, WriteResult
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "qflume.ray needs Ray Data: pip install 'qflume[ray]' (or 'ray[data]')"
    ) from e

from qflume.exceptions import InvalidInputError
from qflume.pipeline import Pipeline
from qflume.report import IngestReport, record
from qflume.stages.batch import Batch, Doc
from qflume.stages.chunk import Chunking, Unit, chunk_docs, group_planned, make_chunker
from qflume.stages.context import Run
from qflume.stages.plan import plan_files, plan_records
from qflume.stages.read import read_ahead, take_read
from qflume.stages.write import ensure_collection, send_slice
from qflume.state import DocUpdate

__all__ = [
    "ChunkSettings",
    "ChunkUnits",
    "EmbedUnits",
    "QflumeDatasink",
    "ingest",
    "run",
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
        self._chunking: Chunking | None = None

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if self._chunking is None:
            self._chunking = self.settings.chunking()
        data, ahead, reports = [], [], []
        for blob in batch["docs"]:
            docs, deleted = pickle.loads(blob)
            report = IngestReport()
            chunked = chunk_docs(self._chunking, docs, Run(report))
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
        emb = self.embedder
        for blob in batch["data"]:
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
            out.append(pickle.dumps(slices, protocol=5))
            stats.append(
                pickle.dumps({"chunks": n, "tokens": tokens, "s": time.perf_counter() - t})
            )
        return {
            "unit": np.asarray(batch["unit"]),
            "data": _objects(out),
            "embedded": _objects(stats),
        }


# ---------------------------------------------------------------------------------------------
# Write: a Datasink on the workers, commit on the driver


def _send(sink: Any, s: Batch, counts: dict[str, int]) -> None:
    """One slice to the sink, exactly as the local write stage sends it."""
    n, lost, updates = send_slice(sink, s)
    counts["points_upserted"] += n
    counts["points_deleted"] += lost
    counts["payload_updates"] += updates


class QflumeDatasink(Datasink):  # type: ignore[type-arg]
    """Writes units (rows with a pickled "data" column of embedded slices) to a Qdrant server
    over gRPC from the workers (Rust-packed upserts, `qflume.sinks.GrpcSink`). A write task
    returns the document updates only after the server acknowledged all it sent; on the driver,
    `on_write_complete` hands them to ``on_commit(updates, deleted_keys, counts)`` (the runner
    commits them to the state) or keeps them in ``acknowledged``."""

    def __init__(
        self,
        url: str,
        collection: str,
        *,
        api_key: str | None = None,
        wait: bool = False,
        on_commit: Any = None,
        sink_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.collection = collection
        self.api_key = api_key
        self.wait = wait
        self.sink_options = dict(sink_options or {})
        self.on_commit = on_commit
        self.acknowledged: list[tuple[list[DocUpdate], list[str], dict[str, int]]] = []

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["on_commit"], d["acknowledged"] = None, []  # driver-side only
        return d

    def get_name(self) -> str:
        return "QflumeQdrant"

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
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
        sink = GrpcSink(
            self.url, self.collection, api_key=self.api_key, wait=self.wait, **self.sink_options
        )
        try:
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                stats = (
                    table.column("embedded").to_pylist() if "embedded" in table.column_names else []
                )
                for st in stats:
                    e = pickle.loads(st)
                    counts["chunks_embedded"] += e["chunks"]
                    counts["tokens_embedded"] += e["tokens"]
                    embed_s += e["s"]
                for blob in table.column("data").to_pylist():
                    for s in pickle.loads(blob):
                        _send(sink, s, counts)
                        if s.final:
                            updates.extend(p.update for p in s.plans if p.update is not None)
                            deleted.extend(k for k, _ in s.deleted)
            sink.flush()  # everything sent is acknowledged: only now may it be committed
            counts["retried"] = sink.retried
        finally:
            sink.close()
        return {
            "updates": updates,
            "deleted": deleted,
            "counts": counts,
            "write_s": time.perf_counter() - t,
            "embed_s": embed_s,
        }

    def on_write_complete(self, write_result: WriteResult) -> None:  # type: ignore[type-arg]
        for r in write_result.write_returns:
            got = (
                r["updates"],
                r["deleted"],
                {**r["counts"], "write_s": r["write_s"], "embed_s": r["embed_s"]},
            )
            if self.on_commit is not None:
                self.on_commit(*got)
            else:
                self.acknowledged.append(got)


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
        paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        roots = [str(Path(p).resolve()) for p in paths]
        for r in roots:
            if not os.path.exists(r):
                from qflume.exceptions import QflumeIOError

                raise QflumeIOError(2, f"{r}: no such file or folder to ingest")
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


def _records(source: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(source, ray.data.Dataset):
        return iter(source.iter_rows())
    return iter(source)


def _connect(address: str | None) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address, log_to_driver=False, include_dashboard=False if address is None else None
    )


def _run_waves(
    pipe: Pipeline,
    run: Run,
    waves: Iterator[list[Unit]],
    settings: ChunkSettings,
    concurrency: int | tuple[int, int],
    num_gpus: float,
) -> None:
    ensured = False
    report, progress, c = run.report, run.progress, pipe.config
    chunker = ChunkUnits(settings)
    embed_args = {
        "model": None if c.model is None else str(c.model),
        "sparse": c.sparse_kind,
        "sparse_model": None if c.sparse_model is None else str(c.sparse_model),
    }
    if pipe.loaded_embedder is not None:  # a caller's embedder: its folder, rebuilt in each actor
        embed_args["model"] = str(pipe.loaded_embedder.model_path)

    def chunk(wave: list[Unit]) -> tuple[Any, list[dict[str, Any]], float]:
        t = time.perf_counter()
        rows = [
            {"unit": i, "docs": pickle.dumps(([_ship(d) for d in u.docs], u.deleted), protocol=5)}
            for i, u in enumerate(wave)
        ]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        mat = ds.map_batches(chunker, batch_size=1, batch_format="numpy").materialize()
        meta = mat.select_columns(["ahead", "report"]).take_all()
        return mat, meta, time.perf_counter() - t

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

    sink = QflumeDatasink(
        pipe.url, pipe.collection, api_key=c.api_key, wait=c.wait, on_commit=commit
    )  # type: ignore[arg-type]
    with ThreadPoolExecutor(1, thread_name_prefix="qflume-ray-chunk") as ex:
        it = iter(waves)
        nxt: Future[Any] | None = None
        first = next(it, None)
        if first is not None:
            nxt = ex.submit(chunk, first)
        while nxt is not None:
            mat, meta, chunk_s = nxt.result()
            following = next(it, None)  # planned here while the next wave is chunked
            nxt = ex.submit(chunk, following) if following is not None else None
            texts = 0
            for row in meta:
                pipe.state.write_ahead(pickle.loads(row["ahead"]))
                r = pickle.loads(row["report"])
                report.chunks_total += r["chunks_total"]
                report.documents_skipped += r["documents_skipped"]
                report.skipped.extend(r["skipped"])
                progress.add_chunks_planned(r["texts"], bytes=r["bytes"])
                texts += r["texts"]
            record(report, "plan", chunk_s, texts, docs=0)
            if texts and not ensured:
                ensure_collection(pipe)
                ensured = True
            data = mat.select_columns(["unit", "data"])
            if texts:
                data = data.map_batches(
                    EmbedUnits,
                    fn_constructor_kwargs=embed_args,
                    batch_size=1,
                    batch_format="numpy",
                    compute=_pool(concurrency),
                    num_gpus=num_gpus or None,
                )
            data.write_datasink(sink)
    progress.plan_finished()


def _pool(concurrency: int | tuple[int, int]) -> Any:
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return ray.data.ActorPoolStrategy(size=concurrency)
    if (
        isinstance(concurrency, tuple)
        and len(concurrency) == 2
        and all(isinstance(c, int) and not isinstance(c, bool) for c in concurrency)
        and 1 <= concurrency[0] <= concurrency[1]
    ):
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
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
