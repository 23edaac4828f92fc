"""End-to-end ingest: qflume vs its own Embedder alone, vs LangChain index() and LlamaIndex.

Everyone embeds with the same ONNX model file (qflume's default all-MiniLM-L6-v2 build); the peers
get it through the small adapter a user would write (plain ONNX Runtime loop, batches of 32).
LangChain and LlamaIndex write to the in-process Qdrant gRPC test server (Qdrant Edge inside);
qflume writes to its embedded Qdrant Edge store.

    .venv/bin/python -m pytest benches/bench_pipeline.py --benchmark-only -q -s

Everyone chunks at 1000 characters here (qflume's own default is 64 model tokens) so that
chunks/s compare like for like. Corpus: the Python docs (python3.11-doc), the first QFLUME_BENCH_FILES files of library/ with
1-30 KB each (default 60, about 1500 chunks of 1000 chars). Results print as a table at the end.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qflume
from qflume.pipeline import Pipeline

DOCS = Path("/usr/share/doc/python3.11/html/_sources/library")
N_FILES = int(os.environ.get("QFLUME_BENCH_FILES", "60"))
RESULTS: dict[str, dict[str, Any]] = {}

pytestmark = pytest.mark.skipif(
    not DOCS.is_dir(), reason="needs Debian's python3.11-doc (apt-get install python3.11-doc)"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    n = 0
    for f in sorted(DOCS.glob("*.rst.txt")):
        if 1000 <= f.stat().st_size <= 30_000:
            shutil.copy(f, root / f.name)
            n += 1
            if n == N_FILES:
                break
    return root


@pytest.fixture(scope="module")
def embedder() -> Any:
    return qflume.Embedder()


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    yield
    if not RESULTS:
        return
    print("\n\n== bench_pipeline results ==")
    for name, row in RESULTS.items():
        print(f"{name:42s} " + "  ".join(f"{k}={v}" for k, v in row.items()))


class OrtEmbeddings:
    """What a user writes to use an ONNX model from LangChain/LlamaIndex: a plain ORT loop."""

    def __init__(self, model_dir: Path, batch: int = 32) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.enable_truncation(256)
        self.tok.enable_padding()
        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count() or 1
        self.sess = ort.InferenceSession(str(model_dir / "model.onnx"), so)
        self.names = {i.name for i in self.sess.get_inputs()}
        self.batch = batch

    def _embed(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for i in range(0, len(texts), self.batch):
            enc = self.tok.encode_batch(texts[i : i + self.batch])
            ids = np.array([e.ids for e in enc], np.int64)
            mask = np.array([e.attention_mask for e in enc], np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.names:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self.sess.run(None, feed)[0]
            m = mask[..., None].astype(np.float32)
            v = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            out.extend(v.tolist())
        return out

    # LangChain's Embeddings protocol
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)

    def embed_query(self, text: str) -> list[float]:
        return self._embed([text])[0]


def _chunk_texts(corpus: Path) -> list[str]:
    ch = qflume.Chunker(max_chars=1000)
    out = []
    for f in sorted(corpus.iterdir()):
        text = f.read_text(encoding="utf-8")
        out.extend(text[s:e] for s, e in ch.chunk(text))
    return out


def test_embedder_alone(benchmark: Any, corpus: Path, embedder: Any) -> None:
    texts = _chunk_texts(corpus)
    embedder.embed(texts[:64])  # warm up
    t0 = time.perf_counter()
    benchmark.pedantic(embedder.embed, args=(texts,), rounds=1, iterations=1)
    dt = time.perf_counter() - t0
    RESULTS["qflume Embedder alone"] = {
        "chunks": len(texts),
        "chunks_per_s": round(len(texts) / dt, 1),
    }


def test_qflume_first_rerun_edit(
    benchmark: Any, corpus: Path, embedder: Any, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    with Pipeline("bench", store=store, embedder=embedder, chunk_chars=1000, progress=False) as p:
        t0 = time.perf_counter()
        r1 = benchmark.pedantic(p.ingest, args=(corpus,), rounds=1, iterations=1)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        r2 = p.ingest(corpus)
        rerun = time.perf_counter() - t0
        r3 = _edit_one_paragraph(p, corpus)
    alone = RESULTS.get("qflume Embedder alone", {}).get("chunks_per_s")
    cps = r1.chunks_embedded / first
    RESULTS["qflume ingest, first run"] = {
        "chunks": r1.chunks_embedded,
        "chunks_per_s": round(cps, 1),
        "vs_embedder_alone": round(cps / alone, 3) if alone else "n/a",
        "elapsed_s": round(first, 2),
    }
    RESULTS["qflume ingest, unchanged re-run"] = {
        "elapsed_s": round(rerun, 3),
        "first_run_over_rerun": round(first / rerun, 1),
        "chunks_embedded": r2.chunks_embedded,
        "points_upserted": r2.points_upserted,
    }
    RESULTS["qflume 1000 chars: one paragraph edited"] = {
        "points_upserted": r3.points_upserted,
        "points_deleted": r3.points_deleted,
        "payload_updates": r3.payload_updates,
        "chunks_embedded": r3.chunks_embedded,
    }


def _edit_one_paragraph(p: Pipeline, corpus: Path) -> Any:
    """Append a sentence to one paragraph in the middle of one file, ingest, restore the file."""
    victim = sorted(corpus.iterdir())[len(list(corpus.iterdir())) // 2]
    text = victim.read_text(encoding="utf-8")
    cut = text.index("\n\n", len(text) // 2)
    victim.write_text(text[:cut] + " One more sentence, written for the benchmark." + text[cut:])
    try:
        return p.ingest(corpus)
    finally:
        victim.write_text(text)


def test_qflume_default_chunking_edit(
    benchmark: Any, corpus: Path, embedder: Any, tmp_path: Path
) -> None:
    """The same edit with qflume's default, model-sized chunks (64 tokens)."""
    with Pipeline("bench", store=tmp_path / "store", embedder=embedder, progress=False) as p:
        t0 = time.perf_counter()
        r1 = benchmark.pedantic(p.ingest, args=(corpus,), rounds=1, iterations=1)
        first = time.perf_counter() - t0
        r3 = _edit_one_paragraph(p, corpus)
    RESULTS["qflume default chunks (64 tokens): first run"] = {
        "chunks": r1.chunks_embedded,
        "chunks_per_s": round(r1.chunks_embedded / first, 1),
        "tokens_per_s": round(r1.chunks_embedded * 64 / first),
        "elapsed_s": round(first, 2),
    }
    RESULTS["qflume default chunks: one paragraph edited"] = {
        "points_upserted": r3.points_upserted,
        "points_deleted": r3.points_deleted,
        "payload_updates": r3.payload_updates,
        "chunks_embedded": r3.chunks_embedded,
    }


