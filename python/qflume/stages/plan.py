"""The plan stage: what changed, against the state.

`plan_files` scans folders (Rust: parallel walk and hash, unchanged files by size and mtime
against the state) and `plan_records` checks records; both yield the documents that need work
(`Doc`) and, with ``delete_missing``, ``("delete", key, prev)`` for documents gone since.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from qflume._core import content_hash
from qflume._validate import metadata_problem, printable, text_problem
from qflume.payload import SOURCE
from qflume.stages.batch import RECORDS_ROOT, RECOVERED_ROOT, Doc
from qflume.stages.context import Run
from qflume.state import DocState

if TYPE_CHECKING:
    from qflume.collection import Collection

__all__ = ["Planned", "plan_files", "plan_records"]

#: What the plan stage yields: a document to chunk, or ("delete", key, its state row).
Planned = Doc | tuple[str, str, DocState]
#: Documents looked up in the state at once.
_LOOKUP = 256


def _still_there(root: str, key: str, path: str | None = None) -> bool:
    """Whether another document ``key`` of ``root`` still exists there (records always do) than
    the file at ``path``: when it does not, the same key under another root is the document
    moved (or the same file named through another root), not a second one."""
    if root == RECOVERED_ROOT:
        return False
    if root == RECORDS_ROOT:
        return True
    # a folder root holds the key below it; a file given as the root is the document itself
    old = os.path.join(root, key) if os.path.isdir(root) else root
    if not os.path.lexists(old):
        return False
    return path is None or os.path.realpath(old) != os.path.realpath(path)


def _conflict(key: str, had: str, new: str | None) -> str:
    where = "the records" if had == RECORDS_ROOT else had
    now = "records" if new is None else new
    return (
        f"key-conflict: {key!r} is already in this collection from {where}; {now} has a document "
        "with the same key (keys are paths relative to the folder given). Ingest both from their "
        "common parent folder, or into another collection"
    )


def _gone(col: Collection, root: str, seen: set[str]) -> Iterator[Planned]:
    gone = [k for k in col.state.keys_under([root]) if k not in seen]
    for key, prev in col.state.get_many(gone).items():
        yield ("delete", key, prev)


def plan_files(
    col: Collection,
    run: Run,
    roots: Sequence[str],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    delete_missing: bool = True,
) -> Iterator[Planned]:
    """The documents under ``roots`` (absolute paths) that need work, root by root."""
    from qflume.scan import scan

    report, progress = run.report, run.progress
    for root in roots:
        entries = scan(
            [root],
            include=include,
            exclude=exclude,
            known=_known(col, root),
            max_file_size=col.config.file_size_limit,
            raw_extensions=col.readers.extensions(),
        )
        report.documents_seen += len(entries)
        progress.add_documents(
            len(entries), bytes=sum(e.size for e in entries if e.ok and not e.unchanged)
        )
        seen_keys: set[str] = set()
        pending: list[Any] = []
        for e in entries:
            seen_keys.add(e.key)
            if e.skip is not None:
                run.skip(e.key, e.skip, e.detail or "")
                continue
            if e.unchanged:
                report.documents_unchanged += 1
                progress.advance(documents=1)
                continue
            pending.append(e)
            if len(pending) >= _LOOKUP:
                yield from _diff_files(col, run, root, pending)
                pending = []
            if run.stop.is_set():
                return
        yield from _diff_files(col, run, root, pending)
        if delete_missing and not run.stop.is_set():
            yield from _gone(col, root, seen_keys)


def _known(col: Collection, root: str) -> dict[str, tuple[int, int, bytes]]:
    """The fast path applies only to documents fully committed with this pipeline."""
    known = col.state.known_files([root])
    if not known:
        return known
    for key in col.state.not_current(root, col.fingerprint(), col.reader_fingerprint()):
        known.pop(key, None)
    return known


def _diff_files(col: Collection, run: Run, root: str, entries: list[Any]) -> Iterator[Doc]:
    if not entries:
        return
    report = run.report
    prev = col.state.get_many([e.key for e in entries])
    fp, reader_fp = col.fingerprint(), col.reader_fingerprint()
    touched: list[tuple[str, int, int]] = []
    for e in entries:
        p = prev.get(e.key)
        if p is not None and p.root != root and _still_there(p.root, e.key, e.path):
            run.skip(e.key, _conflict(e.key, p.root, root), size=e.size)
            continue
        meta = {SOURCE: e.key}
        meta_json = json.dumps(meta, sort_keys=True, ensure_ascii=False)
        reader = col.readers.get(e.path)
        if p is not None and p.content_hash == e.hash and not p.pending:
            # a reader's document metadata (a title) comes from the bytes: same bytes, same
            if (
                p.fingerprint == reader_fp
                if reader is not None
                else p.fingerprint == fp and p.meta_json == meta_json
            ):
                report.documents_unchanged += 1
                touched.append((e.key, e.size, e.mtime_ns))
                run.progress.advance(documents=1, dropped_bytes=e.size)
                continue
        if p is None or not p.chunks:
            report.documents_new += 1
        else:
            report.documents_changed += 1
        yield Doc(
            e.key, root, e.hash, e.size, e.mtime_ns, meta, meta_json, p, path=e.path,
            reader=reader,
        )  # fmt: skip
    if touched and not run.dry_run:
        col.state.touch(touched)


def plan_records(
    col: Collection, run: Run, records: Iterable[Mapping[str, Any]], delete_missing: bool = False
) -> Iterator[Planned]:
    """The records (``{"id", "text", "metadata"}``) that need work, keyed by id."""
    report = run.report
    seen: set[str] = set()
    pending: list[Doc] = []

    def flush() -> Iterator[Doc]:
        prev = col.state.get_many([d.key for d in pending])
        fp = col.fingerprint()
        for d in pending:
            p = prev.get(d.key)
            if p is not None and p.root not in (RECORDS_ROOT, RECOVERED_ROOT):
                run.skip(d.key, _conflict(d.key, p.root, None))
                continue
            d.prev = p
            if (
                p is not None
                and p.content_hash == d.content_hash
                and p.meta_json == d.meta_json
                and not p.pending
                and p.fingerprint == fp
            ):
                report.documents_unchanged += 1
                run.progress.advance(documents=1)
                continue
            if p is None or not p.chunks:
                report.documents_new += 1
            else:
                report.documents_changed += 1
            yield d

    for i, rec in enumerate(records):
        if run.stop.is_set():
            break
        report.documents_seen += 1
        doc = record_doc(i, rec, run)
        if doc is None:
            continue
        if doc.key in seen:
            run.skip(doc.key, "duplicate id in this run")
            continue
        seen.add(doc.key)
        pending.append(doc)
        if len(pending) >= _LOOKUP:
            yield from flush()
            pending = []
    yield from flush()
    if delete_missing and not run.stop.is_set():
        yield from _gone(col, RECORDS_ROOT, seen)


class _Skip(Exception):
    """A record that cannot be used: (key, reason)."""


def record_doc(i: int, rec: Mapping[str, Any], run: Run) -> Doc | None:
    """Record ``#i`` as a document, or None when it is skipped (with its reason)."""
    try:
        key, text, meta, meta_json, h = _checked_record(i, rec)
    except _Skip as s:
        run.skip(*s.args)
        return None
    return Doc(key, RECORDS_ROOT, h, len(text), 0, meta, meta_json, None, text=text)


