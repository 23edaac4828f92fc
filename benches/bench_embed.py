"""Embedding throughput: qflume.Embedder vs the usual ways to run all-MiniLM-L6-v2 on a CPU.

Same run, same texts, two text sets of real chunks of the Python documentation (truncated at 256
tokens): ``1000`` (~1000-char chunks, most near or at the 256-token cap: the cap limits what
length-sorting can save) and ``750`` (~750-char chunks, ~200 tokens: the lengths spread, and
unsorted batches of 32 carry 20%+ padding, as in the issue's figures):

- qflume           qflume.Embedder() on the default model (int8 per-channel where the CPU has VNNI)
- plain_same_file  a plain onnxruntime loop (batch 32, unsorted, tokenizer pads to the batch's
                   longest) on the very same model.onnx
- plain_fp32       the same plain loop on a plain fp32 export (qflume's fp32 build, which matches
                   sentence-transformers at cosine 1.0000: what most users run)
- fastembed        fastembed.TextEmbedding on the same model.onnx, loaded offline from the local
                   folder (add_custom_model + specific_model_path), batch 32
- sentence_transformers  SentenceTransformer on CPU (torch), in the system python3 when the bench's
                   python lacks it (run as a subprocess; skipped if neither has it)

Run:  .venv/bin/python -m pytest benches/bench_embed.py --benchmark-only -q -s
The summary tables (chunks/s, tokens/s, padding fraction, peak RSS, cosine vs
sentence-transformers, ratios vs the targets), one per text set, are printed at the end. QFLUME_BENCH_CHUNKS sets the number of chunks (default 200),
QFLUME_BENCH_ROUNDS the rounds, run in alternation across runners, best of (default 5).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _corpus import doc_chunks, require_docs

N_CHUNKS = int(os.environ.get("QFLUME_BENCH_CHUNKS", "200"))
SETS = (1000, 750)  # chunk sizes in chars
MAX_TOKENS = 256
ROUNDS = int(os.environ.get("QFLUME_BENCH_ROUNDS", "5"))
RESULTS: dict[int, dict[str, Any]] = {size: {} for size in SETS}

require_docs()


TEXTS = {size: doc_chunks(N_CHUNKS, size) for size in SETS}


class _PeakRss:
    """Samples this process's RSS every few ms while active."""

    def __init__(self) -> None:
        gc.collect()
        self.peak = self.base = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def __enter__(self) -> _PeakRss:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    from qflume import model as qmodel

    src = qmodel.default_source()
    return {
        "default": qmodel.ensure_built(),
        "fp32": qmodel.build(src, int8=False),
    }


