"""Markers for the tests that need a real Qdrant server (see conftest.py)."""

from __future__ import annotations

import os

import pytest

NO_SERVER = "no real Qdrant server: set QDRANT_BIN to a qdrant binary, or QDRANT_URL"

#: A server at QDRANT_URL (set by conftest.py when only QDRANT_BIN is given).
needs_url = [
    pytest.mark.qdrant_server,
    pytest.mark.skipif(not os.environ.get("QDRANT_URL"), reason=NO_SERVER),
]
#: A binary to start, kill, freeze and restart (QDRANT_BIN).
needs_binary = [
    pytest.mark.qdrant_server,
    pytest.mark.skipif(
        not os.environ.get("QDRANT_BIN"),
        reason="no qdrant binary to start, kill and restart: set QDRANT_BIN",
    ),
]


def real_server(fn):  # type: ignore[no-untyped-def]
    """Decorates a test that needs a real server at QDRANT_URL."""
    for mark in reversed(needs_url):
        fn = mark(fn)
    return fn


def drop_collection(url: str, name: str) -> None:
    """Deletes collection ``name`` on the server at ``url`` (gRPC), if it exists, with its
    versions ``name__vN`` (and so the alias ``name``: qflume.versions)."""
    import urllib.parse

    from qdrant_client import QdrantClient

    client = QdrantClient(
        url=url,
        api_key=os.environ.get("QDRANT_API_KEY"),
        prefer_grpc=True,
        grpc_port=urllib.parse.urlsplit(url).port or 6334,
        check_compatibility=False,  # the version check speaks REST
    )
    try:
        import re

        version = re.compile(re.escape(name) + r"__v[1-9][0-9]*")
        for c in client.get_collections().collections:
            if c.name == name or version.fullmatch(c.name):
                client.delete_collection(c.name)
    finally:
        client.close()
