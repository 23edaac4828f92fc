"""Structure-aware, size-bounded chunking with offsets (the work is done in Rust).

Chunks come back as ``(start, end)`` offsets in Python ``str`` indices, so
``text[start:end]`` is the chunk: an ``(n, 2)`` int64 numpy array. Measured in
benches/bench_chunk.py (group ``offsets-form``): the array costs one allocation
per text and 16 bytes per chunk, while a list of tuples costs three Python
objects (~130 bytes) per chunk; on the python3.11-doc corpus (~28 chunks per
document) the tuples add 10-20% to the whole chunking time, more for long
texts, and the array slices and concatenates without Python loops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from qflume import _core
from qflume.exceptions import InvalidInputError, InvalidTypeError, invalid_type_from

if TYPE_CHECKING:  # pragma: no cover
    from tokenizers import Tokenizer

__all__ = ["ChunkBatch", "Chunker", "chunk_file"]

Offsets = npt.NDArray[np.int64]


class ChunkBatch(NamedTuple):
    """Chunks of many documents, flat: document ``d`` owns rows
    ``doc_indptr[d]:doc_indptr[d + 1]`` of the other arrays."""

    doc_indptr: npt.NDArray[np.int64]
    """(d + 1,) int64 row pointers."""
    offsets: npt.NDArray[np.int64]
    """(N, 2) int64 (start, end) str offsets into each chunk's own document."""
    hashes: npt.NDArray[np.uint8]
    """(N, 16) XXH3-128 content hash of each chunk's UTF-8 bytes (``qflume.content_hash``)."""
    ids: npt.NDArray[np.uint8]
    """(N, 16) point id bytes (``uuid.UUID(bytes=...)``; ``qflume.point_id`` gives the text form)."""

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def doc_chunks(self, d: int) -> Offsets:
        """Offsets of document ``d``'s chunks."""
        return self.offsets[self.doc_indptr[d] : self.doc_indptr[d + 1]]


