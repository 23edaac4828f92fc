"""The Sink contract, from both sides: scroll and count with a filter, collection info and spec,
implemented alike by EdgeSink and GrpcSink (the test server, and a real one when QDRANT_URL is
set); the modules that use sinks read nothing private of them; the state's SQL lives in state.py."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import qflume
from qflume import ids as qids
from qflume import metrics, ops
from qflume.search import qdrant_filter
from qflume.sinks import CollectionSpec, EdgeSink, GrpcSink, Sink, SparseBatch
from qflume.sinks.base import CollectionInfo
from qflume.state import DocUpdate, State
from qflume.testing import QdrantGrpcServer
from realserver import NO_SERVER, drop_collection

DIM = 4
N = 10
SPEC = CollectionSpec(dim=DIM, sparse=("bm25",), idf_sparse=("bm25",))


@pytest.fixture(scope="module")
def server() -> Iterator[QdrantGrpcServer]:
    with QdrantGrpcServer() as srv:
        yield srv


@pytest.fixture(params=["edge", "grpc", "real"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sink]:
    name = f"contract_{uuid.uuid4().hex[:8]}"
    if request.param == "edge":
        s: Sink = EdgeSink(tmp_path / "store", name)
    elif request.param == "grpc":
        s = GrpcSink(request.getfixturevalue("server").url, name, retries=1)
    else:
        url = os.environ.get("QDRANT_URL")
        if not url:
            pytest.skip(NO_SERVER)
        s = GrpcSink(url, name, retries=1)
        request.addfinalizer(lambda: drop_collection(url, name))
    with s:
        yield s


def _fill(sink: Sink) -> np.ndarray:
    ids = np.random.default_rng(2).integers(0, 256, (N, 16), dtype=np.uint8)
    dense = np.random.default_rng(3).standard_normal((N, DIM)).astype(np.float32)
    payloads = [{"page_content": f"t{i}", "metadata": {"source": f"s{i % 2}", "n": i}} for i in range(N)]  # fmt: skip
    sparse = SparseBatch(
        np.arange(N + 1, dtype=np.int64), np.arange(N, dtype=np.uint32), np.ones(N, np.float32)
    )
    sink.ensure_collection(SPEC)
    sink.upsert(ids, dense, payloads, sparse={"bm25": sparse})
    sink.flush()
    return ids


def test_before_the_collection_exists(sink: Sink) -> None:
    assert sink.info() is None and sink.collection_spec() is None
    assert metrics.collection_info(sink) == {"exists": False}
    flt = {"must": [{"key": "metadata.n", "range": {"gte": 1}}]}
    assert sink.count() == sink.count(filter=flt) == 0
    assert list(sink.scroll()) == list(sink.scroll(filter=flt)) == []


def test_info_spec_count_and_scroll_with_a_filter(sink: Sink) -> None:
    ids = _fill(sink)
    info = sink.info()
    assert isinstance(info, CollectionInfo)
    assert info.points == N and info.segments >= 1 and info.status == "green"
    assert info.spec == sink.collection_spec() == SPEC
    if isinstance(sink, EdgeSink):
        assert info.disk_bytes is not None and info.disk_bytes > 0
    else:
        assert info.disk_bytes is None and info.optimizer == "ok" and info.warnings == ()
    assert metrics.collection_info(sink) == info.as_dict()
    d = info.as_dict()
    assert d["exists"] and d["vector_size"] == DIM and d["sparse_vectors"] == ["bm25"]

    flt = {"must": [{"key": "metadata.source", "match": {"value": "s1"}}]}
    assert sink.count(filter=flt) == N // 2
    got = list(sink.scroll(filter=flt, batch=2))
    assert sorted(r.payload["metadata"]["n"] for r in got) == [1, 3, 5, 7, 9]  # type: ignore[index]
    bare = list(sink.scroll(filter=qdrant_filter({"source": "s0"}), with_payload=False))
    assert len(bare) == N // 2 and all(r.payload is None for r in bare)
    everything = list(sink.scroll(with_vectors=True, batch=3))
    assert {r.id for r in everything} == set(qids.id_strings(ids))
    assert all(r.vector is not None and r.vector.shape == (DIM,) for r in everything)


def test_ops_delete_by_filter_goes_through_the_contract(sink: Sink) -> None:
    _fill(sink)
    (r,) = ops.delete(sink, filter={"metadata": {"n": [0, 1, 2]}})
    assert r == {"kind": "filter", "index": 0, "ok": True, "deleted": 3}
    assert sink.count() == N - 3


def _private_reads(module: object) -> list[str]:
    """Attribute reads ``x._name`` of objects other than self/cls (what the review's
    ``grep -n '\\._[a-z]'`` looks for, minus module imports)."""
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):  # fmt: skip
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"line {node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize("name", ["qflume.ops", "qflume.metrics", "qflume.search"])
def test_no_module_reads_a_sinks_private_names(name: str) -> None:
    assert _private_reads(importlib.import_module(name)) == []


def test_the_state_forgets_deleted_points_with_their_offsets_and_digests(tmp_path: Path) -> None:
    hashes = [qflume.content_hash(f"c{i}") for i in range(4)]
    offsets = np.array([[i, 10 * i, 10 * i + 9] for i in range(4)], np.int64)
    digests = [bytes([i]) * 8 for i in range(4)]
    with State(tmp_path / "state.db") as st:
        st.commit(
            [
                DocUpdate(
                    key="a.md",
                    root="r",
                    content_hash=b"h" * 16,
                    size=1,
                    mtime_ns=1,
                    meta_json="{}",
                    fingerprint="fp",
                    chunks=b"".join(hashes),
                    offsets=offsets.tobytes(),
                    chunk_meta=b"".join(digests),
                )
            ]
        )
        assert st.forget_points({"a.md": [hashes[1], hashes[3]], "missing.md": [hashes[0]]}) == 1
        doc = st.get("a.md")
        assert doc is not None
        assert doc.chunks == hashes[0] + hashes[2]
        assert np.array_equal(doc.chunk_offsets(), offsets[[0, 2]])
        assert doc.chunk_meta == digests[0] + digests[2]  # kept in step with the chunks
        assert st.forget_points({"a.md": [hashes[1]]}) == 0  # gone already: nothing to do
