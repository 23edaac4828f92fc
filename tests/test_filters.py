"""One filter path: a bad filter fails the same way on the embedded store and on a server (an
InvalidInputError naming the bad part, before any request), whatever read takes it (count,
scroll, search) and through qflume.ops; a good one selects the same points on both."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qflume import filters, ops
from qflume.exceptions import InvalidInputError
from qflume.search import qdrant_filter
from qflume.sinks import CollectionSpec, EdgeSink, GrpcSink, QueryRequest, Sink
from qflume.testing import QdrantGrpcServer
from realserver import NO_SERVER, drop_collection

DIM = 4
N = 12
SPEC = CollectionSpec(dim=DIM)


def _points() -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    ids = np.random.default_rng(5).integers(0, 256, (N, 16), dtype=np.uint8)
    dense = np.random.default_rng(6).standard_normal((N, DIM)).astype(np.float32)
    payloads = [
        {"page_content": f"text {i}", "metadata": {"source": f"d{i % 3}.md", "n": i}}
        for i in range(N)
    ]
    return ids, dense, payloads


def _fill(sink: Sink) -> None:
    sink.ensure_collection(SPEC)
    sink.upsert(*_points())
    sink.flush()


@pytest.fixture(scope="module")
def server() -> Iterator[QdrantGrpcServer]:
    with QdrantGrpcServer() as srv:
        yield srv


@pytest.fixture(params=["edge", "grpc", "real"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sink]:
    if request.param == "edge":
        s: Sink = EdgeSink(tmp_path / "store", "f")
    elif request.param == "grpc":
        s = GrpcSink(request.getfixturevalue("server").url, "f", retries=1)
    else:
        url = os.environ.get("QDRANT_URL")
        if not url:
            pytest.skip(NO_SERVER)
        name = f"filters_{uuid.uuid4().hex[:8]}"
        s = GrpcSink(url, name, retries=1)
        request.addfinalizer(lambda: drop_collection(url, name))
    _fill(s)
    with s:
        yield s


#: bad filter -> the message every sink gives (each names the bad part)
BAD: dict[str, Any] = {
    "filter: unknown keys ['mst']": {"mst": [{"key": "n", "match": {"value": 1}}]},
    "filter.must[0]: match value 1.5 must be a string, an integer or a boolean": {
        "must": [{"key": "metadata.n", "match": {"value": 1.5}}]
    },
    "filter.must[0]: match any mixes types": {
        "must": [{"key": "metadata.n", "match": {"any": [1, "x"]}}]
    },
    "filter.must[0]: condition on 'metadata.n' has unknown fields ['mach']": {
        "must": [{"key": "metadata.n", "mach": {"value": 1}}]
    },
    "filter.must[0]: range bound gt = nan is not a finite number": {
        "must": [{"key": "metadata.n", "range": {"gt": float("nan")}}]
    },
    "filter.should[1]: range bound 'soon' is neither a number nor an RFC 3339 date": {
        "should": [{"has_id": []}, {"key": "metadata.n", "range": {"lt": "soon"}}]
    },
    "filter.must[0]: has_id: 'nope' is neither a UUID nor an unsigned integer": {
        "must": [{"has_id": ["nope"]}]
    },
    "filter.must: must be a list of conditions": {"must": "metadata.n = 1"},
    "filter.must[0]: a condition must be an object": {"must": [7]},
    "filter.must[0]: values_count gte must be a count": {
        "must": [{"key": "metadata.n", "values_count": {"gte": -1}}]
    },
    "filter.must_not[0].nested.must[0]: unknown condition": {
        "must_not": [{"nested": {"key": "metadata.p", "filter": {"must": [{"x": 1}]}}}]
    },
    "filter.min_should: min_count must be an integer >= 0": {
        "min_should": {"conditions": [{"has_id": [1]}], "min_count": "2"}
    },
    "filter.must[0]: is_null must be true or false": {
        "must": [{"key": "metadata.n", "is_null": "yes"}]
    },
    "filter.must[0]: key '\\udc80x' is not valid Unicode text": {
        "must": [{"key": "\udc80x", "match": {"value": 1}}]
    },
    "filter.must[0]: match value 'a\\ud800' is not valid Unicode text": {
        "must": [{"key": "metadata.source", "match": {"any": ["a\ud800"]}}]
    },
    "filter.must[0]: match value 36893488147419103232 does not fit in 64 bits": {
        "must": [{"key": "metadata.n", "match": {"value": 2**65}}]
    },
    "filter.must[0]: values_count gte 1180591620717411303424 does not fit in 64 bits": {
        "must": [{"key": "metadata.n", "values_count": {"gte": 2**70}}]
    },
    "filter.must[0]: geo point {'lon': 200.0, 'lat': 1.0} is off the globe": {
        "must": [{"key": "loc", "geo_radius": {"center": {"lon": 200.0, "lat": 1.0}, "radius": 5}}]
    },
    "filter.must[0]: range mixes dates and numbers: 5": {
        "must": [{"key": "metadata.n", "range": {"gte": "2024-01-01", "lt": 5}}]
    },
    "filters nest deeper than 32 levels": {},  # built below
    "filter: expected a Qdrant filter mapping, got str": "metadata.source = 'a'",
}


def _deep(levels: int) -> dict[str, Any]:
    f: dict[str, Any] = {"must": [{"key": "metadata.n", "match": {"value": 1}}]}
    for _ in range(levels):
        f = {"must": [f]}
    return f


BAD["filters nest deeper than 32 levels"] = _deep(500)


@pytest.mark.parametrize("message", sorted(BAD))
def test_a_bad_filter_fails_the_same_way_on_every_sink(sink: Sink, message: str) -> None:
    flt = BAD[message]
    reads = {
        "count": lambda: sink.count(filter=flt),
        "scroll": lambda: list(sink.scroll(filter=flt)),
        "query": lambda: sink.query_batch(
            [QueryRequest(dense=np.ones(DIM, np.float32), filter=flt)]
        ),
    }
    for name, read in reads.items():
        with pytest.raises(InvalidInputError) as e:
            read()
        assert message in str(e.value), f"{name}: {e.value}"
    # validated once, before any sink: the same message from the one validator
    with pytest.raises(InvalidInputError) as e:
        filters.normalize(flt)
    assert message in str(e.value)
    # and the sink still works
    assert sink.count() == N


def test_a_bad_filter_is_an_invalid_item_in_ops_delete(sink: Sink) -> None:
    for flt in (BAD["filter: unknown keys ['mst']"], {"must": []}, {"must_not": []}):
        (r,) = ops.delete(sink, filter=flt)
        assert not r["ok"] and r["type"] == "invalid", r
    assert sink.count() == N  # nothing deleted: an empty condition list would match everything


GOOD: dict[str, tuple[Any, int]] = {
    "short source": ({"source": "d1.md"}, 4),
    "short list": ({"source": ["d1.md", "d2.md"]}, 8),
    "short metadata": ({"metadata": {"n": [1, 2, 3]}}, 3),
    "range": ({"must": [{"key": "metadata.n", "range": {"gte": 3, "lt": 7}}]}, 4),
    "single condition": ({"must": {"key": "metadata.source", "match": {"value": "d0.md"}}}, 4),
    "must_not": ({"must_not": [{"key": "metadata.n", "range": {"gte": 2}}]}, 2),
    "min_should": (
        {
            "min_should": {
                "conditions": [
                    {"key": "metadata.source", "match": {"value": "d0.md"}},
                    {"key": "metadata.n", "range": {"lt": 4}},
                ],
                "min_count": 2,
            }
        },
        2,
    ),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_a_good_filter_selects_the_same_points_on_every_sink(sink: Sink, name: str) -> None:
    flt, want = GOOD[name]
    canonical = qdrant_filter(flt)
    assert filters.normalize(canonical) == canonical  # normalising is idempotent
    assert sink.count(filter=canonical) == want
    got = list(sink.scroll(filter=canonical, batch=3))
    assert len(got) == want == len({r.id for r in got})
    assert all(r.payload is not None for r in got)


def test_normalize_gives_the_canonical_layout() -> None:
    from qdrant_client import models

    got = filters.normalize(
        {
            "must": {"key": "metadata.when", "range": {"gte": "2024-06-01T10:00:00+02:00"}},
            "should": [
                {"key": "metadata.n", "range": {"lt": 3}},
                {"has_id": [str(uuid.UUID(int=5)).upper(), 7]},
            ],
        }
    )
    assert got == {
        "must": [{"key": "metadata.when", "range": {"gte": "2024-06-01T08:00:00.000000Z"}}],
        "should": [
            {"key": "metadata.n", "range": {"lt": 3.0}},
            {"has_id": [str(uuid.UUID(int=5)), 7]},
        ],
    }
    model = models.Filter(must=[models.FieldCondition(key="a", match=models.MatchValue(value=2))])
    assert filters.normalize(model) == {"must": [{"key": "a", "match": {"value": 2}}]}
    assert filters.normalize(None) is None and filters.normalize({}) is None
    with pytest.raises(InvalidInputError, match="unknown filter field 'colour'"):
        filters.normalize({"colour": "red"}, short=True)