RSS_SCRIPT = r"""
import json, sys
from qflume.pipeline import Pipeline
with Pipeline("rss", store=sys.argv[1], chunk_chars=1000, progress=False) as p:
    r = p.ingest(sys.argv[2])
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"maxrss_kb": hwm,
                  "upserted": r.points_upserted, "embedded": r.chunks_embedded}))
"""


def test_peak_rss_corpus_vs_10x(benchmark: Any, corpus: Path, tmp_path: Path) -> None:
    big = tmp_path / "x10"
    for i in range(10):
        shutil.copytree(corpus, big / f"copy{i}")

    def run(root: Path, store: Path) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(store), str(root)],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    one = benchmark.pedantic(run, args=(corpus, tmp_path / "s1"), rounds=1, iterations=1)
    ten = run(big, tmp_path / "s10")
    RESULTS["peak RSS, corpus vs corpus x10"] = {
        "x1_MB": round(one["maxrss_kb"] / 1024, 1),
        "x10_MB": round(ten["maxrss_kb"] / 1024, 1),
        "ratio": round(ten["maxrss_kb"] / one["maxrss_kb"], 3),
        "x10_points": ten["upserted"],
        "x10_embedded": ten["embedded"],
    }


# index()'s default SHA-1 key encoder warns; the others give ids Qdrant can't take (not UUIDs).
@pytest.mark.filterwarnings("ignore:Using SHA-1:UserWarning")
def test_langchain_index(benchmark: Any, corpus: Path, embedder: Any) -> None:
    pytest.importorskip("langchain_qdrant")
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.indexing import InMemoryRecordManager, index
    from langchain_qdrant import QdrantVectorStore
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from qdrant_client import models

    from qflume.testing import QdrantGrpcServer

    ort_emb = OrtEmbeddings(Path(embedder.model_path))

    class LcOrt(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return ort_emb.embed_documents(texts)

        def embed_query(self, text: str) -> list[float]:
            return ort_emb.embed_query(text)

    emb = LcOrt()
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=0)
    with QdrantGrpcServer() as server:
        client = server.client()
        client.create_collection(
            "lc",
            vectors_config=models.VectorParams(size=embedder.dim, distance=models.Distance.COSINE),
        )
        store = QdrantVectorStore(client=client, collection_name="lc", embedding=emb)
        rm = InMemoryRecordManager("lc")
        rm.create_schema()

        def load() -> list[Any]:
            docs = [
                Document(page_content=f.read_text(encoding="utf-8"), metadata={"source": f.name})
                for f in sorted(corpus.iterdir())
            ]
            return splitter.split_documents(docs)

        def run() -> dict[str, Any]:
            return index(
                load(),
                rm,
                store,
                cleanup="incremental",
                source_id_key="source",
            )

        t0 = time.perf_counter()
        r1 = benchmark.pedantic(run, rounds=1, iterations=1)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        r2 = run()
        rerun = time.perf_counter() - t0
    RESULTS["LangChain index() + QdrantVectorStore"] = {
        "chunks": r1["num_added"],
        "chunks_per_s": round(r1["num_added"] / first, 1),
        "elapsed_s": round(first, 2),
        "rerun_s": round(rerun, 3),
        "rerun_added": r2["num_added"],
    }


