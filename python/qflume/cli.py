"""The `qflume` command (also `python -m qflume`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qflume._validate import display
from qflume.exceptions import InvalidInputError, QflumeError, QflumeIOError
from qflume.settings import add_arguments, config_from_args


def _target_args(p: argparse.ArgumentParser, *groups: str, **helps: str) -> None:
    """The pipeline's options (qflume.settings.add_arguments) and --json, --config."""
    add_arguments(p, *groups, helps=helps)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default ./qflume.toml, else [tool.qflume] in ./pyproject.toml)",
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="qflume", description="Move documents into Qdrant fast, and keep them in sync."
    )
    ap.add_argument("--version", action="store_true", help="print the version and exit")
    sub = ap.add_subparsers(dest="command")

    p = sub.add_parser("ingest", help="ingest files (or JSONL/Parquet records) into a collection")
    p.add_argument(
        "paths",
        nargs="*",
        help="folders or files; *.jsonl / *.parquet with --records (default: the config's sources)",
    )
    _target_args(p, "sparse", "sparse_model", "chunking", "limits")
    p.add_argument("--records", action="store_true", help="read records from JSONL/Parquet files")
    p.add_argument("--include", action="append", help="glob of files to include (repeatable)")
    p.add_argument("--exclude", action="append", help="glob of files to exclude (repeatable)")
    p.add_argument(
        "--keep-missing", action="store_true", default=None, help="don't delete removed documents"
    )
    p.add_argument(
        "--delete-missing", action="store_true", default=None, help="records: delete absent ids"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local (default): this machine's threads; ray: a Ray cluster (needs --url)",
    )
    p.add_argument(
        "--ray-address", help="--engine ray: the cluster to join (default $RAY_ADDRESS, else local)"
    )
    prog = p.add_mutually_exclusive_group()
    prog.add_argument(
        "--progress",
        choices=["auto", "bar", "lines", "none"],
        help="auto (default): a bar on a terminal, else a line every 5 s "
        "($QFLUME_PROGRESS_INTERVAL) on stderr",
    )
    prog.add_argument("--no-progress", action="store_true", help="the same as --progress none")
    p.set_defaults(alerts=None)  # [alerts] of the config file (qflume.alerts)

    p = sub.add_parser("search", help="search a collection (several queries in one batch)")
    p.add_argument("queries", nargs="+")
    _target_args(
        p,
        "sparse_model",
        sparse_model="the SPLADE model to query with (default: the one the last ingest recorded)",
    )
    p.add_argument("--limit", type=int, default=5)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--hybrid",
        action="store_true",
        help="dense + the collection's sparse vectors (BM25 or SPLADE), fused (--fusion)",
    )
    mode.add_argument(
        "--sparse-only", action="store_true", help="the sparse vectors only (BM25 or SPLADE)"
    )
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

    _version_parsers(sub)

    p = sub.add_parser(
        "model", help="ONNX models: qflume model build SRC [--int8], qflume model info"
    )
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser(
        "serve", help="HTTP service (qflume serve --collection C ...)", add_help=False
    )
    p.add_argument("args", nargs=argparse.REMAINDER)
    return ap


#: Options both the command line and the config file set, with the value when neither does.
_DEFAULTS: dict[str, Any] = {
    "overlap": 0,
    "wait": False,
    "progress": "auto",
    "keep_missing": False,
    "delete_missing": False,
}


def _apply_config(args: argparse.Namespace) -> None:
    """Complete ``args``: a flag given on the command line, else the config file, else the
    default."""
    from qflume.config import load_config

    cfg = load_config(args.config)
    args.config_file = cfg
    if cfg is not None:
        opts = dict(cfg.options)
        if args.store is not None or args.url is not None:  # the command line names the target
            opts.pop("store", None)
            opts.pop("url", None)
        if getattr(args, "chunk_chars", None) is not None or getattr(args, "chunk_tokens", None):
            opts.pop("chunk_chars", None)
            opts.pop("chunk_tokens", None)
        for dest, value in opts.items():
            if hasattr(args, dest) and getattr(args, dest) is None:
                setattr(args, dest, value)
    if getattr(args, "no_progress", False):
        args.progress = "none"
    for dest, value in _DEFAULTS.items():
        if hasattr(args, dest) and getattr(args, dest) is None:
            setattr(args, dest, value)
    if args.api_key is None and args.url is not None:
        args.api_key = (cfg.api_key() if cfg is not None else None) or os.environ.get(
            "QDRANT_API_KEY"
        )
    if getattr(args, "paths", None) == [] and cfg is None:
        raise InvalidInputError(
            "nothing to ingest: give folders or files (qflume ingest docs/ -c NAME), or run it "
            "where a qflume.toml lists [[sources]] (or pass --config FILE)"
        )
    if args.collection is None:
        where = f'set collection = "NAME" in {cfg.file}' if cfg else "write it in a qflume.toml"
        raise InvalidInputError(f"no collection given: pass --collection NAME, or {where}")


