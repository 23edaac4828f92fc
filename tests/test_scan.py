"""qflume.scan: walking, ignore rules, skip reasons, the known fast path, races."""

from __future__ import annotations

import itertools
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

import qflume
from qflume import FileEntry, scan
from qflume.scan import SKIP_REASONS


def write(root: Path, rel: str, data: bytes | str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    p.write_bytes(data)
    return p


def by_key(entries: list[FileEntry]) -> dict[str, FileEntry]:
    return {e.key: e for e in entries}


def keys(entries: list[FileEntry]) -> list[str]:
    return [e.key for e in entries]


def test_entries_carry_key_path_size_mtime_and_content_hash(tmp_path: Path) -> None:
    files = {
        "a.txt": b"alpha\n",
        "docs/b.md": "# Title\n\nsome text, \u00e9t\u00e9 \U0001f600\n".encode(),
        "docs/deep/c.rst": b"Heading\n=======\n" * 50,
        "z.py": b"print('hi')\n",
    }
    for rel, data in files.items():
        write(tmp_path, rel, data)
    entries = scan(tmp_path)
    assert keys(entries) == sorted(files)
    for e in entries:
        p = tmp_path / e.key
        st = p.stat()
        assert e.path == str(p.absolute())
        assert os.path.isabs(e.path)
        assert e.size == st.st_size == len(files[e.key])
        assert e.mtime_ns == st.st_mtime_ns
        assert e.hash == qflume.content_hash(files[e.key])
        assert e.skip is None and e.detail is None and e.ok
        assert e.unchanged is False
    # Deterministic: same input, same output (and FileEntry compares by value).
    assert scan([str(tmp_path)]) == entries
    assert hash(entries[0]) == hash(scan(tmp_path)[0])


def test_skip_reasons_are_the_documented_stable_strings() -> None:
    assert set(SKIP_REASONS) == {
        "binary",
        "not-utf8",
        "too-large",
        "empty",
        "unreadable",
        "vanished",
        "changed-during-scan",
        "symlink-loop",
        "not-a-file",
        "hidden",
        "bad-filename",
    }


def test_gitignore_and_ignore_files_are_honoured_outside_git(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "*.log\nbuild/\n!keep.log\n")
    write(tmp_path, ".ignore", "secret.txt\n")
    write(tmp_path, "a.txt", "a")
    write(tmp_path, "debug.log", "x")
    write(tmp_path, "keep.log", "k")
    write(tmp_path, "secret.txt", "s")
    write(tmp_path, "build/out.txt", "o")
    write(tmp_path, "sub/.gitignore", "local.txt\n")
    write(tmp_path, "sub/local.txt", "l")
    write(tmp_path, "sub/other.txt", "o")
    write(tmp_path, ".hidden/h.txt", "h")
    write(tmp_path, ".dot.txt", "d")
    write(tmp_path, ".git/config", "[core]\n")
    entries = scan(tmp_path)
    assert keys([e for e in entries if e.ok]) == ["a.txt", "keep.log", "sub/other.txt"]
    # hidden entries are reported, a folder once (not walked); .git and the ignore files are not
    hidden = [(e.key, e.skip) for e in entries if not e.ok]
    assert hidden == [(".dot.txt", "hidden"), (".hidden", "hidden")]
    assert "hidden folder, not walked" in next(e.detail for e in entries if e.key == ".hidden")
    assert [e.key for e in scan(tmp_path, include=["*.md"])] == []  # not what was asked for

    everything = keys(scan(tmp_path, ignore_files=False, hidden=True))
    assert everything == [
        ".dot.txt",
        ".gitignore",
        ".hidden/h.txt",
        ".ignore",
        "a.txt",
        "build/out.txt",
        "debug.log",
        "keep.log",
        "secret.txt",
        "sub/.gitignore",
        "sub/local.txt",
        "sub/other.txt",
    ]  # .git is never walked
    assert ".hidden/h.txt" in keys(scan(tmp_path, hidden=True))
    assert all(e.ok for e in scan(tmp_path, hidden=True))
    assert "debug.log" not in keys(scan(tmp_path, hidden=True))


def test_gitignore_of_a_git_repository_and_its_info_exclude(tmp_path: Path) -> None:
    write(tmp_path, ".git/info/exclude", "excluded.txt\n")
    write(tmp_path, ".gitignore", "*.tmp\n")
    write(tmp_path, "docs/a.md", "a")
    write(tmp_path, "docs/b.tmp", "b")
    write(tmp_path, "excluded.txt", "e")
    assert keys(scan(tmp_path)) == ["docs/a.md"]
    # Scanning a subfolder still honours the ignore files above it.
    assert keys(scan(tmp_path / "docs")) == ["a.md"]


def test_include_and_exclude_globs_exclude_wins(tmp_path: Path) -> None:
    for rel in ["a.md", "b.txt", "docs/c.md", "docs/d.txt", "docs/api/e.md", "notes/f.md"]:
        write(tmp_path, rel, rel)
    assert keys(scan(tmp_path, include=["*.md"])) == [
        "a.md",
        "docs/api/e.md",
        "docs/c.md",
        "notes/f.md",
    ]
    assert keys(scan(tmp_path, include="*.md")) == keys(scan(tmp_path, include=["*.md"]))
    assert keys(scan(tmp_path, include=["docs/"])) == ["docs/api/e.md", "docs/c.md", "docs/d.txt"]
    assert keys(scan(tmp_path, include=["/*.md"])) == ["a.md"]
    assert keys(scan(tmp_path, include=["*.md"], exclude=["docs/api/", "notes/*"])) == [
        "a.md",
        "docs/c.md",
    ]
    # Exclude wins over include for the very same file.
    assert keys(scan(tmp_path, include=["*.md"], exclude=["*.md"])) == []
    assert keys(scan(tmp_path, exclude=["**/*.txt", "docs"])) == ["a.md", "notes/f.md"]


def test_bad_glob_is_an_invalid_input_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(qflume.InvalidInputError, match=r"\[z-a\]"):
        scan(tmp_path, include=["[z-a]"])
    with pytest.raises(TypeError, match="patterns must be str"):
        scan(tmp_path, exclude=[1])  # type: ignore[list-item]


def test_file_given_directly_is_keyed_by_its_name(tmp_path: Path) -> None:
    p = write(tmp_path, "docs/readme.md", "hello")
    write(tmp_path, ".gitignore", "*.md\n")
    (e,) = scan(p)
    assert e.key == "readme.md"
    assert e.path == str(p)
    assert e.hash == qflume.content_hash(b"hello")
    # Given explicitly, it is scanned even though include/ignore rules would drop it.
    assert keys(scan([p], include=["*.txt"])) == ["readme.md"]


def test_nested_roots_list_each_file_once_under_the_outer_root(tmp_path: Path) -> None:
    write(tmp_path, "top.txt", "t")
    write(tmp_path, "sub/inner.txt", "i")
    a = scan([tmp_path / "sub", tmp_path])
    b = scan([tmp_path, tmp_path / "sub"])
    assert keys(a) == keys(b) == ["sub/inner.txt", "top.txt"]
    assert a == b
    # A file given directly inside a given folder: once, with its folder key.
    assert keys(scan([tmp_path, tmp_path / "sub" / "inner.txt"])) == ["sub/inner.txt", "top.txt"]


def test_two_files_with_the_same_key_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "a/x.txt", "1")
    write(tmp_path, "b/x.txt", "2")
    with pytest.raises(qflume.InvalidInputError, match=r"x\.txt.*a/x\.txt.*b/x\.txt"):
        scan([tmp_path / "a", tmp_path / "b"])


