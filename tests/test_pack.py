"""The Rust packer: every message decodes with qdrant-client's generated classes to what was packed."""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qdrant_client import grpc as qg

import qflume
from qflume import _core
from qflume.sinks._common import payload_to_py
from qflume.sinks.base import PointBatch

MiB = 1024 * 1024


def make_ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 16), dtype=np.uint8)


def uuid_of(row: np.ndarray) -> str:
    return str(uuid.UUID(bytes=row.tobytes()))


def decode(msgs: list[bytes]) -> list[Any]:
    """All points of a list of UpsertPoints messages, in order."""
    out = []
    for m in msgs:
        out.extend(qg.UpsertPoints.FromString(m).points)
    return out


def dense_of(p: Any) -> np.ndarray:
    which = p.vectors.WhichOneof("vectors_options")
    vec = p.vectors.vector if which == "vector" else p.vectors.vectors.vectors[""]
    return np.asarray(vec.dense.data, dtype=np.float32)


def normalize(x: Any) -> Any:
    """The value a payload decodes back to (tuples become lists)."""
    if isinstance(x, dict):
        return {k: normalize(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [normalize(v) for v in x]
    return x


def test_ids_dense_and_every_payload_value_type_round_trip() -> None:
    ids = make_ids(3)
    dense = np.random.default_rng(1).standard_normal((3, 7)).astype(np.float32)
    dense[0, 0] = -0.0
    dense[1, 1] = np.float32(1e-42)  # subnormal
    payloads = [
        {
            "str": "plain",
            "unicode": "héllo wörld ✓ 日本語 🦀",
            "empty": "",
            "int": 42,
            "neg": -(2**63),
            "big": 2**63 - 1,
            "zero": 0,
            "float": 3.141592653589793,
            "negfloat": -1e-300,
            "inf": math.inf,
            "true": True,
            "false": False,
            "none": None,
            "list": [1, "two", 3.0, None, [True, {"deep": []}]],
            "tuple": (1, 2),
            "dict": {"nested": {"more": {"x": -1}}, "": "empty key"},
            "np_int": np.int64(7),
            "np_float": np.float32(0.5),
            "np_bool": np.bool_(True),
        },
        {},
        {"only": "one"},
    ]
    msgs = _core.pack_upsert("docs", ids, dense, payloads=payloads)
    assert len(msgs) == 1
    req = qg.UpsertPoints.FromString(msgs[0])
    assert req.collection_name == "docs"
    assert not req.HasField("wait") and not req.HasField("ordering")
    assert len(req.points) == 3
    for i, p in enumerate(req.points):
        assert p.id.uuid == uuid_of(ids[i])
        np.testing.assert_array_equal(dense_of(p), dense[i])
        assert p.vectors.WhichOneof("vectors_options") == "vector"  # dense only: the default vector
    got = payload_to_py(req.points[0].payload)
    want = normalize(payloads[0])
    want["np_int"], want["np_float"], want["np_bool"] = 7, 0.5, True
    assert got == want
    assert isinstance(got["float"], float) and isinstance(got["int"], int)
    assert req.points[0].payload["none"].WhichOneof("kind") == "null_value"
    assert req.points[0].payload["np_int"].WhichOneof("kind") == "integer_value"
    assert req.points[0].payload["np_bool"].WhichOneof("kind") == "bool_value"
    assert payload_to_py(req.points[1].payload) == {}
    assert payload_to_py(req.points[2].payload) == {"only": "one"}


def test_nan_payload_survives_as_a_double() -> None:
    (p,) = decode(_core.pack_upsert("c", make_ids(1), payloads=[{"x": math.nan}]))
    assert math.isnan(p.payload["x"].double_value)
    assert not p.HasField("vectors")


def _doubles() -> list[float]:
    """Values whose shortest decimal form a non-round-tripping JSON parser reads 1 ulp off."""
    rng = np.random.default_rng(3)
    special = [-1.4000000000000001, 0.1 + 0.2, 1e-310, 5e-324, 1.7976931348623157e308, -0.0]
    return [float(x) for x in rng.normal(0, 10, 1000)] + special


def test_payload_doubles_are_sent_bit_exact() -> None:
    """qflume sends every payload double bit for bit; Qdrant (server and Edge) may return some
    1 ulp off (its JSON payload storage parses floats without round-trip precision: README,
    test_grpc_sink's real-server test), so the difference is known to be the server's."""
    values = _doubles()
    points = decode(
        _core.pack_upsert("c", make_ids(len(values)), payloads=[{"v": v} for v in values])
    )
    sent = [p.payload["v"].double_value for p in points]
    assert [p.payload["v"].WhichOneof("kind") for p in points] == ["double_value"] * len(values)
    assert np.array(sent).view(np.uint64).tolist() == np.array(values).view(np.uint64).tolist()
    # and so does the columnar payload (qflume's own fields are integers and strings)
    (p,) = decode(
        _core.pack_upsert(
            "c", make_ids(1), texts=["t"], doc_index=np.zeros(1, np.int64),
            doc_metadata=[{"source": "a", "w": -1.4000000000000001}],
            chunk_index=np.zeros(1, np.int64), start=np.zeros(1, np.int64),
            end=np.ones(1, np.int64), chunk_hash=make_ids(1),
        )
    )  # fmt: skip
    meta = p.payload["metadata"].struct_value.fields
    assert meta["w"].double_value == -1.4000000000000001
    for name in ("chunk_index", "start", "end"):
        assert meta[name].WhichOneof("kind") == "integer_value", name
    assert meta["content_hash"].WhichOneof("kind") == "string_value"


def test_dense_and_named_sparse_share_named_vectors() -> None:
    n = 4
    ids = make_ids(n)
    dense = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    bm25 = (
        np.array([0, 2, 2, 5, 6], dtype=np.int64),
        np.array([1, 70000, 3, 2**32 - 1, 0, 9], dtype=np.uint32),
        np.array([0.5, 0.25, 1.0, 2.0, 3.0, -1.5], dtype=np.float32),
    )
    splade = (
        np.arange(n + 1, dtype=np.int64),
        np.arange(n, dtype=np.uint32),
        np.ones(n, np.float32),
    )
    msgs = _core.pack_upsert("c", ids, dense, sparse={"bm25": bm25, "splade": splade})
    points = decode(msgs)
    for i, p in enumerate(points):
        named = p.vectors.vectors.vectors
        assert set(named) == {"", "bm25", "splade"}
        np.testing.assert_array_equal(np.asarray(named[""].dense.data, np.float32), dense[i])
        a, b = bm25[0][i], bm25[0][i + 1]
        assert list(named["bm25"].sparse.indices) == bm25[1][a:b].tolist()
        assert list(named["bm25"].sparse.values) == bm25[2][a:b].tolist()
        assert list(named["splade"].sparse.indices) == [i]
    assert list(points[1].vectors.vectors.vectors["bm25"].sparse.indices) == []  # empty row


def test_sparse_only_points_have_no_default_vector() -> None:
    bm25 = (np.array([0, 1]), np.array([5], np.uint32), np.array([0.5], np.float32))
    (p,) = decode(_core.pack_upsert("c", make_ids(1), sparse={"bm25": bm25}))
    assert set(p.vectors.vectors.vectors) == {"bm25"}


def columnar(n: int, docs: int, text_len: int = 20) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    doc_index = np.sort(rng.integers(0, docs, n)).astype(np.int64)
    return {
        "ids": make_ids(n),
        "texts": [f"chunk {i} ünïcode " + "x" * text_len for i in range(n)],
        "doc_index": doc_index,
        "doc_metadata": [
            {"source": f"docs/{d}.md", "title": f"Doc {d}", "tags": ["a", d], "chunk_index": -1}
            for d in range(docs)
        ],
        "chunk_index": np.arange(n, dtype=np.int64),
        "start": np.arange(n, dtype=np.int64) * 100,
        "end": np.arange(n, dtype=np.int64) * 100 + 99,
        "chunk_hash": make_ids(n, seed=9),
    }


def test_columnar_payload_matches_point_batch_payload() -> None:
    cols = columnar(50, 7)
    dense = np.ones((50, 4), np.float32)
    msgs = _core.pack_upsert(
        "c", cols["ids"], dense, **{k: v for k, v in cols.items() if k != "ids"}
    )
    batch = PointBatch(dense=dense, **cols)
    points = decode(msgs)
    assert len(points) == 50
    for i, p in enumerate(points):
        assert p.id.uuid == uuid_of(cols["ids"][i])
        assert payload_to_py(p.payload) == normalize(batch.payload(i))


def test_wait_and_ordering_fields() -> None:
    req = qg.UpsertPoints.FromString(
        _core.pack_upsert("c", make_ids(1), wait=True, ordering="strong")[0]
    )
    assert req.wait is True and req.ordering.type == qg.WriteOrderingType.Strong
    req = qg.UpsertPoints.FromString(
        _core.pack_upsert("c", make_ids(1), wait=False, ordering="weak")[0]
    )
    assert req.HasField("wait") and req.wait is False
    assert req.HasField("ordering") and req.ordering.type == qg.WriteOrderingType.Weak
    with pytest.raises(qflume.InvalidInputError, match="ordering"):
        _core.pack_upsert("c", make_ids(1), ordering="fast")


def test_split_by_point_count_keeps_order() -> None:
    ids = make_ids(1000)
    msgs, counts = _core.pack_upsert("c", ids, max_points=64, return_counts=True)
    assert counts == [64] * 15 + [40]
    assert [len(qg.UpsertPoints.FromString(m).points) for m in msgs] == counts
    assert [p.id.uuid for p in decode(msgs)] == [uuid_of(r) for r in ids]


def test_byte_budget_holds_for_huge_chunks() -> None:
    n = 12
    cols = columnar(n, 3, text_len=3 * MiB)  # ~3 MiB of text per chunk
    budget = 8 * MiB
    msgs = _core.pack_upsert(
        "c", cols["ids"], max_bytes=budget, max_points=1000,
        **{k: v for k, v in cols.items() if k != "ids"},
    )  # fmt: skip
    assert all(len(m) <= budget for m in msgs)
    assert len(msgs) == 6  # two 3 MiB chunks fit in 8 MiB, three do not
    assert len(decode(msgs)) == n


def test_a_point_over_the_budget_gets_its_own_message() -> None:
    payloads = [{"t": "a"}, {"t": "x" * (2 * MiB)}, {"t": "b"}]
    msgs = _core.pack_upsert("c", make_ids(3), payloads=payloads, max_bytes=MiB)
    assert [len(qg.UpsertPoints.FromString(m).points) for m in msgs] == [1, 1, 1]
    assert len(msgs[1]) > MiB


def test_a_point_over_the_hard_limit_is_named() -> None:
    ids = make_ids(3)
    payloads = [{"t": "a"}, {"t": "a"}, {"t": "x" * (2 * MiB)}]
    with pytest.raises(qflume.ShapeError, match=rf"point 2 \(id {uuid_of(ids[2])}\)"):
        _core.pack_upsert("c", ids, payloads=payloads, max_bytes=MiB, hard_limit=MiB)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dense": np.zeros((3, 4), np.float32)}, r"3 rows .*2 ids"),
        ({"dense": np.zeros((2, 4), np.float64)}, r"float32.*float64.*\(2, 4\)"),
        ({"dense": np.zeros(8, np.float32)}, r"2-d float32"),
        ({"payloads": [{}]}, r"1 payloads for 2 ids"),
        (
            {"sparse": {"bm25": (np.array([0, 1]), np.array([1], np.uint32), np.ones(1, np.float32))}},
            r"indptr has 2 entries, expected 3",
        ),
        (
            {"sparse": {"bm25": (np.array([0, 1, 2]), np.array([1], np.uint32), np.ones(2, np.float32))}},
            r"1 indices but 2 values",
        ),
        (
            {"sparse": {"bm25": (np.array([0, 2, 1]), np.array([1, 2], np.uint32), np.ones(2, np.float32))}},
            r"indptr\[2\] = 1",
        ),
    ],
)  # fmt: skip
def test_wrong_shapes_name_the_sizes(kwargs: dict[str, Any], match: str) -> None:
    dense = kwargs.pop("dense", None)
    with pytest.raises(qflume.ShapeError, match=match):
        _core.pack_upsert("c", make_ids(2), dense, **kwargs)


