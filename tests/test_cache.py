"""EmbeddingCache: lookups, persistence, LRU eviction, stats, threads, bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import qflume
from qflume import EmbeddingCache


def _hashes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 16), dtype=np.uint8)


def _vecs(n: int, dim: int = 8, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_put_get_roundtrip_and_stats(tmp_path):
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        h, v = _hashes(10), _vecs(10)
        found, got = cache.get_many("m", h)
        assert not found.any() and got.shape == (10, 0)
        cache.put_many("m", h[:6], v[:6])
        found, got = cache.get_many("m", h)
        assert found.tolist() == [True] * 6 + [False] * 4
        np.testing.assert_array_equal(got[:6], v[:6])
        assert not got[6:].any()
        # another model id is another key space
        assert not cache.get_many("other", h)[0].any()
        s = cache.stats()
        assert s["size"] == 6 and s["hits"] == 6 and s["misses"] == 10 + 4 + 10
        assert s["hit_rate"] == pytest.approx(6 / 30)


def test_persists_across_reopen(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    h, v = _hashes(50), _vecs(50, dim=384)
    cache = EmbeddingCache(path)
    cache.put_many("m", h, v)
    cache.close()
    cache.close()  # idempotent
    again = EmbeddingCache(path, memory_entries=0)
    found, got = again.get_many("m", h[::-1])
    assert found.all()
    np.testing.assert_array_equal(got, v[::-1])
    assert again.stats()["size"] == 50
    again.close()
    with pytest.raises(qflume.QflumeIOError, match="closed"):
        again.get_many("m", h)


def test_overwrite_does_not_grow(tmp_path):
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        h = _hashes(5)
        cache.put_many("m", h, _vecs(5, seed=1))
        cache.put_many("m", h, _vecs(5, seed=2))
        assert len(cache) == 5
        np.testing.assert_array_equal(cache.get_many("m", h)[1], _vecs(5, seed=2))


@pytest.mark.parametrize("memory_entries", [0, 3, 1000])
def test_eviction_is_lru_by_last_use(tmp_path, memory_entries):
    path = tmp_path / "c.sqlite"
    with EmbeddingCache(path, max_entries=10, memory_entries=memory_entries) as cache:
        h, v = _hashes(15), _vecs(15)
        for i in range(10):  # one write each: distinct last-use times
            cache.put_many("m", h[i : i + 1], v[i : i + 1])
        cache.get_many("m", h[:3])  # 0..2 used recently: they must survive
        cache.put_many("m", h[10:15], v[10:15])  # 5 over the bound: 3..7 go
        assert len(cache) == 10
        found, _ = cache.get_many("m", h)
        expected = [True] * 3 + [False] * 5 + [True] * 7
        assert found.tolist() == expected
    with EmbeddingCache(path, max_entries=10) as cache:  # the eviction is on disk too
        assert cache.get_many("m", h)[0].tolist() == expected


def test_memory_lru_bounded(tmp_path):
    with EmbeddingCache(tmp_path / "c.sqlite", memory_entries=4) as cache:
        cache.put_many("m", _hashes(20), _vecs(20))
        assert cache.stats()["memory"] == 4


def test_bytes_keys_and_duplicates(tmp_path):
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        keys = [qflume.content_hash(b"a"), qflume.content_hash(b"b")]
        cache.put_many("m", keys, _vecs(2))
        found, got = cache.get_many("m", [keys[1], keys[1], keys[0]])
        assert found.all()
        np.testing.assert_array_equal(got, _vecs(2)[[1, 1, 0]])
        cache.put_many("m", np.zeros((0, 16), np.uint8), np.zeros((0, 8), np.float32))


def test_bad_shapes_name_the_problem(tmp_path):
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(qflume.ShapeError, match="16"):
            cache.get_many("m", np.zeros((3, 8), np.uint8))
        with pytest.raises(qflume.ShapeError, match="3 hashes"):
            cache.put_many("m", _hashes(3), _vecs(2))


def test_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(qflume.QflumeIOError, match="file"):
        EmbeddingCache(blocker / "c.sqlite")


def test_thread_safe(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite", max_entries=500, memory_entries=50)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(20):
                h, v = _hashes(10, seed * 100 + i), _vecs(10, seed=i)
                cache.put_many("m", h, v)
                found, got = cache.get_many("m", h)
                assert found.all()
                np.testing.assert_array_equal(got, v)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) == 500
    cache.close()
