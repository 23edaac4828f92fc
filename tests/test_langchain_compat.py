"""A qflume collection is usable from LangChain's Qdrant store as-is (DESIGN.md's payload contract)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import qflume
from qflume.pipeline import Pipeline
from qflume.testing import QdrantGrpcServer

langchain_qdrant = pytest.importorskip("langchain_qdrant")


def _embeddings(embedder: qflume.Embedder):
    from langchain_core.embeddings import Embeddings

    class QflumeEmbeddings(Embeddings):
        """LangChain's Embeddings interface over qflume's Embedder."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return np.asarray(embedder.embed(texts)).tolist()

        def embed_query(self, text: str) -> list[float]:
            return np.asarray(embedder.embed_query(text)).tolist()

    return QflumeEmbeddings()


def test_langchain_reads_a_qflume_collection(tmp_path: Path, embedder: qflume.Embedder) -> None:
    texts = {
        "tea.md": "Green tea is made from unoxidized leaves and tastes grassy.",
        "rust.md": "Rust's borrow checker prevents data races at compile time.",
        "qdrant.md": "Qdrant stores vectors with payloads and searches them fast.",
    }
    recs = [{"id": k, "text": v, "metadata": {"topic": k.split(".")[0]}} for k, v in texts.items()]
    with QdrantGrpcServer() as server:
        with Pipeline(
            "lc", url=server.url, state_dir=tmp_path, embedder=embedder, progress=False
        ) as p:
            p.ingest_records(recs)
        store = langchain_qdrant.QdrantVectorStore(
            client=server.client(),
            collection_name="lc",
            embedding=_embeddings(embedder),
        )
        docs = store.similarity_search("which language has a borrow checker?", k=1)
    assert docs[0].page_content == texts["rust.md"]
    assert docs[0].metadata["source"] == "rust.md"
    assert docs[0].metadata["topic"] == "rust"
    assert docs[0].metadata["start"] == 0
