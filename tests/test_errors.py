"""The Rust CoreError -> Python exception mapping: right class, right builtin, input named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qflume
from qflume import _core, exceptions

# CoreError kind -> (qflume exception, the builtin it must also be)
KINDS = {
    "invalid_argument": (qflume.InvalidInputError, ValueError),
    "io": (qflume.QflumeIOError, OSError),
    "decode": (qflume.DecodeError, ValueError),
    "tokenizer": (qflume.TokenizerError, ValueError),
    "shape": (qflume.ShapeError, ValueError),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_core_error_kind_maps_to_its_exception(kind: str) -> None:
    cls, builtin = KINDS[kind]
    with pytest.raises(cls) as info:
        _core._raise_core_error(kind, "docs/input-\u00e9.md")
    err = info.value
    assert type(err) is cls
    assert isinstance(err, builtin)
    assert isinstance(err, qflume.QflumeError)
    assert "docs/input-\u00e9.md" in str(err)
    # No kind lands on a sibling's class.
    for other, (other_cls, _) in KINDS.items():
        if other != kind and not issubclass(cls, other_cls):
            assert not isinstance(err, other_cls)


def test_io_errors_keep_the_os_errno() -> None:
    with pytest.raises(qflume.QflumeIOError) as info:
        _core._raise_core_error("io", "/data/missing.txt")
    assert info.value.errno == 2
    assert "/data/missing.txt" in str(info.value)


def test_unknown_kind_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="nope"):
        _core._raise_core_error("nope", "x")


@pytest.mark.parametrize("where", ["here", "detached", "parallel"])
def test_a_panic_in_the_core_is_a_qflume_error_not_a_base_exception(where: str) -> None:
    """A bug that panics in the Rust core (with the GIL held, released, or in a worker thread of
    the pool) reaches Python as RustPanicError, which `except Exception` catches, and the module
    keeps working after it; without the guards it is PyO3's PanicException, a BaseException."""
    import os
    import subprocess
    import sys

    try:
        _core._panic_for_test(where)
    except Exception as e:
        err: BaseException = e
    except BaseException as e:  # PanicException
        pytest.fail(f"a panic reached Python as {type(e).__name__}, a BaseException: {e}")
    else:
        pytest.fail("no exception")
    assert type(err) is qflume.RustPanicError and isinstance(err, qflume.QflumeError)
    assert "internal error in qflume's Rust core at rust/py/threads.rs:" in str(err)
    assert "deliberate panic for a test" in str(err)
    assert len(qflume.Chunker(20).chunk("still works after it. yes it does.")) == 2
    # The panic is reported by the exception, not also printed raw to stderr.
    code = (
        f"from qflume import _core\ntry: _core._panic_for_test({where!r})\n"
        "except Exception as e: print(type(e).__name__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.stdout.strip() == "RustPanicError"
    assert "panicked" not in run.stderr


def test_exception_tree() -> None:
    assert issubclass(qflume.DecodeError, qflume.InvalidInputError)
    assert issubclass(qflume.ShapeError, qflume.InvalidInputError)
    assert issubclass(qflume.TokenizerError, qflume.InvalidInputError)
    assert issubclass(qflume.InvalidInputError, ValueError)
    assert issubclass(qflume.QflumeIOError, OSError)
    assert issubclass(qflume.SinkError, ConnectionError)
    assert issubclass(qflume.ModelError, RuntimeError)
    assert issubclass(qflume.StateLockedError, qflume.StateError)
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert issubclass(cls, qflume.QflumeError)
        assert getattr(qflume, name) is cls


# The same mapping reached through real calls.


def test_missing_path_raises_io_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(qflume.QflumeIOError, match="no-such-folder") as info:
        qflume.scan(missing)
    assert isinstance(info.value, OSError) and info.value.errno == 2
    with pytest.raises(qflume.QflumeIOError, match="no-such-folder"):
        qflume.read_text(missing)


def test_undecodable_file_raises_decode_error_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(qflume.DecodeError, match=r"latin1\.txt") as info:
        qflume.read_text(p)
    assert isinstance(info.value, ValueError)


def test_bad_argument_raises_invalid_input_naming_it(tmp_path: Path) -> None:
    with pytest.raises(qflume.InvalidInputError, match=r"\[z-a\]") as info:
        qflume.scan(tmp_path, exclude=["[z-a]"])
    assert isinstance(info.value, ValueError)


def test_bad_ids_shape_raises_shape_error_naming_it() -> None:
    pack_delete = getattr(_core, "pack_delete", None)
    if pack_delete is None:
        pytest.skip("qflume._core.pack_delete is not built yet")
    with pytest.raises(qflume.ShapeError, match="ids") as info:
        pack_delete("docs", np.zeros((2, 8), dtype=np.uint8))
    assert isinstance(info.value, ValueError)


# Every error a user can reach is a QflumeError; the builtin it replaced stays a base, so an
# `except ValueError` / `except TypeError` written against the older releases still catches it.


def _ids(n: int) -> np.ndarray:
    return np.arange(n * 16, dtype=np.uint8).reshape(n, 16)


def test_bad_pack_inputs_are_qflume_errors_naming_the_argument() -> None:
    strided = np.zeros((2, 32), dtype=np.uint8)[:, ::2]
    with pytest.raises(qflume.ShapeError, match=r"ids must be C-contiguous"):
        _core.pack_upsert("c", strided)
    with pytest.raises(qflume.InvalidTypeError, match=r"sparse must be a dict .* got int") as info:
        _core.pack_upsert("c", _ids(1), sparse=5)
    assert isinstance(info.value, TypeError)
    with pytest.raises(qflume.InvalidTypeError, match=r'sparse\["s"\] must be \(indptr'):
        _core.pack_upsert("c", _ids(1), sparse={"s": object()})
    with pytest.raises(qflume.InvalidTypeError, match=r"payload must be a dict, got int") as info:
        _core.pack_set_payload("c", 5, _ids(1))
    assert isinstance(info.value, TypeError)
    with pytest.raises(qflume.InvalidTypeError, match=r"payload of points must be a sequence"):
        _core.pack_upsert("c", _ids(1), payloads=5)
    with pytest.raises(qflume.InvalidTypeError, match="not both"):
        _core.pack_upsert("c", _ids(1), payloads=[{}], texts=["t"])


def test_bad_cache_sizes_are_invalid_input_naming_them(tmp_path: Path) -> None:
    for bad in (0, -3, "many", 2.5, None):
        with pytest.raises(qflume.InvalidInputError, match=r"max_entries must be an int >= 1"):
            qflume.EmbeddingCache(tmp_path / "c.db", max_entries=bad)  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidInputError, match=r"memory_entries must be an int >= 0"):
        qflume.EmbeddingCache(tmp_path / "c.db", memory_entries=-1)


