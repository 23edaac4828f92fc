"""PDF text, page by page, with PDFium (pypdfium2): the fastest of the candidates measured on
TeX Live's PDFs at the same text as the others (benches/bench_readers.py).

PDFium is not thread-safe: qflume calls it in worker processes (qflume.readers.pool), one
document at a time per process. Pages are joined with a blank line; ``Document.pages`` holds
the offset where each page starts.
"""

from __future__ import annotations

import os
from typing import Any, overload

from qflume.readers import Document, ReaderSkip

#: Pages chunked together: a chunk never spans the end of a window of this many pages, so a
#: PDF of any length is read, chunked and sent window by window with the same chunks.
WINDOW_PAGES = 16
#: Between pages in the text.
PAGE_SEP = "\n\n"

# Line ends as "\n"; PDFium's markers (0x02 for a hyphen it added at a line end, U+FFFE/U+FFFF
# for unknown glyphs) and other control characters dropped; tabs and form feeds kept as spaces.
_TABLE: dict[int, str | None] = {c: None for c in range(32) if c not in (9, 10, 12, 13)}
_TABLE.update({9: " ", 12: "\n", 13: "\n", 0xFFFE: None, 0xFFFF: None, 0x7F: None})


def clean(text: str) -> str:
    return text.replace("\r\n", "\n").translate(_TABLE)


def open_pdf(path: str) -> Any:
    """The PdfDocument; ReaderSkip ``encrypted`` or ``unreadable`` when it cannot be opened."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    try:
        return pdfium.PdfDocument(path)
    except pdfium.PdfiumError as e:
        if getattr(e, "err_code", None) == raw.FPDF_ERR_PASSWORD:
            raise ReaderSkip("encrypted", "the PDF needs a password to open") from None
        raise ReaderSkip("unreadable", f"not a readable PDF ({e})") from None
    except OSError as e:
        raise ReaderSkip("unreadable", f"cannot open: {e.strerror or e}") from None


def page_texts(doc: Any, lo: int, hi: int) -> list[str]:
    """Text of pages ``lo``..``hi - 1`` (0-based); a page PDFium cannot load reads as empty."""
    out: list[str] = []
    for i in range(lo, hi):
        try:
            page = doc[i]
        except Exception:
            out.append("")
            continue
        try:
            tp = page.get_textpage()
            try:
                out.append(clean(tp.get_text_range()))
            finally:
                tp.close()
        except Exception:
            out.append("")
        finally:
            page.close()
    return out


def join_pages(texts: list[str], base: int = 0) -> tuple[str, list[int]]:
    """The pages' text and the offset (plus ``base``) where each starts."""
    starts: list[int] = []
    pos = base
    for t in texts:
        starts.append(pos)
        pos += len(t) + len(PAGE_SEP)
    return PAGE_SEP.join(texts), starts


def no_text(pages: int) -> ReaderSkip:
    return ReaderSkip(
        "no-text", f"{pages} page{'s' * (pages != 1)} without a text layer (scanned images?)"
    )


@overload
def read(path: str, max_pages: None = None) -> Document: ...
@overload
def read(path: str, max_pages: int | None) -> Document | int: ...


def read(path: str, max_pages: int | None = None) -> Document | int:
    """The whole PDF as a Document, or its page count when it has more than ``max_pages``
    pages (then it is read window by window with `read_window`)."""
    doc = open_pdf(path)
    try:
        n = len(doc)
        if n == 0:
            raise ReaderSkip("unreadable", "the PDF has no pages")
        if max_pages is not None and n > max_pages:
            return n
        texts = page_texts(doc, 0, n)
    finally:
        doc.close()
    if not any(t.strip() for t in texts):
        raise no_text(n)
    text, starts = join_pages(texts)
    return Document(text, pages=starts)


_open: tuple[str, int, int, Any] | None = None  # this process's last document (windows reuse it)


def read_window(path: str, lo: int, hi: int) -> list[str]:
    """Pages ``lo``..``hi - 1`` of a PDF read window by window (the document stays open
    between calls for the same unchanged file)."""
    global _open
    st = os.stat(path)
    if _open is None or _open[:3] != (path, st.st_size, st.st_mtime_ns):
        if _open is not None:
            _open[3].close()
            _open = None
        _open = (path, st.st_size, st.st_mtime_ns, open_pdf(path))
    return page_texts(_open[3], lo, hi)
