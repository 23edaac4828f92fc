"""The `qflume` command (also `python -m qflume`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qflume._validate import display
from qflume.exceptions import InvalidInputError, QflumeError


def _target_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", "-c", required=True, help="collection name")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--store", help="embedded Qdrant Edge store folder (default ./.qflume)")
    t.add_argument("--url", help="Qdrant server gRPC URL, e.g. http://localhost:6334")
    p.add_argument("--api-key", default=os.environ.get("QDRANT_API_KEY"), help="server API key")
    p.add_argument("--state-dir", help="where state and cache live for --url (default ./.qflume)")
    p.add_argument("--model", help="model folder (model.onnx + tokenizer.json, or BERT weights)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="qflume", description="Move documents into Qdrant fast, and keep them in sync."
    )
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    sub = ap.add_subparsers(dest="command")

    p = sub.add_parser("ingest", help="ingest files (or JSONL/Parquet records) into a collection")
    p.add_argument("paths", nargs="+", help="folders or files; *.jsonl / *.parquet with --records")
    _target_args(p)
    p.add_argument("--records", action="store_true", help="read records from JSONL/Parquet files")
    p.add_argument("--sparse", choices=["none", "bm25", "splade"], default="none")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--chunk-chars", type=int, help="chunk size in characters")
    size.add_argument("--chunk-tokens", type=int, help="chunk size in model tokens (default 64)")
    p.add_argument("--overlap", type=int, default=0, help="overlap (chars or tokens)")
    p.add_argument("--include", action="append", help="glob of files to include (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of files to exclude (repeatable)")
    p.add_argument("--keep-missing", action="store_true", help="don't delete removed documents")
    p.add_argument("--delete-missing", action="store_true", help="records: delete absent ids")
    p.add_argument("--wait", action="store_true", help="wait for each batch to be applied")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--max-memory", type=int, help="bytes the stage queues may hold")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("search", help="search a collection (several queries in one batch)")
    p.add_argument("queries", nargs="+")
    _target_args(p)
    p.add_argument("--limit", type=int, default=5)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--hybrid", action="store_true", help="dense + BM25 fused by RRF")
    mode.add_argument("--sparse-only", action="store_true", help="BM25 only")
    p.add_argument(
        "--fusion",
        choices=["dbsf", "rrf"],
        default="dbsf",
        help="hybrid fusion on the server (default dbsf: measured better, no ties)",
    )
    p.add_argument("--source", help="only hits whose metadata.source starts with this")

    p = sub.add_parser("status", help="documents, points, cache and last run")
    _target_args(p)

    p = sub.add_parser("verify", help="reconcile the state with the collection")
    _target_args(p)
    p.add_argument("--repair", action="store_true", help="fix what is found")

    p = sub.add_parser(
        "model", help="ONNX models: qflume model build SRC [--int8], qflume model info"
    )
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser(
        "serve", help="HTTP service (qflume serve --collection C ...)", add_help=False
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    return ap


def _pipeline(args: argparse.Namespace, **kw: Any) -> Any:
    from qflume.pipeline import Pipeline

    return Pipeline(
        args.collection,
        store=args.store,
        url=args.url,
        api_key=args.api_key,
        model=args.model,
        state_dir=args.state_dir,
        **kw,
    )


def _read_records(paths: Sequence[str]) -> Iterator[dict[str, Any]]:
    for path in paths:
        p = Path(path)
        if p.suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError as e:
                raise InvalidInputError(f"{p}: reading Parquet needs pyarrow installed") from e
            for batch in pq.ParquetFile(p).iter_batches(batch_size=1024):
                yield from batch.to_pylist()
            continue
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    # A bad line becomes a record the pipeline reports as skipped.
                    yield {"id": None, "_error": f"{p}:{n}: not JSON: {e}"}
                    continue
                yield rec


def _print(obj: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        print(json.dumps(obj, ensure_ascii=False))
    else:
        print(human)


def cmd_ingest(args: argparse.Namespace) -> int:
    pipe = _pipeline(
        args,
        sparse=args.sparse,
        chunk_chars=args.chunk_chars,
        chunk_tokens=args.chunk_tokens,
        overlap=args.overlap,
        wait=args.wait,
        max_memory=args.max_memory,
        progress=False if (args.no_progress or args.json) else None,
    )
    with pipe:
        if args.records:
            report = pipe.ingest_records(
                _read_records(args.paths), delete_missing=args.delete_missing, dry_run=args.dry_run
            )
        else:
            report = pipe.ingest(
                args.paths,
                include=args.include,
                exclude=args.exclude,
                delete_missing=not args.keep_missing,
                dry_run=args.dry_run,
            )
    d = report.as_dict()
    verb = "would" if args.dry_run else "did"
    human = (
        f"{'plan' if args.dry_run else 'ingested'}: {d['documents_seen']} documents seen, "
        f"{d['documents_new']} new, {d['documents_changed']} changed, "
        f"{d['documents_unchanged']} unchanged, {d['documents_deleted']} deleted, "
        f"{d['documents_skipped']} skipped; {verb} embed {d['chunks_embedded']} chunks "
        f"({d['cache_hits']} from cache), upsert {d['points_upserted']} points, "
        f"delete {d['points_deleted']}; {d['elapsed_s']:.2f} s"
    )
    if d["skipped"] and not args.json:
        for s in d["skipped"][:20]:
            detail = f" ({display(s['detail'])})" if s.get("detail") else ""
            human += f"\n  skipped {display(s['key'])}: {display(s['reason'])}{detail}"
        if len(d["skipped"]) > 20:
            human += f"\n  ... and {len(d['skipped']) - 20} more (see --json)"
    if report.interrupted:
        human += "\nstopped early: what was sent is committed; run again to finish"
    _print(d, args.json, human)
    return 130 if report.interrupted else 0


def cmd_search(args: argparse.Namespace) -> int:
    mode = "hybrid" if args.hybrid else "sparse" if args.sparse_only else "dense"
    with _pipeline(args, lock=False) as pipe:
        from qflume.search import search

        flt = {"source_prefix": args.source} if args.source else None
        results = search(
            pipe, args.queries, limit=args.limit, mode=mode, filter=flt, fusion=args.fusion
        )
    out = {"results": [[h.as_dict() for h in hits] for hits in results]}
    lines = []
    for q, hits in zip(args.queries, results, strict=True):
        lines.append(f"== {display(q)}")
        for h in hits:
            snippet = " ".join(h.page_content.split())[:160]
            lines.append(
                f"  {h.score:.4f}  {display(h.source)} [{h.start}:{h.end}]  {display(snippet)}"
            )
    _print(out, args.json, "\n".join(lines))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from qflume.metrics import status_report

    with _pipeline(args, lock=False) as pipe:
        st = status_report(pipe)
    st.pop("metrics", None)  # this process has done nothing yet; last_run holds the run's
    human = "\n".join(
        f"{k}: {v}" for k, v in st.items() if k not in ("last_run", "collection_info", "health")
    )
    info = st.get("collection_info") or {}
    if info:
        human += "\ncollection: " + ", ".join(f"{k}={v}" for k, v in info.items())
    health = st.get("health") or {}
    if health:
        human += f"\nhealth: score {health.get('score')}"
        for prob in health.get("problems", []):
            human += f"\n  {prob['code']}: {prob['message']}"
    _print(st, args.json, human)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with _pipeline(args, recover_state=args.repair) as pipe:
        rep = pipe.verify(repair=args.repair)
    human = ", ".join(f"{k}={v}" for k, v in rep.items() if k != "documents_to_rebuild")
    if rep.get("state_rebuilt"):
        rb = rep["state_rebuilt"]
        human += (
            f"\nthe damaged state was moved to {rb['damaged_file']} and {rb['documents']} "
            "documents were rebuilt from the collection: run the same ingest again to finish"
        )
    elif rep.get("documents_to_rebuild"):
        n = len(rep["documents_to_rebuild"])
        human += (
            f"\nrun the same ingest again: it rebuilds the {n} documents whose points were lost"
        )
    elif rep.get("documents_recovered"):
        human += (
            f"\n{rep['documents_recovered']} documents rebuilt from the collection were not seen "
            "by an ingest since: ingest their folders again (what is gone from them is deleted "
            "then), or delete them by source"
        )
    elif rep.get("documents_pending"):
        human += "\nsome documents have writes pending: run the same ingest again to finish them"
    _print(rep, args.json, human)
    return 0 if rep["ok"] or rep["repaired"] else 1


def _delegate(argv: list[str]) -> int | None:
    """`qflume model ...` and `qflume serve ...` own their whole argument lists."""
    if not argv or argv[0] not in ("model", "serve"):
        return None
    if argv[0] == "model":
        from qflume.model import main as model_main

        return int(model_main(argv[1:]) or 0)
    try:
        import uvicorn  # noqa: F401  (the server, checked before anything starts)

        from qflume.serve import main as serve_main
    except ImportError as e:
        missing = getattr(e, "name", None) or "fastapi"
        print(
            f"qflume serve: needs the serve extra ({missing} is not installed): "
            "pip install 'qflume[serve]'",
            file=sys.stderr,
        )
        return 2
    return int(serve_main(argv[1:]) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        delegated = _delegate(argv)
    except QflumeError as e:
        print(f"qflume: error: {e}", file=sys.stderr)
        return 1
    if delegated is not None:
        return delegated
    ap = _parser()
    args = ap.parse_args(argv)
    if args.version:
        from qflume import __version__

        print(__version__)
        return 0
    if args.command is None:
        ap.print_help()
        return 2
    try:
        handler = {
            "ingest": cmd_ingest,
            "search": cmd_search,
            "status": cmd_status,
            "verify": cmd_verify,
        }[args.command]
        return handler(args)
    except QflumeError as e:
        print(f"qflume: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qflume: aborted; the state is consistent, run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