def _pipeline(args: argparse.Namespace, **kw: Any) -> Any:
    """The Pipeline of the parsed options (and ``kw``)."""
    from qflume.pipeline import Pipeline

    return Pipeline(config_from_args(args, **kw))


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
        try:
            f = open(p, encoding="utf-8")  # closed by the with below
        except OSError as e:
            raise QflumeIOError(e.errno or 0, f"{p}: cannot read the records: {e.strerror}") from e
        with f:
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


def _ingest_runs(args: argparse.Namespace) -> list[tuple[Any, ...]]:
    """What to ingest: the paths given, else the config's sources. Each run is ("files", paths,
    include, exclude, delete_missing) or ("records", paths, delete_missing); file sources with
    the same filters share a run, and all records sources make one (delete_missing spans them)."""
    if args.paths:
        if args.records:
            return [("records", args.paths, args.delete_missing)]
        return [("files", args.paths, args.include, args.exclude, not args.keep_missing)]
    cfg = args.config_file
    assert cfg is not None  # _apply_config refused "no paths and no config"
    if not cfg.sources:
        raise InvalidInputError(
            f'nothing to ingest: {cfg.file} has no [[sources]]; add one (path = "docs") or '
            "give folders or files"
        )
    if args.records:
        raise InvalidInputError(
            "--records applies to the files given on the command line; in the config file, "
            "record files are [[sources]] with records = ..."
        )
    from qflume.exceptions import ConfigError

    runs: list[tuple[Any, ...]] = []
    records: list[str] = []
    for src in cfg.sources:
        target = src.path if src.path is not None else src.records
        if not os.path.exists(target):
            key = cfg.name(f"{src.key}.{'path' if src.path is not None else 'records'}")
            raise ConfigError(
                f"{cfg.file}: '{key}' names {target}, which does not exist", file=cfg.file, key=key
            )
        if src.records is not None:
            records.append(str(src.records))
            continue
        include = args.include if args.include is not None else src.include
        exclude = args.exclude if args.exclude is not None else src.exclude
        delete = not (args.keep_missing or src.keep_missing)
        if runs and runs[-1][2:] == (include, exclude, delete):
            runs[-1][1].append(str(src.path))
        else:
            runs.append(("files", [str(src.path)], include, exclude, delete))
    if records:
        delete = bool(args.delete_missing) or any(s.delete_missing for s in cfg.sources)
        runs.append(("records", records, delete))
    return runs


def _merge_reports(reports: list[Any]) -> Any:
    """One report for several runs (the config's sources): counts add up, lists join."""
    if len(reports) == 1:
        return reports[0]
    import dataclasses

    out = dataclasses.replace(reports[0], skipped=list(reports[0].skipped), stages={})
    for f in dataclasses.fields(out):
        if f.name == "stages":
            continue
        values = [getattr(r, f.name) for r in reports]
        if isinstance(values[0], bool):
            setattr(out, f.name, any(values))
        elif isinstance(values[0], list):
            setattr(out, f.name, [x for v in values for x in v])
        elif isinstance(values[0], (int, float)):
            setattr(out, f.name, sum(values))
        elif isinstance(values[0], dict) and all(
            isinstance(x, int) for v in values for x in v.values()
        ):  # counts by key (sink_errors)
            summed: dict[str, int] = {}
            for v in values:
                for k, n in v.items():
                    summed[k] = summed.get(k, 0) + n
            setattr(out, f.name, summed)
        elif isinstance(values[0], dict):  # the state after the last run (storage, setup)
            setattr(out, f.name, values[-1])
    for r in reports:
        for name, st in r.stages.items():
            if name not in out.stages:
                out.stages[name] = dataclasses.replace(st)
                continue
            merged = out.stages[name]
            for f in dataclasses.fields(st):
                v = getattr(st, f.name)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    setattr(merged, f.name, getattr(merged, f.name) + v)
    return out


