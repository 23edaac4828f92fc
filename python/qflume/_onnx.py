"""The ONNX Runtime side that :class:`qflume.Embedder` and :class:`qflume.Splade` share.

One model folder (model.onnx + tokenizer.json) becomes: a tokenizer truncating to the model's
limit, the execution providers (CUDA when onnxruntime-gpu has it, else CPU), the sessions (one
multi-thread session, or one single-thread session per core for models that quantize activations
at run time), and the batching: texts tokenized in windows of a few hundred (the next window in a
worker thread while ONNX Runtime runs the current one), sorted by length and cut into calls of at
most ``batch_tokens`` padded tokens. A family only says what one call's output becomes
(:meth:`OnnxModel._run`): pooled dense vectors, or SPLADE weights.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from qflume._validate import text_problem
from qflume.exceptions import InvalidInputError, InvalidTypeError, ModelError, TokenizerError

#: Texts tokenized, sorted and batched together; the next window is tokenized meanwhile.
WINDOW = 512
#: The first window of a call is shorter: the model waits for it.
FIRST_WINDOW = 32
#: At most this many texts per model call, whatever the token budget allows.
MAX_BATCH = 256
#: Default padded tokens per model call (see :class:`qflume.Embedder`).
CPU_BATCH_TOKENS = 512
ACCELERATOR_BATCH_TOKENS = 16384

#: ONNX ops that quantize activations with a scale computed from the whole call.
_DYNAMIC_OPS = {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}

#: One model call's rows (in the caller's numbering), input ids and attention mask.
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def has_cuda() -> bool:
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


def quantizes_dynamically(model_file: Path) -> bool:
    """Whether the graph quantizes activations at run time (see :data:`_DYNAMIC_OPS`)."""
    import onnx

    try:
        graph = onnx.load(str(model_file), load_external_data=False).graph
    except Exception as e:  # onnx raises DecodeError and friends
        raise ModelError(f"cannot read {model_file}: {e}") from e
    return any(node.op_type in _DYNAMIC_OPS for node in graph.node)


class OnnxModel:
    """A tokenizer and ONNX Runtime sessions over one model folder, and the batched calls.

    Subclasses call :meth:`_load` from their ``__init__`` and implement :meth:`_run` (one call:
    feed, run, post-process); :meth:`_map` runs every batch of a list of texts through it.
    """

    _folder: Path
    max_tokens: int
    batch_tokens: int
    #: Whether every text gets a model call of its own (see :meth:`_load`).
    per_text: bool

    def _load(
        self,
        folder: Path,
        *,
        max_tokens: int,
        threads: int | None,
        providers: Sequence[str] | None,
        batch_tokens: int | None,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from qflume.model import DISABLED_OPTIMIZERS

        if batch_tokens is not None and batch_tokens < 1:
            raise InvalidInputError(f"batch_tokens must be >= 1, got {batch_tokens}")
        if threads is not None and threads < 1:
            raise InvalidInputError(f"threads must be >= 1, got {threads}")
        self._folder = folder
        self.max_tokens = max_tokens
        tok_path = folder / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(tok_path))
        except Exception as e:  # tokenizers raises a bare Exception
            raise TokenizerError(f"cannot load tokenizer {tok_path}: {e}") from e
        # Follow the model's limit, not tokenizer.json's; pad ourselves per batch.
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.no_padding()
        self._tokenizer = tokenizer

        if providers is None:
            providers = (
                ["CUDAExecutionProvider", "CPUExecutionProvider"]
                if has_cuda()
                else ["CPUExecutionProvider"]
            )
        model_file = folder / "model.onnx"
        cores = threads or cpu_count()
        dynamic = quantizes_dynamically(model_file)

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
        self.on_cpu = on_cpu
        self.per_text = on_cpu and dynamic
        if batch_tokens is None:
            batch_tokens = CPU_BATCH_TOKENS if on_cpu else ACCELERATOR_BATCH_TOKENS
        self.batch_tokens = batch_tokens
        self._max_rows = 1 if self.per_text else MAX_BATCH
        self._session = self._sessions[0]
        self._inputs = {i.name for i in self._session.get_inputs()}
        if "input_ids" not in self._inputs:
            raise ModelError(f"{model_file} has no input named input_ids: {sorted(self._inputs)}")
        self._pool: ThreadPoolExecutor | None = None  # tokenizes the next window
        self._workers: ThreadPoolExecutor | None = None  # one per session when there are several
        self._lock = threading.Lock()
        self._counted = threading.local()  # tokens fed to the model, per calling thread

    # ------------------------------------------------------------------ public

    @property
    def tokens_embedded(self) -> int:
        """Tokens the calls made from this thread have fed to the model (after truncation,
        special tokens included: what :meth:`count_tokens` counts). Per thread, so a caller
        sharing the model measures its own calls exactly: the difference around a call."""
        return int(getattr(self._counted, "tokens", 0))

    @property
    def model_path(self) -> Path:
        """The model folder in use (holding model.onnx and tokenizer.json)."""
        return self._folder

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

    # ------------------------------------------------------------------ for the families

    def _run(self, session: Any, ids: np.ndarray, mask: np.ndarray) -> Any:
        """One model call on a batch, post-processed (what :meth:`_map` hands to ``store``)."""
        raise NotImplementedError

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> None:
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidTypeError(f"text {i} is {type(t).__name__}, not str")
            bad = text_problem(t, f"text {i}")
            if bad:
                raise InvalidInputError(bad)

    def _feed(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        feed = {"input_ids": ids}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = mask
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        return feed

    def _infer(self, session: Any, output: str, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        try:
            result: np.ndarray = session.run([output], self._feed(ids, mask))[0]
        except Exception as e:
            raise ModelError(f"running {self._folder / 'model.onnx'} failed: {e}") from e
        return result

    def _map(self, texts: Sequence[str], store: Callable[[np.ndarray, Any], None]) -> None:
        """Run every text through :meth:`_run`, batch by batch; ``store(rows, result)`` gets
        each call's result with its rows in the caller's numbering (in any order)."""
        n = len(self._sessions)
        with self._lock:  # one call at a time per model: ORT already uses every core
            if self._pool is None:  # first use, or used again after close()
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="qflume-tokenize")
                if n > 1:
                    self._workers = ThreadPoolExecutor(n, thread_name_prefix="qflume-embed")
            tokens = 0
            for batches in self._windows(texts, self._pool):
                tokens += sum(int(mask.sum()) for _, _, mask in batches)
                if self._workers is None:
                    for rows, ids, mask in batches:
                        store(rows, self._run(self._session, ids, mask))
                    continue
                # Longest first, each session taking the next call when it is free: they finish
                # together.
                todo = iter(batches[::-1])
                take = threading.Lock()

                def work(k: int, todo: Iterator[Batch] = todo, take: Any = take) -> None:
                    while True:
                        with take:
                            item = next(todo, None)
                        if item is None:
                            return
                        rows, ids, mask = item
                        result = self._run(self._sessions[k], ids, mask)
                        with take:
                            store(rows, result)

                for _ in self._workers.map(work, range(n)):
                    pass
            self._counted.tokens = self.tokens_embedded + tokens

    def _tokenize(self, texts: Sequence[str]) -> list[Batch]:
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

    def _windows(self, texts: Sequence[str], pool: ThreadPoolExecutor) -> Iterator[list[Batch]]:
        """The batches of each window in turn (rows in the caller's numbering); the next window
        is tokenized meanwhile."""
        # A short first window: the model starts soon, and the rest is tokenized meanwhile.
        bounds = [0, min(FIRST_WINDOW, len(texts))]
        while bounds[-1] < len(texts):
            bounds.append(min(bounds[-1] + WINDOW, len(texts)))
        pending: Future[list[Batch]] | None = None
        for a, b, c in zip(bounds[:-1], bounds[1:], [*bounds[2:], None], strict=True):
            current = pending.result() if pending is not None else self._tokenize(texts[a:b])
            pending = pool.submit(self._tokenize, texts[b:c]) if c is not None else None
            yield [(rows + a, ids, mask) for rows, ids, mask in current]