def test_missing_root_is_an_io_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(qflume.QflumeIOError, match="nope") as info:
        scan([tmp_path, missing])
    assert isinstance(info.value, OSError)
    assert info.value.errno == 2
    with pytest.raises(qflume.InvalidInputError, match="empty path"):
        scan([""])
    with pytest.raises(qflume.InvalidInputError, match="max_file_size"):
        scan(tmp_path, max_file_size=-1)


def test_content_skip_reasons(tmp_path: Path) -> None:
    # > 256 KiB: read in pieces, and the piece boundary at 256 KiB falls inside an emoji.
    big_ok = b"xxxxxx" + ("\u00e9\u4e2d\U0001f600abc\n" * 40_000).encode()
    assert big_ok[2**18 - 1] == 0xF0  # first byte of a 4-byte character
    late_nul = b"a" * 300_000 + b"\0" + b"b" * 10
    late_bad = b"x" * 400_000 + b"\xc3\x28" + b"y" * 10
    files = {
        "text.txt": b"plain\n",
        "bom.txt": b"\xef\xbb\xbfwith bom\n",
        "big_ok.txt": big_ok,
        "nul.bin": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        "late_nul.txt": late_nul,
        "latin1.txt": "caf\u00e9 cr\u00e8me\n".encode("latin-1"),
        "late_bad.txt": late_bad,
        "truncated.txt": b"abc\xe2\x82",
        "utf16.txt": "hello".encode("utf-16"),
        "empty.txt": b"",
        "huge.txt": b"z" * 5000,
        "at_cap.txt": b"z" * 4096,
    }
    for rel, data in files.items():
        write(tmp_path, rel, data)
    got = by_key(scan(tmp_path, max_file_size=max(4096, len(big_ok))))
    expect = {
        "text.txt": None,
        "bom.txt": None,
        "big_ok.txt": None,
        "nul.bin": "binary",
        "late_nul.txt": "binary",
        "latin1.txt": "not-utf8",
        "late_bad.txt": "not-utf8",
        "truncated.txt": "not-utf8",
        "utf16.txt": "not-utf8",
        "empty.txt": "empty",
        "huge.txt": None,
        "at_cap.txt": None,
    }
    assert {k: e.skip for k, e in got.items()} == expect
    for k, e in got.items():
        if e.skip is None:
            assert e.hash == qflume.content_hash(files[k]), k
        else:
            assert e.hash is None and e.detail, k
    assert "300000" in (got["late_nul.txt"].detail or "")
    assert "400000" in (got["late_bad.txt"].detail or "")

    capped = by_key(scan(tmp_path, max_file_size=4096))
    assert capped["huge.txt"].skip == "too-large"
    assert capped["huge.txt"].size == 5000
    assert "4096" in (capped["huge.txt"].detail or "")
    assert capped["at_cap.txt"].skip is None


