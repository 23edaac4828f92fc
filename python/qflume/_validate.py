"""Checks on what users hand in (record ids, texts, metadata, file keys), so that one bad item is
refused where it enters with a reason that names it, and never reaches the packer, the state or
the store.

Limits (documented in the README's Guarantees):

- metadata nests at most :data:`MAX_DEPTH` levels (objects and arrays): deeper payloads make Qdrant
  and Qdrant Edge refuse to read the store back (serde's recursion limit);
- numbers are finite (no NaN or infinity: JSON has none), integers fit in 64 bits signed;
- every string and key is valid Unicode (no lone surrogates): it must encode as UTF-8.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = [
    "MAX_DEPTH",
    "display",
    "metadata_problem",
    "printable",
    "redact_url",
    "text_problem",
    "url_problem",
]

#: Deepest nesting of objects/arrays accepted in metadata (the metadata object itself is level 1).
MAX_DEPTH = 32
_I64 = (-(2**63), 2**63 - 1)


def printable(s: str) -> str:
    """``s`` as text that always encodes: undecodable file-name bytes (surrogate escapes) and lone
    surrogates become ``\\xNN`` / ``\\udNNN`` escapes."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def text_problem(s: str, what: str) -> str | None:
    """Why ``s`` cannot be stored (a lone surrogate), naming ``what``; None when it can."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"{what} is not valid Unicode (lone surrogate {s[e.start]!r} at {e.start})"
    return None


def metadata_problem(meta: Mapping[str, Any], where: str = "metadata") -> str | None:
    """The first reason ``meta`` cannot be a payload, naming the path to the bad value
    (``metadata.a.b[3]``), or None. Walks iteratively: any depth is checked without recursion."""
    stack: list[tuple[Any, str, int]] = [(meta, where, 1)]
    while stack:
        value, path, depth = stack.pop()
        if value is None or isinstance(value, (bool, np.bool_)):
            continue
        if isinstance(value, str):
            problem = text_problem(value, path)
            if problem:
                return problem
            continue
        if isinstance(value, Integral):
            if not _I64[0] <= int(value) <= _I64[1]:
                return f"{path}: integer {int(value)} does not fit in 64 bits"
            continue
        if isinstance(value, Real):
            if not math.isfinite(float(value)):
                return f"{path}: {float(value)} is not a finite number (JSON has no NaN/infinity)"
            continue
        if isinstance(value, Mapping):
            if depth > MAX_DEPTH:
                return f"{_short(path)}: nested deeper than {MAX_DEPTH} levels"
            for k, v in value.items():
                if not isinstance(k, str):
                    return f"{path}: key {k!r} is {type(k).__name__}, not str"
                problem = text_problem(k, f"{path}: key '{printable(k)}'")
                if problem:
                    return problem
                stack.append((v, f"{path}.{printable(k)}", depth + 1))
            continue
        if isinstance(value, (list, tuple)):
            if depth > MAX_DEPTH:
                return f"{_short(path)}: nested deeper than {MAX_DEPTH} levels"
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value))
            continue
        return f"{path}: {type(value).__name__} is not a JSON value"
    return None


def _short(path: str, keep: int = 60) -> str:
    return path if len(path) <= keep else f"{path[: keep // 2]}...{path[-keep // 2 :]}"


def redact_url(url: str) -> str:
    """``url`` with any user:password replaced by ``***``: what may be printed or logged."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    netloc = "***@" + parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=netloc)).removeprefix("//")


def url_problem(url: str) -> str | None:
    """Why a Qdrant URL is refused (credentials in it), in words that never show them."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
    except ValueError as e:
        return f"Qdrant URL {redact_url(url)!r} cannot be parsed: {e}"
    if "@" in parts.netloc:
        return (
            f"Qdrant URL {redact_url(url)!r} carries credentials: they would end up in logs and "
            "folder names. Give the API key with --api-key / api_key= or QDRANT_API_KEY instead"
        )
    return None


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}
_CONTROL.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})


def display(s: str) -> str:
    """``s`` safe to print on a terminal: control characters (newlines, ANSI escapes) and
    undecodable bytes written as escapes, so a file name cannot fake output lines."""
    return printable(s).translate(_CONTROL)