class Chunker:
    """Cuts text into chunks of at most ``max_chars`` characters, or ``max_tokens``
    tokens of ``tokenizer`` (counted without special tokens), with up to
    ``overlap`` characters/tokens repeated between neighbours.

    Cuts prefer, in order: section headings (Markdown ``#``, reStructuredText
    titles), blank lines, line ends, sentence ends, other whitespace; a word is
    split only when it alone exceeds the limit. Chunks are trimmed of whitespace.

    ``tokenizer`` is a path to a ``tokenizer.json`` or a ``tokenizers.Tokenizer``;
    its truncation and padding are turned off for counting.
    """

    __slots__ = ("_inner",)

    def __init__(
        self,
        max_chars: int | None = None,
        *,
        max_tokens: int | None = None,
        tokenizer: str | os.PathLike[str] | Tokenizer | None = None,
        overlap: int = 0,
    ) -> None:
        for name, value in (("max_chars", max_chars), ("max_tokens", max_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise _invalid(f"{name} must be a positive int, got {value!r}")
        if not isinstance(overlap, int) or overlap < 0:
            raise _invalid(f"overlap must be a non-negative int, got {overlap!r}")
        if tokenizer is not None and max_tokens is None:
            raise _invalid("tokenizer is given but max_tokens is not: pass max_tokens=N")
        tok_json: str | None = None
        tok_path: str | None = None
        tok_name: str | None = None
        if tokenizer is not None:
            if isinstance(tokenizer, (str, os.PathLike)):
                tok_path = os.fspath(tokenizer)
                if Path(tok_path).is_dir():
                    tok_path = str(Path(tok_path) / "tokenizer.json")
            elif hasattr(tokenizer, "to_str"):
                tok_json = tokenizer.to_str()
                tok_name = f"<{type(tokenizer).__name__} object>"
            else:
                raise _invalid(
                    "tokenizer must be a tokenizer.json path or a tokenizers.Tokenizer, "
                    f"got {type(tokenizer).__name__}"
                )
        self._inner = _core.Chunker(
            max_chars=max_chars,
            max_tokens=max_tokens,
            tokenizer_json=tok_json,
            tokenizer_path=tok_path,
            tokenizer_name=tok_name,
            overlap=overlap,
        )

    @property
    def max_size(self) -> int:
        """The limit, in characters or tokens."""
        return self._inner.max_size

    @property
    def overlap(self) -> int:
        return self._inner.overlap

    @property
    def token_mode(self) -> bool:
        return self._inner.token_mode

    def __repr__(self) -> str:
        unit = "max_tokens" if self.token_mode else "max_chars"
        return f"Chunker({unit}={self.max_size}, overlap={self.overlap})"

    def chunk(self, text: str) -> Offsets:
        """(n, 2) int64 array of (start, end) str offsets; ``text[start:end]`` is a chunk."""
        try:
            return self._inner.chunk(text)
        except TypeError:  # the core takes str only; checked on failure, free otherwise
            raise _wrong_type("chunk() takes a str", text) from None

    def chunk_many(self, texts: Sequence[str]) -> list[Offsets]:
        """``chunk`` of every text, in parallel over texts (GIL released)."""
        items = _as_list(texts, "chunk_many: texts")
        try:
            return self._inner.chunk_many(items)
        except TypeError as e:
            raise _not_str(items, "chunk_many: texts") or invalid_type_from(
                e, "chunk_many"
            ) from None

    def chunk_batch(self, texts: Sequence[str], keys: Sequence[str]) -> ChunkBatch:
        """Chunks, content hashes and point ids of documents ``texts`` named ``keys``,
        in one parallel pass with no Python object per chunk."""
        items, names = _as_list(texts, "chunk_batch: texts"), _as_list(keys, "chunk_batch: keys")
        try:
            return ChunkBatch(*self._inner.chunk_batch(items, names))
        except TypeError as e:
            bad = _not_str(items, "chunk_batch: texts") or _not_str(names, "chunk_batch: keys")
            raise bad or invalid_type_from(e, "chunk_batch") from None

    def chunk_texts(self, text: str) -> list[str]:
        """The chunks of ``text`` as strings (convenience; ``chunk`` is cheaper)."""
        return [text[s:e] for s, e in self.chunk(text).tolist()]

    def count_tokens(self, text: str) -> int | None:
        """Tokens in ``text`` without special tokens, as the limit counts them
        (None in character mode)."""
        try:
            return self._inner.count_tokens(text)
        except TypeError:
            raise _wrong_type("count_tokens() takes a str", text) from None

    def chunk_file(
        self, path: str | os.PathLike[str], *, block_size: int = 1 << 20
    ) -> Iterator[tuple[Offsets, list[str]]]:
        """Chunks a UTF-8 file read ``block_size`` bytes at a time, in bounded memory.

        Yields ``(offsets, texts)`` batches; offsets are str offsets into the whole
        file and ``texts[i]`` is the chunk at ``offsets[i]``.
        """
        batches = self.chunk_file_hashed(path, block_size=block_size)
        return ((offsets, texts) for offsets, texts, _, _ in batches)

    def chunk_file_hashed(
        self,
        path: str | os.PathLike[str],
        *,
        key: str | None = None,
        block_size: int = 1 << 20,
    ) -> Iterator[tuple[Offsets, list[str], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]]:
        """``chunk_file`` with each batch's content hashes ``(n, 16)`` and, given the document
        ``key``, point ids ``(n, 16)`` (as ``chunk_batch`` gives them; ``(0, 16)`` without a key)."""
        if not isinstance(block_size, int) or block_size < 1:
            raise _invalid(f"block_size must be a positive int, got {block_size!r}")
        if key is not None and not isinstance(key, str):
            raise _wrong_type("chunk_file: key must be a str or None", key)
        try:
            name = os.fspath(path)
        except TypeError:
            raise _wrong_type("chunk_file: path must be a str or os.PathLike", path) from None
        return iter(self._inner.chunk_file(name, block_size=block_size, key=key))


def chunk_file(
    path: str | os.PathLike[str],
    *,
    max_chars: int | None = None,
    max_tokens: int | None = None,
    tokenizer: str | os.PathLike[str] | Tokenizer | None = None,
    overlap: int = 0,
    block_size: int = 1 << 20,
) -> Iterator[tuple[Offsets, list[str]]]:
    """Chunks a file far larger than memory: ``Chunker(...).chunk_file(path)``."""
    chunker = Chunker(max_chars, max_tokens=max_tokens, tokenizer=tokenizer, overlap=overlap)
    return chunker.chunk_file(path, block_size=block_size)


def _as_list(items: Sequence[str], what: str) -> list[str]:
    if isinstance(items, list):
        return items
    try:
        return list(items)
    except TypeError:
        raise _wrong_type(f"{what} must be a list of str", items) from None


def _not_str(items: Sequence[object], what: str) -> InvalidTypeError | None:
    """The error naming the first item of ``items`` that is not a str, if one is not."""
    for i, item in enumerate(items):
        if not isinstance(item, str):
            return _wrong_type(f"{what}[{i}] must be a str", item)
    return None


def _invalid(msg: str) -> InvalidInputError:
    return InvalidInputError(msg)


def _wrong_type(msg: str, value: object) -> InvalidTypeError:
    return InvalidTypeError(f"{msg}, got {type(value).__name__}")
