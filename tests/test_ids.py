"""One id/hash helper set (qflume.ids): the Rust core's HASH_LEN everywhere, point ids computed
for many chunks at once, and one way to turn ids into text or bytes."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import qflume
from qflume import _core, ids, state
from qflume.exceptions import InvalidInputError, ShapeError


def test_hash_len_is_defined_once() -> None:
    assert ids.HASH_LEN == _core.HASH_LEN == 16
    assert state.HASH_LEN is ids.HASH_LEN


def test_point_ids_are_point_id_for_every_chunk() -> None:
    hashes = [qflume.content_hash(f"chunk {i}") for i in range(50)]
    want = [qflume.point_id("docs/a.md", h) for h in hashes]
    blob = b"".join(hashes)
    got = ids.point_ids("docs/a.md", blob)
    assert got.shape == (50, 16) and got.dtype == np.uint8
    assert ids.id_strings(got) == want
    arr = np.frombuffer(blob, np.uint8).reshape(-1, 16)
    assert np.array_equal(ids.point_ids("docs/a.md", arr), got)
    assert np.array_equal(ids.point_ids("docs/a.md", arr[::2]), got[::2])  # not contiguous
    assert ids.point_ids("k", b"").shape == (0, 16)
    with pytest.raises(ShapeError, match="multiple of 16"):
        ids.point_ids("k", blob[:-1])
    with pytest.raises(ShapeError, match=r"\(n, 16\)"):
        ids.point_ids("k", np.zeros((2, 8), np.uint8))


def test_ids_to_text_and_bytes_and_back() -> None:
    rows = np.random.default_rng(1).integers(0, 256, (7, 16), dtype=np.uint8)
    text = ids.id_strings(rows)
    assert text == [str(uuid.UUID(bytes=r.tobytes())) for r in rows]
    assert np.array_equal(ids.id_array(text), rows)
    assert np.array_equal(ids.id_array([t.upper() for t in text]), rows)
    assert np.array_equal(ids.id_array([uuid.UUID(t) for t in text]), rows)
    assert ids.id_bytes(rows) == [r.tobytes() for r in rows]
    assert ids.id_array(rows) is rows or np.array_equal(ids.id_array(rows), rows)
    one = uuid.UUID(int=9)
    for form in (one, str(one).upper(), one.bytes):
        assert ids.uuid_text(form) == str(one)
    with pytest.raises(InvalidInputError, match=r"ids\[1\] = 'nope' is not a UUID"):
        ids.id_array([text[0], "nope"])
    with pytest.raises(InvalidInputError, match=r"ids\[0\] = 'nope' is not a UUID"):
        ids.id_strings(["nope"])
    with pytest.raises(InvalidInputError, match="not a single string"):
        ids.id_strings(text[0])  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"\(n, 16\) uint8"):
        ids.id_array(np.zeros((2, 16), np.int64))
    with pytest.raises(InvalidInputError, match="point id 12 is not a UUID"):
        ids.uuid_text(12)
    assert ids.split_hashes(rows.tobytes()) == [r.tobytes() for r in rows]


@pytest.mark.parametrize(
    "bad",
    [
        "0000000 -0000-0000-0000-000000000000",  # a space where a digit goes
        "00000000-0000-0000-0000-00000000000é",  # not ASCII
        "00000000-0000-0000-0000-00000000000g",  # not hex
        "00000000-0000-0000-0000-0000000000000",  # too long
    ],
)
def test_text_ids_parsed_at_once_fall_back_to_naming_the_bad_one(bad: str) -> None:
    good = str(uuid.UUID(int=3))
    with pytest.raises(InvalidInputError, match=r"ids\[1\] = "):
        ids.id_array([good, bad, good])
    # other forms uuid.UUID reads are still ids (the one-by-one path)
    braces = "{" + good + "}"
    assert (
        ids.id_array([good, braces, good.replace("-", "")]).tobytes() == uuid.UUID(good).bytes * 3
    )
