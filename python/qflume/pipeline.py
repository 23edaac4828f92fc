"""`qflume ingest`: the streaming, incremental, crash-safe pipeline.

Three threads joined by bounded queues (so memory is set by queue sizes, never by corpus size):

    plan   scan -> diff against the state -> read -> chunk + hash + ids (Rust) -> what to send
    embed  embedding cache lookup -> model for the misses -> cache put -> sparse vectors
    write  write-ahead in the state -> upsert / delete / payload updates -> sink barrier -> commit

The state advances only for what the sink acknowledged (see qflume.state), so a run killed at any
moment is repaired by the next one: no duplicates, no orphans, nothing lost.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qflume import alerts, analysis, metrics
from qflume._core import DocDiffer, content_hash, point_id
from qflume._validate import metadata_problem, printable, text_problem, url_problem
from qflume.exceptions import InvalidInputError, QflumeError, StateCorruptError
from qflume.progress import Progress, ProgressEvent, resolve_interval, resolve_mode
from qflume.readers import Document, Readers, ReaderSkip
from qflume.readers.meta import KEYS as CHUNK_META_KEYS
from qflume.readers.meta import ChunkMeta, heading_index
from qflume.sinks.base import CollectionSpec, PointBatch, Sink, SparseBatch
from qflume.state import HASH_LEN, DocState, DocUpdate, State

RECORDS_ROOT = "<records>"
#: The root of documents rebuilt from the collection after a damaged state: the next ingest of
#: their folder (or records) takes them over.
RECOVERED_ROOT = "<recovered>"

#: Default chunk size, in the embedding model's own tokens. Measured on the Python docs with
#: all-MiniLM-L6-v2 (tests/test_search_quality.py): a verbatim sentence finds its own chunk first
#: in 92% of cases at 64 tokens, 80% at 128, and 74% at 1000 characters, where 43% of chunks
#: overflow the model's 256-token window and their tail is invisible to dense search.
DEFAULT_CHUNK_TOKENS = 64
_STOP = object()
#: A PDF of more pages than this is read, chunked and sent page window by page window.
PDF_WHOLE_PAGES = 64
#: Files whose headings (Markdown "#" lines) give their chunks a heading path.
_MARKDOWN_EXT = (".md", ".markdown", ".mdown", ".mkd")
SPLADE_NEEDS_MODEL = (
    "sparse 'splade' needs its model: --sparse-model DIR (sparse_model=), a BertForMaskedLM "
    "folder (config.json, model.safetensors, tokenizer.json) or an ONNX masked-LM folder"
)


def _sparse_encoder(kind: str, model: str | os.PathLike[str] | None) -> Any:
    """The sparse encoder of a kind: `Bm25`, or `Splade` of ``model``."""
    if kind == "bm25":
        from qflume.sparse import Bm25

        return Bm25()
    if model is None:
        raise InvalidInputError(SPLADE_NEEDS_MODEL)
    from qflume.sparse import Splade

    return Splade(model)


# ---------------------------------------------------------------------------------------------
# Reports


@dataclass
class StageStats:
    busy_s: float = 0.0
    items: int = 0
    #: CPU time of the stage's own thread (ONNX Runtime's and Rayon's workers count only in
    #: the report's process-wide cpu_s)
    cpu_s: float = 0.0

    def as_dict(self, elapsed: float) -> dict[str, float]:
        return {
            "busy_s": round(self.busy_s, 4),
            "cpu_s": round(self.cpu_s, 4),
            "items": self.items,
            "items_per_s": round(self.items / self.busy_s, 1) if self.busy_s > 0 else 0.0,
            "utilization": round(self.busy_s / elapsed, 3) if elapsed > 0 else 0.0,
        }


@dataclass
class IngestReport:
    """What a run did. `as_dict()` is what `qflume ingest --json` prints."""

    documents_seen: int = 0
    documents_new: int = 0
    documents_changed: int = 0
    documents_unchanged: int = 0
    documents_deleted: int = 0
    documents_skipped: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    chunks_total: int = 0
    chunks_embedded: int = 0
    cache_hits: int = 0
    tokens_embedded: int = 0
    points_upserted: int = 0
    points_deleted: int = 0
    payload_updates: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    dry_run: bool = False
    #: requests the sink sent again after a transient failure
    retried: int = 0
    #: times the server was unreachable past the retries, requests spooled to the outbox then,
    #: and seconds the ended outages lasted (the run went on embedding meanwhile)
    outages: int = 0
    spooled_requests: int = 0
    outage_s: float = 0.0
    #: CPU seconds of the whole process over the run (every thread)
    cpu_s: float = 0.0
    #: protobuf bytes sent to and received from a Qdrant server (none for the embedded store),
    #: and its failed requests by gRPC status code (retried, spooled, or the run's error)
    bytes_sent: int = 0
    bytes_received: int = 0
    sink_errors: dict[str, int] = field(default_factory=dict)
    #: the collection after the run (qflume.metrics.collection_info: points, segments, the
    #: embedded store's disk_bytes, a server's optimizer status)
    storage: dict[str, Any] = field(default_factory=dict)
    #: alerts active during the run (raised by the running qflume.alerts monitors)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, StageStats] = field(default_factory=dict)
    #: what the suggestions are judged against (target, embedder, requests in flight)
    setup: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The figures, plus KPIs, the limiting stage and suggestions (qflume.analysis)."""
        d = asdict(self)
        d.pop("setup")
        d["stages"] = {k: v.as_dict(self.elapsed_s) for k, v in self.stages.items()}
        d["elapsed_s"] = round(self.elapsed_s, 3)
        d["cpu_s"] = round(self.cpu_s, 3)
        d.update(analysis.kpis(d))
        d.update(analysis.bottleneck(d["stages"], d, self.setup))
        return d


# ---------------------------------------------------------------------------------------------
# Work items passed between the stages


@dataclass
class _Doc:
    """A document that needs work (new, changed, re-fingerprinted or repaired)."""

    key: str
    root: str
    content_hash: bytes
    size: int
    mtime_ns: int
    meta: dict[str, Any]
    meta_json: str
    prev: DocState | None
    text: str | None = None
    path: str | None = None
    #: Its reader (a built-in kind or a plug-in), None for plain text.
    reader: Any = None
    #: Set by the read-ahead: the structure its chunks' pages and headings come from, where
    #: chunking segments start (chunks never cross one), and for a large PDF its page count.
    structure: ChunkMeta | None = None
    segments: list[int] | None = None
    pages_total: int = 0


@dataclass
class _DocPlan:
    doc: _Doc
    update: DocUpdate | None  # None: nothing to commit (the document was abandoned)
    upsert_hashes: bytes  # concatenated hashes that are (re)sent
    lost_ids: list[str]  # point ids of chunks the document no longer has
    moved: list[tuple[str, dict[str, int]]]  # kept chunks whose offsets changed: (id, fields)
    #: Kept chunks whose page or heading changed: (id, the chunk's whole new metadata).
    restated: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class _DocDiff:
    """One document's new chunks against its state row, block by block (the work is done in
    Rust: `qflume._core.DocDiffer`): which to (re)send, which kept chunks moved (a payload
    update), which were restated (same text, other page or heading), and at the end which are
    lost (deleted). It holds ~60 bytes per distinct chunk (its hash, row and index entry), so a
    document streamed block by block stays small whatever its size."""

    def __init__(self, d: _Doc, fp: str, *, streamed: bool = False) -> None:
        prev = d.prev
        self.doc = d
        self.streamed = streamed  # written ahead block by block: no upsert list kept
        self.fp = fp
        resend_all = prev is None or prev.fingerprint != fp or prev.meta_json != d.meta_json
        self._diff = DocDiffer(
            bytes(prev.chunks) if prev else b"",
            bytes(prev.offsets) if prev else b"",
            bytes(prev.chunk_meta) if prev else b"",
            bytes(prev.pending) if prev else b"",
            resend_all,
        )
        self.upsert = bytearray()
        self.plan = _DocPlan(d, None, b"", [], [])
        self._count = -1  # set when finished

    @property
    def count(self) -> int:
        """Distinct chunks taken."""
        return self._count if self._count >= 0 else self._diff.count()

    def take(
        self,
        hashes: npt.NDArray[np.uint8],
        offsets: npt.NDArray[np.int64],
        j0: int = 0,
        digests: Sequence[bytes] | None = None,
        metas: Sequence[dict[str, Any]] | None = None,
        meta_index: npt.NDArray[np.int64] | None = None,
    ) -> npt.NDArray[np.int64]:
        """The next block of the document's chunks: (k, 16) ``hashes`` at ``offsets`` (k, 2),
        the first being chunk ``j0``, with their page/heading ``digests`` (8 bytes each) and
        metadata (``metas[meta_index[i]]``, -1: none). Returns the rows to send; records the
        moved and the restated ones (Python work only for those)."""
        hashes = np.ascontiguousarray(hashes, np.uint8)
        offsets = np.ascontiguousarray(offsets, np.int64)
        dg = None if digests is None else b"".join(digests)
        send, moved, restated = self._diff.take(hashes, offsets, j0, dg)
        if not self.streamed and len(send):
            self.upsert += hashes[send].tobytes()
        key, meta = self.doc.key, self.doc.meta
        for i in restated.tolist():  # same text, another page or heading: metadata restated
            h = hashes[i].tobytes()
            m = -1 if meta_index is None else int(meta_index[i])
            full = {**meta, **(metas[m] if metas is not None and m >= 0 else {})}
            full.update(chunk_index=j0 + i, start=int(offsets[i, 0]), end=int(offsets[i, 1]))
            full["content_hash"] = h.hex()
            self.plan.restated.append((point_id(key, h), full))
        for i in moved.tolist():
            fields = {"chunk_index": j0 + i, "start": int(offsets[i, 0]), "end": int(offsets[i, 1])}
            self.plan.moved.append((point_id(key, hashes[i].tobytes()), fields))
        return send

    def finish(self) -> _DocPlan:
        d = self.doc
        self._count = self._diff.count()
        chunks, rows, chunk_meta, lost = self._diff.finish()
        self.plan.lost_ids = [point_id(d.key, h.tobytes()) for h in lost]
        self.plan.upsert_hashes = bytes(self.upsert)
        self.upsert = bytearray()
        self.plan.update = DocUpdate(
            key=d.key,
            root=d.root,
            content_hash=d.content_hash,
            size=d.size,
            mtime_ns=d.mtime_ns,
            meta_json=d.meta_json,
            fingerprint=self.fp,
            chunks=chunks,
            offsets=rows,
            chunk_meta=chunk_meta,
        )
        return self.plan

    def abandon(self) -> None:
        """The document could not be read to its end: take back what was sent of it (points
        that were not in its committed version) and keep its state row as it was."""
        self.plan.lost_ids = [point_id(self.doc.key, h.tobytes()) for h in self._diff.uncommitted()]
        self.plan.moved = []
        self.plan.restated = []
        self.plan.update = None


