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
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from qflume._validate import text_problem
from qflume.exceptions import InvalidInputError, ModelError, TokenizerError

__all__ = ["Embedder", "model_fingerprint"]

#: Texts tokenized, sorted and batched together; the next window is tokenized meanwhile.
WINDOW = 512
#: The first window of a call is shorter: the model waits for it.
FIRST_WINDOW = 32
#: At most this many texts per model call, whatever the token budget allows.
MAX_BATCH = 256
#: Default padded tokens per model call (see :class:`Embedder`).
CPU_BATCH_TOKENS = 512
ACCELERATOR_BATCH_TOKENS = 16384


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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


class Embedder:
    """Dense text embeddings from an ONNX model folder (default: all-MiniLM-L6-v2, built on first
    use: int8 with per-channel weights on CPUs with VNNI, the most sensitive MatMuls kept fp32, see
    :func:`qflume.model.fp32_matmuls`; else fp32).

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
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from qflume.model import DISABLED_OPTIMIZERS

        if batch_tokens is not None and batch_tokens < 1:
            raise InvalidInputError(f"batch_tokens must be >= 1, got {batch_tokens}")
        if threads is not None and threads < 1:
            raise InvalidInputError(f"threads must be >= 1, got {threads}")
        spec = _Spec(model, max_tokens=max_tokens, default_fp32=providers is None and _has_cuda())
        folder, layout = spec.folder, spec.layout
        self._folder = folder
        self.max_tokens = limit = spec.max_tokens
        self._pooling = layout.pooling
        self._normalize = layout.normalize

        tok_path = folder / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as e:  # tokenizers raises a bare Exception
            raise TokenizerError(f"cannot load tokenizer {tok_path}: {e}") from e
        # Follow the sentence-transformers limit, not tokenizer.json's; pad ourselves per batch.
        tokenizer.enable_truncation(max_length=limit)
        tokenizer.no_padding()
        self._tokenizer = tokenizer

        if providers is None:
            providers = (
                ["CUDAExecutionProvider", "CPUExecutionProvider"]
                if _has_cuda()
                else ["CPUExecutionProvider"]
            )
        model_file = folder / "model.onnx"
        cores = threads or _cpu_count()
        dynamic = _quantizes_dynamically(model_file)

        def load(on_cpu: bool, intra: int) -> Any:
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.intra_op_num_threads = intra
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.log_severity_level = 3
            try:
                return ort.InferenceSession(
                    str(model_file),
                    so,
                    providers=list(providers),
                    # CPU kernels only: on a GPU the fused kernels are the fast ones.
                    disabled_optimizers=DISABLED_OPTIMIZERS if on_cpu else [],
                )
            except Exception as e:  # ORT raises its own exception types
                raise ModelError(f"cannot load {model_file}: {e}") from e

        def sessions(on_cpu: bool) -> list[Any]:
            # Dynamic int8 quantization scales a call's activations by the range of the whole
            # call, so a text's vector would depend on the texts sharing its call (cosine down
            # to 0.99 on real chunks) and a re-embedded or cached chunk would differ from the
            # first. On a CPU such models give each text a call of its own, run side by side
            # on one single-thread session per core: the same vector for the same text, always.
            if on_cpu and dynamic:
                return [load(True, 1) for _ in range(cores)]
            return [load(on_cpu, cores)]

        on_cpu = providers[0] == "CPUExecutionProvider"
        self._sessions = sessions(on_cpu)
        if not on_cpu and self._sessions[0].get_providers()[0] == "CPUExecutionProvider":
            on_cpu = True  # the accelerator's provider did not load: run as on a CPU
            self._sessions = sessions(on_cpu)
        #: Whether every text gets a model call of its own (see above).
        self.per_text = on_cpu and dynamic
        if batch_tokens is None:
            batch_tokens = CPU_BATCH_TOKENS if on_cpu else ACCELERATOR_BATCH_TOKENS
        self.batch_tokens = batch_tokens
        self._max_rows = 1 if self.per_text else MAX_BATCH
        self._session = self._sessions[0]
        self._inputs = {i.name for i in self._session.get_inputs()}
        if "input_ids" not in self._inputs:
            raise ModelError(f"{model_file} has no input named input_ids: {sorted(self._inputs)}")
        output = self._session.get_outputs()[0]
        names = [o.name for o in self._session.get_outputs()]
        self._output = "last_hidden_state" if "last_hidden_state" in names else output.name
        self._pooled_output = len(output.shape or []) == 2 and self._output == output.name
        probe = self._run(self._session, np.zeros((1, 2), np.int64), np.ones((1, 2), np.int64))
        self.dim = int(probe.shape[1])
        self.model_id = spec.model_id()
        self._pool: ThreadPoolExecutor | None = None  # tokenizes the next window
        self._workers: ThreadPoolExecutor | None = None  # one per session when there are several
        self._lock = threading.Lock()
        self._counted = threading.local()  # tokens fed to the model, per calling thread
        self._async_pool: ThreadPoolExecutor | None = None  # runs aembed's calls
        self._async_lock = threading.Lock()  # held only to start that thread: never blocks long

    # ------------------------------------------------------------------ public

    @property
    def tokens_embedded(self) -> int:
        """Tokens the calls made from this thread have fed to the model (after truncation,
        special tokens included: what :meth:`count_tokens` counts). Per thread, so a caller
        sharing the Embedder measures its own calls exactly: the difference around a call."""
        return int(getattr(self._counted, "tokens", 0))

    @property
    def model_path(self) -> Path:
        """The model folder in use (holding model.onnx and tokenizer.json)."""
        return self._folder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> float32 array (len(texts), dim), in the caller's order."""
        if isinstance(texts, str):
            raise InvalidInputError("embed() takes a sequence of texts; use embed_query(text)")
        n = len(texts)
        out = np.empty((n, self.dim), np.float32)
        if n == 0:
            return out
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidInputError(f"text {i} is {type(t).__name__}, not str")
            bad = text_problem(t, f"text {i}")
            if bad:
                raise InvalidInputError(bad)
        n = len(self._sessions)
        with self._lock:  # one embed at a time per Embedder: ORT already uses every core
            if self._pool is None:  # first use, or used again after close()
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="qflume-tokenize")
                if n > 1:
                    self._workers = ThreadPoolExecutor(n, thread_name_prefix="qflume-embed")
            tokens = 0
            for batches in self._windows(texts, self._pool):
                tokens += sum(int(mask.sum()) for _, _, mask in batches)
                if self._workers is None:
                    for rows, ids, mask in batches:
                        out[rows] = self._run(self._session, ids, mask)
                    continue
                # Longest first, each session taking the next call when it is free: they finish
                # together.
                todo = iter(batches[::-1])
                take = threading.Lock()

                def work(k: int, todo: Iterator[Any] = todo, take: Any = take) -> None:
                    while True:
                        with take:
                            item = next(todo, None)
                        if item is None:
                            return
                        rows, ids, mask = item
                        out[rows] = self._run(self._sessions[k], ids, mask)

                for _ in self._workers.map(work, range(n)):
                    pass
            self._counted.tokens = self.tokens_embedded + tokens
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one text -> float32 array (dim,)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"query is {type(text).__name__}, not str")
        return self.embed([text])[0]

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

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per text after truncation (int64 array), as the model sees them. Encoded a
        window at a time: a tokenizer Encoding costs ~100 bytes per token, so a whole corpus's
        encodings at once would cost far more than its text."""
        out = np.empty(len(texts), np.int64)
        for lo in range(0, len(texts), WINDOW):
            encs = self._tokenizer.encode_batch(list(texts[lo : lo + WINDOW]))
            out[lo : lo + len(encs)] = [len(e.ids) for e in encs]
        return out

    def close(self) -> None:
        """Stop the tokenizer and worker threads (the sessions are freed with the object); a
        later call starts them again."""
        with self._lock:
            for pool in (self._pool, self._workers):
                if pool is not None:
                    pool.shutdown(wait=False)
            self._pool = self._workers = None
        with self._async_lock:  # calls already queued there still run
            if self._async_pool is not None:
                self._async_pool.shutdown(wait=False)
            self._async_pool = None

    def __repr__(self) -> str:
        return f"Embedder({str(self._folder)!r}, dim={self.dim}, pooling={self._pooling!r})"

    # ------------------------------------------------------------------ internals

    def _tokenize(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Tokenize one window, sort by length, cut into batches under the token budget."""
        encs = self._tokenizer.encode_batch(list(texts))
        lens = np.fromiter((len(e.ids) for e in encs), np.int64, len(encs))
        order = np.argsort(lens, kind="stable")
        batches = []
        start = 0
        n = len(order)
        while start < n:
            # Sorted ascending: the batch's width is its last (longest) member.
            end = start + 1
            while (
                end < n
                and end - start < self._max_rows
                and lens[order[end]] * (end + 1 - start) <= self.batch_tokens
            ):
                end += 1
            rows = order[start:end]
            width = int(lens[rows[-1]])
            ids = np.zeros((len(rows), width), np.int64)
            for j, r in enumerate(rows):
                ids[j, : lens[r]] = encs[r].ids
            mask = (np.arange(width) < lens[rows][:, None]).astype(np.int64)
            batches.append((rows, ids, mask))
            start = end
        return batches

    def _windows(
        self, texts: Sequence[str], pool: ThreadPoolExecutor
    ) -> Iterator[list[tuple[Any, Any, Any]]]:
        """The batches of each window in turn (rows in the caller's numbering); the next window
        is tokenized meanwhile."""
        # A short first window: the model starts soon, and the rest is tokenized meanwhile.
        bounds = [0, min(FIRST_WINDOW, len(texts))]
        while bounds[-1] < len(texts):
            bounds.append(min(bounds[-1] + WINDOW, len(texts)))
        pending: Future[list[Any]] | None = None
        for a, b, c in zip(bounds[:-1], bounds[1:], [*bounds[2:], None], strict=True):
            current = pending.result() if pending is not None else self._tokenize(texts[a:b])
            pending = pool.submit(self._tokenize, texts[b:c]) if c is not None else None
            yield [(rows + a, ids, mask) for rows, ids, mask in current]

    def _run(self, session: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = mask
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        try:
            hidden = session.run([self._output], feed)[0]
        except Exception as e:
            raise ModelError(f"running {self._folder / 'model.onnx'} failed: {e}") from e
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


#: ONNX ops that quantize activations with a scale computed from the whole call.
_DYNAMIC_OPS = {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def _quantizes_dynamically(model_file: Path) -> bool:
    """Whether the graph quantizes activations at run time (see :data:`_DYNAMIC_OPS`)."""
    import onnx

    try:
        graph = onnx.load(str(model_file), load_external_data=False).graph
    except Exception as e:  # onnx raises DecodeError and friends
        raise ModelError(f"cannot read {model_file}: {e}") from e
    return any(node.op_type in _DYNAMIC_OPS for node in graph.node)


def _has_cuda() -> bool:
    """True when the installed onnxruntime has the CUDA provider (onnxruntime-gpu), found by its
    library file so that callers need not import onnxruntime."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    for root in spec.submodule_search_locations:
        capi = Path(root) / "capi"
        if any(capi.glob("libonnxruntime_providers_cuda.*")) or any(
            capi.glob("onnxruntime_providers_cuda.*")
        ):
            return True
    return False
