"""Point ids and content hashes: one set of helpers for every module.

A content hash is 16 bytes (XXH3-128 of a chunk's UTF-8 text, ``qflume.content_hash``); a point
id is 16 bytes too, an RFC 9562 UUID derived from the document key and the chunk's hash
(``qflume.point_id``). Ids travel as an (n, 16) uint8 array (the pipeline, the packer) and become
UUID text only where a client needs text (Qdrant Edge, a read back from a sink), in one pass:
never bytes -> str -> ``uuid.UUID`` -> bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from qflume import _core
from qflume.exceptions import InvalidInputError, ShapeError

__all__ = [
    "HASH_LEN",
    "NIL_ID",
    "IdArray",
    "Ids",
    "id_array",
    "id_bytes",
    "id_strings",
    "point_id",
    "point_ids",
    "split_hashes",
    "uuid_text",
]

#: Bytes of a content hash and of a point id (the Rust core's HASH_LEN).
HASH_LEN: Final[int] = _core.HASH_LEN
#: The nil UUID: no qflume point has it (qflume ids are version-8 UUIDs).
NIL_ID: Final[str] = "00000000-0000-0000-0000-000000000000"

IdArray = npt.NDArray[np.uint8]
#: Point ids as a sink takes them: UUID strings (or ``uuid.UUID``), or an (n, 16) uint8 array.
Ids = Sequence[str] | IdArray

point_id = _core.point_id


def point_ids(key: str, hashes: bytes | IdArray) -> IdArray:
    """The (n, 16) point ids of chunks of document ``key`` from their content hashes (n * 16
    bytes, a state row's ``chunks``, or an (n, 16) uint8 array), computed in Rust at once."""
    return _core.point_ids(key, hashes)


def split_hashes(blob: bytes) -> list[bytes]:
    """Concatenated 16-byte hashes (a state row's ``chunks`` or ``pending``) as a list."""
    return [blob[i : i + HASH_LEN] for i in range(0, len(blob), HASH_LEN)]


def _check_array(ids: npt.NDArray[Any]) -> IdArray:
    if ids.dtype != np.uint8 or ids.ndim != 2 or ids.shape[1] != HASH_LEN:
        raise ShapeError(
            f"ids must be an (n, {HASH_LEN}) uint8 array of UUID bytes, got {ids.dtype} array of "
            f"shape {ids.shape}"
        )
    return np.ascontiguousarray(ids)


def uuid_text(x: Any, where: str = "point id") -> str:
    """The canonical UUID text of one point id: UUID text in any case, a ``uuid.UUID``, or its
    16 bytes. Anything else is an InvalidInputError naming ``where``."""
    if isinstance(x, uuid.UUID):
        return str(x)
    if isinstance(x, (bytes, bytearray)) and len(x) == HASH_LEN:
        return str(uuid.UUID(bytes=bytes(x)))
    if isinstance(x, str):
        try:
            return str(uuid.UUID(x))
        except ValueError:
            pass
    raise InvalidInputError(f"{where} {x!r} is not a UUID (qflume point ids are UUIDs)")


def _one_bytes(x: Any, i: int) -> bytes:
    if isinstance(x, uuid.UUID):
        return x.bytes
    if isinstance(x, (bytes, bytearray)) and len(x) == HASH_LEN:
        return bytes(x)
    if isinstance(x, str):
        try:
            return uuid.UUID(x).bytes
        except ValueError:
            pass
    raise InvalidInputError(f"ids[{i}] = {x!r} is not a UUID (qflume point ids are UUIDs)")


#: Where the hyphens and the hex digits of canonical UUID text are.
_HYPHENS = np.array([8, 13, 18, 23])
_DIGITS = np.delete(np.arange(36), _HYPHENS)


def _parse_canonical(ids: Sequence[Any]) -> IdArray | None:
    """All ids at once when every one is 36-character UUID text (any case); else None."""
    if not all(type(x) is str for x in ids):
        return None
    n = len(ids)
    try:
        text = np.frombuffer("".join(ids).encode("ascii"), np.uint8)
    except UnicodeEncodeError:
        return None
    if text.size != 36 * n:
        return None
    rows = text.reshape(n, 36)
    if not (rows[:, _HYPHENS] == ord("-")).all():
        return None
    try:
        raw = bytes.fromhex(rows[:, _DIGITS].tobytes().decode("ascii"))
    except ValueError:
        return None
    if len(raw) != HASH_LEN * n:  # fromhex skips whitespace
        return None
    out: IdArray = np.frombuffer(raw, np.uint8).reshape(n, HASH_LEN).copy()
    return out


def id_array(ids: Ids) -> IdArray:
    """Point ids as a C-contiguous (n, 16) uint8 array (no copy when they are one already);
    canonical UUID text is parsed all at once, other forms (``uuid.UUID`` objects, 16 bytes,
    braces) one by one."""
    if isinstance(ids, np.ndarray):
        return _check_array(ids)
    if isinstance(ids, (str, bytes)):
        raise InvalidInputError("ids must be a sequence of UUIDs, not a single string")
    fast = _parse_canonical(ids)
    if fast is not None:
        return fast
    blob = b"".join(_one_bytes(x, i) for i, x in enumerate(ids))
    out: IdArray = np.frombuffer(blob, dtype=np.uint8).reshape(-1, HASH_LEN).copy()
    return out


def id_bytes(ids: Ids) -> list[bytes]:
    """Point ids as 16-byte strings."""
    arr = id_array(ids)
    return split_hashes(arr.tobytes())


def id_strings(ids: Ids) -> list[str]:
    """Point ids as canonical UUID text: an (n, 16) array in one hex pass; strings and
    ``uuid.UUID`` objects checked and normalised (lower case, hyphens)."""
    if not isinstance(ids, np.ndarray):
        if isinstance(ids, (str, bytes)):
            raise InvalidInputError("ids must be a sequence of UUIDs, not a single string")
        return [uuid_text(x, f"ids[{i}] =") for i, x in enumerate(ids)]
    arr = _check_array(ids)
    n = len(arr)
    digits = np.frombuffer(arr.tobytes().hex().encode("ascii"), np.uint8).reshape(n, 32)
    rows = np.full((n, 36), ord("-"), np.uint8)
    rows[:, _DIGITS] = digits
    text = rows.tobytes().decode("ascii")
    return [text[j : j + 36] for j in range(0, 36 * n, 36)]
