"""The chunk stage: planned documents into columnar batches of what to send.

`group_planned` groups the plan's items into units of about ``batch_chunks`` chunks of text (a
file to stream, a PDF read page window by page window, is a unit of its own); `chunk_docs`
chunks a unit's documents in one parallel Rust call (structure-aware, with offsets, hashes and
point ids) and diffs each against its state row (`DocDiff`, in Rust); `stream_doc` and
`stream_pages` do the same block by block for one large file. `batches` is the three together,
as the local runner uses them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qflume.exceptions import QflumeError
from qflume.ids import id_strings, point_ids
from qflume.readers import ReaderSkip
from qflume.readers.meta import ChunkMeta, heading_index
from qflume.report import record
from qflume.stages.batch import Batch, Doc, DocDiff, doc_of, empty_batch
from qflume.stages.context import Run
from qflume.stages.plan import Planned
from qflume.stages.read import read_ahead

if TYPE_CHECKING:
    from qflume.collection import Collection

__all__ = [
    "Chunking",
    "Unit",
    "batches",
    "chunk_docs",
    "group_planned",
    "make_chunker",
    "stream_doc",
    "stream_pages",
]

#: Files whose headings (Markdown "#" lines) give their chunks a heading path.
_MARKDOWN_EXT = (".md", ".markdown", ".mdown", ".mkd")
#: Deleted documents gathered into one unit at most.
_DELETES_PER_UNIT = 1024


def make_chunker(
    chunk_chars: int | None, chunk_tokens: int | None, overlap: int, tokenizer: str | None
) -> Any:
    """The Rust chunker of these settings (``tokenizer``: the model's tokenizer.json, for
    ``chunk_tokens``)."""
    from qflume.chunk import Chunker

    if chunk_tokens is not None:
        return Chunker(max_tokens=chunk_tokens, tokenizer=tokenizer, overlap=overlap)
    return Chunker(max_chars=chunk_chars, overlap=overlap)


@dataclass(frozen=True)
class Chunking:
    """What the chunk stage needs: the chunker, the fingerprints a document's plan records
    (plain text, and a reader's document), the slice size and a streamed file's block size."""

    chunker: Any
    fingerprint: str
    reader_fingerprint: str
    batch_chunks: int = 256
    stream_block: int = 1 << 20


@dataclass
class Unit:
    """Planned items chunked together: documents and deletions, or one document ``alone``
    (a file over the stream size, a PDF of many pages) chunked block by block."""

    docs: list[Doc] = field(default_factory=list)
    deleted: list[tuple[str, list[str]]] = field(default_factory=list)  # (key, point ids)
    chars: int = 0
    alone: Doc | None = None


def group_planned(
    items: Iterator[Planned], run: Run, *, text_chars: int, stream_bytes: int
) -> Iterator[Unit]:
    """The planned items in order, as units of about ``text_chars`` characters of text (or
    1024 deletions); a file over ``stream_bytes`` and a PDF read by page windows come alone."""
    u = Unit()
    for item in items:
        if isinstance(item, tuple):
            _, key, prev = item
            hashes = b"".join(sorted(prev.possibly_present()))
            u.deleted.append((key, id_strings(point_ids(key, hashes)) if hashes else []))
            run.report.documents_deleted += 1
        elif item.pages_total or (
            item.text is None and item.path is not None and item.size > stream_bytes
        ):
            if u.docs or u.deleted:  # keep the order: what was planned before goes first
                yield u
                u = Unit()
            yield Unit(chars=item.size, alone=item)
            continue
        else:
            u.docs.append(item)
            u.chars += item.size if item.text is None else len(item.text)
        if u.chars >= text_chars or len(u.deleted) >= _DELETES_PER_UNIT:
            yield u
            u = Unit()
        if run.abort.is_set():
            return
    if u.docs or u.deleted:
        yield u


def batches(col: Collection, run: Run, planned: Iterator[Planned]) -> Iterator[Batch]:
    """The plan's items read ahead, grouped, chunked and diffed: batches of at most
    ``batch_chunks`` chunks to embed and write."""
    cfg, chunking = col.config, col.chunking()
    t = time.perf_counter()  # time blocked on a full queue is not counted as busy
    items = read_ahead(planned, run, cfg.stream_bytes)
    for u in group_planned(
        items, run, text_chars=cfg.batch_text_chars, stream_bytes=cfg.stream_bytes
    ):
        if u.alone is not None:
            d = u.alone
            yield from (
                stream_pages(chunking, d, run) if d.pages_total else stream_doc(chunking, d, run)
            )
        else:
            batch = chunk_docs(chunking, u.docs, run)
            batch.deleted = u.deleted
            record(run.report, "plan", time.perf_counter() - t, len(batch.texts), docs=len(u.docs))
            yield from batch.slices(cfg.batch_chunks)
        t = time.perf_counter()


def chunk_docs(chunking: Chunking, docs: list[Doc], run: Run) -> Batch:
    """Chunk ``docs`` (read here when they carry no text) in one parallel Rust call and diff
    each against its state row: one batch of the chunks to send, with every document's plan."""
    from qflume.scan import read_text

    if not docs:  # a batch of deletions only: no chunker (and no model) needed
        return empty_batch()
    # One text per chunking segment (a document has one, a PDF one per page window), so
    # that one parallel chunk_batch call serves the whole batch.
    texts: list[str] = []
    keys: list[str] = []
    seg_base: list[int] = []
    first_seg: list[int] = []
    ok: list[Doc] = []
    for d in docs:
        if d.text is None:
            assert d.path is not None  # a record carries its text
            try:
                d.text = read_text(d.path)
            except (QflumeError, OSError) as e:
                run.skip(d.key, f"unreadable: {e}", size=d.size)
                continue
        if d.path is not None and d.reader is None and d.key.lower().endswith(_MARKDOWN_EXT):
            found = ChunkMeta(headings=heading_index(d.text))
            d.structure = found if found else None
        ok.append(d)
        first_seg.append(len(texts))
        cuts = d.segments or [0]
        for k, lo in enumerate(cuts):
            hi = cuts[k + 1] if k + 1 < len(cuts) else len(d.text)
            texts.append(d.text if len(cuts) == 1 else d.text[lo:hi])
            keys.append(d.key)
            seg_base.append(lo)
    first_seg.append(len(texts))
    cb = chunking.chunker.chunk_batch(texts, keys)
    seg_indptr = np.asarray(cb.doc_indptr)
    indptr = seg_indptr[np.asarray(first_seg, np.int64)]
    offsets = np.asarray(cb.offsets)
    if len(texts) > len(ok):  # segment offsets into their whole document's text
        shift = np.repeat(np.asarray(seg_base, np.int64), np.diff(seg_indptr))
        offsets = offsets + shift[:, None]
    hashes = np.asarray(cb.hashes)
    ids = np.asarray(cb.ids)
    out = empty_batch()
    sel: list[int] = []
    doc_index: list[int] = []
    chunk_index: list[int] = []
    extra_meta: list[dict[str, Any]] = []
    extra_index: list[int] = []
    for di, d in enumerate(ok):
        lo, hi = int(indptr[di]), int(indptr[di + 1])
        diff = DocDiff(d, chunking.fingerprint if d.reader is None else chunking.reader_fingerprint)
        st, d.structure = d.structure, None
        if st is None:
            send = diff.take(hashes[lo:hi], offsets[lo:hi])
            extra_index.extend([-1] * len(send))
        else:
            uniq, idx, digests = st.rows(offsets[lo:hi, 0], offsets[lo:hi, 1])
            base = len(extra_meta)
            extra_meta.extend(uniq)
            send = diff.take(hashes[lo:hi], offsets[lo:hi], 0, digests, uniq, idx)
            m = idx[send]
            extra_index.extend(np.where(m >= 0, base + m, -1).tolist())
        sel.extend((lo + send).tolist())
        doc_index.extend([len(out.plans)] * len(send))
        chunk_index.extend(send.tolist())
        out.plans.append(diff.finish())
        run.report.chunks_total += diff.count
    if sel:
        s = np.asarray(sel, np.int64)
        out.texts = [
            str(ok[i].text)[int(offsets[k, 0]) : int(offsets[k, 1])]
            for k, i in zip(s, doc_of(indptr, s), strict=True)
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


def _block_slices(
    diff: DocDiff,
    rows: int,
    send: Any,
    j: int,
    texts: Any,
    hashes: Any,
    ids: Any,
    offsets: Any,
    first: bool,
    extra: tuple[list[dict[str, Any]], Any] | None = None,
) -> Iterator[Batch]:
    """One block's chunks to send (rows ``send`` of the block, its first chunk being chunk
    ``j`` of the document) as slices of at most ``rows``; the first carries the block's
    write-ahead. ``texts(i)`` is row i's text."""
    d = diff.doc
    ahead = hashes[send].tobytes()
    for a in range(0, len(send), rows):
        b = min(len(send), a + rows)
        part = send[a:b]
        yield Batch(
            plans=[diff.plan],
            texts=[texts(int(i)) for i in part],
            hashes=hashes[part],
            ids=ids[part],
            doc_index=np.zeros(b - a, np.int64),
            chunk_index=np.asarray(j + part, np.int64),
            start=offsets[part, 0].astype(np.int64),
            end=offsets[part, 1].astype(np.int64),
            final=False,
            first=first and a == 0,
            ahead={d.key: (d.root, ahead)} if a == 0 and ahead else None,
            extra_meta=extra[0] if extra is not None else [],
            extra_index=extra[1][part] if extra is not None else None,
        )


def _last_slice(diff: DocDiff, first: bool, run: Run) -> Batch:
    """The empty last slice of a streamed document: it completes (and commits) its plan."""
    last = empty_batch()
    last.plans, last.first, last.final = [diff.plan], first, True
    record(run.report, "plan", 0.0, 0, docs=1)
    return last


def stream_doc(chunking: Chunking, d: Doc, run: Run) -> Iterator[Batch]:
    """One large file, read, chunked and sent block by block: memory stays bounded by the
    block size and the slice size whatever the file's size (what a document always holds
    in full is 16 bytes of hash and 24 of offsets per distinct chunk, for the state row).
    The plan is completed with the last slice, which commits it; an error while reading
    (the file changed or vanished since the scan) sends back to the collection what it had
    and skips the document."""
    assert d.path is not None
    diff = DocDiff(d, chunking.fingerprint, streamed=True)
    j = 0
    first = True
    try:
        blocks = chunking.chunker.chunk_file_hashed(
            d.path, key=d.key, block_size=chunking.stream_block
        )
        while True:
            t = time.perf_counter()
            block = next(blocks, None)
            if block is None:
                break
            offsets, texts, hashes, ids = block
            send = diff.take(hashes, offsets, j)
            record(run.report, "plan", time.perf_counter() - t, len(send), docs=0)
            for batch in _block_slices(
                diff, chunking.batch_chunks, send, j, texts.__getitem__, hashes, ids, offsets,
                first,
            ):  # fmt: skip
                first = False
                yield batch
            j += len(texts)
            if run.abort.is_set():
                return
    except (QflumeError, OSError) as e:
        run.skip(d.key, f"unreadable: {e}", advance=False)
        diff.abandon()
    else:
        diff.finish()
        run.report.chunks_total += diff.count
    yield _last_slice(diff, first, run)


def stream_pages(chunking: Chunking, d: Doc, run: Run) -> Iterator[Batch]:
    """A PDF of more than PDF_WHOLE_PAGES pages, read, chunked and sent page window by page
    window (readers.pdf.WINDOW_PAGES pages; the next windows are read in parallel while one
    is chunked): only those windows' text and chunks are held, whatever the page count. A
    window is chunked on its own, so no chunk spans a window's end; a PDF read whole is cut
    at the same page boundaries (its segments), so either route gives the same chunks."""
    from qflume.readers.pdf import PAGE_SEP, WINDOW_PAGES, join_pages, no_text

    assert d.path is not None
    path, n = d.path, d.pages_total
    diff = DocDiff(d, chunking.reader_fingerprint, streamed=True)
    pool = run.readers_pool()
    windows: list[tuple[int, Any]] = []
    starts = iter(range(0, n, WINDOW_PAGES))

    def read_next() -> None:
        lo = next(starts, None)
        if lo is not None:
            windows.append((lo, pool.window(path, lo, min(n, lo + WINDOW_PAGES))))

    for _ in range(pool.workers):
        read_next()
    j = base = 0
    first, any_text = True, False
    try:
        while windows:
            lo, job = windows.pop(0)
            page_texts = job.result()
            read_next()
            t = time.perf_counter()
            text, page_starts = join_pages(page_texts, base)
            any_text = any_text or bool(text.strip())
            cb = chunking.chunker.chunk_batch([text], [d.key])
            offsets = np.asarray(cb.offsets) + base
            hashes, ids = np.asarray(cb.hashes), np.asarray(cb.ids)
            meta = ChunkMeta(page_starts, first_page=lo + 1)
            uniq, idx, digests = meta.rows(offsets[:, 0], offsets[:, 1])
            send = diff.take(hashes, offsets, j, digests, uniq, idx)
            record(run.report, "plan", time.perf_counter() - t, len(send), docs=0)

            def text_of(i: int, text: str = text, base: int = base, offsets: Any = offsets) -> str:
                return text[int(offsets[i, 0]) - base : int(offsets[i, 1]) - base]

            for batch in _block_slices(
                diff, chunking.batch_chunks, send, j, text_of, hashes, ids, offsets, first,
                (uniq, idx),
            ):  # fmt: skip
                first = False
                yield batch
            j += len(offsets)
            base += len(text) + len(PAGE_SEP)
            if run.abort.is_set():
                return
        if not any_text:
            raise no_text(n)
    except ReaderSkip as e:
        run.skip(d.key, e.reason, e.detail, size=d.size)
        diff.abandon()
    except (QflumeError, OSError) as e:
        run.skip(d.key, "unreadable", str(e), size=d.size)
        diff.abandon()
    else:
        diff.finish()
        run.report.chunks_total += diff.count
    finally:
        for _, job in windows:
            job.cancel()
    yield _last_slice(diff, first, run)