def _checked_record(i: int, rec: Any) -> tuple[str, str, dict[str, Any], str, bytes]:
    """(key, text, metadata, its JSON, content hash) of record ``#i``; `_Skip` if unusable."""
    if not isinstance(rec, Mapping):
        raise _Skip(f"#{i}", f"record #{i} is {type(rec).__name__}, not a mapping")
    if "_error" in rec:  # a line the reader could not parse
        raise _Skip(f"#{i}", str(rec["_error"]))
    rid = rec.get("id")
    if rid is None or isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise _Skip(f"#{i}", f"record #{i} has no usable 'id' (a str or int)")
    key = str(rid)
    bad = text_problem(key, f"record #{i}: id '{printable(key)}'")
    if bad:
        raise _Skip(f"#{i}", bad)
    text = rec.get("text")
    if not isinstance(text, str):
        raise _Skip(key, f"record {key!r} has no 'text' string")
    if not text.strip():
        raise _Skip(key, "empty")
    meta = rec.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise _Skip(key, f"record {key!r}: 'metadata' must be an object")
    bad = metadata_problem(meta)
    if bad:
        raise _Skip(key, f"record {key!r}: {bad}")
    meta = {**meta, SOURCE: key}
    try:
        meta_json = json.dumps(meta, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise _Skip(key, f"record {key!r}: metadata is not JSON: {e}") from None
    try:
        h = content_hash(text)
    except UnicodeEncodeError:
        raise _Skip(key, "not-utf8 (lone surrogates in text)") from None
    return key, text, meta, meta_json, h
