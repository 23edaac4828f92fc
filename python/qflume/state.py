"""The ingestion state: one SQLite file per target (WAL), a row per document.

A row records what the collection holds for a document: its content hash, size and mtime (the scan's
fast path), the hashes and offsets of its chunks, its metadata, and the pipeline fingerprint that
produced it. Crash safety comes from a write-ahead column: before points are sent, the hashes about
to be written are added to `pending`; only after the sink acknowledged them does `chunks` take the
new value and `pending` clear. A run that died in between leaves `pending` set, and the next run
deletes whatever of `chunks ∪ pending` the document no longer has: no orphans, no duplicates.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qflume.exceptions import (
    InvalidInputError,
    StateCorruptError,
    StateError,
    StateLockedError,
    StoreBusyError,
)
from qflume.ids import HASH_LEN

SCHEMA_VERSION = 1
#: How long a writer waits for readers (search, status) of an embedded store to finish.
READER_WAIT_S = 30.0
#: How long a writer waits for a reindex that reads the live version or swaps versions.
REINDEX_WAIT_S = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    key TEXT PRIMARY KEY,
    root TEXT NOT NULL,
    content_hash BLOB,
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    meta_json TEXT NOT NULL DEFAULT '{}',
    fingerprint TEXT NOT NULL DEFAULT '',
    chunks BLOB NOT NULL DEFAULT x'',
    offsets BLOB NOT NULL DEFAULT x'',
    pending BLOB NOT NULL DEFAULT x'',
    updated_at REAL NOT NULL DEFAULT 0,
    chunk_meta BLOB NOT NULL DEFAULT x''
);
CREATE INDEX IF NOT EXISTS documents_root ON documents(root);
CREATE TABLE IF NOT EXISTS versions (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}',
    info TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL DEFAULT 0,
    swapped_at REAL,
    points INTEGER
);
CREATE TABLE IF NOT EXISTS version_progress (
    version INTEGER NOT NULL,
    key TEXT NOT NULL,
    digest BLOB NOT NULL,
    chunks BLOB NOT NULL,
    PRIMARY KEY (version, key)
) WITHOUT ROWID;
"""


def hashes_from_blob(blob: bytes) -> npt.NDArray[np.uint8]:
    """(n, 16) uint8 view of concatenated 16-byte hashes."""
    return np.frombuffer(blob, dtype=np.uint8).reshape(-1, HASH_LEN)


@dataclass
class _DocRow:
    """The columns of a document row that both DocState and DocUpdate carry, in their order."""

    key: str
    root: str
    content_hash: bytes | None
    size: int
    mtime_ns: int
    meta_json: str
    fingerprint: str
    chunks: bytes  # concatenated 16-byte chunk hashes, in chunk order (unique)
    offsets: bytes  # int64 (n, 3): chunk_index, start, end of each hash in `chunks`


@dataclass
class DocState(_DocRow):
    """What the collection holds for one document, as the state last recorded it."""

    pending: bytes  # hashes sent (or about to be) but not yet acknowledged
    #: 8 bytes per hash in `chunks`: a digest of the chunk's structural metadata (its page(s),
    #: its heading path; zeros for none), or empty when no chunk has any
    chunk_meta: bytes = b""

    def chunk_hashes(self) -> npt.NDArray[np.uint8]:
        return hashes_from_blob(self.chunks)

    def chunk_offsets(self) -> npt.NDArray[np.int64]:
        return np.frombuffer(self.offsets, dtype=np.int64).reshape(-1, 3)

    def possibly_present(self) -> set[bytes]:
        """Every chunk hash that may have a point in the collection."""
        out = {self.chunks[i : i + HASH_LEN] for i in range(0, len(self.chunks), HASH_LEN)}
        out.update(self.pending[i : i + HASH_LEN] for i in range(0, len(self.pending), HASH_LEN))
        return out


@dataclass
class DocUpdate(_DocRow):
    """The new committed value of a document row."""

    chunk_meta: bytes = b""  # see DocState.chunk_meta


@dataclass
class VersionRow:
    """One version of a collection (qflume.versions): the physical collection (or embedded
    shard folder) ``name``, ``status`` (building, live, retired, dropped), the ``settings``
    that made its points (model, chunking, sparse, fingerprint) and what a build needs to
    resume or a swap to check (``info``)."""

    version: int
    name: str
    status: str
    settings: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    swapped_at: float | None = None
    points: int | None = None