def test_wrong_id_shapes() -> None:
    with pytest.raises(qflume.ShapeError, match=r"\(n, 16\).*\(2, 8\)"):
        _core.pack_upsert("c", np.zeros((2, 8), np.uint8))
    with pytest.raises(qflume.ShapeError, match=r"uint8"):
        _core.pack_upsert("c", np.zeros((2, 16), np.int32))


def test_columnar_shapes_are_checked() -> None:
    cols = columnar(5, 2)
    cols["doc_index"] = np.array([0, 0, 1, 2, 1], dtype=np.int64)
    with pytest.raises(qflume.ShapeError, match=r"doc_index\[3\] = 2 .* 2 documents"):
        _core.pack_upsert("c", cols.pop("ids"), **cols)
    cols = columnar(5, 2)
    cols["start"] = cols["start"][:4]
    with pytest.raises(qflume.ShapeError, match=r"start has 4 entries for 5 ids"):
        _core.pack_upsert("c", cols.pop("ids"), **cols)
    cols = columnar(5, 2)
    del cols["chunk_hash"]
    with pytest.raises(TypeError, match="chunk_hash"):
        _core.pack_upsert("c", cols.pop("ids"), **cols)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"a": {"b": [1, object()]}}, r"payload of point 0: a\.b\[1\]: unsupported payload type"),
        ({"n": 2**64}, r"n: integer 18446744073709551616 does not fit"),
        ({1: "x"}, r"keys must be str"),
        ({"s": "\ud800"}, r"s: string is not valid UTF-8"),
    ],
)
def test_bad_payload_values_are_named(payload: dict[Any, Any], match: str) -> None:
    with pytest.raises(qflume.InvalidInputError, match=match):
        _core.pack_upsert("c", make_ids(1), payloads=[payload])


