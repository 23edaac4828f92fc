"""Find, read and hash the documents under some folders (Rust, in parallel, GIL released).

`scan` returns one `FileEntry` per file, sorted by key. A file that will not be ingested is
still listed, with `hash=None` and `skip` set to one of these stable reasons
(`detail` says more, e.g. the OS error):

=====================  ===========================================================
``"binary"``           a NUL byte (checked first in the first 8 KiB, then anywhere)
``"not-utf8"``         not valid UTF-8 (a UTF-8 byte order mark is fine; UTF-16/32 is not)
``"too-large"``        over ``max_file_size`` (decided from stat, never read)
``"empty"``            zero bytes
``"unreadable"``       permission denied, I/O error, broken symbolic link, unlistable folder
``"vanished"``         deleted between the walk and the read
``"changed-during-scan"``  size or mtime differ before and after reading
``"symlink-loop"``     a symbolic link leading back into its own ancestors
``"not-a-file"``       FIFO, socket, device (or a symbolic link with ``follow_links=False``)
=====================  ===========================================================

One bad file never raises. The whole scan raises only for: a root that does not exist or
cannot be listed (`QflumeIOError` naming it), an invalid include/exclude glob or `known`
value (`InvalidInputError`), and two different files ending with the same key (possible
only when several roots are given; a file reachable from nested roots is listed once, under
the outermost root).

Keys are paths relative to the root given, '/'-separated; a file given directly is keyed by
its file name and is scanned even if include/exclude or ignore files would leave it out.
Ignore files (`.gitignore`, `.ignore`, `.git/info/exclude`, also in parent folders and
outside git repositories) and include/exclude patterns use gitignore syntax, matched
against keys: ``"*.md"`` matches at any depth, ``"docs/"`` a folder, ``"/top.md"`` only at
the root; exclude wins over include. Hidden files and folders are skipped unless
``hidden=True``; ``.git`` folders always are.

Fast path: ``known`` maps keys to ``(size, mtime_ns, hash)`` or to a previous `FileEntry`.
A file whose size and mtime both match is stat()ed but never opened: its hash comes from
``known`` and ``unchanged`` is True. A previous entry skipped as ``"binary"`` or
``"not-utf8"`` (decided by the bytes alone) is reused the same way; other skips and a
``None`` hash are not remembered, and ``"too-large"``/``"empty"`` are decided from stat.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Union

from qflume import _core
from qflume._core import SKIP_REASONS, FileEntry
from qflume.exceptions import InvalidTypeError, invalid_type_from

__all__ = ["SKIP_REASONS", "FileEntry", "read_text", "scan"]

StrPath = Union[str, "os.PathLike[str]"]
KnownValue = Union[tuple[int, int, Union[bytes, None]], FileEntry]  # noqa: UP007 (runtime alias, 3.10)


def _str_list(what: str, value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise InvalidTypeError(
            f"scan: {what} must be a str or a list of str patterns, got {type(value).__name__}"
        ) from None
    for item in items:
        if not isinstance(item, str):
            raise InvalidTypeError(
                f"scan: {what} patterns must be str, got {type(item).__name__} ({item!r})"
            )
    return items


def scan(
    paths: StrPath | Iterable[StrPath],
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    max_file_size: int = 64 * 2**20,
    known: Mapping[str, KnownValue] | None = None,
    follow_links: bool = True,
    hidden: bool = False,
    ignore_files: bool = True,
    raw_extensions: Iterable[str] | None = None,
) -> list[FileEntry]:
    """Walk `paths` (folders recursively; files as given), read and hash each file.

    Returns one `FileEntry` per file, sorted by key; see the module docstring for keys,
    skip reasons, patterns and the `known` fast path. Files whose extension is one of
    ``raw_extensions`` (``"pdf"`` or ``".pdf"``, any case) are hashed as raw bytes and never
    skipped as ``binary`` or ``not-utf8``: a document reader decodes them. Runs on qflume's
    thread pool (`qflume.set_threads`) with the GIL released.
    """
    many = [paths] if isinstance(paths, (str, bytes, os.PathLike)) else paths
    try:
        roots = [os.fsdecode(p) for p in many]
    except TypeError:
        raise InvalidTypeError(
            "scan: paths must be a path or a list of paths (str or os.PathLike), got "
            f"{type(paths).__name__}"
        ) from None
    # Checked before the call: the except below is for the core's own argument conversion.
    inc, exc = _str_list("include", include), _str_list("exclude", exclude)
    raw = _str_list("raw_extensions", raw_extensions)
    try:
        return _core.scan(
            roots,
            include=inc,
            exclude=exc,
            max_file_size=max_file_size,
            known=known,
            follow_links=follow_links,
            hidden=hidden,
            ignore_files=ignore_files,
            raw_extensions=raw,
        )
    except InvalidTypeError:
        raise
    except TypeError as e:  # an option of the wrong type (PyO3 names it)
        raise invalid_type_from(e, "scan") from None


def read_text(path: StrPath) -> str:
    """Read `path` as text the way `scan` accepted it: UTF-8, a leading byte order mark dropped.

    Raises `DecodeError` (a ValueError) or `QflumeIOError` (an OSError), both naming the path.
    """
    try:
        name = os.fspath(path)
    except TypeError:
        raise InvalidTypeError(
            f"read_text: path must be a str or os.PathLike, got {type(path).__name__}"
        ) from None
    return _core.read_text(name)
