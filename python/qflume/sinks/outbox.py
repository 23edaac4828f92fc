"""A bounded on-disk FIFO of packed gRPC requests: what a GrpcSink could not send while its
server was unreachable, kept in order until the server is back.

Each entry is (kind, method, points, request bytes), appended to one file and read back from a
moving offset; the file is emptied when the queue drains and removed on close. A file left by a
process that was killed is discarded when the next one opens it: its requests were never
acknowledged, so the state never committed them and the next run plans them again.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

_HEAD = struct.Struct("<HHIQ")  # len(kind), len(method), points, len(request)


@dataclass(frozen=True)
class Entry:
    kind: str
    method: str
    points: int
    request: bytes
    size: int  # bytes it takes in the file


class Outbox:
    """FIFO of requests on disk, at most ``budget`` bytes queued."""

    def __init__(self, path: str | os.PathLike[str], budget: int) -> None:
        self.path = Path(path)
        self.budget = budget
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "w+b")
        self._read = 0  # offset of the first queued entry
        self._write = 0
        self.count = 0  # entries queued
        self.total = 0  # entries ever queued

    @property
    def queued_bytes(self) -> int:
        return self._write - self._read

    def __len__(self) -> int:
        return self.count

    def fits(self, request: bytes) -> bool:
        return self.queued_bytes + _HEAD.size + len(request) + 64 <= self.budget

    def put(self, kind: str, method: str, points: int, request: bytes) -> None:
        k, m = kind.encode(), method.encode()
        self._f.seek(self._write)
        self._f.write(_HEAD.pack(len(k), len(m), points, len(request)))
        self._f.write(k)
        self._f.write(m)
        self._f.write(request)
        self._write = self._f.tell()
        self.count += 1
        self.total += 1

    def peek(self, limit: int) -> list[Entry]:
        """Up to ``limit`` entries from the front, all of the same kind (an update of another
        kind waits for the ones before it, as when sending directly)."""
        out: list[Entry] = []
        self._f.flush()
        pos = self._read
        while pos < self._write and len(out) < limit:
            self._f.seek(pos)
            nk, nm, points, nr = _HEAD.unpack(self._f.read(_HEAD.size))
            kind = self._f.read(nk).decode()
            if out and kind != out[0].kind:
                break
            method = self._f.read(nm).decode()
            request = self._f.read(nr)
            size = _HEAD.size + nk + nm + nr
            out.append(Entry(kind, method, points, request, size))
            pos += size
        return out

    def pop(self, entry: Entry) -> None:
        """Drop the front entry (``entry``, as peeked): the server acknowledged it."""
        self._read += entry.size
        self.count -= 1
        if self.count == 0:  # drained: start the file over
            self._read = self._write = 0
            self._f.truncate(0)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.path.unlink(missing_ok=True)
