"""Versioned collections: reindex without downtime, rollback, gc.

A versioned collection ``docs`` is a series of physical collections, ``docs__v1``,
``docs__v2``, ..., one of them live. On a Qdrant server the alias ``docs`` names the live one,
so any client that uses ``docs`` as a collection name follows it; on the embedded store the
file ``STORE/docs.version`` does (written, then renamed over the old one), and version 1 is the
store's original folder ``STORE/docs``. The state records each version (``versions`` table:
name, status, the settings that made its points) and qflume's own pipelines open the live one by
its physical name, so a query is always embedded by the model of the version that answers it.

`reindex` builds the next version in the background while the live one keeps answering:

* only the model or the sparse encoder changes (or nothing: a copy): the chunks stay. Their
  texts come from the live version's payloads (``page_content``, checked against the state's
  chunk hashes and offsets), every point keeps its id and payload and gets new vectors
  (embedding cache first; dense vectors are copied when the model stays). No file is read or
  chunked again. On the embedded store the live shard is read once into a spool file (an
  Edge shard admits one process at a time), so searches wait moments, never minutes.
* the chunking changes (or ``rechunk``): the documents are read again from their sources (the
  roots in the state, only the keys it lists) into the new version, by an ingest with its own
  state, which makes the build resumable the way any ingest is; records are read from the
  record files given.

Ingests may run during the build: they write the live version. Before the swap the reindex
holds the state's shared lock (ingests wait, searches go on), copies again every document whose
state row changed since it was copied (for the sources path: runs the build's ingest again),
and, if any writer opened the state meanwhile, payload updates too; then verifies the new
version (its point ids are exactly the state's; a sample of its chunks finds itself by dense
search) and swaps: one state transaction (the document rows of the old version archived for a
rollback), then the alias (one UpdateAliases request) or the pointer. A reindex killed at any
moment leaves the alias on the old version, and the same command resumes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import numpy as np

from qflume import payload
from qflume.exceptions import InvalidInputError, StateLockedError, VersionError
from qflume.ids import HASH_LEN, id_array, id_strings, point_ids, split_hashes
from qflume.state import DocState, PointSpool, ReindexLock, State, VersionRow

if TYPE_CHECKING:  # pragma: no cover
    from qflume.collection import Collection
    from qflume.pipeline import Pipeline
    from qflume.settings import PipelineConfig
    from qflume.sinks.base import PointRecord, Sink

__all__ = [
    "SELF_QUERIES",
    "ReindexReport",
    "gc",
    "list_versions",
    "migrate",
    "reindex",
    "rollback",
    "version_name",
]

#: Chunks of the new version searched with their own text before a swap.
SELF_QUERIES = 16
#: Hits a self-retrieval query may look through for its own chunk.
SELF_LIMIT = 5
#: How long a reindex, rollback or gc waits for a running ingest before its swap.
LOCK_WAIT_S = 600.0
_GROUP_POINTS = 1024  # points copied per request group (texts path)
_VERSION_RE = re.compile(r"^(?P<base>.+)__v(?P<n>[1-9][0-9]*)$")


class Where(TypedDict, total=False):
    """Where a collection lives, as every versions operation takes it: ``store`` (the embedded
    store's folder) or ``url`` (a server, with ``api_key``), and ``state_dir`` for a server."""

    store: Any
    url: str | None
    api_key: str | None
    state_dir: Any


def version_name(collection: str, number: int) -> str:
    """The physical collection (or shard folder) of version ``number``: ``docs__v2``."""
    return f"{collection}__v{number}"


# ---------------------------------------------------------------------------------------------
# Settings: what made a version's points


def _model_ref(model: Any) -> str | None:
    if model is None:
        return None
    p = Path(model)
    return str(p.resolve()) if p.exists() else str(model)


def settings_of(p: Collection) -> dict[str, Any]:
    """The settings a pipeline makes points with (recorded per version)."""
    c = p.config
    return {
        "model": _model_ref(c.model),
        "model_id": p.model_id(),
        "chunk_chars": c.chunk_chars,
        "chunk_tokens": c.chunk_tokens,
        "overlap": c.overlap,
        "sparse": c.sparse_kind,
        "sparse_model": _model_ref(c.sparse_model),
        "fingerprint": p.fingerprint(),
    }


def describe(s: Mapping[str, Any]) -> str:
    """``model=<folder or id> tokens=64 overlap=0 sparse=bm25``."""
    model = s.get("model") or (f"default ({s.get('model_id')})" if s.get("model_id") else "?")
    chunk = (
        f"chars={s['chunk_chars']}" if s.get("chunk_chars") else f"tokens={s.get('chunk_tokens')}"
    )
    return f"model={model} {chunk} overlap={s.get('overlap', 0)} sparse={s.get('sparse', 'none')}"


def _chunking(s: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    return (s.get("chunk_chars"), s.get("chunk_tokens"), s.get("overlap") or 0)


def _from_fingerprint(fp: str) -> dict[str, Any]:
    """Settings read back from a document fingerprint (``model_id|tokens=64|overlap=0|sparse=x``):
    for versions made before qflume recorded them (their model folder is unknown)."""
    parts = fp.split("|")
    out: dict[str, Any] = {"model": None, "model_id": parts[0] if parts else "", "known": False}
    out.update(chunk_chars=None, chunk_tokens=None, overlap=0, sparse="none")
    for part in parts[1:]:
        k, _, v = part.partition("=")
        if k == "tokens" and v.isdigit():
            out["chunk_tokens"] = int(v)
        elif k == "chars" and v.isdigit():
            out["chunk_chars"] = int(v)
        elif k == "overlap" and v.isdigit():
            out["overlap"] = int(v)
        elif k == "sparse":
            out["sparse"] = v
    out["fingerprint"] = "|".join(p for p in parts if p != "reader=1")
    return out


# ---------------------------------------------------------------------------------------------
# Hooks the Pipeline calls


def open_version(state: State, config: PipelineConfig) -> tuple[VersionRow | None, PipelineConfig]:
    """The live version a new Pipeline reads and writes, and its config completed by it: its
    model is the version's unless given, and after a swap (a reindex or rollback) so are its
    chunking and sparse encoder (``config.given``), so that a later ingest or search needs no
    flags."""
    row = state.live_version()
    if row is None:
        return row, config
    s = row.settings
    given = config.given
    changes: dict[str, Any] = {}
    if "model" not in given and s.get("known", True) and "model" in s:
        changes["model"] = s.get("model")  # the model its points were made with
    if row.swapped_at is not None:
        if "chunking" not in given:
            changes.update(chunk_chars=s.get("chunk_chars"), chunk_tokens=s.get("chunk_tokens"))
            changes["overlap"] = int(s.get("overlap") or 0)
        if "sparse" not in given:
            kind = str(s.get("sparse") or "none")
            changes.update(
                sparse=kind, sparse_model=s.get("sparse_model") if kind == "splade" else None
            )
    if not changes:
        return row, config
    done = config.replace(**changes)
    object.__setattr__(done, "given", config.given)  # what the caller gave, not the version
    return row, done


def check_settings(p: Collection) -> None:
    """An ingest into a collection whose settings a reindex (or rollback) made live must make
    its points the same way: otherwise it would rebuild the live version in place."""
    row = p.version
    if row is None or row.swapped_at is None:
        return
    want = row.settings.get("fingerprint")
    if want and p.fingerprint() != want:
        mine = settings_of(p)
        raise InvalidInputError(
            f"collection {p.collection!r} is at version {row.version} ({row.name}), made with "
            f"{describe(row.settings)}; this ingest asks for {describe(mine)}. Leave the "
            "settings out (the live version's are used) or give the same ones; to change them "
            f"without downtime: qflume reindex -c {p.collection} with the new ones"
        )


def after_ensure(p: Collection) -> None:
    """After the first write made sure the collection exists: record version 1 of a versioned
    collection this pipeline created; on a versioned one, point a lagging alias or pointer at
    the live version (a swap killed between the state and the alias)."""
    sink = p.sink
    created = getattr(sink, "created", None)
    if p.version is None:
        if created and not p.state.versions():
            row = VersionRow(1, created, "live", settings_of(p), {"made": "ingest"}, time.time())
            p.state.save_version(row)
            p.version = row
        return
    if p.version.swapped_at is None:
        return
    target = _target_for(p.collection, p.store, p.url, p.config.api_key)
    try:
        if target.live_name() != p.version.name:
            target.point(p.version.name, p.version.version)
    finally:
        target.close()


# ---------------------------------------------------------------------------------------------
# Where the versions live


class _Target:
    kind = ""

    def __init__(self, collection: str) -> None:
        self.collection = collection

    def live_name(self) -> str | None:
        raise NotImplementedError

    def plain(self) -> bool:
        """A plain (unversioned) collection named like the versioned one."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def point(self, name: str, number: int) -> None:
        raise NotImplementedError

    def drop(self, name: str) -> None:
        raise NotImplementedError

    def sink(self, name: str) -> Sink:
        raise NotImplementedError

    def where(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ServerTarget(_Target):
    kind = "server"

    def __init__(self, collection: str, url: str, api_key: str | None) -> None:
        from qflume.sinks.grpc import GrpcSink

        super().__init__(collection)
        self.url, self.api_key = url, api_key
        self.control = GrpcSink(url, collection, api_key=api_key, adaptive=False)

    def live_name(self) -> str | None:
        return self.control.aliases().get(self.collection)

    def plain(self) -> bool:
        return self.collection in self.control.collections()

    def exists(self, name: str) -> bool:
        return name in self.control.collections()

    def point(self, name: str, number: int) -> None:
        # one request, applied at once: no moment without the alias
        have = self.live_name()
        self.control.update_aliases(
            {self.collection: name}, delete=[self.collection] if have else ()
        )

    def drop(self, name: str) -> None:
        self.control.drop_collection(name)

    def sink(self, name: str) -> Sink:
        from qflume.sinks.grpc import GrpcSink

        return GrpcSink(self.url, name, api_key=self.api_key)

    def where(self) -> str:
        return f"Qdrant at {self.url}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.control.close()


class _EdgeTarget(_Target):
    kind = "edge"

    def __init__(self, collection: str, store: Path) -> None:
        super().__init__(collection)
        self.store = Path(store)

    def live_name(self) -> str | None:
        from qflume.exceptions import SinkError
        from qflume.sinks.edge import read_pointer

        try:
            got = read_pointer(self.store, self.collection)
        except SinkError:
            return "(unreadable pointer)"  # rewritten from the state by _settle
        return got[0] if got else None

    def plain(self) -> bool:
        return self.exists(self.collection)

    def exists(self, name: str) -> bool:
        return (self.store / name / "edge_config.json").exists()

    def point(self, name: str, number: int) -> None:
        from qflume.sinks.edge import write_pointer

        write_pointer(self.store, self.collection, name, number)

    def drop(self, name: str) -> None:
        path = self.store / name
        if path.exists():
            shutil.rmtree(path)

    def sink(self, name: str) -> Sink:
        from qflume.sinks.edge import EdgeSink

        return EdgeSink(self.store, name, follow_pointer=False, optimize_threshold=None)

    def where(self) -> str:
        return f"the embedded store {self.store}"


def _target_for(collection: str, store: Any, url: str | None, api_key: str | None) -> _Target:
    if url is not None:
        return _ServerTarget(collection, url, api_key)
    return _EdgeTarget(collection, Path(store if store is not None else ".qflume"))


# ---------------------------------------------------------------------------------------------
# The registry: the state's rows, reconciled with the target


@dataclass
class _Ctx:
    """The collection a version command works on: its state (no lock: ingests go on), its
    target, and where its files live."""

    collection: str
    store: Path | None
    url: str | None
    api_key: str | None
    base: Path
    state: State
    target: _Target
    say: Callable[[str], None]

    @property
    def state_path(self) -> Path:
        return self.base / f"{self.collection}.state.sqlite"

    def close(self) -> None:
        self.target.close()
        self.state.close()


def _open(
    collection: str,
    *,
    progress: bool = False,
    **where: Unpack[Where],
) -> _Ctx:
    store, url = where.get("store"), where.get("url")
    api_key, state_dir = where.get("api_key"), where.get("state_dir")
    from qflume._validate import url_problem
    from qflume.pipeline import Pipeline

    if not collection or "/" in collection or collection.startswith("."):
        raise InvalidInputError(f"collection name {collection!r} is not usable")
    if m := _VERSION_RE.match(collection):
        raise InvalidInputError(
            f"collection {collection!r} is a version of {m['base']!r} "
            "(names ending in __vN are versions): give the collection's own name"
        )
    if store is not None and url is not None:
        raise InvalidInputError("give store (embedded Qdrant Edge) or url (a server), not both")
    if url is not None and (problem := url_problem(url)):
        raise InvalidInputError(problem)
    base = Pipeline.state_base(store, url, state_dir)
    state_path = base / f"{collection}.state.sqlite"
    if not state_path.exists():
        raise VersionError(
            f"{state_path}: no state for collection {collection!r} here (nothing was ingested "
            "with this target): check --store / --url / --state-dir"
        )
    state = State(state_path, lock=False)
    target = _target_for(collection, store if url is None else None, url, api_key)

    def say(msg: str) -> None:
        if progress:
            print(f"qflume: {msg}", file=sys.stderr, flush=True)

    store_path = None if url is not None else Path(store if store is not None else ".qflume")
    return _Ctx(collection, store_path, url, api_key, base, state, target, say)


def _settle(ctx: _Ctx) -> VersionRow | None:
    """The live version, with the state and the target made to agree: a collection versioned
    before its state recorded it is registered; an alias or pointer left behind by a swap killed
    after its state transaction is moved to the state's live version."""
    live = ctx.state.live_version()
    have = ctx.target.live_name()
    if live is None:
        name = have
        if name is None:
            if ctx.target.kind == "edge" and ctx.target.plain():
                name = ctx.collection  # version 1 of an embedded collection: its own folder
            else:
                return None
        m = _VERSION_RE.match(name)
        number = int(m["n"]) if m and m["base"] == ctx.collection else 1
        live = VersionRow(number, name, "live", _inferred_settings(ctx.state), {"made": "found"})
        live.created_at = time.time()
        ctx.state.save_version(live)
        return live
    if have != live.name and (have is not None or live.name != ctx.collection):
        ctx.say(f"pointing {ctx.collection} at {live.name} (it named {have})")
        ctx.target.point(live.name, live.version)
    return live


def _inferred_settings(state: State) -> dict[str, Any]:
    """The settings of a version made before they were recorded: the documents' fingerprint."""
    counts: dict[str, int] = {}
    for fp, n in state.fingerprints().items():
        base = fp.replace("|reader=1", "")
        if base:
            counts[base] = counts.get(base, 0) + n
    if not counts:
        return {"known": False, "fingerprint": ""}
    return _from_fingerprint(max(counts, key=lambda k: counts[k]))


def _need_versioned(ctx: _Ctx) -> VersionRow:
    live = _settle(ctx)
    if live is not None:
        return live
    if ctx.target.kind == "server" and ctx.target.plain():
        raise VersionError(
            f"collection {ctx.collection!r} on {ctx.target.where()} is a plain collection, not "
            f"an alias: run `qflume migrate -c {ctx.collection} --url {ctx.url}` first (it "
            f"copies it into {version_name(ctx.collection, 1)} behind the alias "
            f"{ctx.collection!r}; searches go on meanwhile)"
        )
    raise VersionError(
        f"collection {ctx.collection!r} does not exist on {ctx.target.where()}: ingest into it "
        "first"
    )


@contextlib.contextmanager
def _holding_shared(ctx: _Ctx, lock: ReindexLock, phase: str, wait: float) -> Iterator[State]:
    """The state's shared lock (ingests wait, searches go on), taken once the running ingest
    (if any) is done, at most ``wait`` s from now."""
    deadline = time.monotonic() + wait
    lock.phase(phase)
    said = False
    while True:
        try:
            st = State(ctx.state_path, lock="shared")
            break
        except StateLockedError as e:
            if time.monotonic() >= deadline:
                lock.phase("build")
                raise VersionError(
                    f"waited {wait:.0f} s for the writer of {ctx.collection!r} to finish ({e}); "
                    "stop it (or `qflume serve`) and run the same command again: it resumes"
                ) from None
            if not said:
                ctx.say(f"waiting for the running ingest of {ctx.collection} to finish")
                said = True
            time.sleep(0.2)
    try:
        yield st
    finally:
        st.close()
        lock.phase("build")


# ---------------------------------------------------------------------------------------------
# reindex


@dataclass
class ReindexReport:
    """What a reindex did. ``path``: ``texts`` (chunks kept, texts from the live version's
    payloads: nothing read or chunked) or ``sources`` (read and chunked again)."""

    collection: str
    version: int = 0
    name: str = ""
    previous: int = 0
    path: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    points: int = 0
    documents: int = 0
    resumed: bool = False
    documents_read: int = 0  # files read from the sources (0 on the texts path)
    chunks_made: int = 0  # chunks the chunker made (0 on the texts path)
    points_copied: int = 0
    chunks_embedded: int = 0
    cache_hits: int = 0
    caught_up: int = 0  # documents copied again before the swap (changed during the build)
    payloads_restated: int = 0
    self_queries: int = 0
    swapped: bool = False
    unchanged: bool = False
    elapsed_s: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["elapsed_s"] = round(self.elapsed_s, 3)
        d["stages"] = {k: round(v, 3) for k, v in self.stages.items()}
        return d


def _digest(d: DocState) -> bytes:
    """What a document's points depend on in its state row (its chunks, their offsets and
    page/heading digests, its metadata): equal digests, equal points."""
    h = hashlib.blake2b(digest_size=16)
    for part in (d.chunks, d.offsets, d.chunk_meta or b"", d.meta_json.encode()):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


_split = split_hashes


def _ids(key: str, hashes: Sequence[bytes]) -> list[str]:
    blob = b"".join(hashes)
    return id_strings(point_ids(key, blob)) if blob else []


def _id_bytes(ids: Sequence[str]) -> np.ndarray:
    return id_array(ids)


def _payload_fits(d: DocState, rec: PointRecord | None, j: int, h: bytes) -> bool:
    if rec is None or payload.text_of(rec.payload) is None:
        return False
    got = payload.chunk_fields(rec.payload)
    if got is None or (got.source, got.content_hash) != (d.key, h):
        return False
    offs = d.offsets
    if len(offs) == 24 * (len(d.chunks) // HASH_LEN):
        row = tuple(np.frombuffer(offs, np.int64)[3 * j : 3 * j + 3].tolist())
        if got.place != row:
            return False
    return True


class _Source:
    """The live version's points, by id."""

    def fetch(self, ids: Sequence[str], vectors: bool) -> dict[str, PointRecord]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _SinkSource(_Source):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def fetch(self, ids: Sequence[str], vectors: bool) -> dict[str, PointRecord]:
        out: dict[str, PointRecord] = {}
        for lo in range(0, len(ids), 1024):
            for r in self.sink.retrieve(list(ids[lo : lo + 1024]), with_vectors=vectors):
                out[str(r.id)] = r
        return out

    def close(self) -> None:
        self.sink.close()


class _SpoolSource(_Source):
    def __init__(self, spool: PointSpool) -> None:
        self.spool = spool

    def fetch(self, ids: Sequence[str], vectors: bool) -> dict[str, PointRecord]:
        from qflume.sinks.base import PointRecord

        out: dict[str, PointRecord] = {}
        for pid, body, dense, sparse in self.spool.get_many(ids):
            vec = None if dense is None else np.frombuffer(dense, np.float32)
            sp = None if sparse is None else {k: (v[0], v[1]) for k, v in sparse.items()}
            out[pid] = PointRecord(id=pid, payload=body, vector=vec, sparse=sp)
        return out


@dataclass
class _Build:
    ctx: _Ctx
    lock: ReindexLock
    old: VersionRow
    new: VersionRow
    pipe: Pipeline  # makes the new version's points (its model, chunking, sparse) into it
    report: ReindexReport
    same_model: bool
    copy_sparse: bool
    records: Callable[[], Iterable[Mapping[str, Any]]] | None = None
    lock_wait: float = LOCK_WAIT_S

    def stage(self, name: str, seconds: float) -> None:
        self.report.stages[name] = self.report.stages.get(name, 0.0) + seconds


def reindex(
    collection: str,
    *,
    model: Any = None,
    chunk_chars: int | None = None,
    chunk_tokens: int | None = None,
    overlap: int | None = None,
    sparse: str | None = None,
    sparse_model: Any = None,
    rechunk: bool = False,
    records: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
    force: bool = False,
    lock_wait: float = LOCK_WAIT_S,
    progress: bool = False,
    embedder: Any = None,
    readers: Any = None,
    **where: Unpack[Where],
) -> ReindexReport:
    """Build the next version of ``collection`` with the settings given (the live version's
    for those not given), verify it and make it live; resumes a build of the same settings that
    was stopped. ``records``: a callable giving the records again (a chunking change needs the
    texts of documents that came from records). Returns a `ReindexReport`."""
    from qflume.pipeline import Pipeline

    t0 = time.perf_counter()
    if chunk_chars is not None and chunk_tokens is not None:
        raise InvalidInputError("give chunk_chars or chunk_tokens, not both")
    if sparse is not None and sparse not in ("none", "bm25", "splade"):
        raise InvalidInputError(f"sparse must be none, bm25 or splade, not {sparse!r}")
    for name, v in (("chunk_chars", chunk_chars), ("chunk_tokens", chunk_tokens)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InvalidInputError(f"{name} must be a positive int, got {v!r}")
    if overlap is not None and (
        isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0
    ):
        raise InvalidInputError(f"overlap must be a non-negative int, got {overlap!r}")
    url, api_key = where.get("url"), where.get("api_key")
    ctx = _open(collection, **where,
                progress=progress)  # fmt: skip
    report = ReindexReport(collection)
    try:
        with ReindexLock(ctx.state_path) as lock:
            old = _need_versioned(ctx)
            s = dict(old.settings)
            if model is not None:
                s["model"] = _model_ref(model)
                s["known"] = True
            if chunk_chars is not None or chunk_tokens is not None:
                s["chunk_chars"], s["chunk_tokens"] = chunk_chars, chunk_tokens
            if overlap is not None:
                s["overlap"] = overlap
            if sparse is not None:
                s["sparse"] = sparse
            if sparse_model is not None:
                if s.get("sparse") != "splade":
                    raise InvalidInputError(
                        "sparse_model is the SPLADE model: give it with sparse='splade'"
                    )
                s["sparse_model"] = _model_ref(sparse_model)
            if not s.get("chunk_chars") and not s.get("chunk_tokens"):
                s["chunk_tokens"] = 64
            if model is not None or "model_id" not in s:
                from qflume.embed import model_fingerprint

                s["model_id"] = (
                    embedder.model_id if embedder is not None else model_fingerprint(s.get("model"))
                )
            if not s.get("known", True) and model is None:
                raise VersionError(
                    f"version {old.version} of {collection!r} was made before qflume recorded "
                    f"its model (model id {s.get('model_id')}): pass --model with the folder "
                    "of the model to build the new version with"
                )
            sources = rechunk or _chunking(s) != _chunking(old.settings)
            pipe_opts: dict[str, Any] = {
                "model": s.get("model"),
                **_point_settings(s),
                "state_dir": ctx.base if url is not None else None,
                "progress": False,
                "versioned": False,
            }
            if embedder is not None:
                pipe_opts["embedder"] = embedder
            if readers is not None:
                pipe_opts["readers"] = readers
            rows = ctx.state.versions()
            number = max(r.version for r in rows) + 1
            building = [r for r in rows if r.status == "building"]
            new: VersionRow | None = None
            for r in building:
                same = r.info.get("path") == ("sources" if sources else "texts") and (
                    r.info.get("target") == _target_settings(s)
                )
                if same and new is None and r.info.get("from") == old.version:
                    new = r
                    report.resumed = True
                    ctx.say(f"resuming the build of {r.name}")
                else:
                    ctx.say(f"dropping the unfinished build {r.name} (other settings)")
                    _drop_build(ctx, r)
            if new is None:
                if (
                    not force
                    and not rechunk
                    and _target_settings(s) == _target_settings(old.settings)
                ):
                    report.version, report.name, report.unchanged = old.version, old.name, True
                    report.settings = old.settings
                    return report
                name = version_name(collection, number)
                new = VersionRow(
                    number,
                    name,
                    "building",
                    {},
                    {
                        "path": "sources" if sources else "texts",
                        "from": old.version,
                        "target": _target_settings(s),
                        "epoch": ctx.state.writer_epoch(),
                    },
                    time.time(),
                )
                if ctx.target.exists(name):  # left by a build whose row was lost: not live
                    ctx.target.drop(name)
                _remove_build_files(ctx, name)
                ctx.state.save_version(new)
            shared_cache = ctx.base / f"{collection}.cache.sqlite"
            build_pipe = Pipeline(
                new.name, store=ctx.store, url=url, api_key=api_key, cache_file=shared_cache,
                **pipe_opts,
            )  # fmt: skip
            try:
                new.settings = settings_of(build_pipe)
                new.settings["known"] = True
                ctx.state.save_version(new)
                b = _Build(
                    ctx,
                    lock,
                    old,
                    new,
                    build_pipe,
                    report,
                    same_model=new.settings["model_id"] == old.settings.get("model_id"),
                    copy_sparse=(
                        new.settings["model_id"] == old.settings.get("model_id")
                        and new.settings["sparse"] == old.settings.get("sparse")
                    ),
                    records=records,
                    lock_wait=lock_wait,
                )
                report.version, report.name, report.previous = new.version, new.name, old.version
                report.path = new.info["path"]
                report.settings = new.settings
                if sources:
                    _build_from_sources(b)
                else:
                    _build_from_texts(b)
            finally:
                build_pipe.close()
            return report
    finally:
        report.elapsed_s = time.perf_counter() - t0
        ctx.close()


def _point_settings(s: Mapping[str, Any]) -> dict[str, Any]:
    """The chunking and sparse settings of recorded settings ``s``, as PipelineConfig takes them."""
    return {
        "chunk_chars": s.get("chunk_chars"),
        "chunk_tokens": s.get("chunk_tokens"),
        "overlap": int(s.get("overlap") or 0),
        "sparse": s.get("sparse") or "none",
        "sparse_model": s.get("sparse_model") if s.get("sparse") == "splade" else None,
    }


def _target_settings(s: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide a version's points (a model folder by its id)."""
    return {
        "model": s.get("model") if not s.get("model_id") else None,
        "model_id": s.get("model_id"),
        **_point_settings(s),
    }


# ---------------------------------------------------------------------------------------------
# The texts path: chunks kept, texts from the live version's payloads


class _LazySource(_Source):
    """The live version's sink, opened at the first fetch (on the embedded store, opening it
    makes searches wait, so only when there is something to fetch)."""

    def __init__(self, open_sink: Callable[[], Sink]) -> None:
        self._open = open_sink
        self.sink: Sink | None = None

    def get(self) -> Sink:
        if self.sink is None:
            self.sink = self._open()
        return self.sink

    def fetch(self, ids: Sequence[str], vectors: bool) -> dict[str, PointRecord]:
        return _SinkSource(self.get()).fetch(ids, vectors)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
            self.sink = None


def _build_from_texts(b: _Build) -> None:
    ctx = b.ctx
    b.pipe.sink.ensure_collection(b.pipe.collection_spec())
    ctx.say(
        f"building {b.new.name} from the texts of {b.old.name} "
        f"({'vectors copied' if b.same_model else 'new model'}; nothing read or chunked)"
    )
    if ctx.target.kind == "edge":
        spool = PointSpool(ctx.base / f"{b.new.name}.spool.sqlite")
        try:
            if spool.epoch() != ctx.state.writer_epoch():
                with _holding_shared(ctx, b.lock, "read", b.lock_wait):
                    epoch = ctx.state.writer_epoch()
                    t = time.perf_counter()
                    sink = ctx.target.sink(b.old.name)
                    try:
                        n = spool.fill(sink.scroll(with_payload=True, with_vectors=b.same_model))
                    finally:
                        sink.close()  # searches open it again
                    spool.set_epoch(epoch)
                    b.stage("read", time.perf_counter() - t)
                    ctx.say(f"read {n} points of {b.old.name} into the spool")
            _copy(b, _SpoolSource(spool), final=False)
        finally:
            spool.close()
    else:
        src = _SinkSource(ctx.target.sink(b.old.name))
        try:
            _copy(b, src, final=False)
        finally:
            src.close()
    ctx.say(f"copied {b.report.points_copied} points; catching up and verifying before the swap")
    with _holding_shared(ctx, b.lock, "swap", b.lock_wait):
        lazy = _LazySource(lambda: ctx.target.sink(b.old.name))
        try:
            b.report.caught_up = _copy(b, lazy, final=True)
            if ctx.state.writer_epoch() != b.new.info.get("epoch"):
                _restate_payloads(b, lazy.get())
        finally:
            lazy.close()
        _verify(b, lambda: _expected_ids(ctx.state), lambda keys: _recopy(b, keys))
        _swap(b, rows="refingerprint")


def _expected_ids(state: State) -> set[str]:
    out: set[str] = set()
    after = None
    while page := state.documents_page(after, 1024):
        after = page[-1].key
        for d in page:
            out.update(_ids(d.key, _split(d.chunks)))
    return out


def _recopy(b: _Build, keys: Sequence[str]) -> None:
    """Copy these documents again (verification found their points missing)."""
    b.ctx.state.record_build(b.new.version, [], gone=list(keys))
    lazy = _LazySource(lambda: b.ctx.target.sink(b.old.name))
    try:
        _copy(b, lazy, final=True)
    finally:
        lazy.close()


def _copy(b: _Build, src: _Source, *, final: bool) -> int:
    """Copy into the new version every live document not copied as its state row is now, and
    take out those gone from the live state; returns how many were copied. Before the swap
    (``final``), the live version must hold each as the state records it."""
    st = b.ctx.state
    progress = st.build_progress(b.new.version)
    live: set[str] = set()
    todo: list[tuple[DocState, bytes]] = []
    points = copied = 0
    after = None
    while page := st.documents_page(after, 512):
        after = page[-1].key
        for d in page:
            live.add(d.key)
            dg = _digest(d)
            if progress.get(d.key, (b"", b""))[0] == dg:
                continue
            todo.append((d, dg))
            points += len(d.chunks) // HASH_LEN
            if points >= _GROUP_POINTS:
                copied += _copy_group(b, src, todo, progress, final)
                todo, points = [], 0
    if todo:
        copied += _copy_group(b, src, todo, progress, final)
    gone = [k for k in progress if k not in live]
    if gone:
        ids = [pid for k in gone for pid in _ids(k, _split(progress[k][1]))]
        if ids:
            b.pipe.sink.delete(ids)
            b.pipe.sink.flush()
        st.record_build(b.new.version, [], gone)
    return copied


def _copy_group(
    b: _Build,
    src: _Source,
    docs: list[tuple[DocState, bytes]],
    progress: Mapping[str, tuple[bytes, bytes]],
    final: bool,
) -> int:
    from qflume.sinks.base import PointBatch

    t = time.perf_counter()
    plan = [(d, dg, _split(d.chunks)) for d, dg in docs]
    wanted = [pid for d, _, hs in plan for pid in _ids(d.key, hs)]
    recs = src.fetch(wanted, vectors=b.same_model)
    b.stage("read", time.perf_counter() - t)
    ids: list[str] = []
    payloads: list[dict[str, Any]] = []
    texts: list[str] = []
    hashes: list[bytes] = []
    records: list[PointRecord] = []
    done: list[tuple[str, bytes, bytes]] = []
    dead: list[str] = []  # points of an earlier copy the document no longer has
    for d, dg, hs in plan:
        pids = _ids(d.key, hs)
        got = [recs.get(p) for p in pids]
        fits = all(_payload_fits(d, r, j, h) for j, (r, h) in enumerate(zip(got, hs, strict=True)))
        if fits and b.same_model:
            fits = all(r is not None and r.vector is not None for r in got)
        if not fits:
            if final:
                bad = sum(
                    not _payload_fits(d, r, j, h)
                    for j, (r, h) in enumerate(zip(got, hs, strict=True))
                )
                raise VersionError(
                    f"{b.old.name} does not hold document {d.key!r} as the state records it "
                    f"({bad} of its {len(hs)} points missing or different): run `qflume verify "
                    f"--repair -c {b.ctx.collection}` and the ingest again, then the same "
                    "reindex (it resumes)"
                )
            continue  # changed while it was read: copied again before the swap
        for pid, r, h in zip(pids, got, hs, strict=True):
            assert r is not None and r.payload is not None
            ids.append(pid)
            payloads.append(r.payload)
            texts.append(str(payload.text_of(r.payload)))
            hashes.append(h)
            records.append(r)
        prev = progress.get(d.key)
        if prev is not None:
            keep = set(hs)
            dead.extend(_ids(d.key, [h for h in _split(prev[1]) if h not in keep]))
        done.append((d.key, dg, d.chunks))
    if ids:
        n = len(ids)
        harr = np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, HASH_LEN)
        t = time.perf_counter()
        if b.same_model:
            dense = np.stack([np.asarray(r.vector, np.float32) for r in records])
        else:
            dense = _embed(b, texts, harr)
        sparse = None
        kind = b.pipe.sparse_kind
        if kind != "none":
            if b.copy_sparse and all(r.sparse and kind in r.sparse for r in records):
                sparse = {kind: _csr([r.sparse[kind] for r in records])}  # type: ignore[index]
            else:
                sparse = {kind: b.pipe.sparse_encoder.embed(texts)}
        b.stage("embed", time.perf_counter() - t)
        t = time.perf_counter()
        b.pipe.sink.upsert_batch(PointBatch(ids=_id_bytes(ids), dense=dense, sparse=sparse,
                                            payloads=payloads))  # fmt: skip
        b.report.points_copied += n
    else:
        t = time.perf_counter()
    if dead:
        b.pipe.sink.delete(dead)
    if ids or dead:
        b.pipe.sink.flush()
    b.ctx.state.record_build(b.new.version, done)
    b.stage("write", time.perf_counter() - t)
    return len(done)


def _csr(rows: Sequence[tuple[Sequence[int], Sequence[float]]]) -> Any:
    from qflume.sinks.base import SparseBatch

    indptr = np.zeros(len(rows) + 1, np.int64)
    indptr[1:] = np.cumsum([len(ix) for ix, _ in rows])
    idx = np.fromiter((i for ix, _ in rows for i in ix), np.uint32, count=int(indptr[-1]))
    val = np.fromiter((v for _, vs in rows for v in vs), np.float32, count=int(indptr[-1]))
    return SparseBatch(indptr, idx, val)


def _embed(b: _Build, texts: list[str], hashes: np.ndarray) -> np.ndarray:
    """Dense vectors of the new model: the embedding cache first, the model for the rest."""
    emb, cache = b.pipe.embedder, b.pipe.cache
    n = len(texts)
    found, vectors = cache.get_many(emb.model_id, hashes)
    found = np.asarray(found, bool)
    dense = np.empty((n, emb.dim), np.float32)
    if found.any():
        dense[found] = np.asarray(vectors, np.float32)[found]
    miss = np.flatnonzero(~found)
    todo = 0
    if len(miss):  # the same text in several documents: embedded once
        _, first, back = np.unique(
            hashes[miss].view("V16").ravel(), return_index=True, return_inverse=True
        )
        uniq = miss[first]
        new = emb.embed([texts[i] for i in uniq])
        dense[miss] = np.asarray(new, np.float32)[back.ravel()]
        cache.put_many(emb.model_id, hashes[uniq], new)
        todo = len(uniq)
    b.report.chunks_embedded += todo
    b.report.cache_hits += n - len(miss)
    return dense


def _payload_key(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False)


def _restate_payloads(b: _Build, live: Sink) -> None:
    """A writer opened the state during the build: payloads it updated (update_payload) are
    not in the state rows, so every payload of the new version is compared with the live one."""
    from qflume.sinks.base import PointBatch

    t = time.perf_counter()
    old = {r.id: hashlib.blake2b(_payload_key(r.payload).encode(), digest_size=16).digest()
           for r in live.scroll(with_payload=True)}  # fmt: skip
    differ = [
        r.id
        for r in b.pipe.sink.scroll(with_payload=True)
        if r.id in old
        and old[r.id] != hashlib.blake2b(_payload_key(r.payload).encode(), digest_size=16).digest()
    ]
    for lo in range(0, len(differ), 256):
        part = differ[lo : lo + 256]
        mine = {r.id: r for r in b.pipe.sink.retrieve(part, with_vectors=True)}
        theirs = {r.id: r for r in live.retrieve(part)}
        part = [p for p in part if p in mine and p in theirs and mine[p].vector is not None]
        if not part:
            continue
        kind = b.pipe.sparse_kind
        sparse = None
        if kind != "none":
            sparse = {kind: _csr([(mine[p].sparse or {}).get(kind, ([], [])) for p in part])}
        b.pipe.sink.upsert_batch(
            PointBatch(
                ids=_id_bytes(part),
                dense=np.stack([np.asarray(mine[p].vector, np.float32) for p in part]),
                sparse=sparse,
                payloads=[theirs[p].payload or {} for p in part],
            )
        )
    b.pipe.sink.flush()
    b.report.payloads_restated = len(differ)
    b.stage("catch_up", time.perf_counter() - t)


# ---------------------------------------------------------------------------------------------
# The sources path: read and chunked again


@dataclass
class _SourcePlan:
    roots: dict[str, list[str]]
    records: int
    keys: set[str]


def _literal(key: str) -> str:
    """A gitignore pattern matching exactly the file ``key`` under its root."""
    return "/" + "".join("\\" + c if c in "\\*?[]!#{} " else c for c in key)


def _source_plan(b: _Build) -> _SourcePlan:
    from qflume.pipeline import RECORDS_ROOT, RECOVERED_ROOT

    roots: dict[str, list[str]] = {}
    records = recovered = 0
    keys: set[str] = set()
    after = None
    while page := b.ctx.state.documents_page(after, 1024):
        after = page[-1].key
        for d in page:
            keys.add(d.key)
            if d.root == RECORDS_ROOT:
                records += 1
            elif d.root == RECOVERED_ROOT:
                recovered += 1
            else:
                roots.setdefault(d.root, []).append(d.key)
    c = b.ctx.collection
    if recovered:
        raise VersionError(
            f"{recovered} documents of {c!r} were rebuilt from the collection after a damaged "
            "state and not ingested since: run the ingest of their folders first"
        )
    if records and b.records is None:
        raise VersionError(
            f"{records} documents of {c!r} came from records, whose whole texts qflume does not "
            "keep (only their chunks): a chunking change needs them again; give the record "
            "files (--records FILE ...)"
        )
    gone = [
        key
        for root, ks in roots.items()
        for key in ks
        if not os.path.exists(os.path.join(root, key) if os.path.isdir(root) else root)
    ]
    if gone:
        shown = ", ".join(map(repr, gone[:3])) + (" ..." if len(gone) > 3 else "")
        raise VersionError(
            f"{len(gone)} documents of {c!r} are gone from their sources ({shown}): a chunking "
            "change reads every document again; run the ingest first (it deletes them), then "
            "the same reindex"
        )
    return _SourcePlan(roots, records, keys)


def _ingest_sources(b: _Build, plan: _SourcePlan) -> None:
    r = b.report
    t = time.perf_counter()
    reports = []
    for root, keys in sorted(plan.roots.items()):
        include = [_literal(k) for k in keys] if os.path.isdir(root) else None
        reports.append(b.pipe.ingest([root], include=include, delete_missing=True))
    if plan.records:
        assert b.records is not None
        reports.append(b.pipe.ingest_records(b.records(), delete_missing=True))
    for rep in reports:
        r.documents_read += rep.documents_new + rep.documents_changed
        r.chunks_made += rep.chunks_total
        r.chunks_embedded += rep.chunks_embedded
        r.cache_hits += rep.cache_hits
        r.points_copied += rep.points_upserted
        if rep.interrupted:
            raise KeyboardInterrupt
    b.stage("ingest", time.perf_counter() - t)


def _build_from_sources(b: _Build) -> None:
    ctx = b.ctx
    ctx.say(f"building {b.new.name} from the sources ({describe(b.new.settings)})")
    _ingest_sources(b, _source_plan(b))
    ctx.say(f"built {b.new.name}; catching up and verifying before the swap")
    with _holding_shared(ctx, b.lock, "swap", b.lock_wait):
        plan = _source_plan(b)
        _ingest_sources(b, plan)  # what ingests changed meanwhile (incremental)
        built = {d.key for d in b.pipe.state.iter_all()}
        missing = sorted(plan.keys - built)
        if missing:
            shown = ", ".join(map(repr, missing[:3])) + (" ..." if len(missing) > 3 else "")
            raise VersionError(
                f"{len(missing)} documents of {ctx.collection!r} could not be read again into "
                f"{b.new.name} ({shown}; see `qflume ingest --dry-run`): the alias stays on "
                f"{b.old.name}"
            )
        _verify(b, lambda: _expected_ids(b.pipe.state), None)
        _swap(b, rows="import", source=b.pipe.state_path)


# ---------------------------------------------------------------------------------------------
# Verify and swap


def _verify(
    b: _Build,
    expected_ids: Callable[[], set[str]],
    recopy: Callable[[Sequence[str]], None] | None,
) -> None:
    """The new version holds exactly the state's point ids, and a sample of its chunks finds
    itself by dense search with the new model."""
    from qflume.sinks.base import QueryRequest

    t = time.perf_counter()
    sink = b.pipe.sink
    for attempt in (0, 1):
        sink.flush()
        expected = expected_ids()
        have = {r.id for r in sink.scroll(with_payload=False)}
        missing, extra = expected - have, have - expected
        if not missing and not extra:
            break
        if extra:
            sink.delete(sorted(extra))
            sink.flush()
        if missing and (recopy is None or attempt):
            raise VersionError(
                f"verification of {b.new.name} failed: {len(missing)} of the state's "
                f"{len(expected)} points are missing from it; the alias stays on {b.old.name}; "
                "run the same reindex again"
            )
        if missing and recopy is not None:
            recopy(_owners(b, missing))
    b.report.points = len(expected)
    ids = sorted(expected)
    sample = random.Random(b.new.version).sample(ids, min(SELF_QUERIES, len(ids)))
    if sample:
        recs = {r.id: r for r in sink.retrieve(sample)}
        texts = [payload.text_of(recs[i].payload) or "" for i in sample]
        vecs = b.pipe.embedder.embed(texts)
        hits = sink.query_batch([QueryRequest(dense=np.ascontiguousarray(v), limit=SELF_LIMIT)
                                 for v in vecs])  # fmt: skip
        lost = [
            i
            for i, text, hs in zip(sample, texts, hits, strict=True)
            if not any(h.id == i or payload.text_of(h.payload) == text for h in hs)
        ]
        if lost:
            raise VersionError(
                f"verification of {b.new.name} failed: {len(lost)} of {len(sample)} chunks did "
                f"not find themselves by dense search (e.g. point {lost[0]}): its vectors do not "
                f"fit its model; the alias stays on {b.old.name} (`qflume gc` drops the build)"
            )
    b.report.self_queries = len(sample)
    b.stage("verify", time.perf_counter() - t)


def _owners(b: _Build, ids: set[str]) -> list[str]:
    """The documents (keys) whose points ``ids`` are, from the live state."""
    out = []
    after = None
    while page := b.ctx.state.documents_page(after, 1024):
        after = page[-1].key
        for d in page:
            if not ids.isdisjoint(_ids(d.key, _split(d.chunks))):
                out.append(d.key)
    return out


def _swap(b: _Build, *, rows: str, source: Path | None = None) -> None:
    """One state transaction, then the alias (one request) or the pointer (one rename)."""
    ctx = b.ctx
    t = time.perf_counter()
    now = time.time()
    new = replace(
        b.new,
        status="live",
        swapped_at=now,
        points=b.report.points,
        info={**b.new.info, "previous": b.old.version},
    )
    old = replace(b.old, status="retired", info={**b.old.info, "archived": True})
    fps: dict[str, str] = {}
    if rows == "refingerprint":
        plain, reader = b.pipe.fingerprint(), b.pipe.reader_fingerprint()
        for fp in ctx.state.fingerprints():
            fps[fp] = reader if fp.endswith("|reader=1") else plain
    b.pipe.close()  # the new shard is free for searches, the build state closed
    ctx.state.switch_version(new, old, rows=rows, source=source, fingerprints=fps)
    ctx.target.point(new.name, new.version)
    b.new = new
    b.report.swapped = True
    b.stage("swap", time.perf_counter() - t)
    _remove_build_files(ctx, new.name)
    ctx.say(f"{ctx.collection} is now version {new.version} ({new.name}); {old.name} is kept "
            f"for `qflume rollback -c {ctx.collection}`")  # fmt: skip


def _remove_build_files(ctx: _Ctx, name: str) -> None:
    """A build's own files (its state, spool); never the collection's (version 1 of an
    embedded collection has the collection's name)."""
    m = _VERSION_RE.match(name)
    if m is None or m["base"] != ctx.collection:
        return
    for stem in (f"{name}.state.sqlite", f"{name}.spool.sqlite"):
        for suffix in ("", "-wal", "-shm", ".lock"):
            with contextlib.suppress(OSError):
                (ctx.base / (stem + suffix)).unlink()
    for extra in (f"{name}.outbox", f"{name}.cache.sqlite"):
        with contextlib.suppress(OSError):
            (ctx.base / extra).unlink()


def _drop_build(ctx: _Ctx, row: VersionRow) -> None:
    if ctx.target.exists(row.name) and row.name != ctx.target.live_name():
        ctx.target.drop(row.name)
    _remove_build_files(ctx, row.name)
    ctx.state.forget_version(row.version)


# ---------------------------------------------------------------------------------------------
# rollback, gc, migrate, versions


def rollback(
    collection: str,
    *,
    to: int | None = None,
    lock_wait: float = LOCK_WAIT_S,
    progress: bool = False,
    **where: Unpack[Where],
) -> dict[str, Any]:
    """Make a retired version live again (``to``, default: the one live before the current
    one): its archived document rows become the state's, then the alias or pointer moves. It
    serves that version as it was when it was retired; the next ingest brings it up to date
    with the sources (documents changed since are read again)."""
    ctx = _open(collection, **where,
                progress=progress)  # fmt: skip
    try:
        with ReindexLock(ctx.state_path) as lock:
            live = _need_versioned(ctx)
            rows = {r.version: r for r in ctx.state.versions()}
            number = to if to is not None else live.info.get("previous")
            if number is None:
                raise VersionError(
                    f"{collection!r} has no version before {live.version} to roll back to "
                    "(see `qflume versions`)"
                )
            row = rows.get(int(number))
            if row is None or row.version == live.version:
                raise VersionError(
                    f"{collection!r} has no other version {number} (see `qflume versions`)"
                )
            if row.status != "retired" or not row.info.get("archived"):
                raise VersionError(
                    f"version {row.version} of {collection!r} is {row.status}, not a retired "
                    "version: only a version that was live can be made live again"
                )
            if not ctx.target.exists(row.name):
                raise VersionError(f"{row.name} is gone from {ctx.target.where()}")
            with _holding_shared(ctx, lock, "swap", lock_wait):
                now = time.time()
                new = replace(row, status="live", swapped_at=now,
                              info={**row.info, "previous": live.version})  # fmt: skip
                old = replace(live, status="retired", info={**live.info, "archived": True})
                ctx.state.switch_version(new, old, rows="archive")
                ctx.target.point(new.name, new.version)
            ctx.say(f"{collection} is now version {new.version} ({new.name}) again")
            return {"collection": collection, "version": new.version, "name": new.name,
                    "previous": live.version, "settings": new.settings}  # fmt: skip
    finally:
        ctx.close()


def gc(
    collection: str,
    *,
    keep: int = 2,
    progress: bool = False,
    **where: Unpack[Where],
) -> dict[str, Any]:
    """Drop the versions beyond the ``keep`` most recent ones (the live one always kept) and
    unfinished builds: their collections or shard folders, and their archived rows."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidInputError(f"keep must be an int >= 1 (the live version counts), got {keep!r}")
    ctx = _open(collection, **where,
                progress=progress)  # fmt: skip
    try:
        with ReindexLock(ctx.state_path):
            live = _need_versioned(ctx)
            rows = ctx.state.versions()
            others = sorted(
                (r for r in rows if r.status == "retired" and r.version != live.version),
                key=lambda r: r.version,
                reverse=True,
            )
            kept = [live.version] + [r.version for r in others[: keep - 1]]
            dropped = []
            for r in rows:
                if r.version in kept or r.status not in ("retired", "building"):
                    continue
                if r.name != live.name and ctx.target.exists(r.name):
                    ctx.target.drop(r.name)
                _remove_build_files(ctx, r.name)
                ctx.state.forget_version(r.version)
                dropped.append(r.version)
                ctx.say(f"dropped version {r.version} ({r.name})")
            return {"collection": collection, "kept": sorted(kept), "dropped": dropped}
    finally:
        ctx.close()


def migrate(
    collection: str,
    *,
    model: Any = None,
    progress: bool = False,
    **where: Unpack[Where],
) -> dict[str, Any]:
    """Put a plain collection behind versions. On a server: copy ``docs`` (points, vectors and
    payloads as they are) into ``docs__v1``, check the copy, then delete ``docs`` and create the
    alias ``docs`` right after it (two requests: a search in between finds no collection), with
    the writer's lock held (no ingest meanwhile; searches go on). On the embedded store nothing
    moves: ``STORE/docs`` is registered as version 1. ``model``: the model folder the collection
    was made with (default: the default model), recorded for later ingests and searches."""
    ctx = _open(collection, **where,
                progress=progress)  # fmt: skip
    try:
        with ReindexLock(ctx.state_path):
            live = _settle(ctx)
            if live is not None:
                return {"collection": collection, "version": live.version, "name": live.name,
                        "migrated": False}  # fmt: skip
            settings = _inferred_settings(ctx.state)
            if settings.get("fingerprint"):
                from qflume.embed import model_fingerprint

                mid = model_fingerprint(model)
                if mid != settings.get("model_id"):
                    raise VersionError(
                        f"the documents of {collection!r} were made with model "
                        f"{settings.get('model_id')}, not {mid}"
                        + (" (the default model)" if model is None else f" ({model})")
                        + ": pass --model with the folder of the model it was made with"
                    )
                settings.update(model=_model_ref(model), known=True)
            name = version_name(collection, 1)
            rows = ctx.state.versions()
            if ctx.target.kind == "edge":
                if not ctx.target.plain():
                    raise VersionError(
                        f"collection {collection!r} does not exist in {ctx.target.where()}"
                    )
                row = VersionRow(1, collection, "live", settings, {"made": "migrate"}, time.time())
                ctx.state.save_version(row)
                ctx.target.point(collection, 1)
                return {
                    "collection": collection,
                    "version": 1,
                    "name": collection,
                    "migrated": True,
                }
            mig = next((r for r in rows if r.status == "migrating"), None)
            if ctx.target.plain():
                with State(ctx.state_path, lock=True):  # no ingest while the copy is made
                    copied = _copy_plain(ctx, name)
                    row = VersionRow(
                        1, name, "migrating", settings, {"made": "migrate"}, time.time()
                    )
                    row.points = copied
                    ctx.state.save_version(row)
                    ctx.target.drop(collection)
                    ctx.target.point(name, 1)
                    row.status = "live"
                    ctx.state.save_version(row)
            elif mig is not None and ctx.target.exists(mig.name):
                ctx.target.point(mig.name, mig.version)
                row = replace(mig, status="live")
                ctx.state.save_version(row)
            else:
                raise VersionError(
                    f"collection {collection!r} does not exist on {ctx.target.where()}"
                )
            ctx.say(f"{collection} is now the alias of {row.name}")
            return {"collection": collection, "version": 1, "name": row.name, "migrated": True,
                    "points": row.points}  # fmt: skip
    finally:
        ctx.close()


def _copy_plain(ctx: _Ctx, name: str) -> int:
    """Every point of the plain collection into ``name``, as it is; checked id for id."""
    src = ctx.target.sink(ctx.collection)
    dst = ctx.target.sink(name)
    try:
        spec = src.collection_spec()
        if spec is None:
            raise VersionError(f"collection {ctx.collection!r} has no default dense vector: "
                               "qflume did not make it")  # fmt: skip
        dst.ensure_collection(spec)
        ids: list[str] = []
        payloads: list[dict[str, Any]] = []
        dense: list[Any] = []
        sparse: list[dict[str, Any]] = []

        def send() -> None:
            sp = {k: _csr([s.get(k, ([], [])) for s in sparse]) for k in spec.sparse} or None
            dst.upsert(ids, np.stack(dense), payloads, sparse=sp)
            for part in (ids, payloads, dense, sparse):
                part.clear()

        n = 0
        for r in src.scroll(with_payload=True, with_vectors=True, batch=256):
            if r.vector is None:
                raise VersionError(f"point {r.id} of {ctx.collection!r} has no dense vector")
            ids.append(r.id)
            payloads.append(r.payload or {})
            dense.append(r.vector)
            sparse.append(r.sparse or {})
            n += 1
            if len(ids) >= 256:
                send()
        if ids:
            send()
        dst.flush()
        a = {r.id for r in src.scroll(with_payload=False)}
        b = {r.id for r in dst.scroll(with_payload=False)}
        if a != b:
            raise VersionError(f"the copy of {ctx.collection!r} into {name} differs "
                               f"({len(a - b)} missing): run the same migrate again")  # fmt: skip
        return n
    finally:
        src.close()
        dst.close()


def list_versions(
    collection: str,
    **where: Unpack[Where],
) -> dict[str, Any]:
    """The collection's versions as the state records them, and what its alias (or pointer)
    names now; changes nothing."""
    ctx = _open(collection, **where)
    try:
        rows = ctx.state.versions()
        names = ctx.target.live_name()
        live = next((r for r in rows if r.status == "live"), None)
        out: dict[str, Any] = {
            "collection": collection,
            "target": ctx.target.where(),
            "live": live.version if live else None,
            "alias": names,
            "plain": not rows and ctx.target.plain(),
            "versions": [],
        }
        docs = ctx.state.stats().documents
        for r in rows:
            item = {
                "version": r.version,
                "name": r.name,
                "status": r.status,
                "exists": r.status != "dropped" and ctx.target.exists(r.name),
                "settings": describe(r.settings) if r.settings else "",
                "points": r.points,
                "created_at": r.created_at,
                "swapped_at": r.swapped_at,
                "path": r.info.get("path"),
            }
            if r.status == "building":
                item["documents_copied"] = len(ctx.state.build_progress(r.version))
                item["documents"] = docs
            out["versions"].append(item)
        if live is not None and names not in (live.name, None if live.name == collection else 0):
            out["note"] = (
                f"the {'alias' if ctx.target.kind == 'server' else 'pointer'} names {names}, "
                f"the state {live.name}: the next reindex, rollback or gc settles it"
            )
        return out
    finally:
        ctx.close()
