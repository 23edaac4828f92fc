"""The Rust CoreError -> Python exception mapping: right class, right builtin, input named."""

from __future__ import annotations

from pathlib import Path

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
