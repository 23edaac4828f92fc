"""Which build of a model this CPU runs: decided by measurement, once per CPU, not by its flags.

The first time a model is used without a kind being named (``Embedder()``, ``Embedder(weights)``,
:func:`qflume.model.ensure_built`), qflume builds its fp32 and its int8 candidate for this CPU
(:func:`qflume.model.int8_kind`: full-range weights with VNNI or the ARM dot product, 7-bit weights
on x86 without VNNI, whose u8 x s8 pair sums saturate at full range), embeds a fixed sample of
held-out text with both, and keeps the int8 build only when it meets the fidelity bar against the
fp32 build (cosine mean >= 0.99, min >= 0.98) *and* is faster; otherwise fp32. The sample is
docstrings of the Python standard library's sources, chunked as ``qflume ingest`` chunks
(64-token chunks), a text the int8 recipe was not tuned on (that was the python3.11-doc pages).

The decision and its figures go into ``<cache>/<fingerprint>-choice.json`` beside the cached
builds, keyed by the CPU (model name and the int8-relevant CPUID flags), so another CPU sharing the
cache decides for itself; ``qflume model info`` shows them and ``qflume model choose`` measures
again. ``QFLUME_MODEL_KIND=fp32|int8|int8-r7`` skips the measurement and uses that kind.
"""

from __future__ import annotations

import ast
import datetime
import hashlib
import json
import os
import platform
import sys
import sysconfig
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qflume import _core
from qflume import model as builder
from qflume._onnx import cpu_count as _cores
from qflume.exceptions import ModelError

__all__ = [
    "ENV_KIND",
    "FIDELITY_BAR",
    "choice_file",
    "choose",
    "chosen_kind",
    "cpu_key",
    "forced_kind",
    "measure",
    "recorded",
    "sample_texts",
]

#: The product's fidelity bar for an int8 build, as cosine to the fp32 build: (mean, min).
FIDELITY_BAR = (0.99, 0.98)
#: Passages in the held-out sample, and timed passes over them per build (the best counts).
SAMPLE_SIZE = 200
REPEATS = 2
#: Names a kind and skips the measurement (e.g. in CI): fp32, int8, int8-r7; "auto" measures.
ENV_KIND = "QFLUME_MODEL_KIND"
#: Standard-library modules whose docstrings make the sample: prose-rich, in every CPython >= 3.10.
STDLIB_FILES = (
    "base64.py", "configparser.py", "contextlib.py", "difflib.py", "email/message.py",
    "fractions.py", "ftplib.py", "functools.py", "heapq.py", "imaplib.py", "ipaddress.py",
    "queue.py", "random.py", "shutil.py", "smtplib.py", "statistics.py", "tempfile.py",
    "textwrap.py", "threading.py", "urllib/parse.py", "uuid.py",
)  # fmt: skip
#: The CPU features an int8-vs-fp32 decision depends on (the kernels ONNX Runtime dispatches to).
_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "asimddp")
_LOCK = threading.Lock()


def cpu_key() -> str:
    """This CPU as the decision is keyed: model name, architecture and the int8-relevant flags."""
    f = _core.cpu_features()
    arch = "x86_64" if f["x86_64"] else "aarch64" if f["aarch64"] else platform.machine()
    flags = " ".join(k for k in _FLAGS if f[k]) or "no SIMD flags"
    return f"{builder.cpu_model()} [{arch}: {flags}]"


def forced_kind() -> str | None:
    """The kind ``$QFLUME_MODEL_KIND`` names, None when unset or ``auto``."""
    value = os.environ.get(ENV_KIND, "").strip()
    if value in ("", "auto"):
        return None
    if value not in builder.KINDS:
        raise ModelError(
            f"{ENV_KIND}={value!r} is not a model kind: expected auto, {', '.join(builder.KINDS)}"
        )
    return value


def choice_file(src: str | os.PathLike[str]) -> Path:
    """Where the decisions for the source ``src`` live (one entry per CPU)."""
    return builder.cache_dir() / f"{builder.source_fingerprint(src)}-choice.json"