def cmd_ingest(args: argparse.Namespace) -> int:
    runs = _ingest_runs(args)
    if args.engine == "ray":
        try:
            from qflume import ray as ray_engine
        except ImportError as e:
            raise InvalidInputError(f"--engine ray: {e}") from None
        if args.url is None:
            raise InvalidInputError(f"--engine ray: {ray_engine.STORE_REFUSED}")
    if args.sparse_model is not None and args.sparse != "splade":
        raise InvalidInputError(
            f"--sparse-model is the SPLADE model: give --sparse splade with it (not {args.sparse})"
        )
    pipe = _pipeline(args)  # progress on stderr: --json keeps stdout one JSON object
    reports = []
    since = time.time()
    with pipe, _alert_monitor(args):
        for run in runs:
            if args.engine == "ray":
                if run[0] == "records":
                    source, opts = _read_records(run[1]), {"delete_missing": run[2]}
                else:
                    source = run[1]
                    opts = {"include": run[2], "exclude": run[3], "delete_missing": run[4]}
                report = ray_engine.run(
                    pipe, source, dry_run=args.dry_run, address=args.ray_address, **opts
                )
            elif run[0] == "records":
                report = pipe.ingest_records(
                    _read_records(run[1]), delete_missing=run[2], dry_run=args.dry_run
                )
            else:
                report = pipe.ingest(
                    run[1],
                    include=run[2],
                    exclude=run[3],
                    delete_missing=run[4],
                    dry_run=args.dry_run,
                )
            reports.append(report)
            if report.interrupted:
                break
    report = _merge_reports(reports)
    if len(reports) > 1:  # one entry per alert, not one per run it overlapped
        from qflume import alerts

        report.alerts = alerts.during(since, time.time())
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
    from qflume.analysis import lines

    for line in lines(d):
        human += f"\n  {display(line)}"
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


@contextlib.contextmanager
def _alert_monitor(args: argparse.Namespace) -> Iterator[None]:
    """Alerts checked while an ingest runs (the config's [alerts], else the defaults), logged to
    stderr; the report lists those that were active."""
    import logging

    from qflume.alerts import AlertMonitor, AlertSettings

    settings = args.alerts or AlertSettings()
    thresholds = settings.all_thresholds()
    if args.dry_run or not thresholds:
        yield
        return
    logger = logging.getLogger("qflume.alerts")
    handler = None
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        with AlertMonitor(thresholds, interval=settings.interval, memory_budget=args.max_memory):
            yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)


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
                f"  {h.score:.4f}  {display(h.source or '')} [{h.start}:{h.end}]  {display(snippet)}"
            )
    _print(out, args.json, "\n".join(lines))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from qflume.metrics import status_report

    with _pipeline(args, lock=False) as pipe:
        st = status_report(pipe)
    st.pop("metrics", None)  # this process has done nothing yet; last_run holds the run's
    human = "\n".join(
        f"{k}: {v}"
        for k, v in st.items()
        if k not in ("last_run", "collection_info", "health", "alerts")
    )
    info = st.get("collection_info") or {}
    if info:
        human += "\ncollection: " + ", ".join(f"{k}={v}" for k, v in info.items())
    health = st.get("health") or {}
    if health:
        human += f"\nhealth: score {health.get('score')}"
        for prob in health.get("problems", []):
            human += f"\n  {prob['code']}: {prob['message']}"
    last = st.get("last_run")
    if isinstance(last, dict):
        from qflume.analysis import lines

        human += f"\nlast run: {last.get('elapsed_s')} s"
        for line in lines(last):
            human += f"\n  {display(line)}"
    for a in (st.get("alerts") or {}).get("active", []):
        human += f"\nalert [{a['severity']}] {display(a['message'])} (active now)"
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


def _version_parsers(sub: Any) -> None:
    """reindex, versions, rollback, gc, migrate (qflume.versions)."""
    p = sub.add_parser(
        "reindex",
        help="build the next version with new settings (--model, --chunk-tokens, --sparse) "
        "while searches go on, verify it, swap it in",
    )
    _target_args(p)
    # the new version's settings
    add_arguments(p, "sparse", "sparse_model", "chunking", target=False, dest_prefix="to_")
    p.add_argument("--rechunk", action="store_true", help="read and chunk the sources again anyway")
    p.add_argument(
        "--records",
        dest="record_files",
        action="append",
        metavar="FILE",
        help="JSONL/Parquet records again (a chunking change of documents from records)",
    )
    p.add_argument("--force", action="store_true", help="build a new version even if unchanged")
    p.add_argument(
        "--lock-wait",
        type=float,
        default=600.0,
        help="seconds to wait for a running ingest before the swap (default 600)",
    )
    p.add_argument("--no-progress", action="store_true", help="no phase lines on stderr")
    p = sub.add_parser("versions", help="a collection's versions and which one is live")
    _target_args(p)
    p = sub.add_parser("rollback", help="make the previous version live again")
    _target_args(p)
    p.add_argument("--to", type=int, help="the version to make live (default: the previous one)")
    p = sub.add_parser("gc", help="drop old versions")
    _target_args(p)
    p.add_argument("--keep", type=int, default=2, help="versions kept, the live one included")
    p = sub.add_parser(
        "migrate", help="put a plain collection behind versions (an alias on a server)"
    )
    _target_args(p)


