"""Sparse vectors for Qdrant's named sparse vectors: BM25 (Rust) and SPLADE (ONNX + Rust pooling).

Both return a `SparseBatch` (CSR: indptr int64, indices uint32, values float32), built in Rust with
no Python object per vector.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qflume import _core
from qflume._onnx import OnnxModel
from qflume.exceptions import InvalidInputError, InvalidTypeError, ModelError, invalid_type_from
from qflume.sinks.base import SparseBatch

__all__ = ["Bm25", "Splade", "splade_fingerprint"]


def _texts(texts: str | Iterable[str]) -> list[str]:
    # A lone str is one text (as in FastEmbed), never a sequence of characters.
    if isinstance(texts, str):
        return [texts]
    try:
        return list(texts)
    except TypeError:
        raise InvalidTypeError(
            f"texts must be a str or an iterable of str, got {type(texts).__name__}"
        ) from None


def _not_str(texts: Sequence[object]) -> InvalidTypeError | None:
    """The error naming the first text that is not a str (after the core refused the batch)."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            return InvalidTypeError(f"text {i} is {type(t).__name__}, not str")
    return None


def _batch(arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> SparseBatch:
    indptr, indices, values = arrays
    return SparseBatch(indptr=indptr, indices=indices, values=values)


class Bm25:
    """BM25 sparse vectors with the token ids and weights of FastEmbed's `Qdrant/bm25`.

    `embed` gives document vectors (term-frequency part of BM25); `embed_query` gives query
    vectors (1.0 per distinct token). The collection's sparse vector must use Qdrant's `idf`
    modifier, which supplies the IDF part, so collections written by qflume answer FastEmbed and
    LangChain BM25 queries and the other way round. `stopwords=None` uses the English list of
    `Qdrant/bm25`; for other languages pass that model's list (or `[]`).
    """

    name = "bm25"

    def __init__(
        self,
        *,
        language: str = "english",
        k: float = 1.2,
        b: float = 0.75,
        avg_len: float = 256.0,
        stopwords: Iterable[str] | None = None,
        token_max_length: int = 40,
        threads: int | None = None,
    ) -> None:
        if not isinstance(language, str):
            raise InvalidTypeError(f"Bm25: language must be a str, got {language!r}")
        for name, number in (("k", k), ("b", b), ("avg_len", avg_len)):
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise InvalidTypeError(f"Bm25: {name} must be a number, got {number!r}")
        for name, count in (("token_max_length", token_max_length), ("threads", threads)):
            if count is None and name == "threads":
                continue
            if isinstance(count, bool) or not isinstance(count, int):
                raise InvalidTypeError(f"Bm25: {name} must be an int, got {count!r}")
            if count < 0:
                raise InvalidInputError(f"Bm25: {name} must be >= 0, got {count}")
        words = None if stopwords is None else _texts(stopwords)
        try:
            self._enc = _core.Bm25Encoder(
                language=language,
                k=k,
                b=b,
                avg_len=avg_len,
                stopwords=words,
                token_max_length=token_max_length,
                threads=threads,
            )
        except OverflowError as e:  # an int too large for the core
            raise InvalidInputError(f"Bm25: {e}") from None
        except TypeError as e:
            raise invalid_type_from(e, "Bm25") from None
        custom = ""
        if words is not None:
            digest = hashlib.sha256("\n".join(sorted({w.lower() for w in words})).encode())
            custom = ":sw=" + digest.hexdigest()[:12]
        self.model_id = (
            f"qdrant/bm25:{language}:k={k}:b={b}:avg_len={avg_len}:max={token_max_length}{custom}"
        )

    @property
    def language(self) -> str:
        return self._enc.language

    def embed(self, texts: str | Iterable[str]) -> SparseBatch:
        """Document vectors of `texts`."""
        items = _texts(texts)
        try:
            return _batch(self._enc.embed(items))
        except TypeError as e:  # checked only on failure: the hot path pays nothing
            raise (_not_str(items) or invalid_type_from(e, "Bm25.embed")) from None

    def embed_query(self, texts: str | Iterable[str]) -> SparseBatch:
        """Query vectors of `texts`."""
        items = _texts(texts)
        try:
            return _batch(self._enc.embed_query(items))
        except TypeError as e:
            raise (_not_str(items) or invalid_type_from(e, "Bm25.embed_query")) from None

    def tokens(self, text: str) -> list[str]:
        """The stems of `text` that get a weight, in order (for inspection)."""
        if not isinstance(text, str):
            raise InvalidTypeError(f"tokens() takes a str, got {type(text).__name__}")
        return self._enc.tokens(text)

    @staticmethod
    def token_id(token: str) -> int:
        """The sparse index of a stemmed token."""
        return _core.Bm25Encoder.token_id(token)

    def __repr__(self) -> str:
        e = self._enc
        return f"Bm25(language={e.language!r}, k={e.k}, b={e.b}, avg_len={e.avg_len})"


# Upper bound on one ORT call's logits (padded tokens * vocab float32): SPLADE logits are
# large (a 512-token text with a 30k vocabulary is 62 MB). The CPU's call size (512 tokens)
# is under it; an accelerator's (16384) is cut to it.
_LOGITS_BUDGET = 256 * 1024 * 1024
#: What the qflume-built graph outputs (see qflume.model.build_graph(splade=True)).
_POOLED = "splade_max_logits"


def _folder_of(model: str | os.PathLike[str]) -> Path:
    """The ONNX folder of a SPLADE model: as given when it holds model.onnx, else built (once,
    cached) from a BertForMaskedLM weights folder."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise ModelError(
            f"SPLADE model folder {folder} does not exist (or is not a folder): give a "
            "BertForMaskedLM folder (config.json, model.safetensors, tokenizer.json) or an ONNX "
            "masked-LM folder (model.onnx, tokenizer.json)"
        )
    if (folder / "model.onnx").is_file():
        if not (folder / "tokenizer.json").is_file():
            raise ModelError(f"SPLADE model folder {folder} lacks tokenizer.json")
        return folder.resolve()
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        from qflume import model as builder

        return builder.ensure_built(folder, splade=True)
    raise ModelError(
        f"SPLADE model folder {folder} lacks model.onnx (or config.json + model.safetensors of a "
        "BertForMaskedLM to build one)"
    )


def _max_tokens(folder: Path, max_tokens: int | None) -> int:
    from qflume.embed import _Layout

    limit = _Layout(folder).hard_limit
    if max_tokens is None:
        return min(512, limit or 512)
    if max_tokens < 2:
        raise InvalidInputError(f"Splade max_tokens must be >= 2, got {max_tokens}")
    if limit and max_tokens > limit:
        raise InvalidInputError(
            f"Splade max_tokens {max_tokens} exceeds the model's {limit} positions "
            f"({folder / 'config.json'})"
        )
    return max_tokens


def _model_id(folder: Path, max_tokens: int, top_k: int | None, threshold: float) -> str:
    from qflume import model as builder

    h = hashlib.sha256(b"qflume-splade-1")
    for name in ("model.onnx", "tokenizer.json"):
        h.update(name.encode() + b"\0" + builder.file_digest(folder / name))
    extra = ("" if top_k is None else f":top_k={top_k}") + (
        f":threshold={threshold}" if threshold else ""
    )
    # By content only: the same model copied or moved elsewhere makes the same vectors.
    return f"splade:{h.hexdigest()[:16]}:max={max_tokens}{extra}"


def splade_fingerprint(
    model: str | os.PathLike[str],
    *,
    max_tokens: int | None = None,
    top_k: int | None = None,
    threshold: float = 0.0,
) -> str:
    """Exactly ``Splade(model, ...).model_id``, without loading the model into ONNX Runtime (a
    weights folder is built into the cache first if it is not there yet)."""
    folder = _folder_of(model)
    return _model_id(folder, _max_tokens(folder, max_tokens), top_k, float(threshold))


class Splade(OnnxModel):
    """SPLADE sparse vectors from a masked LM: a BertForMaskedLM weights folder (built into ONNX
    once, cached, as ``qflume model build SRC --splade`` does) or an ONNX folder (model.onnx +
    tokenizer.json) whose output is qflume's pooled logits or a masked LM's ``logits``.

    The weight of a term is the max over the text's tokens of log(1 + relu(its logit)): pooled in
    the graph for qflume's builds, in Rust for a ``logits`` output; then those above
    ``threshold`` are kept, and of those the ``top_k`` largest. Batching, sessions and providers
    are :class:`qflume.Embedder`'s (one session setup, :mod:`qflume._onnx`); a call's tokens
    are bounded so its logits stay under 256 MiB.
    """

    name = "splade"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        top_k: int | None = None,
        threshold: float = 0.0,
        max_tokens: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        batch_tokens: int | None = None,
    ) -> None:
        if not isinstance(model_path, (str, os.PathLike)):
            raise InvalidInputError(
                f"Splade needs the folder of a SPLADE model, not {type(model_path).__name__}"
            )
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
            raise InvalidInputError(f"Splade top_k must be an int >= 1 or None, got {top_k!r}")
        if top_k is not None and top_k < 1:
            raise InvalidInputError(f"Splade top_k must be >= 1 or None, got {top_k}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise InvalidInputError(f"Splade threshold must be a number, got {threshold!r}")
        if not threshold >= 0.0:
            raise InvalidInputError(f"Splade threshold must be >= 0, got {threshold}")
        folder = _folder_of(model_path)
        limit = _max_tokens(folder, max_tokens)
        self.top_k = top_k
        self.threshold = float(threshold)
        self._load(
            folder,
            max_tokens=limit,
            threads=threads,
            providers=providers,
            batch_tokens=batch_tokens,
        )
        self._threads = threads
        model_file = folder / "model.onnx"
        outs = {o.name: o for o in self._session.get_outputs()}
        self._output = next((n for n in (_POOLED, "logits") if n in outs), next(iter(outs)))
        self._pooled = self._output == _POOLED
        vocab_size = self._tokenizer.get_vocab_size()
        dim = outs[self._output].shape[-1] if outs[self._output].shape else None
        if not isinstance(dim, int):  # a dynamic axis: ask the model
            dim = int(self._infer(self._session, self._output, *self._probe()).shape[-1])
        if dim != vocab_size:
            raise ModelError(
                f"{model_file}: output {self._output!r} has {dim} values per token, the "
                f"tokenizer {vocab_size} tokens: not a masked LM (SPLADE needs one; a sentence "
                "encoder gives hidden states, not vocabulary logits)"
            )
        self._vocab = vocab_size
        if batch_tokens is None:
            self.batch_tokens = min(self.batch_tokens, max(1, _LOGITS_BUDGET // (4 * vocab_size)))
        self.model_id = _model_id(folder, limit, top_k, self.threshold)

    @staticmethod
    def _probe() -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((1, 2), np.int64), np.ones((1, 2), np.int64)

    def embed(self, texts: str | Iterable[str]) -> SparseBatch:
        """Sparse vectors of `texts` (documents), in the caller's order."""
        return self._embed(_texts(texts))

    def embed_query(self, texts: str | Iterable[str]) -> SparseBatch:
        """Sparse vectors of `texts` (queries: SPLADE encodes both sides alike)."""
        return self._embed(_texts(texts))

    def _embed(self, texts: list[str]) -> SparseBatch:
        n = len(texts)
        if n == 0:
            return SparseBatch(
                indptr=np.zeros(1, np.int64),
                indices=np.zeros(0, np.uint32),
                values=np.zeros(0, np.float32),
            )
        self._check_texts(texts)
        parts: list[tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
        self._map(texts, lambda rows, csr: parts.append((rows, csr)))
        # Reassemble in the caller's order, segment by segment, without a loop over rows.
        rows = np.concatenate([r for r, _ in parts])
        counts = np.concatenate([np.diff(c[0]) for _, c in parts])
        starts = np.concatenate([c[0][:-1] for _, c in parts])
        base = np.cumsum([0] + [len(c[1]) for _, c in parts[:-1]])
        starts = starts + np.repeat(base, [len(r) for r, _ in parts])
        all_indices = np.concatenate([c[1] for _, c in parts])
        all_values = np.concatenate([c[2] for _, c in parts])
        order = np.argsort(rows, kind="stable")
        counts, starts = counts[order], starts[order]
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        take = np.repeat(starts - indptr[:-1], counts) + np.arange(int(indptr[-1]))
        return SparseBatch(
            indptr=indptr,
            indices=all_indices[take].astype(np.uint32, copy=False),
            values=all_values[take].astype(np.float32, copy=False),
        )

    def _run(
        self, session: Any, ids: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self._infer(session, self._output, ids, mask)
        b, seq = ids.shape
        if self._pooled:  # the max over tokens is taken: one row of logits per text
            if out.shape != (b, self._vocab):
                raise ModelError(
                    f"{self._folder / 'model.onnx'}: output {self._output!r} has shape "
                    f"{out.shape}, expected ({b}, {self._vocab})"
                )
            logits = np.ascontiguousarray(out, dtype=np.float32)[:, None, :]
            mask = np.ones((b, 1), np.int64)
        else:
            if out.ndim != 3 or out.shape[:2] != (b, seq):
                raise ModelError(
                    f"{self._folder / 'model.onnx'}: output {self._output!r} has shape "
                    f"{out.shape}, a masked LM gives (batch, seq, vocab) = ({b}, {seq}, vocab)"
                )
            logits = np.ascontiguousarray(out, dtype=np.float32)
        csr: tuple[np.ndarray, np.ndarray, np.ndarray] = _core.splade_pool(
            logits, mask, top_k=self.top_k, threshold=self.threshold, threads=self._threads
        )
        return csr

    def __repr__(self) -> str:
        return f"Splade({str(self._folder)!r}, top_k={self.top_k}, threshold={self.threshold})"