def test_bad_scan_arguments_are_qflume_errors(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(qflume.InvalidTypeError, match=r"exclude patterns must be str, got int"):
        qflume.scan(tmp_path, exclude=[1])  # type: ignore[list-item]
    with pytest.raises(qflume.InvalidTypeError, match=r"include must be a str or a list"):
        qflume.scan(tmp_path, include=5)  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidTypeError, match=r"paths must be a path or a list"):
        qflume.scan(5)  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidTypeError, match=r"known must be a mapping"):
        qflume.scan(tmp_path, known=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidTypeError, match=r"scan \(argument 'max_file_size'\)"):
        qflume.scan(tmp_path, max_file_size="big")  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidTypeError, match=r"read_text: path must be a str"):
        qflume.read_text(5)  # type: ignore[arg-type]


def test_bad_doc_differ_inputs_are_qflume_errors() -> None:
    with pytest.raises(qflume.ShapeError, match=r"prev_chunks: 1 bytes is not a whole number"):
        _core.DocDiffer(b"x", b"", b"", b"", False)
    d = _core.DocDiffer(b"", b"", b"", b"", False)
    offsets = np.array([[0, 4]], dtype=np.int64)
    with pytest.raises(qflume.ShapeError, match=r"hashes must have shape \(k, 16\)"):
        d.take(np.zeros((2, 8), dtype=np.uint8), offsets, 0)
    with pytest.raises(qflume.ShapeError, match=r"offsets \(k, 2\) must be a C-contiguous"):
        d.take(_ids(1), np.zeros((1, 4), dtype=np.int64)[:, ::2], 0)
    with pytest.raises(qflume.ShapeError, match=r"1 hashes but 0 digests"):
        d.take(_ids(1), offsets, 0, b"")
    d.take(_ids(1), offsets, 0)
    d.finish()
    with pytest.raises(qflume.StateError, match="DocDiffer is finished") as info:
        d.count()
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(qflume.StateError, match="DocDiffer is finished"):
        d.finish()


