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
from qflume.exceptions import ModelError, QflumeIOError, TokenizerError
from qflume.sinks.base import SparseBatch

__all__ = ["Bm25", "Splade"]


def _texts(texts: str | Iterable[str]) -> list[str]:
    # A lone str is one text (as in FastEmbed), never a sequence of characters.
    return [texts] if isinstance(texts, str) else list(texts)


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
        words = None if stopwords is None else list(stopwords)
        self._enc = _core.Bm25Encoder(
            language=language,
            k=k,
            b=b,
            avg_len=avg_len,
            stopwords=words,
            token_max_length=token_max_length,
            threads=threads,
        )
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
        return _batch(self._enc.embed(_texts(texts)))

    def embed_query(self, texts: str | Iterable[str]) -> SparseBatch:
        """Query vectors of `texts`."""
        return _batch(self._enc.embed_query(_texts(texts)))

    def tokens(self, text: str) -> list[str]:
        """The stems of `text` that get a weight, in order (for inspection)."""
        return self._enc.tokens(text)

    @staticmethod
    def token_id(token: str) -> int:
        """The sparse index of a stemmed token."""
        return _core.Bm25Encoder.token_id(token)

    def __repr__(self) -> str:
        e = self._enc
        return f"Bm25(language={e.language!r}, k={e.k}, b={e.b}, avg_len={e.avg_len})"


# Upper bound on one ORT call's logits (batch * seq * vocab float32): SPLADE logits are
# large (a 512-token text with a 30k vocabulary is 62 MB).
_LOGITS_BUDGET = 256 * 1024 * 1024


class Splade:
    """SPLADE sparse vectors from any ONNX masked-LM folder (model.onnx + tokenizer.json).

    Weights are log(1 + relu(logits)) max-pooled over the attention mask (in Rust), keeping those
    above `threshold` and then the `top_k` largest. Texts are sorted by length and batched so
    one call's logits stay bounded.
    """

    name = "splade"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        top_k: int | None = None,
        threshold: float = 0.0,
        max_tokens: int = 512,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(model_path)
        model_file = folder / "model.onnx"
        tok_file = folder / "tokenizer.json"
        for f in (model_file, tok_file):
            if not f.is_file():
                raise QflumeIOError(
                    2, f"{f}: missing; a SPLADE model folder holds model.onnx and tokenizer.json"
                )
        if top_k is not None and top_k < 1:
            raise ValueError(f"Splade top_k must be >= 1 or None, got {top_k}")
        if not threshold >= 0.0:
            raise ValueError(f"Splade threshold must be >= 0, got {threshold}")
        if max_tokens < 2:
            raise ValueError(f"Splade max_tokens must be >= 2, got {max_tokens}")
        self.model_path = folder
        self.top_k = top_k
        self.threshold = float(threshold)
        self.max_tokens = max_tokens
        self._threads = threads

        try:
            tok = Tokenizer.from_file(str(tok_file))
        except Exception as e:
            raise TokenizerError(f"{tok_file}: cannot load tokenizer ({e})") from e
        tok.enable_truncation(max_length=max_tokens)
        tok.no_padding()
        self._tok = tok

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(
                str(model_file), so, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as e:
            raise ModelError(f"{model_file}: ONNX Runtime cannot load it ({e})") from e
        self._inputs = {i.name for i in self._session.get_inputs()}
        if "input_ids" not in self._inputs:
            raise ModelError(f"{model_file}: no input named input_ids (inputs: {self._inputs})")
        outs = self._session.get_outputs()
        names = [o.name for o in outs]
        self._output = "logits" if "logits" in names else names[0]
        vocab = next(o for o in outs if o.name == self._output).shape[-1]
        self._vocab = vocab if isinstance(vocab, int) else tok.get_vocab_size()
        h = hashlib.sha256()
        for f in (model_file, tok_file):
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        self.model_id = f"splade:{h.hexdigest()[:16]}:max={max_tokens}"

    def embed(self, texts: str | Iterable[str]) -> SparseBatch:
        """Sparse vectors of `texts` (documents)."""
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
        encs = self._tok.encode_batch(texts)
        lens = np.fromiter((len(e.ids) for e in encs), np.int64, n)
        order = np.argsort(lens, kind="stable")
        per_batch = max(1, _LOGITS_BUDGET // (4 * max(1, self._vocab)))
        rows: list[Any] = [None] * n
        i = 0
        while i < n:
            j = i + 1
            # Ascending lengths: the text added last is the longest of the batch.
            while j < n and (j - i + 1) * int(lens[order[j]]) <= per_batch:
                j += 1
            idx = order[i:j]
            self._run([encs[k] for k in idx], idx, rows)
            i = j
        # Reassemble in the caller's order.
        counts = np.fromiter((len(r[0]) for r in rows), np.int64, n)
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.concatenate([r[0] for r in rows]).astype(np.uint32, copy=False)
        values = np.concatenate([r[1] for r in rows]).astype(np.float32, copy=False)
        return SparseBatch(indptr=indptr, indices=indices, values=values)

    def _run(self, encs: list[Any], idx: np.ndarray, rows: list[Any]) -> None:
        seq = max(1, max(len(e.ids) for e in encs))
        b = len(encs)
        ids = np.zeros((b, seq), np.int64)
        mask = np.zeros((b, seq), np.int64)
        types = np.zeros((b, seq), np.int64)
        for r, e in enumerate(encs):
            m = len(e.ids)
            ids[r, :m] = e.ids
            mask[r, :m] = e.attention_mask
            types[r, :m] = e.type_ids
        feeds = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feeds["attention_mask"] = mask
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = types
        try:
            (logits,) = self._session.run([self._output], feeds)
        except Exception as e:
            raise ModelError(f"{self.model_path / 'model.onnx'}: inference failed ({e})") from e
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        if logits.ndim != 3 or logits.shape[:2] != (b, seq):
            raise ModelError(
                f"{self.model_path / 'model.onnx'}: output {self._output!r} has shape "
                f"{logits.shape}, a masked LM gives (batch, seq, vocab) = ({b}, {seq}, vocab)"
            )
        indptr, indices, values = _core.splade_pool(
            logits, mask, top_k=self.top_k, threshold=self.threshold, threads=self._threads
        )
        for r, k in enumerate(idx):
            a, z = int(indptr[r]), int(indptr[r + 1])
            rows[int(k)] = (indices[a:z], values[a:z])

    def __repr__(self) -> str:
        return f"Splade({str(self.model_path)!r}, top_k={self.top_k}, threshold={self.threshold})"