def test_read_text_decodes_like_scan(tmp_path: Path) -> None:
    p = write(tmp_path, "bom.txt", b"\xef\xbb\xbfh\xc3\xa9llo\n")
    assert qflume.read_text(p) == "h\u00e9llo\n"
    assert qflume.read_text(str(p)) == "h\u00e9llo\n"
    bad = write(tmp_path, "bad.txt", b"ok\xff")
    with pytest.raises(qflume.DecodeError, match=r"bad\.txt.*offset 2"):
        qflume.read_text(bad)
    with pytest.raises(qflume.QflumeIOError, match=r"missing\.txt"):
        qflume.read_text(tmp_path / "missing.txt")


def test_symlinks_loops_and_broken_links(tmp_path: Path) -> None:
    write(tmp_path, "d/real.txt", "real")
    os.symlink("..", tmp_path / "d" / "up")  # a loop back to the root
    os.symlink("self", tmp_path / "self")  # a link to itself
    os.symlink("nowhere.txt", tmp_path / "broken")
    os.symlink("d/real.txt", tmp_path / "alias.txt")
    got = by_key(scan(tmp_path))
    assert got["d/real.txt"].hash == qflume.content_hash(b"real")
    assert got["alias.txt"].hash == qflume.content_hash(b"real")
    assert got["alias.txt"].path == str(tmp_path / "alias.txt")
    assert got["d/up"].skip == "symlink-loop"
    assert got["self"].skip == "symlink-loop"
    assert got["broken"].skip == "unreadable"
    assert "nowhere.txt" in (got["broken"].detail or "")
    assert len(got) == 5

    nofollow = by_key(scan(tmp_path, follow_links=False))
    assert nofollow["d/real.txt"].ok
    for k in ["alias.txt", "broken", "self", "d/up"]:
        assert nofollow[k].skip == "not-a-file", k


def test_fifo_is_not_a_file_and_does_not_block(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "a")
    os.mkfifo(tmp_path / "pipe")
    got = by_key(scan(tmp_path))
    assert got["pipe"].skip == "not-a-file"
    assert "FIFO" in (got["pipe"].detail or "")
    assert got["a.txt"].ok
    (direct,) = scan(tmp_path / "pipe")
    assert direct.skip == "not-a-file"