def test_cyclic_payload_is_refused() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(qflume.InvalidInputError, match="nested more than"):
        _core.pack_upsert("c", make_ids(1), payloads=[cyclic])


def test_delete_by_ids_and_by_source() -> None:
    ids = make_ids(10)
    msgs = _core.pack_delete("c", ids, max_points=4, wait=True)
    assert len(msgs) == 3
    got = []
    for m in msgs:
        req = qg.DeletePoints.FromString(m)
        assert req.collection_name == "c" and req.wait
        got.extend(p.uuid for p in req.points.points.ids)
    assert got == [uuid_of(r) for r in ids]

    sources = [f"docs/{i}.md" for i in range(5)] + ["ünï.md"]
    msgs = _core.pack_delete_by_values("c", sources, max_points=4)
    seen = []
    for m in msgs:
        cond = qg.DeletePoints.FromString(m).points.filter.must[0].field
        assert cond.key == "metadata.source"
        seen.extend(cond.match.keywords.strings)
    assert seen == sources
    (m,) = _core.pack_delete_by_values("c", ["a"], key="metadata.doc")
    assert qg.DeletePoints.FromString(m).points.filter.must[0].field.key == "metadata.doc"


def test_set_payload() -> None:
    ids = make_ids(5)
    msgs = _core.pack_set_payload(
        "c", {"tag": "x", "n": [1, 2.5]}, ids, key="metadata", max_points=2, ordering="medium"
    )
    assert len(msgs) == 3
    got = []
    for m in msgs:
        req = qg.SetPayloadPoints.FromString(m)
        assert payload_to_py(req.payload) == {"tag": "x", "n": [1, 2.5]}
        assert req.key == "metadata"
        assert req.ordering.type == qg.WriteOrderingType.Medium
        got.extend(p.uuid for p in req.points_selector.points.ids)
    assert got == [uuid_of(r) for r in ids]
    (m,) = _core.pack_set_payload("c", {"a": 1}, ids[:1])
    assert not qg.SetPayloadPoints.FromString(m).HasField("key")


