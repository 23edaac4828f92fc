"""Dense embeddings with ONNX Runtime and HF tokenizers, at the model's own speed.

The costs around the model are hidden or removed: texts are tokenized in windows of a few hundred,
the next window in a worker thread while ONNX Runtime runs the current one (both release the GIL);
int8 models run one call per text on one single-thread session per core (the same text always
gets the same vector, see :class:`Embedder`), other models run length-sorted batches of a token
budget (almost no padding); pooling + normalization are vectorized numpy. The caller's order is
restored at the end.

Texts longer than the model's limit are truncated to it (``max_tokens``; for all-MiniLM-L6-v2 the
sentence-transformers limit, 256 tokens): what is past it does not count in the vector, as in
sentence-transformers. Chunk your documents to fit.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

# The batching's knobs and helpers live with the session setup Embedder shares with Splade;
# re-exported here under the names callers know.
from qflume._onnx import (  # noqa: F401
    ACCELERATOR_BATCH_TOKENS,
    CPU_BATCH_TOKENS,
    FIRST_WINDOW,
    MAX_BATCH,
    WINDOW,
    OnnxModel,
)
from qflume._onnx import cpu_count as _cpu_count  # noqa: F401
from qflume._onnx import has_cuda as _has_cuda
from qflume._onnx import quantizes_dynamically as _quantizes_dynamically  # noqa: F401
from qflume.exceptions import InvalidInputError, InvalidTypeError, ModelError

__all__ = ["Embedder", "model_fingerprint"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from e


class _Layout:
    """What a model folder prescribes: pooling, normalization, token limit."""

    def __init__(self, folder: Path) -> None:
        self.pooling = "mean"
        self.normalize = True
        self.max_tokens: int | None = None
        modules_path = folder / "modules.json"
        if modules_path.is_file():
            modules = _read_json(modules_path)
            types = [str(m.get("type", "")) for m in modules if isinstance(m, dict)]
            self.normalize = any(t.endswith(".Normalize") for t in types)
            pool_dir = next(
                (str(m.get("path", "")) for m in modules
                 if isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling")),
                None,
            )  # fmt: skip
            if pool_dir is not None and (folder / pool_dir / "config.json").is_file():
                self.pooling = self._pooling(folder / pool_dir / "config.json")
        elif (folder / "1_Pooling" / "config.json").is_file():
            self.pooling = self._pooling(folder / "1_Pooling" / "config.json")
        st_config = folder / "sentence_bert_config.json"
        if st_config.is_file():
            value = _read_json(st_config).get("max_seq_length")
            if isinstance(value, int) and value > 0:
                self.max_tokens = value
        self.hard_limit: int | None = None  # position embeddings: nothing can go past them
        hf_config = folder / "config.json"
        if hf_config.is_file():
            limit = _read_json(hf_config).get("max_position_embeddings")
            if isinstance(limit, int) and limit > 0:
                self.hard_limit = limit
                self.max_tokens = min(self.max_tokens or limit, limit)

    @staticmethod
    def _pooling(path: Path) -> str:
        cfg = _read_json(path)
        if cfg.get("pooling_mode_cls_token"):
            return "cls"
        if cfg.get("pooling_mode_max_tokens"):
            return "max"
        if cfg.get("pooling_mode_mean_sqrt_len_tokens"):
            return "mean_sqrt_len"
        if cfg.get("pooling_mode_mean_tokens", True):
            return "mean"
        raise ModelError(f"{path}: no pooling mode qflume supports (mean, cls, max)")


def _resolve(model: str | os.PathLike[str] | None) -> Path:
    from qflume import model as builder

    if model is None:
        return builder.ensure_built()
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist (or is not a folder)")
    if (folder / "model.onnx").is_file():
        if not (folder / "tokenizer.json").is_file():
            raise ModelError(f"model folder {folder} lacks tokenizer.json")
        return folder.resolve()
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return builder.ensure_built(folder)  # a weights folder: build (once, cached)
    raise ModelError(
        f"model folder {folder} lacks model.onnx (or config.json + model.safetensors to build one)"
    )


class _Spec:
    """Everything about a model that is known without ONNX Runtime: folder, layout, token limit,
    identity. Shared by :class:`Embedder` and :func:`model_fingerprint`, so both agree."""

    def __init__(
        self,
        model: str | os.PathLike[str] | None,
        *,
        max_tokens: int | None,
        default_fp32: bool = False,
    ) -> None:
        if max_tokens is not None and max_tokens < 2:
            raise InvalidInputError(f"max_tokens must be >= 2, got {max_tokens}")
        if model is None and default_fp32:
            from qflume import model as builder

            model = builder.ensure_built(int8=False)  # int8 dynamic ops are CPU-only
        self.folder = folder = _resolve(model)
        self.layout = layout = _Layout(folder)
        if layout.hard_limit and max_tokens and max_tokens > layout.hard_limit:
            raise InvalidInputError(
                f"max_tokens {max_tokens} exceeds the model's {layout.hard_limit} positions "
                f"({folder / 'config.json'})"
            )
        self.max_tokens = max_tokens or layout.max_tokens or 512

    def model_id(self) -> str:
        from qflume import model as builder

        h = hashlib.sha256(b"qflume-embedder-2")
        for name in ("model.onnx", "tokenizer.json"):
            h.update(name.encode() + b"\0" + builder.file_digest(self.folder / name))
        layout = self.layout
        h.update(f"|{layout.pooling}|{layout.normalize}|{self.max_tokens}".encode())
        return f"{self.folder.name[:40]}:{h.hexdigest()[:16]}"


def model_fingerprint(
    model: str | os.PathLike[str] | None = None, *, max_tokens: int | None = None
) -> str:
    """Exactly ``Embedder(model, max_tokens=max_tokens).model_id``, without loading the model
    into ONNX Runtime: a few ms once the file digests are cached. The default model (or a weights
    folder) is built into the cache first if it is not there yet."""
    return _Spec(model, max_tokens=max_tokens, default_fp32=_has_cuda()).model_id()


def model_folder(model: str | os.PathLike[str] | None = None) -> Path:
    """The folder ``Embedder(model)`` loads (the default model, or a weights folder, built into
    the cache first if it is not there yet), without loading it into ONNX Runtime."""
    return Path(_Spec(model, max_tokens=None, default_fp32=_has_cuda()).folder)


class Embedder(OnnxModel):
    """Dense text embeddings from an ONNX model folder (default: all-MiniLM-L6-v2, built on first
    use: the int8 build, per-channel weights with the most sensitive MatMuls kept fp32, see
    :func:`qflume.model.fp32_matmuls`, where it meets the fidelity bar and is faster on this CPU,
    else fp32: measured once per CPU, :mod:`qflume.choice`).

    ``model`` is a folder with model.onnx + tokenizer.json (+ sentence-transformers configs), or a
    BERT-family weights folder (config.json + model.safetensors), built into the cache.
    ``threads``: the cores ONNX Runtime uses (default: the usable cores). ``providers``: ORT
    execution providers (default: CUDA when onnxruntime-gpu has it, else CPU). ``max_tokens``:
    truncation limit (default: the model's, e.g. 256 for all-MiniLM-L6-v2); longer texts are cut.

    A model that quantizes activations at run time (the int8 builds) runs on a CPU with one call
    per text, on one single-thread session per core side by side (:attr:`per_text`): a batched
    call scales all its texts' activations together, so a text's vector would depend on what
    shares its call. This way the same text always gets the bit-identical vector, and it is also
    the fastest way on 2 cores (124 vs 110 chunks/s batched, ~1000-char chunks).

    Other models (fp32, or any model on an accelerator) run length-sorted batches of at most
    ``batch_tokens`` padded tokens per call (default: 512 on CPU, 16384 when an accelerator's
    provider such as CUDA runs the model). On CPU small calls win because one call's activations
    stay in the cores' caches: measured on 2 cores (the int8 build batched, 200 real Python-docs
    chunks of ~1000 / ~750 chars, best of 5, alternating), chunks/s for budgets 256 / 512 / 1024
    / 2048 / 4096: 117.2 / 113.1 / 107.2 / 101.1 / 96.7 and 140.8 / 149.2 / 140.4 / 134.1 /
    124.4. ORT's thread spinning off, thread affinities and denormals as zero made no gain.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        max_tokens: int | None = None,
        batch_tokens: int | None = None,
    ) -> None:
        spec = _Spec(model, max_tokens=max_tokens, default_fp32=providers is None and _has_cuda())
        self._pooling = spec.layout.pooling
        self._normalize = spec.layout.normalize
        self._load(
            spec.folder,
            max_tokens=spec.max_tokens,
            threads=threads,
            providers=providers,
            batch_tokens=batch_tokens,
        )
        output = self._session.get_outputs()[0]
        names = [o.name for o in self._session.get_outputs()]
        self._output = "last_hidden_state" if "last_hidden_state" in names else output.name
        self._pooled_output = len(output.shape or []) == 2 and self._output == output.name
        probe = self._run(self._session, np.zeros((1, 2), np.int64), np.ones((1, 2), np.int64))
        self.dim = int(probe.shape[1])
        self.model_id = spec.model_id()
        self._async_pool: ThreadPoolExecutor | None = None  # runs aembed's calls
        self._async_lock = threading.Lock()  # held only to start that thread: never blocks long

    # ------------------------------------------------------------------ public

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> float32 array (len(texts), dim), in the caller's order."""
        if isinstance(texts, str):
            raise InvalidInputError("embed() takes a sequence of texts; use embed_query(text)")
        try:
            n = len(texts)
        except TypeError:
            raise InvalidTypeError(
                f"embed() takes a sequence of str, got {type(texts).__name__}"
            ) from None
        out = np.empty((n, self.dim), np.float32)
        if len(texts) == 0:
            return out
        self._check_texts(texts)
        self._map(texts, out.__setitem__)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one text -> float32 array (dim,)."""
        if not isinstance(text, str):
            raise InvalidTypeError(f"query is {type(text).__name__}, not str")
        vector: np.ndarray = self.embed([text])[0]
        return vector

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """`embed` for asyncio: the same vectors, computed in a thread of this Embedder's own
        while the event loop runs on. Calls run one after another in call order (the model runs
        one call at a time anyway); cancelling the awaiting task does not stop a call begun."""
        if isinstance(texts, str):
            raise InvalidInputError("aembed() takes a sequence of texts; use aembed_query(text)")
        return await self._in_thread(self.embed, list(texts))  # a copy: the caller may go on

    async def aembed_query(self, text: str) -> np.ndarray:
        """`embed_query` for asyncio (see :meth:`aembed`)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"query is {type(text).__name__}, not str")
        return await self._in_thread(self.embed_query, text)

    async def _in_thread(self, fn: Any, arg: Any) -> np.ndarray:
        import asyncio

        with self._async_lock:
            if self._async_pool is None:
                self._async_pool = ThreadPoolExecutor(1, thread_name_prefix="qflume-aembed")
            pool = self._async_pool
        result: np.ndarray = await asyncio.get_running_loop().run_in_executor(pool, fn, arg)
        return result

    def close(self) -> None:
        """Stop the tokenizer and worker threads (the sessions are freed with the object); a
        later call starts them again."""
        super().close()
        with self._async_lock:  # calls already queued there still run
            if self._async_pool is not None:
                self._async_pool.shutdown(wait=False)
            self._async_pool = None

    def __repr__(self) -> str:
        return f"Embedder({str(self._folder)!r}, dim={self.dim}, pooling={self._pooling!r})"

    # ------------------------------------------------------------------ internals

    def _run(self, session: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        hidden = self._infer(session, self._output, ids, mask)
        if self._pooled_output or hidden.ndim == 2:
            pooled = hidden.astype(np.float32, copy=False)
        elif self._pooling == "cls":
            pooled = hidden[:, 0]
        elif self._pooling == "max":
            pooled = np.where(mask[:, :, None] > 0, hidden, -np.inf).max(axis=1)
        else:
            m = mask.astype(np.float32)
            counts = np.maximum(m.sum(axis=1, keepdims=True), 1e-9)
            pooled = np.einsum("bsh,bs->bh", hidden, m)
            pooled /= np.sqrt(counts) if self._pooling == "mean_sqrt_len" else counts
        pooled = np.ascontiguousarray(pooled, dtype=np.float32)
        if self._normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled /= np.maximum(norms, 1e-12)
        return pooled