def test_bad_hash_and_thread_arguments_are_qflume_errors() -> None:
    with pytest.raises(qflume.InvalidTypeError, match="content_hash expects str, bytes"):
        qflume.content_hash(12345)  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidTypeError, match=r"point_id: key must be str, not int"):
        qflume.point_id(5, bytes(16))  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidTypeError, match=r"chunk_hash must be bytes, not int"):
        qflume.point_id("k", 5)  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidInputError, match=r"chunk_hash must be 16 bytes"):
        qflume.point_id("k", b"short")
    before = qflume.get_threads()
    with pytest.raises(qflume.InvalidInputError, match=r"n must be >= 0"):
        qflume.set_threads(-1)
    with pytest.raises(qflume.InvalidTypeError, match=r"n must be an int"):
        qflume.set_threads("4")  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidTypeError, match=r"n must be an int"):
        qflume.set_threads(True)
    for huge in (4097, 10**6, 2**70):  # a pool that large would exhaust memory starting up
        with pytest.raises(qflume.InvalidInputError, match=r"more than 4096 threads"):
            qflume.set_threads(huge)
    assert qflume.get_threads() == before


def test_non_contiguous_splade_logits_are_a_shape_error() -> None:
    logits = np.zeros((1, 4, 8), dtype=np.float32)[:, ::2]
    with pytest.raises(qflume.ShapeError, match="logits must be C-contiguous"):
        _core.splade_pool(logits, np.ones((1, 2), dtype=np.int64))


def test_bad_texts_are_invalid_type_errors_naming_the_item() -> None:
    bm25 = qflume.Bm25()
    with pytest.raises(qflume.InvalidTypeError, match=r"text 1 is int, not str"):
        bm25.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(qflume.InvalidTypeError, match=r"texts must be a str or an iterable"):
        bm25.embed_query(3)  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidTypeError, match=r"Bm25: k must be a number, got 'x'"):
        qflume.Bm25(k="x")  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidInputError, match=r"token_max_length must be >= 0"):
        qflume.Bm25(token_max_length=-1)
    chunker = qflume.Chunker(20)
    with pytest.raises(qflume.InvalidTypeError, match=r"chunk\(\) takes a str, got int"):
        chunker.chunk(5)  # type: ignore[arg-type]
    with pytest.raises(qflume.InvalidTypeError, match=r"chunk_many: texts\[1\] must be a str"):
        chunker.chunk_many(["a", None])  # type: ignore[list-item]
    with pytest.raises(qflume.InvalidTypeError, match=r"chunk_batch: keys\[0\] must be a str"):
        chunker.chunk_batch(["a"], [7])  # type: ignore[list-item]
    with pytest.raises(qflume.InvalidTypeError, match=r"chunk_file: path must be a str"):
        chunker.chunk_file(3.5)  # type: ignore[arg-type]


