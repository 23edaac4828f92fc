"""Readers run in parallel: built-in ones in worker processes (PDFium is not thread-safe, and
a file that crashes or hangs its reader costs that one file, not the ingest), plug-ins in
threads.

Each of ``workers`` threads owns one worker process (``python -m qflume.readers.pool``),
started at its first task and restarted after a crash; a task is one pickled request and one
pickled answer over the process's pipes, so no ``__main__`` guard is needed in the caller's
script (unlike multiprocessing's spawn). A task that runs past ``timeout`` seconds has its
process killed and the file skipped as ``unreadable``.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from qflume.exceptions import InvalidInputError
from qflume.readers import Document, ReaderSkip, read_builtin, run_plugin

_LEN = struct.Struct("<Q")
#: Seconds one document (or one page window) may take before its process is killed.
TIMEOUT = 300.0


def _task(op: str, args: tuple[Any, ...]) -> Any:
    """What a worker process does for one request (also run in-process by tests)."""
    if op == "read":
        kind, path, max_pages = args
        if kind == "pdf":
            from qflume.readers import missing_extra, pdf

            problem = missing_extra("pdf")
            if problem is not None:
                raise ReaderSkip("needs-extra", problem)
            return pdf.read(path, max_pages)
        return read_builtin(kind, path)
    if op == "window":
        from qflume.readers import pdf

        path, lo, hi = args
        return pdf.read_window(path, lo, hi)
    raise InvalidInputError(f"unknown reader task {op!r}")


class _Worker:
    """One worker process, used by one thread at a time."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def call(self, op: str, args: tuple[Any, ...], timeout: float) -> Any:
        if self.proc is not None and self.proc.poll() is not None:  # died between tasks
            _close_pipes(self.proc)
            self.proc = None
        if self.proc is None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qflume.readers.pool"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        body = pickle.dumps((op, args), protocol=pickle.HIGHEST_PROTOCOL)
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            proc.stdin.write(_LEN.pack(len(body)) + body)
            proc.stdin.flush()
            head = proc.stdout.read(_LEN.size)
            data = proc.stdout.read(_LEN.unpack(head)[0]) if len(head) == _LEN.size else b""
        except (BrokenPipeError, OSError, struct.error):
            data = b""
        finally:
            timer.cancel()
        if not data:
            code = proc.wait()
            self.proc = None
            _close_pipes(proc)
            if expired.is_set():
                raise ReaderSkip("unreadable", f"the reader took over {timeout:.0f} s")
            raise ReaderSkip("unreadable", f"the reader process died ({_death(code)})")
        status, value = pickle.loads(data)
        if status == "ok":
            return value
        if status == "skip":
            raise ReaderSkip(*value)
        raise ReaderSkip("unreadable", value)

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        _close_pipes(proc)


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass


def _death(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


class ReaderPool:
    """``workers`` reader threads, each with its own worker process for built-in readers."""

    def __init__(self, workers: int, *, timeout: float = TIMEOUT) -> None:
        self.workers = max(1, workers)
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._exec = ThreadPoolExecutor(self.workers, thread_name_prefix="qflume-read")

    def _worker(self) -> _Worker:
        w = getattr(self._local, "worker", None)
        if w is None:
            w = self._local.worker = _Worker()
            with self._lock:
                self._all.append(w)
        return w

    def read(self, reader: str | Callable[[str], Any], path: str, max_pages: int) -> Future[Any]:
        """A Document (or, for a PDF of more than ``max_pages`` pages, its page count); the
        future raises ReaderSkip."""
        if callable(reader):
            return self._exec.submit(run_plugin, reader, path)
        return self._exec.submit(self._call, "read", (reader, path, max_pages))

    def window(self, path: str, lo: int, hi: int) -> Future[list[str]]:
        """The text of pages ``lo``..``hi - 1`` of a PDF."""
        return self._exec.submit(self._call, "window", (path, lo, hi))

    def _call(self, op: str, args: tuple[Any, ...]) -> Any:
        return self._worker().call(op, args, self.timeout)

    def close(self) -> None:
        self._exec.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            w.close()

    def __enter__(self) -> ReaderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve() -> None:
    """The worker process: answer requests on stdin until it closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a library that prints must not corrupt the answers
    while True:
        head = stdin.read(_LEN.size)
        if len(head) < _LEN.size:
            return
        op, args = pickle.loads(stdin.read(_LEN.unpack(head)[0]))
        try:
            answer: tuple[str, Any] = ("ok", _task(op, args))
        except ReaderSkip as e:
            answer = ("skip", (e.reason, e.detail))
        except Exception as e:
            answer = ("error", f"{type(e).__name__}: {e}")
        body = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_LEN.pack(len(body)) + body)
        stdout.flush()


__all__ = ["Document", "ReaderPool"]

if __name__ == "__main__":
    _serve()
