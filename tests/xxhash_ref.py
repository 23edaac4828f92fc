"""Reference XXH3-128 through the independent `xxhash` package, when installed."""

from __future__ import annotations

import pytest

xxhash = pytest.importorskip("xxhash")


def xxh3_128(data: bytes) -> bytes:
    return bytes(xxhash.xxh3_128_digest(data))