@dataclass
class StateStats:
    documents: int = 0
    chunks: int = 0
    pending_documents: int = 0
    by_root: dict[str, int] = field(default_factory=dict)


class State:
    """The SQLite state of one target. Opening it takes the run lock unless `lock=False`.

    ``lock=True``: the writer's lock (exclusive; its pid is written in the lock file). A second
    writer is refused at once; readers holding the shared lock are waited for up to
    :data:`READER_WAIT_S`. ``lock="shared"``: a reader's lock, for an embedded store whose shard
    only one process may open: refused at once, naming the writer's pid, while a writer runs.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock: bool | str = True,
        readonly: bool = False,
    ):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._writer = False  # holds the exclusive lock (and wrote its pid into the lock file)
        # One connection serves the pipeline's threads: transactions and reads take turns.
        self._mutex = threading.RLock()
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if lock == "shared":
            self._take_shared_lock()
        elif lock:
            self._take_lock()
        try:
            if readonly:
                if not self.path.exists():
                    raise StateError(f"{self.path}: no state here yet (nothing was ingested)")
                uri = f"file:{self.path}?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
                have = {row[1] for row in self.db.execute("PRAGMA table_info(documents)")}
                if have and "chunk_meta" not in have:  # written before the column existed
                    self._COLS = self._COLS.replace("chunk_meta", "x'' AS chunk_meta")
            else:
                self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                self._check_version()
                self._add_columns()
                if self._writer:  # a reindex copies again what writers changed meanwhile
                    self._bump_writer_epoch()
        except sqlite3.DatabaseError as e:
            self._release_lock()
            with contextlib.suppress(Exception):
                self.db.close()
            raise StateCorruptError(
                f"{self.path}: the state database is damaged ({e}). `qflume verify --repair` "
                "with the same target rebuilds it from the collection (the damaged file is kept "
                "beside it); or remove it to ingest from scratch"
            ) from e

    # -- locking ---------------------------------------------------------------

    def _lock_file(self) -> int:
        lock_path = self.path.with_name(self.path.name + ".lock")
        return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)

    @staticmethod
    def _writer_pid(fd: int) -> int | None:
        """The pid the writer wrote into the lock file, if that process is alive."""
        try:
            pid = int(os.pread(fd, 32, 0).decode(errors="replace").strip() or 0)
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _take_lock(self) -> None:
        fd = self._lock_file()
        started = time.monotonic()
        deadline = started + READER_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                writer = self._writer_pid(fd)
                reindex = reindex_holder(self.path) if writer is None else None
                if reindex is not None and reindex[1] in ("read", "swap"):
                    # a reindex reads or swaps versions (shared lock): its writers wait for it
                    deadline = max(deadline, time.monotonic() + 1.0)
                    if time.monotonic() - started < REINDEX_WAIT_S:
                        time.sleep(0.05)
                        continue
                if writer is None and time.monotonic() < deadline:
                    time.sleep(0.05)  # readers (search, status): they finish in moments
                    continue
                os.close(fd)
                who = (
                    f"another qflume run holds this state (pid {writer})"
                    if writer is not None
                    else f"a reindex (pid {reindex[0]}) kept it for {REINDEX_WAIT_S:.0f} s"
                    if reindex is not None
                    else f"readers (search, status) kept it busy for {READER_WAIT_S:.0f} s"
                )
                raise StateLockedError(
                    f"{self.path}: {who}; wait for it to finish or stop it first"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        self._writer = True

    def _take_shared_lock(self) -> None:
        fd = self._lock_file()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            writer = self._writer_pid(fd)
            os.close(fd)
            who = f"ingest pid {writer}" if writer is not None else "an ingest"
            raise StoreBusyError(
                f"store busy: {who} is writing {self.path.name.split('.state.')[0]!r} in "
                f"{self.path.parent}; search it through that run's `qflume serve`, use a Qdrant "
                "server (--url) to search while ingesting, or try again when it ends"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                if self._writer:
                    os.ftruncate(self._lock_fd, 0)  # no pid left behind for readers to name
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
        if row is None:
            self.db.execute(
                "INSERT INTO meta(name, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: state schema {row[0]} is not the {SCHEMA_VERSION} this qflume uses; "
                "remove the file (and the collection) to start over"
            )

    def _add_columns(self) -> None:
        """Columns added since schema 1 was first written (a state from before gets them)."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(documents)")}
        if "chunk_meta" not in have:
            self.db.execute("ALTER TABLE documents ADD COLUMN chunk_meta BLOB NOT NULL DEFAULT x''")

    # -- meta --------------------------------------------------------------------

    def get_meta(self, name: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, name: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO meta(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (name, json.dumps(value)),
        )

    # -- reads ---------------------------------------------------------------------

    _COLS = (
        "key, root, content_hash, size, mtime_ns, meta_json, fingerprint, chunks, offsets, "
        "pending, chunk_meta"
    )

    def get_many(self, keys: Sequence[str]) -> dict[str, DocState]:
        out: dict[str, DocState] = {}
        with self._mutex:
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                q = f"SELECT {self._COLS} FROM documents WHERE key IN ({','.join('?' * len(part))})"
                for row in self.db.execute(q, part):
                    out[row[0]] = DocState(*row)
        return out

    def get(self, key: str) -> DocState | None:
        return self.get_many([key]).get(key)

    def known_files(self, roots: Iterable[str]) -> dict[str, tuple[int, int, bytes]]:
        """key -> (size, mtime_ns, content hash) for the scan's fast path."""
        out: dict[str, tuple[int, int, bytes]] = {}
        with self._mutex:
            for root in roots:
                for key, size, mtime_ns, h in self.db.execute(
                    "SELECT key, size, mtime_ns, content_hash FROM documents "
                    "WHERE root=? AND content_hash IS NOT NULL",
                    (root,),
                ):
                    out[key] = (size, mtime_ns, h)
        return out

    def not_current(self, root: str, fingerprint: str, *others: str) -> list[str]:
        """Keys under `root` made by another pipeline fingerprint (than `fingerprint` and
        `others`) or with writes pending."""
        fps = (fingerprint, *others)
        with self._mutex:
            return [
                key
                for (key,) in self.db.execute(
                    f"SELECT key FROM documents WHERE root=? AND (fingerprint NOT IN "
                    f"({','.join('?' * len(fps))}) OR LENGTH(pending) > 0)",
                    (root, *fps),
                )
            ]

    def keys_under(self, roots: Iterable[str]) -> Iterator[str]:
        with self._mutex:
            keys = [
                key
                for root in roots
                for (key,) in self.db.execute("SELECT key FROM documents WHERE root=?", (root,))
            ]
        yield from keys

    def iter_all(self) -> Iterator[DocState]:
        for row in self.db.execute(f"SELECT {self._COLS} FROM documents ORDER BY key"):
            yield DocState(*row)

    def stats(self) -> StateStats:
        s = StateStats()
        for root, n, chunk_bytes, pend in self.db.execute(
            "SELECT root, COUNT(*), SUM(LENGTH(chunks)), SUM(LENGTH(pending) > 0) "
            "FROM documents GROUP BY root"
        ):
            s.documents += n
            s.chunks += (chunk_bytes or 0) // HASH_LEN
            s.pending_documents += pend or 0
            s.by_root[root] = n
        return s

    # -- writes (each a transaction) -----------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            else:
                self.db.execute("COMMIT")

    def write_ahead(self, pending: dict[str, tuple[str, bytes]]) -> None:
        """Record, before sending, the chunk hashes about to be written for each document.

        `pending` maps key -> (root, concatenated hashes). A document without a row gets one with
        no committed chunks, so a crash still leaves a trace of what may be in the collection.
        """
        if not pending:
            return
        now = time.time()
        with self.transaction() as db:
            for key, (root, hashes) in pending.items():
                row = db.execute("SELECT pending FROM documents WHERE key=?", (key,)).fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO documents(key, root, pending, updated_at) VALUES(?, ?, ?, ?)",
                        (key, root, hashes, now),
                    )
                else:
                    # Concatenated in Python: SQLite's || would turn the blobs into text.
                    db.execute(
                        "UPDATE documents SET pending=?, updated_at=? WHERE key=?",
                        (bytes(row[0]) + hashes, now, key),
                    )

    def commit(self, updates: Sequence[DocUpdate], deleted: Sequence[str] = ()) -> None:
        """After the sink acknowledged: make the new rows the truth and clear their pending."""
        if not updates and not deleted:
            return
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO documents(key, root, content_hash, size, mtime_ns, meta_json, "
                "fingerprint, chunks, offsets, pending, updated_at, chunk_meta) "
                "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, x'', ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET root=excluded.root, "
                "content_hash=excluded.content_hash, size=excluded.size, "
                "mtime_ns=excluded.mtime_ns, meta_json=excluded.meta_json, "
                "fingerprint=excluded.fingerprint, chunks=excluded.chunks, "
                "offsets=excluded.offsets, pending=x'', updated_at=excluded.updated_at, "
                "chunk_meta=excluded.chunk_meta",
                [
                    (
                        u.key,
                        u.root,
                        u.content_hash,
                        u.size,
                        u.mtime_ns,
                        u.meta_json,
                        u.fingerprint,
                        u.chunks,
                        u.offsets,
                        now,
                        u.chunk_meta,
                    )
                    for u in updates
                ],
            )
            db.executemany("DELETE FROM documents WHERE key=?", [(k,) for k in deleted])

    def touch(self, rows: Sequence[tuple[str, int, int]]) -> None:
        """Record new (size, mtime_ns) for documents whose content did not change."""
        if not rows:
            return
        with self.transaction() as db:
            db.executemany(
                "UPDATE documents SET size=?, mtime_ns=? WHERE key=?",
                [(size, mtime, key) for key, size, mtime in rows],
            )

    def forget_chunks(self, keys: Sequence[str]) -> None:
        """Make the next ingest rebuild ``keys`` whole: their committed chunks become pending
        (may be in the collection: re-sent if still in the document, deleted if not) and their
        content hash is forgotten, so even an unchanged file is read and chunked again."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE documents SET content_hash=NULL, size=-1, pending=CAST(pending || chunks AS BLOB), "
                "chunks=x'', offsets=x'', chunk_meta=x'' WHERE key=?",
                [(k,) for k in keys],
            )

    def forget_points(self, gone: Mapping[str, Iterable[bytes]]) -> int:
        """Drop chunks whose points were deleted from the collection: ``gone`` maps a document
        key to the content hashes of its deleted chunks. Each row loses those hashes from
        ``chunks`` (with their offsets and structure digests) and ``pending``, so the state
        keeps mirroring the collection; they come back only when their document changes.
        Returns the number of rows changed."""
        drop_of = {k: set(v) for k, v in gone.items()}
        docs = self.get_many(sorted(drop_of))
        rows = []
        for key, doc in docs.items():
            drop = drop_of[key]
            hashes = [doc.chunks[i : i + HASH_LEN] for i in range(0, len(doc.chunks), HASH_LEN)]
            keep = [j for j, h in enumerate(hashes) if h not in drop]
            pending = [doc.pending[i : i + HASH_LEN] for i in range(0, len(doc.pending), HASH_LEN)]
            kept_pending = [h for h in pending if h not in drop]
            if len(keep) == len(hashes) and len(kept_pending) == len(pending):
                continue
            offsets = doc.chunk_offsets()
            new_offsets = offsets[keep].tobytes() if len(offsets) == len(hashes) else b""
            meta = doc.chunk_meta
            new_meta = (
                b"".join(meta[8 * j : 8 * j + 8] for j in keep)
                if len(meta) == 8 * len(hashes)
                else b""
            )
            rows.append(
                (
                    b"".join(hashes[j] for j in keep),
                    new_offsets,
                    new_meta,
                    b"".join(kept_pending),
                    time.time(),
                    key,
                )
            )
        if rows:
            with self.transaction() as db:
                db.executemany(
                    "UPDATE documents SET chunks=?, offsets=?, chunk_meta=?, pending=?, "
                    "updated_at=? WHERE key=?",
                    rows,
                )
        return len(rows)

    @staticmethod
    def set_aside(path: str | os.PathLike[str]) -> Path:
        """Renames a damaged state file (and its -wal / -shm) to ``<name>.corrupt-<time>``."""
        path = Path(path)
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = path.with_name(path.name + suffix)
            if src.exists():
                os.replace(src, aside.with_name(aside.name + suffix))
        return aside

    def restore(self, docs: Iterable[DocUpdate]) -> int:
        """Writes rebuilt document rows (from the collection, after a damaged state was set
        aside); returns how many."""
        rows = [
            (d.key, d.root, d.content_hash, d.size, d.mtime_ns, d.meta_json, d.fingerprint,
             d.chunks, d.offsets, time.time())
            for d in docs
        ]  # fmt: skip
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO documents (key, root, content_hash, size, mtime_ns, "
                "meta_json, fingerprint, chunks, offsets, pending, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, x'', ?)",
                rows,
            )
        return len(rows)

    # -- versions (qflume.versions: a collection's versions, a reindex's progress) --------------

    def _bump_writer_epoch(self) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO meta(name, value) VALUES('writer_epoch', '1') ON CONFLICT(name) "
                "DO UPDATE SET value=CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
            )

    def writer_epoch(self) -> int:
        """How many writers (ingest, serve, verify, a Python Pipeline) have opened this state."""
        return int(self.get_meta("writer_epoch") or 0)

    def versions(self) -> list[VersionRow]:
        """Every version recorded for the collection, oldest first (none for a plain one)."""
        try:
            rows = self.db.execute(
                "SELECT version, name, status, settings, info, created_at, swapped_at, points "
                "FROM versions ORDER BY version"
            ).fetchall()
        except sqlite3.OperationalError:  # a read-only state from before versions existed
            return []
        return [
            VersionRow(v, n, st, json.loads(se), json.loads(i), c, sw, p)
            for v, n, st, se, i, c, sw, p in rows
        ]

    def version(self, number: int) -> VersionRow | None:
        return next((v for v in self.versions() if v.version == number), None)

    def live_version(self) -> VersionRow | None:
        return next((v for v in self.versions() if v.status == "live"), None)

    def save_version(self, row: VersionRow) -> None:
        with self.transaction() as db:
            self._put_version(db, row)

    @staticmethod
    def _put_version(db: sqlite3.Connection, row: VersionRow) -> None:
        db.execute(
            "INSERT OR REPLACE INTO versions(version, name, status, settings, info, created_at, "
            "swapped_at, points) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.version,
                row.name,
                row.status,
                json.dumps(row.settings, sort_keys=True),
                json.dumps(row.info, sort_keys=True),
                row.created_at,
                row.swapped_at,
                row.points,
            ),
        )

    def forget_version(self, number: int) -> None:
        """A version dropped (gc) or abandoned: its row stays as ``dropped``, its progress and
        archived documents go."""
        with self.transaction() as db:
            db.execute("UPDATE versions SET status='dropped' WHERE version=?", (number,))
            db.execute("DELETE FROM version_progress WHERE version=?", (number,))
            if self._has_table(db, "version_documents"):
                db.execute("DELETE FROM version_documents WHERE version=?", (number,))

    def build_progress(self, number: int) -> dict[str, tuple[bytes, bytes]]:
        """key -> (digest of the document row copied, chunk hashes written) for a build."""
        with self._mutex:
            return {
                k: (bytes(d), bytes(c))
                for k, d, c in self.db.execute(
                    "SELECT key, digest, chunks FROM version_progress WHERE version=?", (number,)
                )
            }

    def record_build(
        self, number: int, done: Sequence[tuple[str, bytes, bytes]], gone: Sequence[str] = ()
    ) -> None:
        """Documents copied into a version being built ((key, digest, chunks)), and documents
        taken out of it (``gone``), after its sink acknowledged them."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO version_progress(version, key, digest, chunks) "
                "VALUES(?, ?, ?, ?)",
                [(number, k, d, c) for k, d, c in done],
            )
            db.executemany(
                "DELETE FROM version_progress WHERE version=? AND key=?",
                [(number, k) for k in gone],
            )

    def fingerprints(self) -> dict[str, int]:
        """How many documents each pipeline fingerprint made."""
        with self._mutex:
            q = "SELECT fingerprint, COUNT(*) FROM documents GROUP BY fingerprint"
            return {fp: n for fp, n in self.db.execute(q)}

    def documents_page(self, after: str | None, limit: int) -> list[DocState]:
        """Up to ``limit`` document rows in key order, after key ``after``."""
        with self._mutex:
            if after is None:
                q = f"SELECT {self._COLS} FROM documents ORDER BY key LIMIT ?"
                rows = self.db.execute(q, (limit,)).fetchall()
            else:
                q = f"SELECT {self._COLS} FROM documents WHERE key > ? ORDER BY key LIMIT ?"
                rows = self.db.execute(q, (after, limit)).fetchall()
        return [DocState(*r) for r in rows]

    def archived_documents(self, number: int) -> int:
        """How many document rows are archived for version ``number`` (0: none)."""
        with self._mutex:
            if not self._has_table(self.db, "version_documents"):
                return 0
            row = self.db.execute(
                "SELECT COUNT(*) FROM version_documents WHERE version=?", (number,)
            ).fetchone()
        return int(row[0])

    @staticmethod
    def _has_table(db: sqlite3.Connection, name: str) -> bool:
        q = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
        return db.execute(q, (name,)).fetchone() is not None

    @staticmethod
    def _columns(db: sqlite3.Connection, table: str, schema: str = "main") -> list[str]:
        return [r[1] for r in db.execute(f"PRAGMA {schema}.table_info({table})")]

    def _archive(self, db: sqlite3.Connection, number: int) -> None:
        """The live document rows, archived as version ``number``'s (for a rollback to it).
        The archive follows the documents table's columns, whoever added them."""
        if not self._has_table(db, "version_documents"):
            db.execute("CREATE TABLE version_documents AS SELECT 0 AS version, * FROM documents "
                       "WHERE 0")  # fmt: skip
            db.execute("CREATE INDEX version_documents_v ON version_documents(version)")
        have = set(self._columns(db, "version_documents"))
        info = db.execute("PRAGMA table_info(documents)").fetchall()
        for _, col, typ, _notnull, default, _pk in info:
            if col not in have:
                extra = f" DEFAULT {default}" if default is not None else ""
                db.execute(f"ALTER TABLE version_documents ADD COLUMN {col} {typ}{extra}")
        cols = ", ".join(r[1] for r in info)
        db.execute("DELETE FROM version_documents WHERE version=?", (number,))
        db.execute(
            f"INSERT INTO version_documents(version, {cols}) SELECT ?, {cols} FROM documents",
            (number,),
        )

    def switch_version(
        self,
        live: VersionRow,
        old: VersionRow | None,
        *,
        rows: str,
        source: str | os.PathLike[str] | None = None,
        fingerprints: Mapping[str, str] | None = None,
    ) -> None:
        """Make ``live`` the collection's live version in one transaction: the document rows
        of ``old`` (the version live until now) are archived under its number, then the
        documents table becomes ``live``'s: ``rows="refingerprint"`` keeps the rows and
        renames their fingerprints (``fingerprints``: old -> new; the points were copied),
        ``rows="import"`` takes the rows of the state file ``source`` (a build from the
        sources), ``rows="archive"`` the rows archived for ``live`` (a rollback)."""
        with self._mutex:
            if rows == "import":
                assert source is not None
                self.db.execute("ATTACH DATABASE ? AS build", (os.fspath(source),))
            try:
                with self.transaction() as db:
                    if old is not None:
                        self._archive(db, old.version)
                    if rows == "refingerprint":
                        db.executemany(
                            "UPDATE documents SET fingerprint=? WHERE fingerprint=?",
                            [(new, was) for was, new in (fingerprints or {}).items()],
                        )
                    elif rows in ("import", "archive"):
                        mine = self._columns(db, "documents")
                        if rows == "import":
                            theirs = set(self._columns(db, "documents", "build"))
                            args: tuple[int, ...] = ()
                            src, where = "build.documents", ""
                        else:
                            theirs = set(self._columns(db, "version_documents"))
                            src, where, args = (
                                "version_documents",
                                " WHERE version=?",
                                (live.version,),
                            )
                        cols = ", ".join(c for c in mine if c in theirs)
                        db.execute("DELETE FROM documents")
                        db.execute(
                            f"INSERT INTO documents({cols}) SELECT {cols} FROM {src}{where}", args
                        )
                        if rows == "archive":
                            db.execute(
                                "DELETE FROM version_documents WHERE version=?", (live.version,)
                            )
                    else:
                        raise InvalidInputError(
                            f"switch_version: rows must be 'refingerprint', 'import' or 'archive', got {rows!r}"
                        )
                    if old is not None:
                        self._put_version(db, old)
                    self._put_version(db, live)
                    db.execute("DELETE FROM version_progress WHERE version=?", (live.version,))
            finally:
                if rows == "import":
                    self.db.execute("DETACH DATABASE build")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()
        self._release_lock()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(pid: int) -> bool:
    """Whether ``pid`` names a running process (one of another user's counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reindex_lock_path(state_path: str | os.PathLike[str]) -> Path:
    p = Path(state_path)
    return p.with_name(p.name + ".reindex")


def reindex_holder(state_path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """(pid, phase) of the reindex (or rollback, gc, migrate) running on this state, if any."""
    try:
        with open(_reindex_lock_path(state_path), "rb") as f:
            pid_s, _, phase = f.read(64).decode(errors="replace").strip().partition(" ")
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    return (pid, phase) if _alive(pid) else None


class ReindexLock:
    """One reindex (or rollback, gc, migrate) at a time per state: an exclusive lock on
    ``<state>.reindex`` holding ``"pid phase"``. The phase tells writers what it does: while it
    ``read``s the live version or ``swap``s versions it also holds the state's shared lock, and
    an ingest waits for it (up to :data:`REINDEX_WAIT_S`) instead of being refused."""

    def __init__(self, state_path: str | os.PathLike[str]) -> None:
        self.path = _reindex_lock_path(state_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = reindex_holder(state_path)
            os.close(fd)
            who = f"pid {held[0]}" if held else "another process"
            raise StateLockedError(
                f"{Path(state_path)}: a reindex, rollback or gc ({who}) is running on this "
                "collection; wait for it to finish or stop it first"
            ) from None
        self._fd: int | None = fd
        self.phase("build")

    def phase(self, name: str) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()} {name}".encode(), 0)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ReindexLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PointSpool:
    """A reindex's copy of the live version's points (id, payload, vectors) on the embedded
    store, whose shard one process may open at a time: read once in one go, so that searches
    wait moments while the new version is built from it. ``epoch`` is the state's writer epoch
    when it was read (a spool older than the last writer is read again)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")  # a scratch copy: read again if lost
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS points (id TEXT PRIMARY KEY, payload TEXT NOT NULL, "
            "dense BLOB, sparse TEXT) WITHOUT ROWID;"
        )

    def epoch(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE name='epoch'").fetchone()
        return None if row is None else int(row[0])

    def set_epoch(self, epoch: int) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO meta(name, value) VALUES('epoch', ?)", (str(epoch),)
        )

    def fill(self, records: Iterable[Any]) -> int:
        """Replace the spool's points by ``records`` (qflume.sinks.base.PointRecord)."""
        n = 0
        self.db.execute("BEGIN")
        try:
            self.db.execute("DELETE FROM meta WHERE name='epoch'")
            self.db.execute("DELETE FROM points")
            rows = []
            for r in records:
                dense = None if r.vector is None else np.asarray(r.vector, np.float32).tobytes()
                sparse = None if not r.sparse else json.dumps(r.sparse)
                rows.append((str(r.id), json.dumps(r.payload, ensure_ascii=False), dense, sparse))
                if len(rows) >= 1024:
                    self.db.executemany("INSERT OR REPLACE INTO points VALUES(?, ?, ?, ?)", rows)
                    n += len(rows)
                    rows = []
            self.db.executemany("INSERT OR REPLACE INTO points VALUES(?, ?, ?, ?)", rows)
            n += len(rows)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return n

    def get_many(self, ids: Sequence[str]) -> Iterator[tuple[str, Any, bytes | None, Any]]:
        """(id, payload, dense bytes or None, sparse {name: [indices, values]} or None)."""
        for lo in range(0, len(ids), 500):
            part = list(ids[lo : lo + 500])
            q = f"SELECT id, payload, dense, sparse FROM points WHERE id IN ({','.join('?' * len(part))})"
            for pid, payload, dense, sparse in self.db.execute(q, part):
                yield (
                    pid,
                    json.loads(payload),
                    dense,
                    None if sparse is None else json.loads(sparse),
                )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()