@dataclass
class _Batch:
    plans: list[_DocPlan]
    texts: list[str]
    hashes: npt.NDArray[np.uint8]  # (n, 16)
    ids: npt.NDArray[np.uint8]  # (n, 16)
    doc_index: npt.NDArray[np.int64]
    chunk_index: npt.NDArray[np.int64]
    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    deleted: list[tuple[str, list[str]]] = field(default_factory=list)  # (key, point ids)
    dense: npt.NDArray[np.float32] | None = None
    sparse: dict[str, SparseBatch] | None = None
    #: False for all but the last slice of a batch cut into slices (a large document): only the
    #: last deletes lost chunks, updates moved offsets and commits the plans.
    final: bool = True
    first: bool = True
    #: A write-ahead to record before this batch is sent (a streamed document's blocks carry
    #: their own); None: the plans' upsert hashes, with the first slice.
    ahead: dict[str, tuple[str, bytes]] | None = None
    #: Per-chunk metadata (pages, headings): the distinct dicts and each chunk's index into
    #: them (-1: none); None when no chunk has any.
    extra_meta: list[dict[str, Any]] = field(default_factory=list)
    extra_index: npt.NDArray[np.int64] | None = None

    def slices(self, rows: int) -> Iterator[_Batch]:
        """This batch as consecutive slices of at most ``rows`` chunks, so that one large
        document never holds all its texts, vectors and packed requests in flight at once."""
        n = len(self.texts)
        if n <= rows:
            yield self
            return
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            yield _Batch(
                plans=self.plans,
                texts=self.texts[lo:hi],
                hashes=self.hashes[lo:hi],
                ids=self.ids[lo:hi],
                doc_index=self.doc_index[lo:hi],
                chunk_index=self.chunk_index[lo:hi],
                start=self.start[lo:hi],
                end=self.end[lo:hi],
                deleted=self.deleted if hi == n else [],
                final=hi == n,
                first=lo == 0,
                extra_meta=self.extra_meta,
                extra_index=None if self.extra_index is None else self.extra_index[lo:hi],
            )


def _still_there(root: str, key: str, path: str | None = None) -> bool:
    """Whether another document ``key`` of ``root`` still exists there (records always do) than
    the file at ``path``: when it does not, the same key under another root is the document
    moved (or the same file named through another root), not a second one."""
    if root == RECOVERED_ROOT:
        return False
    if root == RECORDS_ROOT:
        return True
    # a folder root holds the key below it; a file given as the root is the document itself
    old = os.path.join(root, key) if os.path.isdir(root) else root
    if not os.path.lexists(old):
        return False
    return path is None or os.path.realpath(old) != os.path.realpath(path)


def _conflict(key: str, had: str, new: str | None) -> str:
    where = "the records" if had == RECORDS_ROOT else had
    now = "records" if new is None else new
    return (
        f"key-conflict: {key!r} is already in this collection from {where}; {now} has a document "
        "with the same key (keys are paths relative to the folder given). Ingest both from their "
        "common parent folder, or into another collection"
    )


def _empty_batch() -> _Batch:
    z = np.zeros(0, np.int64)
    h = np.zeros((0, HASH_LEN), np.uint8)
    return _Batch([], [], h, h, z, z, z, z)


def _split_hashes(blob: bytes) -> list[bytes]:
    return [blob[i : i + HASH_LEN] for i in range(0, len(blob), HASH_LEN)]


# ---------------------------------------------------------------------------------------------
# The pipeline