def _version_target(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "store": args.store,
        "url": args.url,
        "api_key": args.api_key,
        "state_dir": args.state_dir,
    }


def cmd_reindex(args: argparse.Namespace) -> int:
    from qflume.versions import describe, reindex

    opts = dict(args.config_file.options) if args.config_file is not None else {}
    chars, tokens = args.to_chunk_chars, args.to_chunk_tokens
    if chars is None and tokens is None:  # the config's chunking is the one wanted
        chars, tokens = opts.get("chunk_chars"), opts.get("chunk_tokens")
    for name, v in (
        ("--chunk-chars", chars),
        ("--chunk-tokens", tokens),
        ("--overlap", args.to_overlap),
    ):
        if v is not None and v < (0 if name == "--overlap" else 1):
            raise InvalidInputError(
                f"{name} must be {'>= 0' if name == '--overlap' else '>= 1'}, got {v}"
            )
    files = args.record_files
    if files:
        for f in files:
            if not os.path.isfile(f):
                raise QflumeIOError(2, f"{f}: no such records file")
    rep = reindex(
        args.collection,
        **_version_target(args),
        model=args.model,
        chunk_chars=chars,
        chunk_tokens=tokens,
        overlap=args.to_overlap if args.to_overlap is not None else opts.get("overlap"),
        sparse=args.to_sparse or opts.get("sparse"),
        sparse_model=args.to_sparse_model or opts.get("sparse_model"),
        rechunk=args.rechunk,
        records=(lambda: _read_records(files)) if files else None,
        force=args.force,
        lock_wait=args.lock_wait,
        progress=not args.no_progress,
    )
    d = rep.as_dict()
    if rep.unchanged:
        human = (
            f"{display(args.collection)} is already version {rep.version} ({display(rep.name)}) "
            f"with {display(describe(rep.settings))}: nothing to do (--force builds it anyway)"
        )
    else:
        what = (
            "from the live version's texts: nothing read or chunked"
            if rep.path == "texts"
            else f"from the sources: {rep.documents_read} documents read, {rep.chunks_made} chunks"
        )
        human = (
            f"reindexed {display(args.collection)}: version {rep.version} ({display(rep.name)}) "
            f"is live, {rep.points} points, {what}; {rep.chunks_embedded} chunks embedded "
            f"({rep.cache_hits} from cache), {rep.caught_up} documents caught up, "
            f"{rep.self_queries} self-queries found; {rep.elapsed_s:.2f} s"
        )
    _print(d, args.json, human)
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    import time

    from qflume.versions import list_versions

    out = list_versions(args.collection, **_version_target(args))
    names = out["alias"] or ("none" if out["live"] is None else f"{args.collection} (its folder)")
    lines = [f"{display(args.collection)} on {display(out['target'])}: live -> {display(names)}"]
    if out["plain"]:
        lines.append(f"a plain collection: `qflume migrate -c {display(args.collection)}` puts it "
                     "behind versions")  # fmt: skip
    for v in out["versions"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["created_at"] or 0))
        gone = "" if v["exists"] or v["status"] == "dropped" else " (gone)"
        extra = ""
        if v["status"] == "building":
            extra = f"  {v['documents_copied']}/{v['documents']} documents copied"
        lines.append(
            f"  v{v['version']}  {display(v['name'])}  {v['status']}{gone}  {when}  "
            f"{display(v['settings'])}  points={v['points']}{extra}"
        )
    if out.get("note"):
        lines.append(display(out["note"]))
    _print(out, args.json, "\n".join(lines))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from qflume.versions import rollback

    out = rollback(args.collection, to=args.to, **_version_target(args), progress=True)
    _print(out, args.json, f"{display(args.collection)} is version {out['version']} "
           f"({display(out['name'])}) again; version {out['previous']} is kept")  # fmt: skip
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from qflume.versions import gc

    out = gc(args.collection, keep=args.keep, **_version_target(args))
    dropped = ", ".join(f"v{n}" for n in out["dropped"]) or "nothing"
    _print(out, args.json, f"dropped {dropped}; kept " + ", ".join(f"v{n}" for n in out["kept"]))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from qflume.versions import migrate

    out = migrate(args.collection, **_version_target(args), model=args.model, progress=True)
    human = (
        f"{display(args.collection)} now names {display(out['name'])} (version 1)"
        if out["migrated"]
        else f"{display(args.collection)} is already versioned (version {out['version']})"
    )
    _print(out, args.json, human)
    return 0


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
            "reindex": cmd_reindex,
            "versions": cmd_versions,
            "rollback": cmd_rollback,
            "gc": cmd_gc,
            "migrate": cmd_migrate,
        }[args.command]
        _apply_config(args)
        return handler(args)
    except QflumeError as e:
        print(f"qflume: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qflume: aborted; the state is consistent, run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
