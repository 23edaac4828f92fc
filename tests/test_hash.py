"""Content hashes and point ids: stable, distinct, and the documented shapes."""

from __future__ import annotations

import uuid

import pytest

import qflume
import xxhash_ref


def test_content_hash_is_xxh3_128_of_the_utf8_bytes() -> None:
    text = "héllo wörld — qflume"
    digest = qflume.content_hash(text)
    assert isinstance(digest, bytes) and len(digest) == 16
    assert digest == qflume.content_hash(text.encode("utf-8"))
    assert digest == xxhash_ref.xxh3_128(text.encode("utf-8"))


@pytest.mark.parametrize("size", [0, 1, 2047, 2048, 1 << 20])
def test_content_hash_all_sizes_and_bytes_like(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    h = qflume.content_hash(data)
    assert h == qflume.content_hash(bytearray(data))
    assert h == qflume.content_hash(memoryview(data))
    assert h == xxhash_ref.xxh3_128(data)


def test_content_hash_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        qflume.content_hash(12345)  # type: ignore[arg-type]


def test_point_id_is_deterministic_uuid_v8() -> None:
    h = qflume.content_hash("a chunk")
    pid = qflume.point_id("docs/a.md", h)
    u = uuid.UUID(pid)
    assert str(u) == pid
    assert u.version == 8
    assert pid == qflume.point_id("docs/a.md", h)
    assert pid != qflume.point_id("docs/b.md", h)
    assert pid != qflume.point_id("docs/a.md", qflume.content_hash("another chunk"))


def test_point_id_rejects_wrong_hash_length() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        qflume.point_id("k", b"short")