@pytest.fixture(scope="module")
def token_lens(models: dict[str, Path]) -> dict[int, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(models["fp32"] / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()
    return {k: np.array([len(e.ids) for e in tok.encode_batch(t)]) for k, t in TEXTS.items()}


def _plain_loop(model_dir: Path, texts: list[str]) -> tuple[Callable[[], np.ndarray], int]:
    """What a typical user writes: batches of 32 in input order, padded to the longest."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.enable_padding()
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    padded = 0
    for s in range(0, len(texts), 32):
        encs = tok.encode_batch(texts[s : s + 32])
        padded += len(encs) * len(encs[0].ids)

    def run() -> np.ndarray:
        out = []
        for s in range(0, len(texts), 32):
            encs = tok.encode_batch(texts[s : s + 32])
            ids = np.array([e.ids for e in encs], np.int64)
            mask = np.array([e.attention_mask for e in encs], np.int64)
            hidden = sess.run(
                None,
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(1) / m.sum(1)
            out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        return np.concatenate(out)

    return run, padded


class _TimedSession:
    """Wraps an InferenceSession to add up the time spent inside run()."""

    def __init__(self, sess: Any) -> None:
        self._sess = sess
        self.seconds = 0.0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return self._sess.run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sess, name)


def _qflume(model_dir: Path, texts: list[str], size: int) -> tuple[Callable[[], np.ndarray], int]:
    from qflume import Embedder
    from qflume import embed as qembed

    emb = Embedder(model_dir)
    padded = sum(
        ids.size
        for w in range(0, len(texts), qembed.WINDOW)
        for _, ids, _ in emb._tokenize(texts[w : w + qembed.WINDOW])
    )
    # The int8 Embedder runs one single-thread session per core side by side: ORT's own time is
    # the time its sessions spend in run(), shared out over them.
    timed = [_TimedSession(sess) for sess in emb._sessions]
    emb._sessions = timed
    emb._session = timed[0]
    overhead = RESULTS[size].setdefault("_overhead", {"total": float("inf"), "model": 0.0})

    def run() -> np.ndarray:
        for ts in timed:
            ts.seconds = 0.0
        t = time.perf_counter()
        out = emb.embed(texts)
        total = time.perf_counter() - t
        if total < overhead["total"]:  # keep the best round's split
            overhead.update(total=total, model=sum(ts.seconds for ts in timed) / len(timed))
        return out

    return run, padded


def _fastembed(model_dir: Path, texts: list[str]) -> tuple[Callable[[], np.ndarray], int | None]:
    import fastembed
    from fastembed.common.model_description import ModelSource, PoolingType

    name = "qflume-local/all-minilm-l6-v2"
    known = {m["model"] for m in fastembed.TextEmbedding.list_supported_models()}
    if name not in known:  # registered once per process (the second text set reuses it)
        fastembed.TextEmbedding.add_custom_model(
            model=name,
            pooling=PoolingType.MEAN,
            normalization=True,
            sources=ModelSource(hf="qflume-local/none"),
            dim=384,
            model_file="model.onnx",
        )
    fe = fastembed.TextEmbedding(name, specific_model_path=str(model_dir))
    # fastembed pads each batch of 32 to its longest and truncates at 512 (tokenizer_config)
    return (lambda: np.array(list(fe.embed(texts, batch_size=32)))), None


@pytest.fixture(scope="module")
def runners(
    models: dict[str, Path], token_lens: dict[int, np.ndarray]
) -> dict[int, dict[str, Any]]:
    """Builds every in-process runner per text set, then times them in alternation (ROUNDS
    rounds, best of), so that load from other processes on the machine hits all of them alike."""
    out: dict[int, dict[str, Any]] = {}
    for size, texts in TEXTS.items():
        makers: dict[str, Callable[[], tuple[Callable[[], np.ndarray], int | None]]] = {
            "qflume": lambda t=texts, s=size: _qflume(models["default"], t, s),
            "plain_same_file": lambda t=texts: _plain_loop(models["default"], t),
            "plain_fp32": lambda t=texts: _plain_loop(models["fp32"], t),
            "fastembed": lambda t=texts: _fastembed(models["default"], t),
        }
        results = RESULTS[size]
        fns: dict[str, Callable[[], np.ndarray]] = {}
        times: dict[str, list[float]] = {}
        real = int(token_lens[size].sum())
        for name, make in makers.items():
            rss = _PeakRss()  # what this runner adds: model, session, buffers of a full run
            with rss:
                try:
                    fn, padded = make()
                except Exception as e:  # fastembed missing or unable to load a local model
                    results.setdefault("_skipped", {})[name] = f"{type(e).__name__}: {e}"
                    continue
                t = time.perf_counter()
                results.setdefault("_vectors", {})[name] = fn()
                times[name] = [time.perf_counter() - t]
            fns[name] = fn
            results[name] = {
                "padding": None if padded is None else 1 - real / padded,
                "peak_rss_mb": (rss.peak - rss.base) / 2**20,
            }
        for _ in range(ROUNDS - 1):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        for name in fns:
            secs = min(times[name])
            results[name].update(
                seconds=secs, chunks_per_s=len(texts) / secs, tokens_per_s=real / secs
            )
        out[size] = fns
    return out


def _bench(name: str, size: int, benchmark: Any, runners: dict[int, dict[str, Any]]) -> None:
    results = RESULTS[size]
    if name not in runners[size]:
        pytest.skip(results.get("_skipped", {}).get(name, f"{name} not available"))
    benchmark.pedantic(runners[size][name], rounds=1, iterations=1)
    r = results[name]
    secs = min(r["seconds"], benchmark.stats.stats.min)  # this round counts too
    r.update(seconds=secs, chunks_per_s=len(TEXTS[size]) / secs, tokens_per_s=r["tokens_per_s"]
             * r["seconds"] / secs)  # fmt: skip
    benchmark.extra_info.update({k: v for k, v in r.items() if v is not None})


@pytest.mark.parametrize("size", SETS)
def test_qflume(benchmark, runners, size):
    _bench("qflume", size, benchmark, runners)


@pytest.mark.parametrize("size", SETS)
def test_plain_same_file(benchmark, runners, size):
    _bench("plain_same_file", size, benchmark, runners)


@pytest.mark.parametrize("size", SETS)
def test_plain_fp32(benchmark, runners, size):
    _bench("plain_fp32", size, benchmark, runners)


@pytest.mark.parametrize("size", SETS)
def test_fastembed(benchmark, runners, size):
    _bench("fastembed", size, benchmark, runners)


_ST_SCRIPT = r"""
import json, sys, time
def vm(key):  # per-process (fresh at exec), unlike ru_maxrss which a forked child inherits
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
base_rss = vm("VmRSS")
from sentence_transformers import SentenceTransformer
import numpy as np
texts = json.load(open(sys.argv[1]))
model = SentenceTransformer(sys.argv[2], device="cpu")
model.encode(texts[:8])
t = time.perf_counter()
v = model.encode(texts, batch_size=32, convert_to_numpy=True)
best = time.perf_counter() - t
np.save(sys.argv[3], v.astype(np.float32))
import torch
print(json.dumps({"seconds": best, "threads": torch.get_num_threads(),
                  "peak_rss_mb": vm("VmHWM") - base_rss}))
"""


@pytest.mark.parametrize("size", SETS)
def test_sentence_transformers(benchmark, token_lens, tmp_path, size):
    from qflume import model as qmodel

    python = sys.executable
    probe = subprocess.run(
        [python, "-c", "import sentence_transformers"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        python = shutil.which("python3") or ""
        probe = subprocess.run(
            [python, "-c", "import sentence_transformers"], capture_output=True, check=False
        )
        if not python or probe.returncode != 0:
            pytest.skip("sentence-transformers is not importable (here or in python3)")
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(TEXTS[size]))
    out = tmp_path / "st.npy"
    result: dict[str, Any] = {}

    def run() -> None:
        res = subprocess.run(
            [python, "-c", _ST_SCRIPT, str(texts), str(qmodel.default_source()), str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
        result.update(json.loads(res.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    secs = result["seconds"]  # the encode() call alone, inside the subprocess
    info = {
        "chunks_per_s": len(TEXTS[size]) / secs,
        "tokens_per_s": int(token_lens[size].sum()) / secs,
        "padding": None,
        "peak_rss_mb": result["peak_rss_mb"],
        "seconds": secs,
    }
    benchmark.extra_info.update(info)
    RESULTS[size]["sentence_transformers"] = info
    RESULTS[size].setdefault("_vectors", {})["sentence_transformers"] = np.load(out)


def test_summary(benchmark, token_lens):
    """Prints the table and the ratios against the targets (never fails on speed)."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # runs under --benchmark-only
    for size in SETS:
        _summary(size, token_lens[size])


def _summary(size: int, token_lens: np.ndarray) -> None:
    results = RESULTS[size]
    rows = [k for k in results if not k.startswith("_")]
    lines = [
        f"\nembedding bench: {len(TEXTS[size])} chunks of ~{size} chars, "
        f"{int(token_lens.sum())} tokens (mean {token_lens.mean():.0f}, max {token_lens.max()}, "
        f"{(token_lens >= MAX_TOKENS).mean():.0%} at the cap), {os.cpu_count()} cpus",
        f"{'runner':24s} {'chunks/s':>9s} {'tokens/s':>9s} {'padding':>8s} {'+RSS':>9s}"
        f" {'cos vs ST mean/min':>19s}",
    ]
    vecs = results.get("_vectors", {})
    ref = vecs.get("sentence_transformers")
    for k in rows:
        r = results[k]
        pad = "-" if r["padding"] is None else f"{r['padding']:.1%}"
        cos = "-"
        if ref is not None and k in vecs:
            c = (vecs[k] * ref).sum(1)
            cos = f"{c.mean():.4f}/{c.min():.3f}"
        lines.append(
            f"{k:24s} {r['chunks_per_s']:9.1f} {r['tokens_per_s']:9.0f} {pad:>8s}"
            f" {r['peak_rss_mb']:7.0f}MB {cos:>19s}"
        )
    q = results.get("qflume")
    if q:
        for peer, target in (("plain_same_file", 1.25), ("plain_fp32", 2.0)):
            if peer in results:
                ratio = q["chunks_per_s"] / results[peer]["chunks_per_s"]
                lines.append(f"qflume / {peer}: {ratio:.2f}x (target >= {target}x)")
        ov = results.get("_overhead")
        if ov:
            lines.append(
                f"qflume total {ov['total']:.2f}s vs ORT run() alone {ov['model']:.2f}s: "
                f"{ov['total'] / ov['model'] - 1:+.1%} (target <= +5%)"
            )
    print("\n".join(lines))