def test_metrics_jobs_and_test_server_misuse_are_qflume_errors(tmp_path: Path) -> None:
    from qflume.jobs import JobQueue
    from qflume.metrics import Metrics
    from qflume.testing import QdrantGrpcServer

    with pytest.raises(qflume.InvalidInputError, match="window must be >= 1"):
        Metrics(window=0)
    with pytest.raises(qflume.InvalidInputError, match="not a valid name"):
        Metrics().inc("bad name")
    with pytest.raises(qflume.InvalidInputError, match="max_queued must be >= 1"):
        JobQueue(tmp_path / "jobs.db", {}, max_queued=0)
    server = QdrantGrpcServer(tmp_path / "store")
    with pytest.raises(qflume.StateError, match="not started") as info:
        _ = server.port
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(qflume.InvalidInputError, match="n must be >= 1"):
        server.fail_next(0)
    with pytest.raises(qflume.InvalidInputError, match="seconds must be >= 0"):
        server.set_latency(-1)


# The public surface, walked: each public callable of `qflume` is called with a bad argument and
# must answer with a QflumeError (never a bare TypeError / AttributeError from deep inside).


def _public_bad_calls(tmp: Path) -> dict[str, list[tuple[str, Any]]]:
    return {
        "AlertMonitor": [
            ("thresholds=[5]", lambda: qflume.AlertMonitor(thresholds=[5])),  # type: ignore[list-item]
            ("interval=-1", lambda: qflume.AlertMonitor(interval=-1)),
        ],
        "AsyncPipeline": [
            ("read_threads=0", lambda: qflume.AsyncPipeline("c", store=tmp / "s", read_threads=0))
        ],
        "Bm25": [
            ("k='x'", lambda: qflume.Bm25(k="x")),  # type: ignore[arg-type]
            ("stopwords=5", lambda: qflume.Bm25(stopwords=5)),  # type: ignore[arg-type]
            ("embed(5)", lambda: qflume.Bm25().embed(5)),  # type: ignore[arg-type]
            ("tokens(3)", lambda: qflume.Bm25().tokens(3)),  # type: ignore[arg-type]
        ],
        "Chunker": [
            ("Chunker(0)", lambda: qflume.Chunker(0)),
            ("chunk(5)", lambda: qflume.Chunker(9).chunk(5)),  # type: ignore[arg-type]
            ("count_tokens(5)", lambda: qflume.Chunker(9).count_tokens(5)),  # type: ignore[arg-type]
        ],
        "Embedder": [("missing folder", lambda: qflume.Embedder(tmp / "no-model"))],
        "EmbeddingCache": [
            ("max_entries='x'", lambda: qflume.EmbeddingCache(tmp / "c.db", max_entries="x"))  # type: ignore[arg-type]
        ],
        "FileEntry": [
            ("key=5", lambda: qflume.FileEntry(5, "p", 1, 1)),  # type: ignore[arg-type]
            ("size=-1", lambda: qflume.FileEntry("k", "p", -1, 1)),
            ("hash='x'", lambda: qflume.FileEntry("k", "p", 1, 1, "x")),  # type: ignore[arg-type]
        ],
        "Pipeline": [("collection=5", lambda: qflume.Pipeline(5, store=tmp / "s2"))],  # type: ignore[arg-type]
        "Splade": [("missing folder", lambda: qflume.Splade(tmp / "no-model"))],
        "Threshold": [("kind='x'", lambda: qflume.Threshold("x", "y", "z", 1))],
        "chunk_file": [
            ("missing file", lambda: next(iter(qflume.chunk_file(tmp / "no.txt", max_chars=9)))),
            ("path=5", lambda: qflume.chunk_file(5, max_chars=9)),  # type: ignore[arg-type]
        ],
        "content_hash": [("12345", lambda: qflume.content_hash(12345))],  # type: ignore[arg-type]
        "delete": [("target=None", lambda: qflume.delete(None, ids=["x"]))],
        "health": [("target=None", lambda: qflume.health(None))],
        "ingest": [
            ("missing path", lambda: qflume.ingest(tmp / "nope", "c", store=tmp / "s3")),
            ("paths=5", lambda: qflume.ingest(5, "c", store=tmp / "s4")),  # type: ignore[arg-type]
        ],
        "ingest_records": [
            ("records=5", lambda: qflume.ingest_records(5, "c", store=tmp / "s5")),  # type: ignore[arg-type]
        ],
        "load_config": [
            ("missing file", lambda: qflume.load_config(tmp / "nope.toml")),
            ("explicit=5", lambda: qflume.load_config(5)),  # type: ignore[arg-type]
        ],
        "model_fingerprint": [("missing folder", lambda: qflume.model_fingerprint(tmp / "no"))],
        "point_id": [
            ("key=5", lambda: qflume.point_id(5, bytes(16))),  # type: ignore[arg-type]
            ("short hash", lambda: qflume.point_id("k", b"short")),
        ],
        "read_text": [
            ("missing file", lambda: qflume.read_text(tmp / "nope")),
            ("path=5", lambda: qflume.read_text(5)),  # type: ignore[arg-type]
        ],
        "scan": [
            ("paths=5", lambda: qflume.scan(5)),  # type: ignore[arg-type]
            ("exclude=[1]", lambda: qflume.scan(tmp, exclude=[1])),  # type: ignore[list-item]
            ("max_file_size=-1", lambda: qflume.scan(tmp, max_file_size=-1)),
        ],
        "search": [
            ("queries='q'", lambda: qflume.search(tmp / "s6", "q")),  # type: ignore[arg-type]
            ("target=None", lambda: qflume.search(None, ["q"])),
        ],
        "set_threads": [("n=-1", lambda: qflume.set_threads(-1))],
        "update_payload": [("target=None", lambda: qflume.update_payload(None, [{}]))],
    }


