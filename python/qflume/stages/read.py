"""Documents a reader turns into text (PDF, HTML, DOCX, plug-ins: qflume.readers), read ahead in
the run's reader processes while the planned items flow on in order."""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Iterator
from typing import Any

from qflume._validate import metadata_problem
from qflume.payload import SOURCE
from qflume.readers import Document, ReaderSkip
from qflume.readers.meta import ChunkMeta, heading_index
from qflume.stages.batch import Doc
from qflume.stages.context import Run

__all__ = ["PDF_WHOLE_PAGES", "read_ahead", "take_read"]

#: A PDF of more pages than this is read, chunked and sent page window by page window.
PDF_WHOLE_PAGES = 64


def read_ahead(items: Iterator[Any], run: Run, stream_bytes: int) -> Iterator[Any]:
    """The planned items, in order, with reader documents extracted ahead in the reader
    pool: up to two per worker in flight, and at most ``4 * stream_bytes`` of their files."""
    pending: deque[tuple[Any, Any]] = deque()
    in_flight = 0
    most = 2 * run.workers
    try:
        for item in items:
            if isinstance(item, Doc) and item.reader is not None and item.path is not None:
                job = run.readers_pool().read(item.reader, item.path, PDF_WHOLE_PAGES)
                pending.append((item, job))
                in_flight += item.size
            else:
                pending.append((item, None))
            while pending and (
                pending[0][1] is None
                or pending[0][1].done()
                or len(pending) > most
                or in_flight > 4 * stream_bytes
            ):
                head, job = pending.popleft()
                if job is not None:
                    in_flight -= head.size
                    head = take_read(head, job, run)
                if head is not None:
                    yield head
            if run.abort.is_set():
                return
        while pending:
            head, job = pending.popleft()
            if job is not None:
                head = take_read(head, job, run)
            if head is not None:
                yield head
            if run.abort.is_set():
                return
    finally:
        for _, job in pending:
            if job is not None:
                job.cancel()


def take_read(d: Doc, job: Any, run: Run) -> Doc | None:
    """The document with its reader's text (a reader pool job's result), or None when it is
    skipped."""
    try:
        got = job.result()
    except ReaderSkip as e:
        run.skip(d.key, e.reason, e.detail, size=d.size)
        return None
    except Exception as e:
        run.skip(d.key, "unreadable", f"{type(e).__name__}: {e}", size=d.size)
        return None
    if isinstance(got, int):  # a large PDF: read page window by page window
        d.pages_total = got
        return d
    problem = _use_document(d, got)
    if problem is not None:
        run.skip(d.key, *problem, size=d.size)
        return None
    return d


def _use_document(d: Doc, doc: Document) -> tuple[str, str] | None:
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
    meta[SOURCE] = d.key
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