def recorded(src: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every CPU's recorded decision for ``src``, keyed by :func:`cpu_key`; {} if none (or if
    the file is unreadable: then the next use decides again)."""
    try:
        data = json.loads(choice_file(src).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    cpus = data.get("cpus") if isinstance(data, dict) else None
    if not isinstance(cpus, dict):
        return {}
    return {k: v for k, v in cpus.items()
            if isinstance(v, dict) and v.get("kind") in builder.KINDS}  # fmt: skip


def chosen_kind(src: str | os.PathLike[str], *, quiet: bool = False) -> str:
    """The kind to build for ``src`` on this CPU: ``$QFLUME_MODEL_KIND`` if set, else the
    recorded decision, else measured now (:func:`choose`) and recorded."""
    forced = forced_kind()
    if forced is not None:
        return forced
    with _LOCK:  # two threads of one process measure once
        decision = recorded(src).get(cpu_key())
        if decision is None:
            decision = choose(src, quiet=quiet)
    return str(decision["kind"])


# --------------------------------------------------------------------------- the sample

_DOCS: list[tuple[str, str]] | None = None


def _stdlib_docs() -> list[tuple[str, str]]:
    """(file, its docstrings joined by blank lines) of :data:`STDLIB_FILES` (parsed once)."""
    global _DOCS
    if _DOCS is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        docs = []
        for name in STDLIB_FILES:
            try:
                tree = ast.parse((root / name).read_bytes())
            except (OSError, SyntaxError, ValueError):
                continue  # an unusual install without this source: the others make the sample
            kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            found = [d for node in ast.walk(tree)
                     if isinstance(node, kinds) and (d := ast.get_docstring(node))]  # fmt: skip
            if found:
                docs.append((name, "\n\n".join(found)))
        _DOCS = docs
    return _DOCS


def sample_texts(
    tokenizer: str | os.PathLike[str], size: int | None = None
) -> tuple[list[str], dict[str, Any]]:
    """The held-out sample: up to ``size`` (default :data:`SAMPLE_SIZE`) distinct chunks of the standard library's docstrings,
    cut by ``tokenizer`` as ``qflume ingest`` cuts (its default chunk size), picked by hash (the
    same chunks on every run of one Python version). Returns (texts, a description)."""
    from qflume.chunk import Chunker
    from qflume.pipeline import DEFAULT_CHUNK_TOKENS

    docs = _stdlib_docs()
    chunker = Chunker(max_tokens=DEFAULT_CHUNK_TOKENS, tokenizer=tokenizer)
    chunks = {text[a:b] for _, text in docs for a, b in chunker.chunk(text)}
    size = SAMPLE_SIZE if size is None else size
    texts = sorted(chunks, key=lambda t: hashlib.sha256(t.encode()).digest())[:size]
    about = {
        "texts": len(texts),
        "from": f"docstrings of {len(docs)} standard-library modules, Python "
        f"{platform.python_version()}",
        "chunk_tokens": DEFAULT_CHUNK_TOKENS,
        "mean_chars": round(sum(map(len, texts)) / max(1, len(texts)), 1),
        "sha256": hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16],
    }
    return texts, about


# --------------------------------------------------------------------------- measuring


def measure(
    fp32: str | os.PathLike[str],
    int8: str | os.PathLike[str],
    texts: Sequence[str],
    *,
    repeats: int = REPEATS,
) -> dict[str, Any]:
    """Embed ``texts`` with both model folders as :class:`qflume.Embedder` runs them (every
    usable core): the cosine of each int8 vector to its fp32 one (mean, min), and each build's
    chunks/s, best of ``repeats`` passes, the builds taking turns."""
    import numpy as np

    from qflume.embed import Embedder

    if not texts:
        raise ModelError("no texts to measure on")
    if repeats < 1:
        raise ModelError(f"repeats must be >= 1, got {repeats}")
    models = {"fp32": Embedder(fp32), "int8": Embedder(int8)}
    try:
        for emb in models.values():
            emb.embed(list(texts[:8]))  # warm up: threads, first allocations
        best = {k: float("inf") for k in models}
        vectors: dict[str, Any] = {}
        for _ in range(repeats):
            for name, emb in models.items():
                t0 = time.perf_counter()
                vecs = emb.embed(texts)
                best[name] = min(best[name], time.perf_counter() - t0)
                vectors.setdefault(name, vecs)
    finally:
        for emb in models.values():
            emb.close()
    a, b = vectors["int8"], vectors["fp32"]
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {
        "cosine": {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)},
        "chunks_per_s": {k: round(len(texts) / max(v, 1e-9), 1) for k, v in best.items()},
    }


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"qflume: {text}", file=sys.stderr, flush=True)


def choose(
    src: str | os.PathLike[str],
    *,
    texts: Sequence[str] | None = None,
    repeats: int = REPEATS,
    bar: tuple[float, float] = FIDELITY_BAR,
    save: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    """Measure this CPU's int8 candidate against fp32 for the weights folder ``src`` (building
    both into the cache), decide, record the decision (unless ``save`` is False) and return it.

    ``texts``: the sample (default :func:`sample_texts`); ``bar``: (mean, min) cosine to fp32.
    The int8 build is chosen when it meets the bar and is faster; else fp32, with the reason.
    """
    source = Path(src).resolve()
    candidate = builder.int8_kind()
    key = cpu_key()
    t0 = time.perf_counter()
    fp32 = builder.build(source, int8="fp32", quiet=quiet)  # checks the source folder first
    if texts is None:
        texts, about = sample_texts(fp32 / "tokenizer.json")
    else:
        texts = list(texts)
        about = {"texts": len(texts), "from": "given by the caller",
                 "sha256": hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]}  # fmt: skip
    record: dict[str, Any] = {
        "cpu": key,
        "int8_path": builder.int8_path(),
        "candidate": candidate,
        "bar": {"mean": bar[0], "min": bar[1]},
        "sample": about,
        "repeats": repeats,
        "threads": _cores(),
        "onnxruntime": _ort_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if texts:
        _say(quiet, f"measuring {candidate} vs fp32 on this CPU ({key}), {len(texts)} held-out "
             f"passages, once per CPU for this model ({ENV_KIND}=fp32|{candidate} skips it) ...")  # fmt: skip
    if not texts:
        record.update(kind="fp32", reason="no sample text to measure on (the Python standard "
                      "library's sources are not installed): fp32 without measuring")  # fmt: skip
    else:
        try:
            int8 = builder.build(source, int8=candidate, quiet=quiet)
            figures = measure(fp32, int8, texts, repeats=repeats)
        except ModelError as e:
            record.update(kind="fp32", reason=f"measuring {candidate} failed, fp32 is used: {e}")
        else:
            cos, speed = figures["cosine"], figures["chunks_per_s"]
            speedup = speed["int8"] / max(speed["fp32"], 1e-9)
            record.update(
                cosine=cos,
                chunks_per_s={"fp32": speed["fp32"], candidate: speed["int8"]},
                speedup=round(speedup, 3),
            )
            figures_text = (
                f"cosine to fp32 mean {cos['mean']:.4f} / min {cos['min']:.4f} (bar {bar[0]} / "
                f"{bar[1]}), {speed['int8']:.1f} vs {speed['fp32']:.1f} chunks/s ({speedup:.2f}x)"
            )
            if cos["mean"] < bar[0] or cos["min"] < bar[1]:
                reason = f"{candidate} misses the fidelity bar: {figures_text}"
                record.update(kind="fp32", reason=reason)
            elif speedup <= 1.0:
                record.update(kind="fp32", reason=f"{candidate} is not faster: {figures_text}")
            else:
                reason = f"{candidate} meets the fidelity bar and is faster: {figures_text}"
                record.update(kind=candidate, reason=reason)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    if save:
        _save(source, key, record)
    _say(quiet, f"default build on this CPU: {record['kind']} ({record['reason']}; "
         f"{record['seconds']} s)")  # fmt: skip
    return record


def _save(source: Path, key: str, record: dict[str, Any]) -> None:
    """Add this CPU's record to the choice file (others' records kept), written atomically."""
    path = choice_file(source)
    cpus = recorded(source)
    cpus[key] = record
    body = {"source": str(source), "fingerprint": builder.source_fingerprint(source), "cpus": cpus}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache: the decision holds for this process only
        tmp.unlink(missing_ok=True)
        print(f"qflume: cannot record the model choice in {path}: {e}", file=sys.stderr)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