# Callables with nothing to refuse: data records and an argument-less getter.
NO_BAD_CALL = {"ChunkBatch", "ProgressEvent", "get_threads"}

# Bad calls still answered with a bare builtin, in modules whose owners are changing them now:
# each is expected to fail until it is fixed (strict: a fix makes the test say so).
PENDING: dict[tuple[str, str], str] = {}  # (callable, bad call) -> the module that still errs


def _bad_call_ids() -> list[Any]:
    params = []
    for name, calls in _public_bad_calls(Path("/nonexistent")).items():
        for label, _ in calls:
            marks = []
            owner = PENDING.get((name, label))
            if owner is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=f"plain error in {owner}"))
            params.append(pytest.param(name, label, id=f"{name}:{label}", marks=marks))
    return params


def test_every_public_callable_has_a_bad_call() -> None:
    callables = {
        n
        for n in qflume.__all__
        if callable(getattr(qflume, n))
        and not (
            isinstance(getattr(qflume, n), type) and issubclass(getattr(qflume, n), BaseException)
        )
    }
    covered = set(_public_bad_calls(Path("/nonexistent"))) | NO_BAD_CALL
    assert callables - covered == set(), "give each new public callable a bad call here"
    assert covered - callables == set()


@pytest.mark.parametrize(("name", "label"), _bad_call_ids())
def test_a_bad_call_of_the_public_api_raises_a_qflume_error(
    name: str, label: str, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("some text")
    call = dict(_public_bad_calls(tmp_path)[name])[label]
    try:
        call()
    except qflume.QflumeError:
        return
    except Exception as e:
        pytest.fail(f"qflume.{name} ({label}) raised a bare {type(e).__name__}: {e}")
    pytest.fail(f"qflume.{name} ({label}) raised nothing")


ROOT = Path(__file__).resolve().parents[1]
# Files still raising bare builtins (their owner is converting them): each must shrink to none.
PENDING_FILES: set[str] = set()  # modules still raising a bare builtin


def test_no_module_raises_a_bare_builtin() -> None:
    """Source check behind the walk above: qflume's Python raises its own classes, and the Rust
    bindings build their errors through `py/error.rs` (never PyValueError & co)."""
    import re

    py = re.compile(
        r"raise (ValueError|TypeError|RuntimeError|OSError|FileNotFoundError|KeyError)\("
    )
    rs = re.compile(r"\bPy(ValueError|TypeError|RuntimeError|OSError|KeyError|IndexError)\b")
    found = []
    for pattern, files in (
        (py, sorted((ROOT / "python" / "qflume").rglob("*.py"))),
        (rs, sorted((ROOT / "rust").rglob("*.rs"))),
    ):
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if rel in PENDING_FILES:
                continue
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert found == []