class Pipeline:
    """Ingest files or records into one Qdrant collection and keep it in sync.

    Target: ``store`` (a folder; the collection is a Qdrant Edge shard at store/collection, the
    default ``./.qflume``) or ``url`` (a Qdrant server over gRPC). The state (and the embedding
    cache) live beside the shard, or under ``state_dir`` for a server.

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
        collection: str,
        *,
        store: str | os.PathLike[str] | None = None,
        url: str | None = None,
        api_key: str | None = None,
        model: str | os.PathLike[str] | None = None,
        sparse: str | None = None,
        sparse_model: str | os.PathLike[str] | None = None,
        chunk_chars: int | None = None,
        chunk_tokens: int | None = None,
        overlap: int = 0,
        wait: bool = False,
        state_dir: str | os.PathLike[str] | None = None,
        batch_chunks: int = 256,
        max_memory: int | None = None,
        max_file_size: int | None = None,
        outbox_bytes: int = 1 << 30,
        outage_deadline: float = 900.0,
        cache_entries: int = 1_000_000,
        progress: bool | str | None = None,
        on_progress: Callable[[ProgressEvent], object] | None = None,
        progress_interval: float | None = None,
        embedder: Any = None,
        sink: Sink | None = None,
        lock: bool = True,
        recover_state: bool = False,
        readers: Mapping[str, Callable[[str], Any]] | None = None,
        versioned: bool = True,
    ) -> None:
        if not collection or "/" in collection or collection.startswith("."):
            raise InvalidInputError(
                f"collection name {collection!r} is not usable (no '/', no leading '.')"
            )
        if sparse not in (None, "none", "bm25", "splade"):
            raise InvalidInputError(f"sparse must be none, bm25 or splade, not {sparse!r}")
        # what a versioned collection's live version sets unless given (qflume.versions)
        given = {"model": model is not None, "sparse": sparse is not None,
                 "chunking": chunk_chars is not None or chunk_tokens is not None}  # fmt: skip
        if sparse_model is not None and sparse not in (None, "none", "splade"):
            raise InvalidInputError(
                f"sparse_model is the SPLADE model: give it with sparse='splade', not {sparse!r}"
            )
        if sparse == "splade" and sparse_model is None:
            raise InvalidInputError(SPLADE_NEEDS_MODEL)
        if chunk_chars is not None and chunk_tokens is not None:
            raise InvalidInputError("give chunk_chars or chunk_tokens, not both")
        if store is not None and url is not None:
            raise InvalidInputError("give store (embedded Qdrant Edge) or url (a server), not both")
        if url is not None and (problem := url_problem(url)):
            raise InvalidInputError(problem)
        #: Which files a reader turns into text (PDF, HTML, DOCX, plug-ins: qflume.readers).
        self.readers = Readers(readers)
        self._reader_pool: Any = None
        self.collection = collection
        self.url = url
        self.api_key = api_key
        self.model = model
        self.sparse_kind = sparse or "none"
        #: The SPLADE model folder (``sparse="splade"``; for a search, the one to query with).
        self.sparse_model = sparse_model
        if chunk_chars is None and chunk_tokens is None:
            chunk_tokens = DEFAULT_CHUNK_TOKENS
        self.chunk_chars = chunk_chars
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap
        self.wait = wait
        self.batch_chunks = max(1, batch_chunks)
        # Each queued batch holds ~batch_chunks chunks of text and vectors (a few KB each).
        per_batch = self.batch_chunks * 8 * 1024
        self.queue_batches = 4 if max_memory is None else max(1, min(64, max_memory // per_batch))
        # A file read whole costs ~4 bytes per byte (text, chunk texts, arrays) while planned;
        # larger ones are streamed block by block (Pipeline._stream_doc).
        self.max_memory = max_memory
        if max_file_size is None:  # a file's diff holds ~1 byte per byte: half the budget
            max_file_size = 256 << 20 if max_memory is None else max(1 << 20, max_memory // 2)
            max_file_size = min(256 << 20, max_file_size)
        if (
            isinstance(max_file_size, bool)
            or not isinstance(max_file_size, int)
            or max_file_size < 1
        ):
            raise InvalidInputError(f"max_file_size must be a positive int, got {max_file_size!r}")
        self.max_file_size = max_file_size
        self.outbox_bytes = outbox_bytes
        self.outage_deadline = outage_deadline
        self.stream_bytes = 8 << 20 if max_memory is None else max(1 << 20, max_memory // 16)
        self.stream_block = min(1 << 20, self.stream_bytes)
        resolve_mode(progress)  # refuses an unknown mode now, not at the first ingest
        if on_progress is not None and not callable(on_progress):
            raise InvalidInputError(f"on_progress must be callable, not {on_progress!r}")
        self.progress = progress
        self.on_progress = on_progress
        # $QFLUME_PROGRESS_INTERVAL is read by each ingest: a bad one never stops a search
        self.progress_interval = (
            None if progress_interval is None else resolve_interval(progress_interval)
        )
        self.store = None if url is not None else Path(store if store is not None else ".qflume")
        base = self.state_base(store, url, state_dir)
        self.state_path = base / f"{collection}.state.sqlite"
        self.cache_path = base / f"{collection}.cache.sqlite"
        self.cache_entries = cache_entries
        self._embedder = embedder
        self._owns_embedder = embedder is None  # a caller's embedder stays open after close()
        self._sink = sink
        self._sparse_encoder: Any = None
        self._query_encoder: tuple[str, Any] | None = None
        self._sparse_lock = threading.Lock()
        self._chunker: Any = None
        self._cache: Any = None
        self._fingerprint: str | None = None
        # Readers of an embedded store take the shared lock: only one process may open its shard,
        # so a reader refuses at once while an ingest writes it (and never harms that writer).
        mode = "shared" if not lock and self.store is not None else lock
        #: Where a damaged state was moved when ``recover_state`` opened a fresh one; the next
        #: ``verify(repair=True)`` rebuilds the state from the collection.
        self.recovered_from: Path | None = None
        try:
            self.state = State(self.state_path, lock=mode)
        except StateCorruptError:
            if not recover_state:
                raise
            self.recovered_from = State.set_aside(self.state_path)
            self.state = State(self.state_path, lock=mode)
        #: Collections behind versions (a server: the collection is an alias of
        #: ``<collection>__vN``; see qflume.versions); ``version`` is the live one this
        #: pipeline reads and writes, by its physical name (None: not versioned yet, or plain).
        self.versioned = versioned
        self.version = None
        if versioned:
            from qflume.versions import open_version

            self.version = open_version(self, given)
        self._stop = threading.Event()
        self._abort = threading.Event()

    @staticmethod
    def state_base(
        store: str | os.PathLike[str] | None,
        url: str | None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> Path:
        """The folder holding a target's state and embedding cache: the store, or for a server
        ``state_dir`` (default ./.qflume/servers/<host>_<port>)."""
        if url is None:
            return Path(store if store is not None else ".qflume")
        host = url.split("://", 1)[-1].rstrip("/").replace(":", "_").replace("/", "_")
        return Path(state_dir) if state_dir is not None else Path(".qflume") / "servers" / host

    # -- lazily built components ------------------------------------------------------

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from qflume.embed import Embedder

            self._embedder = Embedder(self.model)
        return self._embedder

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            if self.url is not None:
                from qflume.sinks.grpc import GrpcSink

                self._sink = GrpcSink(
                    self.url,
                    self.version.name if self.version is not None else self.collection,
                    api_key=self.api_key,
                    wait=self.wait,
                    outbox=self.state_path.with_name(f"{self.collection}.outbox"),
                    outbox_bytes=self.outbox_bytes,
                    outage_deadline=self.outage_deadline,
                    versioned=self.versioned and self.version is None,
                )
            else:
                from qflume.sinks.edge import EdgeSink

                assert self.store is not None
                if self.version is not None:  # by its physical name: the state's live version
                    self._sink = EdgeSink(self.store, self.version.name, follow_pointer=False)
                else:
                    self._sink = EdgeSink(self.store, self.collection)
        return self._sink

    @property
    def chunker(self) -> Any:
        if self._chunker is None:
            from qflume.chunk import Chunker

            if self.chunk_tokens is not None:
                tok = self._model_folder() / "tokenizer.json"
                self._chunker = Chunker(
                    max_tokens=self.chunk_tokens, tokenizer=str(tok), overlap=self.overlap
                )
            else:
                self._chunker = Chunker(max_chars=self.chunk_chars, overlap=self.overlap)
        return self._chunker

    @property
    def cache(self) -> Any:
        if self._cache is None:
            from qflume.cache import EmbeddingCache

            self._cache = EmbeddingCache(self.cache_path, max_entries=self.cache_entries)
        return self._cache

    @property
    def sparse_encoder(self) -> Any:
        """The documents' sparse encoder (`Bm25`, or `Splade` of ``sparse_model``); None
        without sparse vectors."""
        if self._sparse_encoder is None and self.sparse_kind != "none":
            with self._sparse_lock:  # serve's searches and writes may both ask first
                if self._sparse_encoder is None:
                    self._sparse_encoder = _sparse_encoder(self.sparse_kind, self.sparse_model)
        return self._sparse_encoder

    def sparse_id(self) -> str:
        """The sparse vectors' part of the fingerprint: ``none``, ``bm25``, or for SPLADE
        ``splade|sparse_model=<its model id>`` (another SPLADE model re-sends every document)."""
        if self.sparse_kind != "splade":
            return self.sparse_kind
        from qflume.sparse import splade_fingerprint

        if self._sparse_encoder is not None:
            return f"splade|sparse_model={self._sparse_encoder.model_id}"
        if self.sparse_model is None:
            raise InvalidInputError(SPLADE_NEEDS_MODEL)
        return f"splade|sparse_model={splade_fingerprint(self.sparse_model)}"

    def record_sparse(self) -> None:
        """Record in the state which sparse vector the collection's points carry (and the
        SPLADE model that made them): what `query_sparse` encodes queries for."""
        rec: dict[str, Any] = {"kind": self.sparse_kind}
        if self.sparse_kind == "splade":
            rec["model"] = str(Path(self.sparse_model).resolve())  # type: ignore[arg-type]
            rec["model_id"] = self.sparse_encoder.model_id
        self.state.set_meta("sparse", rec)

    def query_sparse(self, queries: Sequence[str]) -> tuple[str, SparseBatch]:
        """The collection's sparse vector name and the query vectors of ``queries`` for it.

        The encoder is the one the last ingest recorded (`record_sparse`): BM25, or SPLADE with
        the model it recorded; a ``sparse``/``sparse_model`` given to this pipeline is used
        instead, and a SPLADE model other than the collection's is refused. A collection with
        no record (ingested before qflume recorded it, or a server's collection searched from
        another state folder) is taken as BM25 unless ``sparse`` says otherwise."""
        if self._query_encoder is None:
            with self._sparse_lock:
                if self._query_encoder is None:
                    self._query_encoder = self._resolve_query_encoder()
        kind, encoder = self._query_encoder
        return kind, encoder.embed_query(list(queries))

    def _resolve_query_encoder(self) -> tuple[str, Any]:
        rec = self.state.get_meta("sparse")
        rec = rec if isinstance(rec, dict) else {}
        name = repr(self.collection)
        kind = self.sparse_kind if self.sparse_kind != "none" else str(rec.get("kind") or "bm25")
        if kind == "none":
            raise InvalidInputError(
                f"collection {name} has no sparse vectors (ingested with sparse none): ingest it "
                "with --sparse bm25, or --sparse splade --sparse-model DIR, for sparse or hybrid "
                "search"
            )
        if kind != "splade":
            return kind, _sparse_encoder(kind, None)
        if self.sparse_kind == "splade":
            encoder = self._sparse_encoder or _sparse_encoder(kind, self.sparse_model)
            self._sparse_encoder = encoder
        else:
            model = self.sparse_model or rec.get("model")
            if model is None:
                raise InvalidInputError(
                    f"collection {name} holds SPLADE vectors: pass --sparse-model DIR "
                    "(sparse_model=), the model it was ingested with"
                )
            if self.sparse_model is None and not Path(model).is_dir():
                raise InvalidInputError(
                    f"collection {name} was ingested with the SPLADE model {model}, which is "
                    "not there any more: pass --sparse-model DIR with the same model"
                )
            encoder = _sparse_encoder(kind, model)
        want = rec.get("model_id")
        if rec.get("kind") == "splade" and want and encoder.model_id != want:
            raise InvalidInputError(
                f"collection {name} was ingested with SPLADE model {want} "
                f"({rec.get('model')}); {encoder.model_path} is {encoder.model_id}: query it "
                "with the same --sparse-model (or ingest again with this one)"
            )
        return kind, encoder

    def fingerprint(self) -> str:
        """What produced the points: model, chunker settings, sparse vectors (and model)."""
        if self._fingerprint is None:
            chunking = (
                f"tokens={self.chunk_tokens}" if self.chunk_tokens else f"chars={self.chunk_chars}"
            )
            self._fingerprint = (
                f"{self.model_id()}|{chunking}|overlap={self.overlap}|sparse={self.sparse_id()}"
            )
        return self._fingerprint

    def reader_fingerprint(self) -> str:
        """The fingerprint of documents a reader made (PDF, HTML, DOCX, plug-ins): a file
        ingested before as plain text (HTML) is read again by its reader."""
        return f"{self.fingerprint()}|reader=1"

    def _model_folder(self) -> Path:
        """The model folder, without loading the model into ONNX Runtime."""
        if self._embedder is not None:
            return Path(self._embedder.model_path)
        from qflume.embed import _has_cuda, _Spec

        return Path(_Spec(self.model, max_tokens=None, default_fp32=_has_cuda()).folder)

    def model_id(self) -> str:
        """The embedding model's id, without loading the model when it is not loaded yet."""
        if self._embedder is not None:
            return str(self._embedder.model_id)
        try:
            from qflume.embed import model_fingerprint
        except ImportError:  # no cheap fingerprint available: load the model
            return str(self.embedder.model_id)
        return str(model_fingerprint(self.model))

    def collection_spec(self) -> CollectionSpec:
        names = () if self.sparse_kind == "none" else (self.sparse_kind,)
        return CollectionSpec(dim=int(self.embedder.dim), sparse=names)

    # -- public operations ------------------------------------------------------------

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
        roots = [str(Path(p).resolve()) for p in paths]
        for r in roots:
            if not os.path.exists(r):
                from qflume.exceptions import QflumeIOError

                raise QflumeIOError(2, f"{r}: no such file or folder to ingest")
        return self._run(
            lambda report: self._plan_files(roots, include, exclude, delete_missing, report),
            dry_run,
        )

    def ingest_records(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        delete_missing: bool = False,
        dry_run: bool = False,
    ) -> IngestReport:
        """Ingest {"id", "text", "metadata"} records, keyed by id (same semantics as files)."""
        return self._run(
            lambda report: self._plan_records(records, delete_missing, report), dry_run
        )

    def status(self) -> dict[str, Any]:
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
            with contextlib.suppress(Exception):
                out["cache"] = self.cache.stats()
        return out

    def verify(self, *, repair: bool = False) -> dict[str, Any]:
        """Reconcile the state with the collection: missing, orphan and stale points. With
        ``repair`` after a damaged state was set aside (``recover_state``), the state is first
        rebuilt from the collection's payloads."""
        rebuilt = None
        if repair and self.recovered_from is not None:
            rebuilt = self._rebuild_state()
        expected: dict[str, tuple[str, bytes]] = {}
        for doc in self.state.iter_all():
            for h in _split_hashes(doc.chunks):
                expected[point_id(doc.key, h)] = (doc.key, h)
        orphans: list[str] = []
        stale: list[str] = []
        seen: set[str] = set()
        for rec in self.sink.scroll(with_payload=True):
            pid = str(rec.id)
            if pid not in expected:
                orphans.append(pid)
                continue
            seen.add(pid)
            meta = (rec.payload or {}).get("metadata") or {}
            key, h = expected[pid]
            if meta.get("source") != key or meta.get("content_hash") != h.hex():
                stale.append(pid)
        missing = [pid for pid in expected if pid not in seen]
        # documents whose writes are pending (a run stopped, or a repair): the next ingest
        # finishes them; until then the collection is not known to be complete
        stats = self.state.stats()
        pending = stats.pending_documents
        report: dict[str, Any] = {
            "points_expected": len(expected),
            "missing": len(missing),
            "orphans": len(orphans),
            "stale": len(stale),
            "documents_pending": pending,
            # rebuilt from the collection after a damaged state and not seen by an ingest since
            "documents_recovered": stats.by_root.get(RECOVERED_ROOT, 0),
            "ok": not (missing or orphans or stale or pending),
            "repaired": False,
        }
        if rebuilt is not None:
            report["state_rebuilt"] = {
                "documents": rebuilt,
                "damaged_file": str(self.recovered_from),
            }
            report["repaired"] = True
            self.recovered_from = None
        if repair and (missing or orphans or stale):
            if orphans:
                self.sink.delete(orphans)
            # Missing or stale points: the next ingest re-sends every chunk of those documents
            # (cache hits make it cheap) and deletes what they no longer have.
            broken = {expected[p][0] for p in missing + stale}
            if broken:
                self.state.forget_chunks(sorted(broken))
            self.sink.flush()
            report["repaired"] = True
            report["documents_to_rebuild"] = sorted(broken)
        return report

    def _rebuild_state(self) -> int:
        """Document rows rebuilt from the points' payloads (source, content_hash, chunk_index,
        start, end). Contents and settings are unknown, so the next ingest re-reads each
        document and re-sends its points (embeddings come from the cache): nothing is lost, and
        what the documents no longer have is deleted then."""
        per_chunk = ("chunk_index", "start", "end", "content_hash", *CHUNK_META_KEYS)
        chunks: dict[str, dict[bytes, tuple[int, int, int]]] = {}
        metas: dict[str, str] = {}
        for rec in self.sink.scroll(with_payload=True):
            meta = (rec.payload or {}).get("metadata") or {}
            key, h = meta.get("source"), meta.get("content_hash")
            if not isinstance(key, str) or not isinstance(h, str) or len(h) != 2 * HASH_LEN:
                continue  # not a qflume point: verify reports it as an orphan
            try:
                row = (int(meta["chunk_index"]), int(meta["start"]), int(meta["end"]))
                digest = bytes.fromhex(h)
            except (KeyError, TypeError, ValueError):
                continue
            chunks.setdefault(key, {})[digest] = row
            if key not in metas:
                doc_meta = {k: v for k, v in meta.items() if k not in per_chunk}
                metas[key] = json.dumps(doc_meta, sort_keys=True, ensure_ascii=False)
        docs = []
        for key in sorted(chunks):
            order = sorted(chunks[key].items(), key=lambda kv: kv[1])
            docs.append(
                DocUpdate(
                    key=key,
                    root=RECOVERED_ROOT,
                    content_hash=None,
                    size=-1,
                    mtime_ns=0,
                    meta_json=metas[key],
                    fingerprint="",  # unknown: the next ingest re-sends every point
                    chunks=b"".join(h for h, _ in order),
                    offsets=np.asarray([r for _, r in order], np.int64).reshape(-1, 3).tobytes(),
                )
            )
        return self.state.restore(docs)

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

    def stop(self) -> None:
        """Ask a running ingest to stop reading, drain what is in flight and commit."""
        self._stop.set()

    def close(self) -> None:
        self._close_readers()
        for comp in (self._sink, self._cache):
            if comp is not None:
                with contextlib.suppress(Exception):
                    comp.close()
        emb = self._embedder
        if self._owns_embedder and emb is not None and hasattr(emb, "close"):
            with contextlib.suppress(Exception):
                emb.close()
        self.state.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- planning (the first stage) ---------------------------------------------------------

    def _plan_files(
        self,
        roots: list[str],
        include: Sequence[str] | None,
        exclude: Sequence[str] | None,
        delete_missing: bool,
        report: IngestReport,
    ) -> Iterator[_Doc | tuple[str, str, DocState]]:
        from qflume.scan import scan

        for root in roots:
            known = self._known(root)
            entries = scan(
                [root],
                include=include,
                exclude=exclude,
                known=known,
                max_file_size=self.max_file_size,
                raw_extensions=self.readers.extensions(),
            )
            report.documents_seen += len(entries)
            self._progress.add_documents(
                len(entries), bytes=sum(e.size for e in entries if e.ok and not e.unchanged)
            )
            seen_keys: set[str] = set()
            pending: list[Any] = []
            for e in entries:
                seen_keys.add(e.key)
                if e.skip is not None:
                    report.documents_skipped += 1
                    skip = {"key": printable(e.key), "reason": e.skip}
                    if e.detail:
                        skip["detail"] = printable(e.detail)
                    report.skipped.append(skip)
                    self._progress.advance(documents=1)
                    continue
                if e.unchanged:
                    report.documents_unchanged += 1
                    self._progress.advance(documents=1)
                    continue
                pending.append(e)
                if len(pending) >= 256:
                    yield from self._diff_files(root, pending, report)
                    pending = []
                if self._stop.is_set():
                    return
            yield from self._diff_files(root, pending, report)
            if delete_missing and not self._stop.is_set():
                gone = [k for k in self.state.keys_under([root]) if k not in seen_keys]
                for key, prev in self.state.get_many(gone).items():
                    yield ("delete", key, prev)

    def _known(self, root: str) -> dict[str, tuple[int, int, bytes]]:
        """The fast path applies only to documents fully committed with this pipeline."""
        known = self.state.known_files([root])
        if not known:
            return known
        fp = self.fingerprint()
        for key in self.state.not_current(root, fp, self.reader_fingerprint()):
            known.pop(key, None)
        return known

    def _diff_files(self, root: str, entries: list[Any], report: IngestReport) -> Iterator[_Doc]:
        if not entries:
            return
        prev = self.state.get_many([e.key for e in entries])
        fp = None
        touched: list[tuple[str, int, int]] = []
        for e in entries:
            p = prev.get(e.key)
            if p is not None and p.root != root and _still_there(p.root, e.key, e.path):
                report.documents_skipped += 1
                report.skipped.append({"key": e.key, "reason": _conflict(e.key, p.root, root)})
                self._progress.advance(documents=1, dropped_bytes=e.size)
                continue
            meta = {"source": e.key}
            meta_json = json.dumps(meta, sort_keys=True, ensure_ascii=False)
            reader = self.readers.get(e.path)
            if p is not None and p.content_hash == e.hash and not p.pending:
                fp = fp or self.fingerprint()
                # a reader's document metadata (a title) comes from the bytes: same bytes, same
                if (
                    p.fingerprint == self.reader_fingerprint()
                    if reader is not None
                    else p.fingerprint == fp and p.meta_json == meta_json
                ):
                    report.documents_unchanged += 1
                    touched.append((e.key, e.size, e.mtime_ns))
                    self._progress.advance(documents=1, dropped_bytes=e.size)
                    continue
            if p is None or not p.chunks:
                report.documents_new += 1
            else:
                report.documents_changed += 1
            yield _Doc(
                e.key, root, e.hash, e.size, e.mtime_ns, meta, meta_json, p, path=e.path,
                reader=reader,
            )  # fmt: skip
        if touched and not self._dry_run:
            self.state.touch(touched)

    def _plan_records(
        self, records: Iterable[Mapping[str, Any]], delete_missing: bool, report: IngestReport
    ) -> Iterator[_Doc | tuple[str, str, DocState]]:
        seen: set[str] = set()
        pending: list[_Doc] = []

        def flush() -> Iterator[_Doc]:
            prev = self.state.get_many([d.key for d in pending])
            for d in pending:
                p = prev.get(d.key)
                if p is not None and p.root not in (RECORDS_ROOT, RECOVERED_ROOT):
                    report.documents_skipped += 1
                    report.skipped.append({"key": d.key, "reason": _conflict(d.key, p.root, None)})
                    self._progress.advance(documents=1)
                    continue
                d.prev = p
                if (
                    p is not None
                    and p.content_hash == d.content_hash
                    and p.meta_json == d.meta_json
                    and not p.pending
                    and p.fingerprint == self.fingerprint()
                ):
                    report.documents_unchanged += 1
                    self._progress.advance(documents=1)
                    continue
                if p is None or not p.chunks:
                    report.documents_new += 1
                else:
                    report.documents_changed += 1
                yield d

        for i, rec in enumerate(records):
            if self._stop.is_set():
                break
            report.documents_seen += 1
            doc = self._record_doc(i, rec, report)
            if doc is None:
                self._progress.advance(documents=1)
                continue
            if doc.key in seen:
                report.documents_skipped += 1
                report.skipped.append({"key": doc.key, "reason": "duplicate id in this run"})
                self._progress.advance(documents=1)
                continue
            seen.add(doc.key)
            pending.append(doc)
            if len(pending) >= 256:
                yield from flush()
                pending = []
        yield from flush()
        if delete_missing and not self._stop.is_set():
            gone = [k for k in self.state.keys_under([RECORDS_ROOT]) if k not in seen]
            for key, prev in self.state.get_many(gone).items():
                yield ("delete", key, prev)

    def _record_doc(self, i: int, rec: Mapping[str, Any], report: IngestReport) -> _Doc | None:
        def skip(key: str, reason: str) -> None:
            report.documents_skipped += 1
            report.skipped.append({"key": key, "reason": reason})

        if not isinstance(rec, Mapping):
            skip(f"#{i}", f"record #{i} is {type(rec).__name__}, not a mapping")
            return None
        if "_error" in rec:  # a line the reader could not parse
            skip(f"#{i}", str(rec["_error"]))
            return None
        rid = rec.get("id")
        if rid is None or isinstance(rid, bool) or not isinstance(rid, (str, int)):
            skip(f"#{i}", f"record #{i} has no usable 'id' (a str or int)")
            return None
        key = str(rid)
        bad = text_problem(key, f"record #{i}: id '{printable(key)}'")
        if bad:
            skip(f"#{i}", bad)
            return None
        text = rec.get("text")
        if not isinstance(text, str):
            skip(key, f"record {key!r} has no 'text' string")
            return None
        if not text.strip():
            skip(key, "empty")
            return None
        meta = rec.get("metadata") or {}
        if not isinstance(meta, Mapping):
            skip(key, f"record {key!r}: 'metadata' must be an object")
            return None
        bad = metadata_problem(meta)
        if bad:
            skip(key, f"record {key!r}: {bad}")
            return None
        meta = {**meta, "source": key}
        try:
            meta_json = json.dumps(meta, sort_keys=True, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            skip(key, f"record {key!r}: metadata is not JSON: {e}")
            return None
        try:
            h = content_hash(text)
        except UnicodeEncodeError:
            skip(key, "not-utf8 (lone surrogates in text)")
            return None
        n = len(text)
        return _Doc(key, RECORDS_ROOT, h, n, 0, meta, meta_json, None, text=text)

    # -- chunk + diff to the chunk -------------------------------------------------------------

    def _chunk_docs(self, docs: list[_Doc], report: IngestReport) -> _Batch:
        from qflume.scan import read_text

        if not docs:  # a batch of deletions only: no chunker (and no model) needed
            return _empty_batch()
        # One text per chunking segment (a document has one, a PDF one per page window), so
        # that one parallel chunk_batch call serves the whole batch.
        texts: list[str] = []
        keys: list[str] = []
        seg_base: list[int] = []
        first_seg: list[int] = []
        ok: list[_Doc] = []
        for d in docs:
            if d.text is None:
                try:
                    d.text = read_text(d.path)
                except (QflumeError, OSError) as e:
                    report.documents_skipped += 1
                    report.skipped.append({"key": d.key, "reason": f"unreadable: {e}"})
                    self._progress.advance(documents=1, dropped_bytes=d.size)
                    continue
            if d.path is not None and d.reader is None and d.key.lower().endswith(_MARKDOWN_EXT):
                st = ChunkMeta(headings=heading_index(d.text))
                d.structure = st if st else None
            ok.append(d)
            first_seg.append(len(texts))
            cuts = d.segments or [0]
            for k, lo in enumerate(cuts):
                hi = cuts[k + 1] if k + 1 < len(cuts) else len(d.text)
                texts.append(d.text if len(cuts) == 1 else d.text[lo:hi])
                keys.append(d.key)
                seg_base.append(lo)
        first_seg.append(len(texts))
        cb = self.chunker.chunk_batch(texts, keys)
        seg_indptr = np.asarray(cb.doc_indptr)
        indptr = seg_indptr[np.asarray(first_seg, np.int64)]
        offsets = np.asarray(cb.offsets)
        if len(texts) > len(ok):  # segment offsets into their whole document's text
            shift = np.repeat(np.asarray(seg_base, np.int64), np.diff(seg_indptr))
            offsets = offsets + shift[:, None]
        hashes = np.asarray(cb.hashes)
        ids = np.asarray(cb.ids)
        fp, reader_fp = self.fingerprint(), self.reader_fingerprint()
        out = _empty_batch()
        sel: list[int] = []
        doc_index: list[int] = []
        chunk_index: list[int] = []
        extra_meta: list[dict[str, Any]] = []
        extra_index: list[int] = []
        for di, d in enumerate(ok):
            lo, hi = int(indptr[di]), int(indptr[di + 1])
            diff = _DocDiff(d, fp if d.reader is None else reader_fp)
            st, d.structure = d.structure, None
            uniq: list[dict[str, Any]] = []
            base = 0
            if st is not None:
                uniq, idx, digests = st.rows(offsets[lo:hi, 0], offsets[lo:hi, 1])
                base = len(extra_meta)
                extra_meta.extend(uniq)
            if st is None:
                send = diff.take(hashes[lo:hi], offsets[lo:hi])
                extra_index.extend([-1] * len(send))
            else:
                send = diff.take(hashes[lo:hi], offsets[lo:hi], 0, digests, uniq, idx)
                m = idx[send]
                extra_index.extend(np.where(m >= 0, base + m, -1).tolist())
            sel.extend((lo + send).tolist())
            doc_index.extend([len(out.plans)] * len(send))
            chunk_index.extend(send.tolist())
            out.plans.append(diff.finish())
            report.chunks_total += diff.count
        if sel:
            s = np.asarray(sel, np.int64)
            out.texts = [
                ok[doc_index_i].text[int(offsets[k, 0]) : int(offsets[k, 1])]  # type: ignore[index]
                for k, doc_index_i in zip(s, _doc_of(indptr, s), strict=True)
            ]
            out.hashes = hashes[s]
            out.ids = ids[s]
            out.doc_index = np.asarray(doc_index, np.int64)
            out.chunk_index = np.asarray(chunk_index, np.int64)
            out.start = offsets[s, 0].astype(np.int64)
            out.end = offsets[s, 1].astype(np.int64)
            if extra_meta:
                out.extra_meta = extra_meta
                out.extra_index = np.asarray(extra_index, np.int64)
        return out

    # -- documents a reader turns into text (qflume.readers) -----------------------------------

    def _read_workers(self) -> int:
        """Reader processes: qflume's thread count (`qflume.set_threads`), at most 8, and one
        per 256 MiB of ``max_memory``."""
        from qflume._core import get_threads

        n = min(get_threads(), os.cpu_count() or 1, 8)
        if self.max_memory is not None:
            n = min(n, self.max_memory // (256 << 20))
        return max(1, n)

    def _readers_pool(self) -> Any:
        if self._reader_pool is None:
            from qflume.readers.pool import ReaderPool

            self._reader_pool = ReaderPool(self._read_workers())
        return self._reader_pool

    def _close_readers(self) -> None:
        pool, self._reader_pool = self._reader_pool, None
        if pool is not None:
            pool.close()

    def _read_ahead(self, items: Iterator[Any], report: IngestReport) -> Iterator[Any]:
        """The planned items, in order, with reader documents extracted ahead in the reader
        pool: up to two per worker in flight, and at most ``4 * stream_bytes`` of their files."""
        pending: deque[tuple[Any, Any]] = deque()
        in_flight = 0
        most = 2 * self._read_workers()
        try:
            for item in items:
                if isinstance(item, _Doc) and item.reader is not None and item.path is not None:
                    job = self._readers_pool().read(item.reader, item.path, PDF_WHOLE_PAGES)
                    pending.append((item, job))
                    in_flight += item.size
                else:
                    pending.append((item, None))
                while pending and (
                    pending[0][1] is None
                    or pending[0][1].done()
                    or len(pending) > most
                    or in_flight > 4 * self.stream_bytes
                ):
                    head, job = pending.popleft()
                    if job is not None:
                        in_flight -= head.size
                        head = self._take_read(head, job, report)
                    if head is not None:
                        yield head
                if self._abort.is_set():
                    return
            while pending:
                head, job = pending.popleft()
                if job is not None:
                    head = self._take_read(head, job, report)
                if head is not None:
                    yield head
                if self._abort.is_set():
                    return
        finally:
            for _, job in pending:
                if job is not None:
                    job.cancel()

    def _skip_doc(self, d: _Doc, reason: str, detail: str, report: IngestReport) -> None:
        report.documents_skipped += 1
        skip = {"key": printable(d.key), "reason": reason}
        if detail:
            skip["detail"] = printable(detail)
        report.skipped.append(skip)
        self._progress.advance(documents=1, dropped_bytes=d.size)

    def _take_read(self, d: _Doc, job: Any, report: IngestReport) -> _Doc | None:
        """The document with its reader's text, or None when it is skipped."""
        try:
            got = job.result()
        except ReaderSkip as e:
            self._skip_doc(d, e.reason, e.detail, report)
            return None
        except Exception as e:
            self._skip_doc(d, "unreadable", f"{type(e).__name__}: {e}", report)
            return None
        if isinstance(got, int):  # a large PDF: read page window by page window
            d.pages_total = got
            return d
        problem = self._use_document(d, got)
        if problem is not None:
            self._skip_doc(d, *problem, report)
            return None
        return d

    def _use_document(self, d: _Doc, doc: Document) -> tuple[str, str] | None:
        """Takes a reader's Document into ``d``: (reason, detail) when it cannot be used."""
        from qflume.readers.pdf import WINDOW_PAGES

        text = doc.text
        if not text.strip():
            return ("no-text", "the reader found no text in it")
        if callable(d.reader):  # a plug-in's text: checked as records' texts are
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return ("unreadable", "the reader's text has lone surrogates (not UTF-8)")
        meta = dict(doc.metadata or {})
        if meta and (bad := metadata_problem(meta)):
            return ("unreadable", f"the reader's metadata: {bad}")
        meta["source"] = d.key
        try:
            meta_json = json.dumps(meta, sort_keys=True, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            return ("unreadable", f"the reader's metadata is not JSON: {e}")
        pages = None
        if doc.pages is not None:
            try:
                pages = [int(p) for p in doc.pages]
            except (TypeError, ValueError):
                return ("unreadable", "the reader's page offsets are not integers")
            if (
                not pages
                or pages[0] != 0
                or any(b < a for a, b in itertools.pairwise(pages))
                or pages[-1] > len(text)
            ):
                return ("unreadable", "the reader's page offsets must rise from 0 within the text")
        d.text, d.meta, d.meta_json = text, meta, meta_json
        st = ChunkMeta(pages, headings=heading_index(text) if doc.markdown else None)
        d.structure = st if st else None
        if pages is not None and len(pages) > WINDOW_PAGES:
            d.segments = pages[::WINDOW_PAGES]
        return None

    def _stream_pages(self, d: _Doc, report: IngestReport) -> Iterator[_Batch]:
        """A PDF of more than PDF_WHOLE_PAGES pages, read, chunked and sent page window by page
        window (readers.pdf.WINDOW_PAGES pages; the next windows are read in parallel while one
        is chunked): only those windows' text and chunks are held, whatever the page count. A
        window is chunked on its own, so no chunk spans a window's end; a PDF read whole is cut
        at the same page boundaries (its segments), so either route gives the same chunks."""
        from qflume.readers.pdf import PAGE_SEP, WINDOW_PAGES, join_pages, no_text

        assert d.path is not None
        path, n = d.path, d.pages_total
        diff = _DocDiff(d, self.reader_fingerprint(), streamed=True)
        plan = diff.plan
        pool = self._readers_pool()
        windows: deque[tuple[int, Any]] = deque()
        starts = iter(range(0, n, WINDOW_PAGES))

        def read_next() -> None:
            lo = next(starts, None)
            if lo is not None:
                windows.append((lo, pool.window(path, lo, min(n, lo + WINDOW_PAGES))))

        for _ in range(pool.workers):
            read_next()
        j = base = 0
        first, any_text, rows = True, False, self.batch_chunks
        try:
            while windows:
                lo, job = windows.popleft()
                page_texts = job.result()
                read_next()
                t = time.perf_counter()
                text, page_starts = join_pages(page_texts, base)
                any_text = any_text or bool(text.strip())
                cb = self.chunker.chunk_batch([text], [d.key])
                offsets = np.asarray(cb.offsets) + base
                hashes, ids = np.asarray(cb.hashes), np.asarray(cb.ids)
                meta = ChunkMeta(page_starts, first_page=lo + 1)
                uniq, idx, digests = meta.rows(offsets[:, 0], offsets[:, 1])
                s = diff.take(hashes, offsets, j, digests, uniq, idx)
                sel, chunk_index = s, j + s
                j += len(offsets)
                ahead = hashes[s].tobytes()
                _record(report, "plan", time.perf_counter() - t, len(sel), docs=0)
                for a in range(0, len(sel), rows):
                    b = min(len(sel), a + rows)
                    part = s[a:b]
                    yield _Batch(
                        plans=[plan],
                        texts=[
                            text[int(offsets[i, 0]) - base : int(offsets[i, 1]) - base]
                            for i in part
                        ],
                        hashes=hashes[part],
                        ids=ids[part],
                        doc_index=np.zeros(b - a, np.int64),
                        chunk_index=np.asarray(chunk_index[a:b], np.int64),
                        start=offsets[part, 0].astype(np.int64),
                        end=offsets[part, 1].astype(np.int64),
                        final=False,
                        first=first,
                        ahead={d.key: (d.root, ahead)} if a == 0 and ahead else None,
                        extra_meta=uniq,
                        extra_index=idx[part],
                    )
                    first = False
                base += len(text) + len(PAGE_SEP)
                if self._abort.is_set():
                    return
            if not any_text:
                raise no_text(n)
        except ReaderSkip as e:
            self._skip_doc(d, e.reason, e.detail, report)
            diff.abandon()
        except (QflumeError, OSError) as e:
            self._skip_doc(d, "unreadable", str(e), report)
            diff.abandon()
        else:
            diff.finish()
            report.chunks_total += diff.count
        finally:
            for _, job in windows:
                job.cancel()
        last = _empty_batch()
        last.plans, last.first, last.final = [plan], first, True
        _record(report, "plan", 0.0, 0, docs=1)
        yield last

    def _stream_doc(self, d: _Doc, report: IngestReport) -> Iterator[_Batch]:
        """One large file, read, chunked and sent block by block: memory stays bounded by the
        block size and the slice size whatever the file's size (what a document always holds
        in full is 16 bytes of hash and 24 of offsets per distinct chunk, for the state row).
        The plan is completed with the last slice, which commits it; an error while reading
        (the file changed or vanished since the scan) sends back to the collection what it had
        and skips the document."""
        assert d.path is not None
        diff = _DocDiff(d, self.fingerprint(), streamed=True)
        plan = diff.plan
        j = 0
        first = True
        rows = self.batch_chunks
        try:
            blocks = self.chunker.chunk_file_hashed(d.path, key=d.key, block_size=self.stream_block)
            while True:
                t = time.perf_counter()
                block = next(blocks, None)
                if block is None:
                    break
                offsets, texts, hashes, ids = block
                s = diff.take(hashes, offsets, j)
                sel, chunk_index = s, j + s
                j += len(texts)
                ahead = hashes[s].tobytes()
                _record(report, "plan", time.perf_counter() - t, len(sel), docs=0)
                for lo in range(0, len(sel), rows):
                    hi = min(len(sel), lo + rows)
                    part = s[lo:hi]
                    yield _Batch(
                        plans=[plan],
                        texts=[texts[i] for i in part],
                        hashes=hashes[part],
                        ids=ids[part],
                        doc_index=np.zeros(hi - lo, np.int64),
                        chunk_index=np.asarray(chunk_index[lo:hi], np.int64),
                        start=offsets[part, 0].astype(np.int64),
                        end=offsets[part, 1].astype(np.int64),
                        final=False,
                        first=first,
                        ahead={d.key: (d.root, ahead)} if lo == 0 and ahead else None,
                    )
                    first = False
                if self._abort.is_set():
                    return
        except (QflumeError, OSError) as e:
            report.documents_skipped += 1
            report.skipped.append({"key": d.key, "reason": f"unreadable: {e}"})
            diff.abandon()
        else:
            diff.finish()
            report.chunks_total += diff.count
        last = _empty_batch()
        last.plans, last.first, last.final = [plan], first, True
        _record(report, "plan", 0.0, 0, docs=1)
        yield last

    # -- the run -------------------------------------------------------------------------------

    def _run(
        self,
        planner: Callable[[IngestReport], Iterator[_Doc | tuple[str, str, DocState]]],
        dry_run: bool,
    ) -> IngestReport:
        t0, cpu0, since = time.perf_counter(), time.process_time(), time.time()
        report = IngestReport(dry_run=dry_run)
        report.stages = {name: StageStats() for name in ("plan", "embed", "write")}
        self._dry_run = dry_run
        if self.version is not None:
            from qflume.versions import check_settings

            check_settings(self)
        self._stop.clear()
        self._abort.clear()
        self._progress = Progress(
            resolve_mode(self.progress),
            interval=resolve_interval(self.progress_interval),
            callback=self.on_progress,
        )
        restore = self._install_sigint()
        outcome = "failed"
        try:
            if dry_run:
                self._dry(planner, report)
            else:
                self._stream(planner, report)
            outcome = "stopped" if self._stop.is_set() else "done"
        finally:
            restore()
            self._close_readers()
            self._progress.close(outcome)
            report.elapsed_s = time.perf_counter() - t0
            report.cpu_s = time.process_time() - cpu0
        report.interrupted = self._stop.is_set()
        report.alerts = alerts.during(since, time.time())
        report.setup = self._setup(report)
        if not dry_run:
            try:
                report.storage = metrics.collection_info(self.sink)
            except Exception as e:  # the run is done; its report says why this is missing
                report.storage = {"error": str(e)}
            d = report.as_dict()
            analysis.publish(d, self.collection)
            self.state.set_meta("last_run", d)
        return report

    def _setup(self, report: IngestReport) -> dict[str, Any]:
        """The settings the report's suggestions are judged against."""
        sink, emb = self._sink, self._embedder
        adaptive = getattr(sink, "adaptive", None)
        out: dict[str, Any] = {
            "target": "server" if self.url is not None else "embedded",
            "wait": self.wait,
            "chunking": "tokens" if self.chunk_tokens is not None else "chars",
            "cores": analysis.cores(),
            "adaptive": adaptive is not None,
            "in_flight": getattr(adaptive, "in_flight", getattr(sink, "max_in_flight", None)),
            "in_flight_max": getattr(adaptive, "hi", None),
        }
        if emb is not None and report.chunks_embedded:  # a model that ran (reading it loads none)
            out["batch_tokens"] = getattr(emb, "batch_tokens", None)
            out["per_text"] = getattr(emb, "per_text", None)
        return out

    def _install_sigint(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            if self._stop.is_set():
                self._abort.set()
                raise KeyboardInterrupt
            self._stop.set()
            import sys

            print(
                "\nqflume: stopping: finishing what is in flight (Ctrl-C again to abort now)",
                file=sys.stderr,
            )

        try:
            old = signal.signal(signal.SIGINT, handler)
        except ValueError:
            return lambda: None
        return lambda: signal.signal(signal.SIGINT, old)

    def _batches(
        self,
        planner: Callable[[IngestReport], Iterator[_Doc | tuple[str, str, DocState]]],
        report: IngestReport,
    ) -> Iterator[_Batch]:
        """Group planned documents into batches of about batch_chunks chunks."""
        docs: list[_Doc] = []
        deleted: list[tuple[str, list[str]]] = []
        text_chars = 0
        budget = self.batch_chunks * (self.chunk_chars or 4 * (self.chunk_tokens or 256))

        def make(t: float) -> _Batch:
            batch = self._chunk_docs(docs, report)
            batch.deleted = deleted
            _record(report, "plan", time.perf_counter() - t, len(batch.texts), docs=len(docs))
            return batch

        t = time.perf_counter()
        for item in self._read_ahead(planner(report), report):
            if isinstance(item, tuple):
                _, key, prev = item
                ids = [point_id(key, h) for h in sorted(prev.possibly_present())]
                deleted.append((key, ids))
                report.documents_deleted += 1
            elif item.pages_total:  # a large PDF: page window by page window
                if docs or deleted:
                    yield from make(t).slices(self.batch_chunks)
                    docs, deleted, text_chars = [], [], 0
                yield from self._stream_pages(item, report)
                t = time.perf_counter()
                continue
            elif item.text is None and item.path is not None and item.size > self.stream_bytes:
                if docs or deleted:  # keep the order: what was planned before goes first
                    yield from make(t).slices(self.batch_chunks)
                    docs, deleted, text_chars = [], [], 0
                yield from self._stream_doc(item, report)
                t = time.perf_counter()
                continue
            else:
                docs.append(item)
                text_chars += item.size if item.text is None else len(item.text)
            if text_chars >= budget or len(deleted) >= 1024:
                # time blocked on a full queue is not counted as busy
                yield from make(t).slices(self.batch_chunks)
                t = time.perf_counter()
                docs, deleted, text_chars = [], [], 0
            if self._abort.is_set():
                return
        if docs or deleted:
            yield from make(t).slices(self.batch_chunks)

    def _dry(
        self,
        planner: Callable[[IngestReport], Iterator[_Doc | tuple[str, str, DocState]]],
        report: IngestReport,
    ) -> None:
        for batch in self._batches(planner, report):
            n = len(batch.texts)
            if n:
                found = np.zeros(n, bool)
                if self.cache_path.exists():
                    found, _ = self.cache.get_many(self.model_id(), batch.hashes)
                    found = np.asarray(found, bool)
                report.cache_hits += int(found.sum())
                todo = [t for t, f in zip(batch.texts, found, strict=True) if not f]
                report.chunks_embedded += len(todo)
                if todo:
                    report.tokens_embedded += int(np.sum(self.embedder.count_tokens(todo)))
            report.points_upserted += n
            planned = sum(p.doc.size for p in batch.plans) if batch.first else 0
            self._progress.add_chunks_planned(n, bytes=planned)
            self._progress.advance(documents=len(batch.plans) if batch.final else 0, chunks=n)
            if batch.final:  # the plans of a sliced batch count once
                report.points_deleted += sum(len(p.lost_ids) for p in batch.plans)
                report.points_deleted += sum(len(ids) for _, ids in batch.deleted)
                report.payload_updates += sum(len(p.moved) + len(p.restated) for p in batch.plans)

    def _stream(
        self,
        planner: Callable[[IngestReport], Iterator[_Doc | tuple[str, str, DocState]]],
        report: IngestReport,
    ) -> None:
        q_embed: queue.Queue[Any] = queue.Queue(self.queue_batches)
        q_write: queue.Queue[Any] = queue.Queue(self.queue_batches)
        errors: list[BaseException] = []

        def put(q: queue.Queue[Any], item: Any) -> bool:
            while not self._abort.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def get(q: queue.Queue[Any]) -> Any:
            while not self._abort.is_set():
                try:
                    return q.get(timeout=0.1)
                except queue.Empty:
                    continue
            return _STOP

        def stage(
            body: Callable[[], None], downstream: queue.Queue[Any], name: str
        ) -> Callable[[], None]:
            """A stage thread: an error stops the whole run; downstream always hears the end."""

            def run() -> None:
                cpu = time.thread_time()
                try:
                    body()
                except BaseException as e:
                    errors.append(e)
                    self._abort.set()
                finally:
                    report.stages[name].cpu_s += time.thread_time() - cpu
                    put(downstream, _STOP)

            return run

        def plan() -> None:
            for batch in self._batches(planner, report):
                planned = sum(p.doc.size for p in batch.plans) if batch.first else 0
                self._progress.add_chunks_planned(len(batch.texts), bytes=planned)
                if not put(q_embed, batch):
                    return
            self._progress.plan_finished()

        def embed() -> None:
            while (batch := get(q_embed)) is not _STOP:
                metrics.gauge("queue_depth", value=q_embed.qsize(), stage="embed")
                t = time.perf_counter()
                self._embed_batch(batch, report)
                _record(report, "embed", time.perf_counter() - t, len(batch.texts))
                if not put(q_write, batch):
                    return

        plan_stage, embed_stage = stage(plan, q_embed, "plan"), stage(embed, q_write, "embed")

        threads = [
            threading.Thread(target=plan_stage, name="qflume-plan", daemon=True),
            threading.Thread(target=embed_stage, name="qflume-embed", daemon=True),
        ]
        for th in threads:
            th.start()
        try:
            self._write_stage(get, q_write, report)
        except BaseException as e:
            self._abort.set()
            errors.append(e)
        finally:
            for th in threads:
                while th.is_alive():
                    th.join(0.1)
            for name in ("embed", "write"):  # nothing waits once the run is over
                metrics.gauge("queue_depth", value=0, stage=name)
        if errors:
            first = errors[0]
            if isinstance(first, KeyboardInterrupt):
                raise first
            raise first

    def _embed_batch(self, batch: _Batch, report: IngestReport) -> None:
        n = len(batch.texts)
        if n == 0:
            return
        emb = self.embedder
        found, vectors = self.cache.get_many(emb.model_id, batch.hashes)
        found = np.asarray(found, bool)
        dense = np.empty((n, emb.dim), np.float32)
        if found.any():
            dense[found] = np.asarray(vectors, np.float32)[found]
        miss = np.flatnonzero(~found)
        report.cache_hits += n - len(miss)
        if len(miss):
            # Tokens the model saw, counted by the Embedder itself (per thread: exact when it is
            # shared); an embedder without the counter leaves tokens_embedded at 0.
            before = int(getattr(emb, "tokens_embedded", 0))
            new = emb.embed([batch.texts[i] for i in miss])
            report.tokens_embedded += int(getattr(emb, "tokens_embedded", 0)) - before
            dense[miss] = new
            self.cache.put_many(emb.model_id, batch.hashes[miss], new)
            report.chunks_embedded += len(miss)
        batch.dense = dense
        if self.sparse_encoder is not None:
            batch.sparse = {self.sparse_kind: self.sparse_encoder.embed(batch.texts)}

    def _write_stage(
        self, get: Callable[[queue.Queue[Any]], Any], q: queue.Queue[Any], report: IngestReport
    ) -> None:
        stats = report.stages["write"]
        sink = self.sink
        ensured = False
        group_updates: list[DocUpdate] = []
        group_deleted: list[str] = []
        group_points = 0
        group_docs = 0  # documents finished in this group (for progress: abandoned ones too)
        last_commit = time.perf_counter()
        # Groups sent while the server was unreachable (held in the sink's outbox): committed,
        # in order, once the server has acknowledged them.
        held: list[tuple[list[DocUpdate], list[str]]] = []
        before = {k: getattr(sink, k, 0) for k in ("retried", "spooled", "outage_s", "outages")}
        meter = getattr(sink, "meter", None)
        traffic = meter.snapshot() if meter is not None else None
        cpu = time.thread_time()

        def commit(final: bool = False) -> None:
            nonlocal group_updates, group_deleted, group_points, group_docs, last_commit
            if group_updates or group_deleted or (final and held):
                if group_updates or group_deleted:
                    held.append((group_updates, group_deleted))
                if final:
                    sink.flush()  # waits out an outage (up to the sink's deadline)
                    acked = True
                else:  # everything sent is acknowledged and searchable, or held back
                    acked = sink.barrier()
                if acked:
                    for ups, dels in held:
                        self.state.commit(ups, dels)
                    held.clear()
            self._progress.advance(documents=group_docs)
            group_updates, group_deleted, group_points, group_docs = [], [], 0, 0
            last_commit = time.perf_counter()

        while (batch := get(q)) is not _STOP:
            metrics.gauge("queue_depth", value=q.qsize(), stage="write")
            t = time.perf_counter()
            if not ensured and (len(batch.texts) or batch.plans):
                sink.ensure_collection(self.collection_spec())
                if self.versioned:
                    from qflume.versions import after_ensure

                    after_ensure(self)
                self.record_sparse()
                ensured = True
            # Write-ahead: what may land in the collection is recorded before it is sent (once
            # per batch: with its first slice).
            if batch.ahead is not None:
                self.state.write_ahead(batch.ahead)
            elif batch.first:
                ahead = {p.doc.key: (p.doc.root, p.upsert_hashes) for p in batch.plans}
                self.state.write_ahead({k: v for k, v in ahead.items() if v[1]})
            n, lost_n, updates = _send_slice(sink, batch)
            report.points_upserted += n
            report.points_deleted += lost_n
            report.payload_updates += updates
            if batch.final:
                group_updates.extend(p.update for p in batch.plans if p.update is not None)
                group_docs += len(batch.plans)
                group_deleted.extend(k for k, _ in batch.deleted)
            group_points += n + lost_n
            self._progress.advance(chunks=n)
            _record(report, "write", time.perf_counter() - t, n)
            if group_points >= 4 * self.batch_chunks or time.perf_counter() - last_commit > 2.0:
                t = time.perf_counter()
                commit()
                stats.busy_s += time.perf_counter() - t
        try:
            if not self._abort.is_set():
                t = time.perf_counter()
                commit(final=True)
                stats.busy_s += time.perf_counter() - t
        finally:
            report.retried += getattr(sink, "retried", 0) - before["retried"]
            report.spooled_requests += getattr(sink, "spooled", 0) - before["spooled"]
            report.outages += getattr(sink, "outages", 0) - before["outages"]
            report.outage_s += getattr(sink, "outage_s", 0.0) - before["outage_s"]
            stats.cpu_s += time.thread_time() - cpu
            if traffic is not None:
                now = meter.snapshot()
                report.bytes_sent += now["bytes_sent"] - traffic["bytes_sent"]
                report.bytes_received += now["bytes_received"] - traffic["bytes_received"]
                for code, n in now["errors"].items():
                    if n > traffic["errors"].get(code, 0):
                        got = report.sink_errors.get(code, 0) + n - traffic["errors"].get(code, 0)
                        report.sink_errors[code] = got


def _send_slice(sink: Sink, batch: _Batch) -> tuple[int, int, int]:
    """One slice to the sink: its upserts, then (with the last slice of its documents, after
    every slice of their new chunks was sent) the deletes of lost chunks and the payload
    updates of moved and restated ones, in a bounded number of requests. Returns (points
    upserted, points deleted, payload updates). The local write stage and qflume.ray both
    send through it."""
    n = len(batch.texts)
    if n:
        sink.upsert_batch(
            PointBatch(
                ids=batch.ids,
                dense=batch.dense,
                sparse=batch.sparse,
                texts=batch.texts,
                doc_index=batch.doc_index,
                doc_metadata=[p.doc.meta for p in batch.plans],
                chunk_index=batch.chunk_index,
                start=batch.start,
                end=batch.end,
                chunk_hash=batch.hashes,
                chunk_metadata=batch.extra_meta or None,
                chunk_meta_index=batch.extra_index if batch.extra_meta else None,
            )
        )
    if not batch.final:
        return n, 0, 0
    lost = [pid for p in batch.plans for pid in p.lost_ids]
    for _, ids in batch.deleted:
        lost.extend(ids)
    if lost:
        sink.delete(lost)
    moved = [item for p in batch.plans for item in p.moved]
    sink.set_payloads(moved, key="metadata")
    # the whole metadata: a page key may go
    restated = [(pid, {"metadata": m}) for p in batch.plans for pid, m in p.restated]
    sink.set_payloads(restated)
    return n, len(lost), len(moved) + len(restated)


def _record(report: IngestReport, stage: str, seconds: float, chunks: int, docs: int = -1) -> None:
    """Account one unit of a stage's work: busy time and items (documents for plan, else chunks)."""
    stats = report.stages[stage]
    stats.busy_s += seconds
    stats.items += chunks if docs < 0 else docs
    metrics.observe("ingest_stage", seconds, items=chunks, stage=stage)


def _doc_of(indptr: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Document index of each flat chunk row."""
    return np.searchsorted(indptr, rows, side="right") - 1


def ingest(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    collection: str,
    **options: Any,
) -> IngestReport:
    """One-shot `Pipeline(collection, **options).ingest(paths)`."""
    ingest_opts = {k: options.pop(k) for k in ("include", "exclude", "dry_run") if k in options}
    with Pipeline(collection, **options) as p:
        return p.ingest(paths, **ingest_opts)


def ingest_records(
    records: Iterable[Mapping[str, Any]], collection: str, **options: Any
) -> IngestReport:
    """One-shot `Pipeline(collection, **options).ingest_records(records)`."""
    run_opts = {k: options.pop(k) for k in ("delete_missing", "dry_run") if k in options}
    with Pipeline(collection, **options) as p:
        return p.ingest_records(records, **run_opts)