def test_known_fast_path_does_not_read(tmp_path: Path) -> None:
    write(tmp_path, "same.txt", "same")
    write(tmp_path, "edited.txt", "new content")
    write(tmp_path, "new.txt", "new")
    first = by_key(scan(tmp_path))
    fake = b"\x01" * 16  # not the real hash: proves the file was not read
    edited = first["edited.txt"]
    known = {
        "same.txt": (first["same.txt"].size, first["same.txt"].mtime_ns, fake),
        "edited.txt": (edited.size, edited.mtime_ns - 1, fake),
        "gone.txt": (1, 1, fake),
    }
    got = by_key(scan(tmp_path, known=known))
    assert got["same.txt"].unchanged and got["same.txt"].hash == fake
    assert not got["edited.txt"].unchanged
    assert got["edited.txt"].hash == qflume.content_hash(b"new content")
    assert not got["new.txt"].unchanged and got["new.txt"].ok
    assert "gone.txt" not in got
    # Previous entries work as known values too; a None hash means "not known".
    again = scan(tmp_path, known=first)
    assert all(e.unchanged for e in again)
    assert again == [
        FileEntry(e.key, e.path, e.size, e.mtime_ns, e.hash, unchanged=True) for e in first.values()
    ]
    assert not by_key(scan(tmp_path, known={"same.txt": (4, 0, None)}))["same.txt"].unchanged


def test_known_binary_and_not_utf8_skips_are_reused_without_reading(tmp_path: Path) -> None:
    write(tmp_path, "img.bin", b"\0\1\2")
    write(tmp_path, "old.txt", "caf\u00e9".encode("latin-1"))
    write(tmp_path, "gone.txt", "x")
    first = by_key(scan(tmp_path))
    assert first["img.bin"].skip == "binary" and first["old.txt"].skip == "not-utf8"
    known = {
        k: FileEntry(e.key, e.path, e.size, e.mtime_ns, skip=e.skip, detail="remembered")
        for k, e in first.items()
        if e.skip
    }
    known["gone.txt"] = FileEntry("gone.txt", "", 1, first["gone.txt"].mtime_ns, skip="vanished")
    got = by_key(scan(tmp_path, known=known))
    for k in ["img.bin", "old.txt"]:
        assert got[k].unchanged and got[k].skip == first[k].skip
        assert got[k].detail == "remembered"  # taken from known: the file was not read
    # Skips that say nothing about the bytes are never reused.
    assert got["gone.txt"].ok and not got["gone.txt"].unchanged


def test_bad_known_values_name_the_key(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "a")
    with pytest.raises(qflume.InvalidInputError, match=r"known\['a.txt'\]"):
        scan(tmp_path, known={"a.txt": (1, 2, b"short")})
    with pytest.raises(qflume.InvalidInputError, match=r"known\['a.txt'\]"):
        scan(tmp_path, known={"a.txt": "nonsense"})
    with pytest.raises(TypeError, match="mapping"):
        scan(tmp_path, known=[1, 2])  # type: ignore[arg-type]


def test_file_entry_is_frozen_and_validated() -> None:
    e = FileEntry("k", "/p/k", 3, 7, b"\0" * 16)
    with pytest.raises(AttributeError):
        e.size = 4  # type: ignore[misc]
    assert e.ok and not e.unchanged
    assert "k" in repr(e)
    with pytest.raises(qflume.InvalidInputError, match="16 bytes"):
        FileEntry("k", "/p/k", 3, 7, b"\0")
    with pytest.raises(qflume.InvalidInputError, match="unknown skip reason"):
        FileEntry("k", "/p/k", 3, 7, skip="weird")
    assert FileEntry("k", "/p/k", 0, 0, skip="empty").ok is False
    skipped = FileEntry("k", "/p/k", 0, 0, skip="empty", detail="0 bytes")
    for x in (e, skipped):
        assert pickle.loads(pickle.dumps(x)) == x


def _nobody_dir() -> Path:
    """A fresh folder that uid 65534 can traverse (pytest's tmp_path is 0700 for root)."""
    d = Path(tempfile.mkdtemp(prefix="qflume-scan-"))
    d.chmod(0o755)
    return d


NOBODY_SCAN = textwrap.dedent(
    """
    import json, os, sys
    import qflume
    root, known = sys.argv[1], json.loads(sys.argv[2])
    known = {k: (s, m, bytes.fromhex(h)) for k, (s, m, h) in known.items()}
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    out = [[e.key, e.skip, e.detail, e.unchanged, e.hash and e.hash.hex()]
           for e in qflume.scan(root, known=known)]
    print(json.dumps(out))
    """
)