def test_empty_input_makes_no_messages() -> None:
    assert _core.pack_upsert("c", np.zeros((0, 16), np.uint8)) == []
    assert _core.pack_delete("c", np.zeros((0, 16), np.uint8)) == []


# --- hypothesis round trips ---------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
payload_dicts = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads=st.lists(payload_dicts, min_size=0, max_size=12),
    dim=st.integers(min_value=1, max_value=40),
    max_points=st.integers(min_value=1, max_value=5),
    data=st.data(),
)
def test_round_trip_property(
    payloads: list[dict[str, Any]], dim: int, max_points: int, data: st.DataObject
) -> None:
    n = len(payloads)
    ids = np.frombuffer(data.draw(st.binary(min_size=16 * n, max_size=16 * n)), np.uint8)
    ids = ids.reshape(n, 16)
    floats = data.draw(
        st.lists(st.floats(width=32, allow_nan=False), min_size=n * dim, max_size=n * dim)
    )
    dense = np.asarray(floats, dtype=np.float32).reshape(n, dim)
    nnz = data.draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    indptr = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
    total = int(indptr[-1])
    indices = np.asarray(
        data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=total, max_size=total)), np.uint32
    )
    values = np.asarray(
        data.draw(st.lists(st.floats(width=32, allow_nan=False), min_size=total, max_size=total)),
        np.float32,
    )
    msgs, counts = _core.pack_upsert(
        "c", ids, dense, sparse={"s": (indptr, indices, values)}, payloads=payloads,
        max_points=max_points, return_counts=True,
    )  # fmt: skip
    assert all(c <= max_points for c in counts) and sum(counts) == n
    points = decode(msgs)
    assert len(points) == n
    for i, p in enumerate(points):
        assert p.id.uuid == uuid_of(ids[i])
        np.testing.assert_array_equal(dense_of(p), dense[i])
        sp = p.vectors.vectors.vectors["s"].sparse
        assert list(sp.indices) == indices[indptr[i] : indptr[i + 1]].tolist()
        np.testing.assert_array_equal(
            np.asarray(sp.values, np.float32), values[indptr[i] : indptr[i + 1]]
        )
        assert payload_to_py(p.payload) == payloads[i]
