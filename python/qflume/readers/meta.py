"""Per-chunk metadata derived from a document's structure: the page(s) a chunk lies on (from
page start offsets) and its Markdown heading path (from ``#`` lines outside code fences, and
setext ``===`` / ``---`` underlines), as the chunk's offsets place it.

A chunk on one page gets ``page``; one that spans pages gets ``page_start`` and ``page_end``
(1-based). ``heading`` is the path of the headings in force where the chunk starts, outermost
first, joined by " > " (e.g. "Install > Linux"); chunks before the first heading have none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from qflume._core import content_hash

__all__ = ["NO_META", "ChunkMeta", "digest", "heading_index"]

#: The digest of "no per-chunk metadata".
NO_META = bytes(8)
#: Keys a chunk's metadata may get from its document's structure.
KEYS = ("page", "page_start", "page_end", "heading")

_CANDIDATE = re.compile(r"^(?:(#{1,6})(?:[ \t]+(.*?))?[ \t#]*|(```|~~~).*|(=+|-+)[ \t]*)$", re.M)
_NOT_TITLE = ("#", "`", "~", "-", "*", "+", ">", "|", "=", " ", "\t")


def heading_index(text: str) -> tuple[list[int], list[str]]:
    """Offsets where a heading starts and the heading path from there on."""
    offsets: list[int] = []
    paths: list[str] = []
    stack: list[tuple[int, str]] = []
    fence: str | None = None
    for m in _CANDIDATE.finditer(text):
        hashes, title, fence_mark, underline = m.groups()
        if fence_mark is not None:
            if fence is None:
                fence = fence_mark
            elif fence_mark == fence:
                fence = None
            continue
        if fence is not None:
            continue
        at = m.start()
        if hashes is not None:
            level = len(hashes)
            title = (title or "").strip()
        else:
            # setext: the underline of the text line just above
            if at == 0:
                continue
            prev_start = text.rfind("\n", 0, at - 1) + 1
            prev = text[prev_start : at - 1].rstrip("\r")
            if not prev.strip() or prev.startswith(_NOT_TITLE):
                continue
            level = 1 if underline[0] == "=" else 2
            title, at = prev.strip(), prev_start
        if not title:
            continue
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        path = " > ".join(t for _, t in stack)
        if offsets and offsets[-1] == at:
            paths[-1] = path
        else:
            offsets.append(at)
            paths.append(path)
    return offsets, paths


def digest(meta: dict[str, Any] | None) -> bytes:
    """8 bytes that change when a chunk's structural metadata changes (NO_META for none)."""
    if not meta:
        return NO_META
    return content_hash(json.dumps(meta, sort_keys=True, ensure_ascii=False))[:8]


class ChunkMeta:
    """The structure of one document (or one page window of it) that chunk metadata comes
    from: page start offsets (page ``first_page`` starts at ``pages[0]``) and headings."""

    def __init__(
        self,
        pages: Sequence[int] | None = None,
        *,
        first_page: int = 1,
        headings: tuple[list[int], list[str]] | None = None,
    ) -> None:
        self.pages = None if pages is None else np.asarray(pages, np.int64)
        self.first_page = first_page
        self.headings = headings if headings and headings[0] else None

    def __bool__(self) -> bool:
        return self.pages is not None or self.headings is not None

    def rows(
        self, start: npt.NDArray[np.int64], end: npt.NDArray[np.int64]
    ) -> tuple[list[dict[str, Any]], npt.NDArray[np.int64], list[bytes]]:
        """For chunks at ``start:end``: the distinct metadata dicts, each chunk's index into
        them (-1: none) and each chunk's digest."""
        n = len(start)
        cols: list[npt.NDArray[np.int64]] = []
        if self.pages is not None:
            base = self.first_page - 1
            cols.append(np.searchsorted(self.pages, start, side="right") + base)
            last = np.maximum(end - 1, start)
            cols.append(np.searchsorted(self.pages, last, side="right") + base)
        if self.headings is not None:
            cols.append(np.searchsorted(np.asarray(self.headings[0]), start, side="right") - 1)
        uniq: list[dict[str, Any]] = []
        digests: list[bytes] = []
        seen: dict[tuple[int, ...], int] = {}
        index = np.full(n, -1, np.int64)
        per_chunk: list[bytes] = []
        keys = list(zip(*(c.tolist() for c in cols), strict=True)) if cols else []
        for i, key in enumerate(keys):
            k = seen.get(key)
            if k is None:
                meta = self._meta(key)
                k = seen[key] = len(uniq) if meta else -1
                if meta:
                    uniq.append(meta)
                    digests.append(digest(meta))
            index[i] = k
            per_chunk.append(digests[k] if k >= 0 else NO_META)
        if not cols:
            per_chunk = [NO_META] * n
        return uniq, index, per_chunk

    def _meta(self, key: tuple[int, ...]) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        i = 0
        if self.pages is not None:
            a, b = key[0], key[1]
            if a == b:
                meta["page"] = a
            else:
                meta["page_start"], meta["page_end"] = a, b
            i = 2
        if self.headings is not None and key[i] >= 0:
            meta["heading"] = self.headings[1][key[i]]
        return meta
