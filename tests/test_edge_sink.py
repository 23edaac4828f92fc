"""EdgeSink: a Qdrant Edge shard at STORE/<collection> behind the Sink contract."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from qflume import InvalidInputError, ShapeError, SinkError
from qflume.sinks import (
    CollectionSpec,
    EdgeSink,
    PointBatch,
    QueryRequest,
    SparseBatch,
)
from qflume.sinks.edge import ids_to_strings

DIM = 16


def _ids(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 16), dtype=np.uint8)


def _dense(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 1).standard_normal((n, DIM)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _payloads(n: int) -> list[dict[str, object]]:
    return [
        {"page_content": f"chunk {i}", "metadata": {"source": f"doc{i % 4}.md", "chunk_index": i}}
        for i in range(n)
    ]


def _sparse(n: int) -> SparseBatch:
    # point i: indices [i, 1000], values [1.0, 0.25]
    return SparseBatch(
        indptr=np.arange(0, 2 * n + 1, 2, dtype=np.int64),
        indices=np.stack([np.arange(n), np.full(n, 1000)], axis=1).reshape(-1).astype(np.uint32),
        values=np.tile(np.array([1.0, 0.25], dtype=np.float32), n),
    )


def test_ids_to_strings_matches_uuid() -> None:
    ids = _ids(5)
    assert ids_to_strings(ids) == [str(uuid.UUID(bytes=r.tobytes())) for r in ids]
    assert ids_to_strings([str(uuid.UUID(int=1)).upper()]) == [str(uuid.UUID(int=1))]
    with pytest.raises(InvalidInputError, match=r"ids\[1\]"):
        ids_to_strings([str(uuid.UUID(int=1)), "nope"])
    with pytest.raises(ShapeError, match=r"\(n, 16\)"):
        ids_to_strings(np.zeros((2, 8), dtype=np.uint8))


def test_upsert_count_retrieve_and_reopen(tmp_path: Path) -> None:
    ids, dense, payloads = _ids(50), _dense(50), _payloads(50)
    with EdgeSink(tmp_path, "docs") as sink:
        assert sink.count() == 0
        sink.ensure_collection(CollectionSpec(dim=DIM))
        sink.upsert(ids, dense, payloads)
        sink.upsert(ids[:5], dense[:5], payloads[:5])  # idempotent
        assert sink.count() == 50
    assert (tmp_path / "docs" / "qflume_collection.json").exists()
    with EdgeSink(tmp_path, "docs") as sink:
        assert sink.spec == CollectionSpec(dim=DIM)
        assert sink.count() == 50
        got = {r.id: r for r in sink.retrieve(ids[:10], with_vectors=True)}
        names = ids_to_strings(ids[:10])
        assert set(got) == set(names)
        for i, name in enumerate(names):
            assert got[name].payload == payloads[i]
            assert got[name].vector is not None and got[name].vector.dtype == np.float32
            np.testing.assert_allclose(got[name].vector, _unit(dense[i]), rtol=1e-5, atol=1e-6)
        assert sink.retrieve(_ids(1, seed=9)) == []
        (no_vec,) = sink.retrieve(ids[:1])
        assert no_vec.vector is None


def test_wrong_size_is_a_shape_error_naming_both(tmp_path: Path) -> None:
    with EdgeSink(tmp_path, "docs", spec=CollectionSpec(dim=DIM)) as sink:
        with pytest.raises(ShapeError, match=r"size 8.*size 16|size 16.*size 8"):
            sink.upsert(_ids(2), np.zeros((2, 8), dtype=np.float32), _payloads(2))
        with pytest.raises(ShapeError, match="2 payloads for 3 ids"):
            sink.upsert(_ids(3), _dense(3), _payloads(2))
    with pytest.raises(ShapeError, match=r"size 16.*size 384"):
        EdgeSink(tmp_path, "docs", spec=CollectionSpec(dim=384))
    with EdgeSink(tmp_path, "docs") as sink:
        with pytest.raises(ShapeError, match="distance Cosine"):
            sink.ensure_collection(CollectionSpec(dim=DIM, distance="Dot"))
        sink.ensure_collection(CollectionSpec(dim=DIM))  # fits: nothing happens


def test_operations_before_the_collection_exists(tmp_path: Path) -> None:
    sink = EdgeSink(tmp_path, "later")
    assert sink.count() == 0
    assert list(sink.scroll()) == []
    with pytest.raises(SinkError, match="ensure_collection"):
        sink.upsert(_ids(1), _dense(1), _payloads(1))
    with pytest.raises(InvalidInputError, match="distance"):
        sink.ensure_collection(CollectionSpec(dim=4, distance="Hamming"))
    sink.close()
    with pytest.raises(SinkError, match="closed"):
        sink.count()
    with pytest.raises(InvalidInputError, match="collection name"):
        EdgeSink(tmp_path, "../x")


def test_delete_and_delete_by_source(tmp_path: Path) -> None:
    ids = _ids(40)
    with EdgeSink(tmp_path, "docs", spec=CollectionSpec(dim=DIM)) as sink:
        sink.upsert(ids, _dense(40), _payloads(40))
        sink.delete(ids[:3])
        sink.delete(_ids(2, seed=5))  # unknown ids are ignored
        assert sink.count() == 37
        sink.delete_by_source(["doc1.md", "doc3.md", "absent.md"])
        left = {r.payload["metadata"]["source"] for r in sink.scroll() if r.payload}
        assert left == {"doc0.md", "doc2.md"}
        assert sink.count() == 37 - 20 + 1  # ids 1 (doc1.md) was already gone
        assert (
            sink.count({"must": [{"key": "metadata.source", "match": {"value": "doc2.md"}}]}) == 9
        )


def test_set_payload_merges(tmp_path: Path) -> None:
    ids = _ids(4)
    with EdgeSink(tmp_path, "docs", spec=CollectionSpec(dim=DIM)) as sink:
        sink.upsert(ids, _dense(4), _payloads(4))
        sink.set_payload({"tag": "new", "chunk_index": 99}, ids[:2], key="metadata")
        sink.set_payload({"extra": [1, 2]}, ids[3:])
        got = {r.id: r.payload for r in sink.retrieve(ids)}
        names = ids_to_strings(ids)
        assert got[names[0]] == {
            "page_content": "chunk 0",
            "metadata": {"source": "doc0.md", "chunk_index": 99, "tag": "new"},
        }
        assert got[names[2]] == _payloads(3)[2]
        assert got[names[3]] == {**_payloads(4)[3], "extra": [1, 2]}


def test_scroll_yields_every_point_once(tmp_path: Path) -> None:
    ids = _ids(23)
    with EdgeSink(tmp_path, "docs", spec=CollectionSpec(dim=DIM)) as sink:
        sink.upsert(ids, _dense(23), _payloads(23))
        seen = [r.id for r in sink.scroll(batch=5, with_vectors=True)]
        assert sorted(seen) == sorted(ids_to_strings(ids))
        bare = list(sink.scroll(with_payload=False, batch=100))
        assert len(bare) == 23 and all(r.payload is None and r.vector is None for r in bare)


def test_upsert_batch_columnar_payloads_and_sparse(tmp_path: Path) -> None:
    n = 12
    ids = _ids(n)
    batch = PointBatch(
        ids=ids,
        dense=_dense(n),
        sparse={"bm25": _sparse(n)},
        texts=[f"text {i}" for i in range(n)],
        doc_index=np.arange(n, dtype=np.int64) // 4,
        doc_metadata=[{"source": f"d{j}.md", "lang": "en", "tags": ["a", j]} for j in range(3)],
        chunk_index=np.arange(n, dtype=np.int64) % 4,
        start=np.arange(n, dtype=np.int64) * 10,
        end=np.arange(n, dtype=np.int64) * 10 + 9,
        chunk_hash=_ids(n, seed=3),
    )
    spec = CollectionSpec(dim=DIM, sparse=("bm25",))
    with EdgeSink(tmp_path, "docs", spec=spec) as sink:
        sink.upsert_batch(batch)
        assert sink.count() == n
        got = {r.id: r for r in sink.retrieve(ids, with_vectors=True)}
        for i, name in enumerate(ids_to_strings(ids)):
            assert got[name].payload == batch.payload(i)
            assert got[name].sparse == {"bm25": ([i, 1000], [1.0, 0.25])}
        with pytest.raises(ShapeError, match="splade"):
            sink.upsert(ids[:1], _dense(1), _payloads(1), sparse={"splade": _sparse(1)})


def test_ensure_collection_adds_a_sparse_vector(tmp_path: Path) -> None:
    with EdgeSink(tmp_path, "docs", spec=CollectionSpec(dim=DIM)) as sink:
        sink.upsert(_ids(3), _dense(3), _payloads(3))
    with EdgeSink(tmp_path, "docs", spec=CollectionSpec(dim=DIM, sparse=("bm25",))) as sink:
        sink.upsert(_ids(3), _dense(3), _payloads(3), sparse={"bm25": _sparse(3)})
        assert sink.count() == 3
    spec = json.loads((tmp_path / "docs" / "qflume_collection.json").read_text())
    assert spec["sparse"] == ["bm25"]


def test_query_batch_dense_sparse_hybrid_filter(tmp_path: Path) -> None:
    n = 40
    ids, dense = _ids(n), _dense(n)
    names = ids_to_strings(ids)
    with EdgeSink(tmp_path, "docs", spec=CollectionSpec(dim=DIM, sparse=("bm25",))) as sink:
        sink.upsert(ids, dense, _payloads(n), sparse={"bm25": _sparse(n)})
        only_doc2 = {"must": [{"key": "metadata.source", "match": {"value": "doc2.md"}}]}
        res = sink.query_batch(
            [
                QueryRequest(dense=dense[5], limit=3),
                QueryRequest(
                    sparse=("bm25", np.array([7], np.uint32), np.array([1.0], np.float32)),
                    limit=5,
                ),
                QueryRequest(
                    dense=dense[5],
                    sparse=("bm25", np.array([6], np.uint32), np.array([1.0], np.float32)),
                    limit=4,
                    filter=only_doc2,
                ),
                QueryRequest(dense=dense[0], limit=2, with_vectors=True, with_payload=False),
            ]
        )
        assert len(res) == 4
        assert res[0][0].id == names[5] and res[0][0].score == pytest.approx(1.0, abs=1e-5)
        assert len(res[0]) == 3 and res[0][0].payload == _payloads(n)[5]
        assert [h.id for h in res[1]] == [names[7]]
        assert res[2] and all(h.payload["metadata"]["source"] == "doc2.md" for h in res[2])  # type: ignore[index]
        assert names[6] in [h.id for h in res[2]]
        assert res[3][0].payload is None and res[3][0].vector is not None
        assert res[3][0].vector.shape == (DIM,)
        with pytest.raises(ShapeError, match="size 3"):
            sink.query_batch([QueryRequest(dense=np.zeros(3, np.float32))])
        with pytest.raises(InvalidInputError, match="dense vector, a sparse vector"):
            sink.query_batch([QueryRequest()])
        with pytest.raises(InvalidInputError, match="unknown condition"):
            sink.query_batch([QueryRequest(dense=dense[0], filter={"must": [{"bogus": 1}]})])


def test_flush_optimizes_after_big_loads(tmp_path: Path) -> None:
    with EdgeSink(tmp_path, "docs", spec=CollectionSpec(dim=DIM), optimize_threshold=10) as sink:
        sink.upsert(_ids(30), _dense(30), _payloads(30))
        sink.flush()
        assert sink._written == 0  # the optimizer ran
        assert sink.count() == 30
        sink.optimize()
        assert sink.count() == 30