def test_permission_denied_file_and_folder_as_an_unprivileged_user() -> None:
    """Runs the scan in a child that drops root first: root reads chmod-000 files."""
    if os.geteuid() != 0 and not hasattr(os, "setuid"):
        pytest.skip("needs POSIX")
    root = _nobody_dir()
    try:
        write(root, "ok.txt", "fine")
        write(root, "locked.txt", "secret").chmod(0o000)
        write(root, "known_locked.txt", "old").chmod(0o000)
        write(root, "closed/inner.txt", "x")
        (root / "closed").chmod(0o000)
        st = (root / "known_locked.txt").stat()
        known = {"known_locked.txt": [st.st_size, st.st_mtime_ns, "ab" * 16]}
        proc = subprocess.run(
            [sys.executable, "-c", NOBODY_SCAN, str(root), json.dumps(known)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        got = {
            k: (skip, detail, unchanged, h)
            for k, skip, detail, unchanged, h in json.loads(proc.stdout)
        }
    finally:
        (root / "closed").chmod(0o755)
        shutil.rmtree(root)
    assert got["ok.txt"][0] is None
    assert got["locked.txt"][0] == "unreadable"
    assert "ermission denied" in got["locked.txt"][1]
    assert got["closed"][0] == "unreadable"
    assert "ermission denied" in got["closed"][1]
    # Known and unchanged: never opened, so the lock does not matter.
    assert got["known_locked.txt"] == (None, None, True, "ab" * 16)
    assert set(got) == {"ok.txt", "locked.txt", "closed", "known_locked.txt"}


def test_files_vanishing_during_the_scan_are_hashed_or_reported(tmp_path: Path) -> None:
    contents = {}
    for i in range(2000):
        rel = f"d{i % 20}/f{i}.txt"
        data = f"file {i}\n".encode() * (1 + i % 50)
        write(tmp_path, rel, data)
        contents[rel] = data
    victims = sorted(contents)[::2]
    started = threading.Event()

    def delete() -> None:
        started.wait()
        for rel in victims:
            os.unlink(tmp_path / rel)

    t = threading.Thread(target=delete)
    t.start()
    started.set()
    entries = scan(tmp_path)
    t.join()
    seen_keys = set()
    for e in entries:
        seen_keys.add(e.key)
        assert e.skip in (None, "vanished"), e
        if e.skip is None:
            assert e.hash == qflume.content_hash(contents[e.key])
        else:
            assert e.key in victims
    # Files not deleted are all there.
    assert set(contents) - set(victims) <= seen_keys


def test_a_file_changing_while_read_is_reported(tmp_path: Path) -> None:
    p = write(tmp_path, "growing.txt", b"line of text\n" * 160_000)  # 2 MB
    stop = threading.Event()

    def append() -> None:  # grows, and is cut back to 2 MB now and then: reads stay bounded
        with open(p, "ab") as f:
            for i in itertools.count():
                if stop.is_set():
                    break
                f.write(b"more text\n" * 100)
                f.flush()
                if i % 2000 == 1999:
                    f.truncate(2_080_000)

    t = threading.Thread(target=append)
    t.start()
    reasons = []
    try:
        # A race by nature: retry until one scan overlaps a write (bounded by a deadline).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (e,) = scan(tmp_path, max_file_size=2**24)
            reasons.append(e.skip)
            if e.skip == "changed-during-scan":
                assert "before reading" in (e.detail or "") or "grew" in (e.detail or "")
                break
    finally:
        stop.set()
        t.join()
    assert "changed-during-scan" in reasons
    assert set(reasons) <= {None, "changed-during-scan"}


def test_scan_releases_the_gil(tmp_path: Path) -> None:
    for i in range(400):
        write(tmp_path, f"d{i % 8}/f{i}.txt", b"some text\n" * 3000)
    result: list[list[FileEntry]] = []
    t = threading.Thread(target=lambda: result.append(scan(tmp_path)))
    spins = 0
    t.start()
    while t.is_alive():  # only runs while the scan has let go of the GIL
        spins += 1
    t.join()
    assert len(result[0]) == 400
    assert spins > 1000
