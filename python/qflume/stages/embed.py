"""The embed stage: a batch's dense vectors (the embedding cache first, the model for the misses)
and its sparse vectors."""

from __future__ import annotations

from typing import Any

import numpy as np

from qflume.report import IngestReport
from qflume.stages.batch import Batch

__all__ = ["embed_batch"]


def embed_batch(
    batch: Batch,
    embedder: Any,
    report: IngestReport,
    *,
    cache: Any = None,
    sparse: tuple[str, Any] | None = None,
) -> None:
    """Fill ``batch.dense`` (``cache`` hits, then ``embedder`` for the misses, which are put in
    the cache) and ``batch.sparse`` (``sparse``: the vector's name and its encoder)."""
    n = len(batch.texts)
    if n == 0:
        return
    dense = np.empty((n, embedder.dim), np.float32)
    found = np.zeros(n, bool)
    if cache is not None:
        hit, vectors = cache.get_many(embedder.model_id, batch.hashes)
        found = np.asarray(hit, bool)
        if found.any():
            dense[found] = np.asarray(vectors, np.float32)[found]
    miss = np.flatnonzero(~found)
    report.cache_hits += n - len(miss)
    if len(miss):
        # Tokens the model saw, counted by the Embedder itself (per thread: exact when it is
        # shared); an embedder without the counter leaves tokens_embedded at 0.
        before = int(getattr(embedder, "tokens_embedded", 0))
        new = embedder.embed([batch.texts[i] for i in miss])
        report.tokens_embedded += int(getattr(embedder, "tokens_embedded", 0)) - before
        dense[miss] = new
        if cache is not None:
            cache.put_many(embedder.model_id, batch.hashes[miss], new)
        report.chunks_embedded += len(miss)
    batch.dense = dense
    if sparse is not None:
        name, encoder = sparse
        batch.sparse = {name: encoder.embed(batch.texts)}
