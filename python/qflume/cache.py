"""A persistent embedding cache: (model id, chunk hash) -> float32 vector.

One SQLite file (WAL) holds the vectors, an in-memory LRU sits in front of it. The file is bounded
by ``max_entries``: past it, the least recently used rows go (``last_used`` is a logical clock,
bumped on every hit and write). All methods are thread-safe; the pipeline calls them from a worker.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from qflume._sqlite import open_wal
from qflume.exceptions import InvalidInputError, QflumeIOError, ShapeError

__all__ = ["EmbeddingCache"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    model_id  TEXT NOT NULL,
    hash      BLOB NOT NULL,
    vector    BLOB NOT NULL,
    last_used INTEGER NOT NULL,
    PRIMARY KEY (model_id, hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vectors_last_used ON vectors (last_used);
"""
_CHUNK = 500  # host parameters per query stay well under SQLite's limit


class EmbeddingCache:
    """Vectors of chunks already embedded, keyed by (model_id, 16-byte chunk hash).

    ``path``: the SQLite file (created with its folder). ``max_entries``: rows kept on disk
    (least recently used evicted past it). ``memory_entries``: size of the in-memory LRU.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_entries: int = 1_000_000,
        memory_entries: int = 20_000,
    ) -> None:
        for name, value, least in (
            ("max_entries", max_entries, 1),
            ("memory_entries", memory_entries, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidInputError(
                    f"EmbeddingCache({str(path)!r}): {name} must be an int >= {least}, "
                    f"got {value!r}"
                )
        self.path = Path(path)
        self.max_entries = max_entries
        self.memory_entries = memory_entries
        try:
            self._db = open_wal(self.path, _SCHEMA)
            row = self._db.execute("SELECT MAX(last_used) FROM vectors").fetchone()
            self._count = int(self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
        except (sqlite3.Error, OSError) as e:
            raise QflumeIOError(f"cannot open embedding cache {self.path}: {e}") from e
        self._clock = int(row[0]) if row and row[0] is not None else 0
        self._lock = threading.Lock()
        self._mem: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._closed = False

    # ------------------------------------------------------------------ public

    def get_many(self, model_id: str, hashes: Any) -> tuple[np.ndarray, np.ndarray]:
        """Look up ``hashes`` ((n, 16) uint8) -> (found (n,) bool, vectors (n, dim) float32).

        Rows not found are zero; dim is 0 when nothing was found.
        """
        keys = self._keys(hashes)
        n = len(keys)
        found = np.zeros(n, bool)
        got: dict[int, np.ndarray] = {}
        with self._lock:
            self._check_open()
            missing: dict[bytes, list[int]] = {}
            for i, k in enumerate(keys):
                vec = self._mem.get((model_id, k))
                if vec is not None:
                    self._mem.move_to_end((model_id, k))
                    got[i] = vec
                else:
                    missing.setdefault(k, []).append(i)
            hit_keys = {keys[i] for i in got}
            self._clock += 1
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    todo = list(missing)
                    for s in range(0, len(todo), _CHUNK):
                        part = todo[s : s + _CHUNK]
                        marks = ",".join("?" * len(part))
                        rows = self._db.execute(
                            f"SELECT hash, vector FROM vectors WHERE model_id=? "
                            f"AND hash IN ({marks})",
                            [model_id, *part],
                        ).fetchall()
                        for h, blob in rows:
                            vec = np.frombuffer(blob, np.float32)
                            for i in missing[h]:
                                got[i] = vec
                            hit_keys.add(h)
                            self._remember((model_id, h), vec)
                    if hit_keys:  # LRU on disk: every hit, in memory or not, counts as a use
                        self._db.executemany(
                            "UPDATE vectors SET last_used=? WHERE model_id=? AND hash=?",
                            [(self._clock, model_id, h) for h in hit_keys],
                        )
            except sqlite3.Error as e:
                raise QflumeIOError(f"embedding cache {self.path}: {e}") from e
            self._hits += len(got)
            self._misses += n - len(got)
        dim = len(next(iter(got.values()))) if got else 0
        vectors = np.zeros((n, dim), np.float32)
        for i, vec in got.items():
            if len(vec) == dim:
                vectors[i] = vec
                found[i] = True
        return found, vectors

    def put_many(self, model_id: str, hashes: Any, vectors: Any) -> None:
        """Store ``vectors`` ((n, dim) float32) under ``hashes`` ((n, 16) uint8)."""
        keys = self._keys(hashes)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) != len(keys):
            raise ShapeError(
                f"put_many: {len(keys)} hashes but vectors of shape {tuple(vecs.shape)}"
            )
        if not keys:
            return
        with self._lock:
            self._check_open()
            self._clock += 1
            rows = [(model_id, k, vecs[i].tobytes(), self._clock) for i, k in enumerate(keys)]
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    existing = 0
                    unique = list(dict.fromkeys(keys))
                    for s in range(0, len(unique), _CHUNK):
                        part = unique[s : s + _CHUNK]
                        existing += self._db.execute(
                            f"SELECT COUNT(*) FROM vectors WHERE model_id=? AND hash IN "
                            f"({','.join('?' * len(part))})",
                            [model_id, *part],
                        ).fetchone()[0]
                    self._db.executemany(
                        "INSERT INTO vectors (model_id, hash, vector, last_used) VALUES (?,?,?,?) "
                        "ON CONFLICT(model_id, hash) DO UPDATE SET "
                        "vector=excluded.vector, last_used=excluded.last_used",
                        rows,
                    )
                    self._count += len(unique) - existing
                    if self._count > self.max_entries:
                        self._db.execute(
                            "DELETE FROM vectors WHERE (model_id, hash) IN (SELECT model_id, hash"
                            " FROM vectors ORDER BY last_used LIMIT ?)",
                            (self._count - self.max_entries,),
                        )
                        self._count = self.max_entries
                        self._mem.clear()  # evicted rows must not linger in memory
            except sqlite3.Error as e:
                raise QflumeIOError(f"embedding cache {self.path}: {e}") from e
            for i, k in enumerate(keys):
                self._remember((model_id, k), vecs[i].copy())

    def stats(self) -> dict[str, Any]:
        """size (rows on disk), memory (rows in the LRU), hits, misses, hit_rate (0..1)."""
        with self._lock:
            total = self._hits + self._misses
            return {
                "size": self._count,
                "memory": len(self._mem),
                "hits": self._hits,
                "misses": self._misses,
                "hit_rate": self._hits / total if total else 0.0,
            }

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._mem.clear()
                self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, size={self._count})"

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise QflumeIOError(f"embedding cache {self.path} is closed")

    def _remember(self, key: tuple[str, bytes], vec: np.ndarray) -> None:
        if self.memory_entries == 0:
            return
        self._mem[key] = vec
        self._mem.move_to_end(key)
        while len(self._mem) > self.memory_entries:
            self._mem.popitem(last=False)

    @staticmethod
    def _keys(hashes: Any) -> list[bytes]:
        if isinstance(hashes, (list, tuple)) and all(isinstance(h, bytes) for h in hashes):
            arr = np.frombuffer(b"".join(hashes), np.uint8).reshape(len(hashes), -1)
        else:
            arr = np.ascontiguousarray(hashes, dtype=np.uint8)
        if arr.ndim != 2 or (len(arr) and arr.shape[1] != 16):
            raise ShapeError(f"hashes must be (n, 16) uint8, got shape {tuple(arr.shape)}")
        return [bytes(row) for row in arr] if len(arr) else []
