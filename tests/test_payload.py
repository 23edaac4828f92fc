"""The payload layout is written once (qflume.payload) and the Rust packer writes the same one:
its key list matches, and a packed chunk decodes to exactly what qflume.payload builds. Every
Python reader (search hits, ops, verify) parses payloads through the same module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qdrant_client import grpc as qg

from qflume import _core, ids, ops
from qflume import payload as layout
from qflume.exceptions import ShapeError
from qflume.readers.meta import KEYS
from qflume.sinks._common import payload_to_py
from qflume.sinks.base import PointBatch
from qflume.sinks.edge import EdgeSink


def test_rust_keys_match_the_payload_module() -> None:
    assert _core.PAYLOAD_KEYS == (layout.TEXT, layout.METADATA) == ("page_content", "metadata")
    assert _core.CHUNK_KEYS == layout.CHUNK_KEYS
    assert set(layout.PER_CHUNK_KEYS) == {*layout.CHUNK_KEYS, *KEYS}
    # what qflume manages is exactly the text, the source and the keys the packer writes
    assert layout.MANAGED_FIELDS == (
        "page_content",
        "metadata.source",
        *(f"metadata.{k}" for k in _core.CHUNK_KEYS),
    )
    assert ops.MANAGED_FIELDS is layout.MANAGED_FIELDS


def _columns(n: int) -> dict[str, object]:
    rng = np.random.default_rng(3)
    return {
        "texts": [f"chunk {i} ünï" for i in range(n)],
        "doc_index": np.arange(n, dtype=np.int64) % 2,
        # a document key named like a per-chunk key: the chunk's value wins (Rust and Python)
        "doc_metadata": [{"source": "a.md", "lang": "en", "start": -1}, {"source": "b.md"}],
        "chunk_index": np.arange(n, dtype=np.int64),
        "start": np.arange(n, dtype=np.int64) * 10,
        "end": np.arange(n, dtype=np.int64) * 10 + 7,
        "chunk_hash": rng.integers(0, 256, (n, 16), dtype=np.uint8),
        "chunk_metadata": [{"page": 2}, {"heading": "Install > Linux"}],
        "chunk_meta_index": np.array([0, -1, 1, 0, -1][:n], np.int64),
    }


def test_packed_chunks_decode_to_what_the_payload_module_builds() -> None:
    n = 5
    cols = _columns(n)
    point_ids = np.random.default_rng(4).integers(0, 256, (n, 16), dtype=np.uint8)
    batch = PointBatch(ids=point_ids, **cols)  # type: ignore[arg-type]
    docs, doc_index = batch.merged_metadata()
    msgs = _core.pack_upsert(
        "c",
        point_ids,
        None,
        texts=cols["texts"],
        doc_index=doc_index,
        doc_metadata=docs,
        chunk_index=cols["chunk_index"],
        start=cols["start"],
        end=cols["end"],
        chunk_hash=cols["chunk_hash"],
    )
    points = [p for m in msgs for p in qg.UpsertPoints.FromString(m).points]
    payload_of = layout.columns_payloads(
        cols["texts"],  # type: ignore[arg-type]
        cols["doc_index"],  # type: ignore[arg-type]
        cols["doc_metadata"],  # type: ignore[arg-type]
        cols["chunk_index"],  # type: ignore[arg-type]
        cols["start"],  # type: ignore[arg-type]
        cols["end"],  # type: ignore[arg-type]
        cols["chunk_hash"],  # type: ignore[arg-type]
        cols["chunk_metadata"],  # type: ignore[arg-type]
        cols["chunk_meta_index"],  # type: ignore[arg-type]
    )
    for i, p in enumerate(points):
        got = payload_to_py(p.payload)
        assert got == payload_of(i) == batch.payload(i)
    assert payload_of(0)["metadata"] == {
        "source": "a.md",
        "lang": "en",
        "page": 2,
        "chunk_index": 0,
        "start": 0,
        "end": 7,
        "content_hash": np.asarray(cols["chunk_hash"])[0].tobytes().hex(),
    }


def test_columnar_payloads_name_what_is_missing_or_misshapen() -> None:
    cols = _columns(3)
    args = [cols[k] for k in ("texts", "doc_index", "doc_metadata", "chunk_index", "start")]
    with pytest.raises(ShapeError, match="needs end"):
        layout.columns_payloads(*args, None, cols["chunk_hash"])  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"chunk_hash must have shape \(3, 16\)"):
        layout.columns_payloads(*args, cols["end"], np.zeros((3, 8), np.uint8))  # type: ignore[arg-type]
    bad_docs = np.array([0, 5, 1], np.int64)
    with pytest.raises(ShapeError, match="doc_index must index doc_metadata"):
        layout.columns_payloads(
            cols["texts"],
            bad_docs,
            *args[2:],
            cols["end"],
            cols["chunk_hash"],  # type: ignore[arg-type]
        )


def test_reading_payloads_back() -> None:
    h = bytes(range(16))
    meta = layout.chunk_metadata({"source": "a.md", "n": 1}, {"heading": "H"}, 3, 10, 20, h)
    p = layout.chunk_payload("text", meta)
    assert layout.text_of(p) == "text" and layout.source_of(p) == "a.md"
    assert layout.document_metadata(layout.metadata_of(p)) == {"source": "a.md", "n": 1}
    got = layout.chunk_fields(p)
    assert got is not None and got.content_hash == h and got.place == (3, 10, 20)
    # not a qflume point: no source, a hash that is not 32 hex digits, no payload at all
    for other in ({"metadata": {"content_hash": h.hex()}}, {"metadata": {"source": "a", "content_hash": "zz" * 16}}, None, {"metadata": 7}):  # fmt: skip
        assert layout.chunk_fields(other) is None
    assert layout.metadata_of({"metadata": 7}) == {} and layout.text_of({"page_content": 1}) is None


@pytest.mark.parametrize(
    "path", ["page_content", "metadata.source", "metadata.content_hash", "metadata.start.x"]
)
def test_managed_fields_are_refused_as_invalid_input(path: str, tmp_path: Path) -> None:
    assert layout.managed_field(path) is not None
    with EdgeSink(tmp_path, "c") as sink:
        (r,) = ops.update_payload(sink, [{"id": ids.NIL_ID, "set": {path: 1}}])
    assert not r["ok"] and r["type"] == "invalid" and "managed by qflume" in r["error"]
    assert layout.managed_field("metadata.sourced") is None