def test_llamaindex_pipeline(benchmark: Any, corpus: Path, embedder: Any) -> None:
    pytest.importorskip("llama_index.vector_stores.qdrant")
    from llama_index.core import Document
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    from qflume.testing import QdrantGrpcServer

    ort_emb = OrtEmbeddings(Path(embedder.model_path))

    class LlamaOrt(BaseEmbedding):
        def _get_text_embedding(self, text: str) -> list[float]:
            return ort_emb._embed([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return ort_emb._embed(texts)

        def _get_query_embedding(self, query: str) -> list[float]:
            return ort_emb._embed([query])[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return ort_emb._embed([query])[0]

    with QdrantGrpcServer() as server:
        client = server.client()
        vs = QdrantVectorStore(client=client, collection_name="li")
        pipe = IngestionPipeline(
            transformations=[
                SentenceSplitter(chunk_size=256, chunk_overlap=0),
                LlamaOrt(embed_batch_size=32),
            ],
            vector_store=vs,
        )
        docs = [
            Document(text=f.read_text(encoding="utf-8"), metadata={"source": f.name}, id_=f.name)
            for f in sorted(corpus.iterdir())
        ]
        t0 = time.perf_counter()
        nodes = benchmark.pedantic(pipe.run, kwargs={"documents": docs}, rounds=1, iterations=1)
        first = time.perf_counter() - t0
    RESULTS["LlamaIndex IngestionPipeline + Qdrant"] = {
        "chunks": len(nodes),
        "chunks_per_s": round(len(nodes) / first, 1),
        "elapsed_s": round(first, 2),
    }


def test_rss_of_this_process(benchmark: Any) -> None:
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    RESULTS["bench process peak RSS"] = {
        "MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    }
