"""The SQLite state: locking, write-ahead, commit, and what a crash leaves behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qflume.exceptions import StateError, StateLockedError
from qflume.state import DocUpdate, State


def _update(key: str, chunks: bytes, root: str = "/r") -> DocUpdate:
    return DocUpdate(key, root, b"h" * 16, 10, 123, "{}", "fp", chunks, b"")


def test_second_run_on_same_state_fails_at_once(tmp_path) -> None:
    path = tmp_path / "c.state.sqlite"
    with State(path):
        with pytest.raises(StateLockedError, match="another qflume run"):
            State(path)
        # A reader that doesn't lock (status) still works.
        State(path, lock=False).close()
    State(path).close()  # released on close


def test_lock_is_released_when_the_holder_is_killed(tmp_path) -> None:
    path = tmp_path / "c.state.sqlite"
    code = (
        "import sys, time; from qflume.state import State; "
        f"s = State({str(path)!r}); print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StateLockedError):
            State(path)
        proc.kill()
        proc.wait()
        State(path).close()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_write_ahead_then_commit_clears_pending(tmp_path) -> None:
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    with State(tmp_path / "s.sqlite") as st:
        st.write_ahead({"doc": ("/r", a + b)})
        doc = st.get("doc")
        assert doc is not None and doc.chunks == b"" and doc.pending == a + b
        assert doc.possibly_present() == {a, b}
        st.commit([_update("doc", a)])
        doc = st.get("doc")
        assert doc is not None and doc.chunks == a and doc.pending == b""
        # A crash between write-ahead and commit keeps both the old and the new hashes.
        st.write_ahead({"doc": ("/r", c)})
    with State(tmp_path / "s.sqlite") as st:
        doc = st.get("doc")
        assert doc is not None
        assert doc.possibly_present() == {a, c}
        assert st.stats().pending_documents == 1
        st.commit([], deleted=["doc"])
        assert st.get("doc") is None


def test_known_files_and_keys_under_root(tmp_path) -> None:
    with State(tmp_path / "s.sqlite") as st:
        st.commit([_update("x.md", b"1" * 16, "/r1"), _update("y.md", b"2" * 16, "/r2")])
        assert st.known_files(["/r1"]) == {"x.md": (10, 123, b"h" * 16)}
        assert sorted(st.keys_under(["/r1", "/r2"])) == ["x.md", "y.md"]
        st.touch([("x.md", 11, 456)])
        assert st.known_files(["/r1"])["x.md"][:2] == (11, 456)
        st.set_meta("last_run", {"a": 1})
        assert st.get_meta("last_run") == {"a": 1}


def test_a_broken_state_file_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match=str(path)):
        State(path)
    with pytest.raises(StateError, match="no state here yet"):
        State(tmp_path / "missing.sqlite", lock=False, readonly=True)
