"""Readers: PDF, HTML and DOCX files into the text that is chunked, chosen by file extension.

A reader turns a file's raw bytes into a `Document`: the text (what chunk offsets ``start`` /
``end`` point into), document metadata (an HTML ``title``), page boundaries (PDF) and whether
headings are written as Markdown ``#`` lines (HTML, DOCX: the chunker cuts at them and each
chunk gets a ``heading`` path). Change detection stays on the raw bytes' hash (the scan's), so
an unchanged file is never read again.

Built in (each needs its extra; without it the file is skipped as ``needs-extra`` with the
``pip install`` line to run):

=============================  ==================  =============================
``.pdf``                       ``qflume[pdf]``     pypdfium2 (PDFium)
``.html`` ``.htm`` ``.xhtml``  ``qflume[html]``    selectolax (lexbor)
``.docx``                      ``qflume[office]``  lxml
=============================  ==================  =============================

Skip reasons a reader gives (besides the scan's): ``encrypted`` (a PDF that needs a password),
``no-text`` (a PDF without a text layer: scanned images), ``unreadable`` (corrupt, truncated or
not the format its extension says), ``needs-extra``.

Plug-ins: ``Pipeline(readers={".ext": fn})`` with ``fn(path: str) -> str | Document`` reads a
format qflume does not ship, or replaces a built-in one. It runs in the plan stage's threads (it
must be thread-safe); an exception it raises skips the file as ``unreadable`` with its message,
`ReaderSkip` with the reason it names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from qflume.exceptions import InvalidInputError, QflumeError

__all__ = [
    "BUILTIN",
    "SKIP_REASONS",
    "Document",
    "ReaderSkip",
    "Readers",
    "read_builtin",
]

#: Why a reader skips a file.
SKIP_REASONS = ("encrypted", "no-text", "unreadable", "needs-extra")


@dataclass
class Document:
    """What a reader gives for one file.

    ``pages[i]`` is the offset in ``text`` where page ``i + 1`` starts (``pages[0] == 0``);
    chunks then carry ``page`` (or ``page_start``/``page_end`` when they span pages).
    ``markdown``: headings are Markdown ``#`` lines, so chunks carry a ``heading`` path.
    ``metadata`` is merged into every chunk's payload metadata (e.g. ``title``).
    """

    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    pages: Sequence[int] | None = None
    markdown: bool = False


class ReaderSkip(QflumeError):
    """Raised by a reader: the file is skipped with ``reason`` (one of SKIP_REASONS for the
    built-in readers) and ``detail``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries intact
        return (ReaderSkip, (self.reason, self.detail))


#: Extension -> built-in reader kind.
BUILTIN: dict[str, str] = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".docx": "docx",
}
#: Kind -> (module it needs, the extra that installs it).
_NEEDS: dict[str, tuple[str, str]] = {
    "pdf": ("pypdfium2", "pdf"),
    "html": ("selectolax", "html"),
    "docx": ("lxml", "office"),
}

Reader = Union[str, Callable[[str], Any]]  # noqa: UP007 (runtime alias, 3.10)


def missing_extra(kind: str) -> str | None:
    """The one-line message for a built-in reader whose library is not installed, else None."""
    module, extra = _NEEDS[kind]
    try:
        importlib.import_module(module)
    except ImportError:
        return f"reading {kind.upper()} files needs {module}: pip install 'qflume[{extra}]'"
    return None


def read_builtin(kind: str, path: str) -> Document:
    """The built-in reader ``kind`` on ``path``; raises `ReaderSkip`."""
    problem = missing_extra(kind)
    if problem is not None:
        raise ReaderSkip("needs-extra", problem)
    if kind == "pdf":
        from qflume.readers import pdf

        return pdf.read(path)
    if kind == "html":
        from qflume.readers import html

        return html.read(path)
    from qflume.readers import docx

    return docx.read(path)


class Readers:
    """Which reader a file gets, by extension: the built-in ones plus ``plugins``."""

    def __init__(self, plugins: Mapping[str, Callable[[str], Any]] | None = None) -> None:
        self.by_ext: dict[str, Reader] = dict(BUILTIN)
        if plugins is None:
            return
        if not isinstance(plugins, Mapping):
            raise InvalidInputError(
                f"readers must be a mapping of '.ext' -> callable, not {type(plugins).__name__}"
            )
        for ext, fn in plugins.items():
            if not isinstance(ext, str) or not ext.strip(". ") or "/" in ext:
                raise InvalidInputError(f"readers: {ext!r} is not a file extension like '.odt'")
            if not callable(fn):
                raise InvalidInputError(f"readers[{ext!r}] must be callable, not {fn!r}")
            self.by_ext["." + ext.lower().lstrip(".")] = fn

    def extensions(self) -> list[str]:
        """Extensions (without the dot) the scan hashes as raw bytes, unchecked for text."""
        return sorted(e[1:] for e in self.by_ext)

    def get(self, path: str) -> Reader | None:
        dot = path.rfind(".")
        if dot < 0 or "/" in path[dot:]:
            return None
        return self.by_ext.get(path[dot:].lower())


def run_plugin(fn: Callable[[str], Any], path: str) -> Document:
    """A plug-in reader's result as a Document; anything it raises becomes a `ReaderSkip`."""
    try:
        out = fn(path)
    except ReaderSkip:
        raise
    except Exception as e:
        raise ReaderSkip("unreadable", f"reader {_name(fn)} failed: {type(e).__name__}: {e}") from e
    if isinstance(out, str):
        return Document(out)
    if isinstance(out, Document):
        if not isinstance(out.text, str):
            raise ReaderSkip("unreadable", f"reader {_name(fn)} gave a Document whose text is "
                             f"{type(out.text).__name__}, not str")  # fmt: skip
        return out
    raise ReaderSkip(
        "unreadable",
        f"reader {_name(fn)} returned {type(out).__name__}; it must return str or "
        "qflume.readers.Document",
    )


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))
