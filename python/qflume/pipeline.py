"""`qflume.Pipeline`: ingest files or records into one Qdrant collection and keep it in sync.

A Pipeline is a `qflume.collection.Collection` (its config, state and components) with the
operations on top: ingest (the stages of qflume.stages, run by qflume.runner's local threaded
runner), status, verify, search and the batch operations.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qflume.collection import Collection
from qflume.exceptions import InvalidInputError, InvalidTypeError, QflumeError, QflumeIOError
from qflume.progress import Progress, ProgressEvent, resolve_interval, resolve_mode
from qflume.report import IngestReport, StageStats
from qflume.runner import Planner, run_local
from qflume.settings import DEFAULT_CHUNK_TOKENS, PipelineConfig, split_options, state_base
from qflume.sinks.base import Sink
from qflume.stages.batch import RECORDS_ROOT, RECOVERED_ROOT
from qflume.stages.context import Run, read_workers
from qflume.stages.plan import plan_files, plan_records

__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "RECORDS_ROOT",
    "RECOVERED_ROOT",
    "IngestReport",
    "Pipeline",
    "StageStats",
    "ingest",
    "ingest_records",
]


class Pipeline(Collection):
    """Ingest files or records into one Qdrant collection and keep it in sync.

    ``Pipeline(collection, **settings)``: the settings are `qflume.settings.PipelineConfig`'s
    fields (or pass a PipelineConfig as ``collection``). Target: ``store`` (a folder; the
    collection is a Qdrant Edge shard at store/collection, the default ``./.qflume``) or ``url``
    (a Qdrant server over gRPC). The state (and the embedding cache) live beside the shard, or
    under ``state_dir`` for a server.

    Progress of an ingest goes to stderr: ``progress="auto"`` draws a bar on a terminal and
    writes one line every ``progress_interval`` seconds otherwise (default 5, or
    $QFLUME_PROGRESS_INTERVAL), ``"bar"``, ``"lines"`` or ``"none"`` force one; the default
    (None) draws the bar on a terminal and stays silent otherwise. ``on_progress`` receives
    the same counts as a `qflume.progress.ProgressEvent` every ``progress_interval`` seconds and
    once more at the end (``final=True``), from a background thread: keep it quick. A callback
    that raises is logged (logger ``qflume.progress``) and not called again; the ingest goes on.

    Memory: ``max_memory`` bounds the queues between the stages and the size above which one
    file is streamed (read, chunked and sent block by block) instead of read whole:
    ``max_memory / 16``, at least 1 MiB (8 MiB by default). Files over ``max_file_size`` bytes
    are skipped as ``too-large``: by default 256 MiB, or half of ``max_memory`` when it is given
    (what a streamed file still holds is about one byte per byte of input: its chunk hashes,
    offsets and their index, for its state row).

    Documents: PDF, HTML and DOCX files are read by `qflume.readers` (in reader processes, a
    large PDF page window by page window); ``readers={".ext": fn}`` adds or replaces a reader,
    ``fn(path) -> str | qflume.readers.Document``. Chunks carry ``page`` (or ``page_start`` /
    ``page_end``) and Markdown ``heading`` paths in their metadata.

    A server that stays unreachable (``url``) does not stop the run: updates are spooled to an
    outbox beside the state (at most ``outbox_bytes``) while planning and embedding go on, sent
    in order when the server is back, and the state commits only what it acknowledged. An
    outage longer than ``outage_deadline`` seconds, or a full outbox, fails the run with the
    server's error; the next run resumes.
    """

    def __init__(
        self,
        collection: str | PipelineConfig,
        *,
        embedder: Any = None,
        sink: Sink | None = None,
        readers: Mapping[str, Callable[[str], Any]] | None = None,
        on_progress: Callable[[ProgressEvent], object] | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(collection, PipelineConfig):
            if settings:
                raise InvalidInputError("give a PipelineConfig alone, or the collection's name")
            config = collection
        else:
            config = PipelineConfig(collection, **split_options(settings, operation=())[0])
        if on_progress is not None and not callable(on_progress):
            raise InvalidInputError(f"on_progress must be callable, not {on_progress!r}")
        self.on_progress = on_progress
        self._stop = threading.Event()
        super().__init__(config, embedder=embedder, sink=sink, readers=readers)

    state_base = staticmethod(state_base)

    # -- ingest ------------------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        delete_missing: bool = True,
        dry_run: bool = False,
    ) -> IngestReport:
        """Bring the collection in line with the files under `paths`."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not isinstance(paths, Sequence) or not all(
            isinstance(p, (str, os.PathLike)) for p in paths
        ):
            raise InvalidTypeError(
                f"ingest() takes a path or a list of paths, not {type(paths).__name__}"
            )
        roots = [str(Path(p).resolve()) for p in paths]
        for r in roots:
            if not os.path.exists(r):
                raise QflumeIOError(2, f"{r}: no such file or folder to ingest")
        return self._run(
            lambda run: plan_files(self, run, roots, include, exclude, delete_missing), dry_run
        )

    def ingest_records(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        delete_missing: bool = False,
        dry_run: bool = False,
    ) -> IngestReport:
        """Ingest {"id", "text", "metadata"} records, keyed by id (same semantics as files)."""
        if not isinstance(records, Iterable) or isinstance(records, (str, bytes, Mapping)):
            raise InvalidTypeError(
                f"ingest_records() takes an iterable of records, not {type(records).__name__}"
            )
        return self._run(lambda run: plan_records(self, run, records, delete_missing), dry_run)

    def new_run(self, dry_run: bool = False) -> Run:
        """The context of a run of this pipeline's stages (its progress display, the stop
        event `stop` sets, its reader processes): what a runner hands the stages."""
        c = self.config
        self._stop.clear()
        progress = Progress(
            resolve_mode(c.progress),
            interval=resolve_interval(c.progress_interval),
            callback=self.on_progress,
        )
        return Run(
            dry_run=dry_run, progress=progress, stop=self._stop, workers=read_workers(c.max_memory)
        )

    def _run(self, planner: Planner, dry_run: bool) -> IngestReport:
        self.failed = False
        try:
            return run_local(self, planner, self.new_run(dry_run))
        except BaseException:
            self.failed = True
            raise

    def stop(self) -> None:
        """Ask a running ingest to stop reading, drain what is in flight and commit."""
        self._stop.set()

    # -- the collection ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Documents, chunks and points, the last run and the embedding cache."""
        st = self.state.stats()
        out: dict[str, Any] = {
            "collection": self.collection,
            "target": self.url or str(self.store),
            "state": str(self.state_path),
            "documents": st.documents,
            "chunks": st.chunks,
            "documents_pending": st.pending_documents,
            "last_run": self.state.get_meta("last_run"),
        }
        try:
            out["points"] = self.sink.count()
        except QflumeError as e:
            out["points"] = None
            out["sink_error"] = str(e)
        if self.cache_path.exists():
            try:
                out["cache"] = self.cache.stats()
            except Exception as e:  # a status never fails on the cache
                out["cache_error"] = str(e)
        return out

    def verify(self, *, repair: bool = False) -> dict[str, Any]:
        """Reconcile the state with the collection (see qflume.verify.verify)."""
        from qflume.verify import verify

        return verify(self, repair=repair)

    def search(
        self,
        queries: Sequence[str],
        *,
        limit: int = 10,
        filter: Mapping[str, Any] | None = None,
        mode: str = "dense",
        fusion: str | None = None,
    ) -> list[Any]:
        """Batch search of this collection (see qflume.search.search)."""
        from qflume.search import HYBRID_FUSION, search

        return search(
            self, queries, limit=limit, filter=filter, mode=mode, fusion=fusion or HYBRID_FUSION
        )

    def update_payload(self, updates: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Batch payload updates with per-item results (see qflume.ops.update_payload)."""
        from qflume.ops import update_payload

        return update_payload(self, updates)

    def delete(
        self,
        *,
        ids: Sequence[Any] | None = None,
        sources: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Batch deletes by id, source or filter, with per-item results (see qflume.ops.delete)."""
        from qflume.ops import delete

        return delete(self, ids=ids, sources=sources, filter=filter)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ingest(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    collection: str,
    **options: Any,
) -> IngestReport:
    """One-shot `Pipeline(collection, **settings).ingest(paths, include=, exclude=,
    delete_missing=, dry_run=)`."""
    settings, components, op = split_options(options)
    with Pipeline(collection, **components, **settings) as p:
        return p.ingest(paths, **op)


def ingest_records(
    records: Iterable[Mapping[str, Any]], collection: str, **options: Any
) -> IngestReport:
    """One-shot `Pipeline(collection, **settings).ingest_records(records, delete_missing=,
    dry_run=)`."""
    settings, components, op = split_options(options, operation=("delete_missing", "dry_run"))
    with Pipeline(collection, **components, **settings) as p:
        return p.ingest_records(records, **op)
