"""Batch search: every query embedded in one model call and sent as one query-batch request."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from qflume import metrics
from qflume import payload as layout
from qflume._validate import printable, text_problem
from qflume.exceptions import InvalidInputError, InvalidTypeError
from qflume.filters import normalize as normalize_filter
from qflume.sinks.base import FUSIONS, QueryRequest, ScoredPoint

if TYPE_CHECKING:
    from qflume.collection import Collection

MODES = ("dense", "sparse", "hybrid")
# Hybrid: how the dense and the sparse candidate lists are merged on the server, and how many
# candidates each branch contributes (at least HYBRID_PREFETCH, else 4 * limit). DBSF ranks a
# chunk that is first by a wide margin in one branch above one that is second in both; RRF only
# sees ranks, so a swap of ranks 1 and 2 between the branches is an exact tie. Measured on the
# Python docs (tests/test_search_quality.py): DBSF finds the source chunk of a verbatim sentence
# 1-8 points more often than RRF, depending on the chunk size, and never ties.
HYBRID_FUSION = "dbsf"
HYBRID_PREFETCH = 40


@dataclass(frozen=True)
class Hit:
    """One search hit: the chunk, where it came from, and its score."""

    id: str
    score: float
    page_content: str
    source: str | None
    start: int | None
    end: int | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Its fields by name (id, score, page_content, source, start, end, metadata)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def qdrant_filter(flt: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """qflume's short filter form or a Qdrant filter, validated and normalised
    (`qflume.filters.normalize`); None for no filter.

    Short form: {"source": "a.md" | [...], "source_prefix": "library/", "metadata": {"lang": "en"}}.
    """
    return normalize_filter(flt, short=True)


def _hit(p: ScoredPoint) -> Hit:
    meta = layout.metadata_of(p.payload)
    start, end = meta.get(layout.START), meta.get(layout.END)
    return Hit(
        id=str(p.id),
        score=float(p.score),
        page_content=layout.text_of(p.payload) or "",
        source=layout.source_of(p.payload),
        start=start if isinstance(start, int) else None,
        end=end if isinstance(end, int) else None,
        metadata=meta,
    )


def search(
    target: Collection,
    queries: Sequence[str],
    *,
    limit: int = 10,
    filter: Mapping[str, Any] | None = None,
    mode: str = "dense",
    fusion: str = HYBRID_FUSION,
) -> list[list[Hit]]:
    """Search `target` (a Pipeline) for every query at once; one list of hits per query.

    Sparse queries use the collection's sparse vector, BM25 or SPLADE, encoded as the
    collection's points were (``target.query_sparse``). mode="hybrid" fuses a dense and a sparse
    prefetch on the server with `fusion`: "dbsf"
    (distribution-based score fusion, the default) or "rrf" (reciprocal rank fusion).
    """
    from qflume.collection import Collection

    if not isinstance(target, Collection):
        raise InvalidTypeError(
            f"search() takes a Collection (a Pipeline), not {type(target).__name__}"
        )
    if isinstance(queries, str):
        raise InvalidInputError("search() takes a list of queries")
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {MODES}, not {mode!r}")
    if limit < 1:
        raise InvalidInputError(f"limit must be >= 1, got {limit}")
    if fusion not in FUSIONS:
        raise InvalidInputError(f"fusion must be one of {FUSIONS}, not {fusion!r}")
    for i, q in enumerate(queries):
        if not isinstance(q, str) or not q.strip():
            raise InvalidInputError(f"query #{i} is empty or not a string")
        bad = text_problem(q, f"query #{i} '{printable(q)}'")
        if bad:
            raise InvalidInputError(bad)
    if not queries:
        return []
    t0 = time.perf_counter()
    qf = qdrant_filter(filter)
    sparse_name, sparse = "", None
    if mode in ("sparse", "hybrid"):  # first: a collection without sparse vectors fails at once
        sparse_name, sparse = target.query_sparse(list(queries))
    dense = target.embedder.embed(list(queries)) if mode in ("dense", "hybrid") else None
    requests = []
    for i in range(len(queries)):
        sp = None
        if sparse is not None:
            lo, hi = int(sparse.indptr[i]), int(sparse.indptr[i + 1])
            sp = (sparse_name, sparse.indices[lo:hi], sparse.values[lo:hi])
        requests.append(
            QueryRequest(
                dense=None if dense is None else np.ascontiguousarray(dense[i]),
                sparse=sp,
                limit=limit,
                filter=qf,
                prefetch_limit=max(4 * limit, HYBRID_PREFETCH) if mode == "hybrid" else None,
                fusion=fusion,
            )
        )
    try:
        results = target.sink.query_batch(requests)
    except Exception:
        metrics.observe(
            "search", time.perf_counter() - t0, items=len(queries), error=True, mode=mode
        )
        raise
    metrics.observe("search", time.perf_counter() - t0, items=len(queries), mode=mode)
    return [[_hit(p) for p in hits] for hits in results]
