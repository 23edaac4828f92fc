"""The SQLite setup shared by qflume's small durable stores (the embedding cache, the job queue)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_wal(path: Path, schema: str) -> sqlite3.Connection:
    """Open `path` (creating its folder) in WAL mode, autocommit, usable from any thread, with
    `schema` (idempotent ``CREATE ... IF NOT EXISTS`` statements) applied.

    Raises what `mkdir` / `sqlite3` raise (``OSError``, ``sqlite3.Error``); callers wrap it in
    their own error naming the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db
