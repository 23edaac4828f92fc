"""The config file of a repeatable job: ``qflume.toml``, or ``[tool.qflume]`` in pyproject.toml.

It holds what `qflume ingest` would otherwise be told by flags: the sources, the collection, the
target, the model, chunking, sparse vectors and limits. Flags given on the command line override
it; what neither gives takes the usual default. Validation is strict: an unknown key, a wrong
type or a literal API key is a `ConfigError` naming the file and the key.

    collection = "docs"
    model = "models/minilm"          # optional; paths are relative to the file's folder
    sparse = "bm25"                  # or "splade", with sparse_model = "models/splade"

    [target]
    store = ".qflume"                # or: url = "http://qdrant:6334", api_key_env = "QDRANT_API_KEY"

    [chunking]
    tokens = 64                      # or chars = 1000; overlap = 0

    [limits]
    max_memory = 2_000_000_000

    [alerts]                         # qflume.alerts: checked while ingest and serve run
    interval = 5
    thresholds = ["latency:qdrant_rpc.p95>1s:high", "memory:rss>2GiB:critical"]

    [[sources]]
    path = "docs"
    include = ["*.md", "*.rst"]

    [[sources]]
    records = "data/records.jsonl"
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qflume._validate import display
from qflume.exceptions import ConfigError, InvalidInputError, InvalidTypeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

__all__ = ["CONFIG_NAME", "Config", "Source", "find_config", "load_config", "parse_config"]

CONFIG_NAME = "qflume.toml"
PYPROJECT = "pyproject.toml"

_MODES = ("auto", "bar", "lines", "none")

# key -> (CLI / Pipeline option it sets, kind, allowed values or minimum). Kinds: str, path
# (a string, relative to the file's folder), int, bool, choice.
_TOP: dict[str, tuple[str, str, Any]] = {
    "collection": ("collection", "str", None),
    "model": ("model", "path", None),
    "sparse": ("sparse", "choice", ("none", "bm25", "splade")),
    "sparse_model": ("sparse_model", "path", None),
    "progress": ("progress", "choice", _MODES),
}
_TABLES: dict[str, dict[str, tuple[str, str, Any]]] = {
    "target": {
        "store": ("store", "path", None),
        "url": ("url", "str", None),
        "api_key_env": ("api_key_env", "env", None),
        "state_dir": ("state_dir", "path", None),
        "wait": ("wait", "bool", None),
    },
    "chunking": {
        "tokens": ("chunk_tokens", "int", 1),
        "chars": ("chunk_chars", "int", 1),
        "overlap": ("overlap", "int", 0),
    },
    "limits": {
        "max_memory": ("max_memory", "int", 1),
        "max_file_size": ("max_file_size", "int", 1),
        "outbox_bytes": ("outbox_bytes", "int", 1),
        "outage_deadline": ("outage_deadline", "seconds", None),
    },
}
_SOURCE_KEYS = ("path", "records", "include", "exclude", "keep_missing", "delete_missing")
_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "an array",
    dict: "a table",
}


def _type_name(value: object) -> str:
    for t in (bool, int, float, str, list, dict):
        if isinstance(value, t):
            return _TYPE_NAMES[t]
    return type(value).__name__


@dataclass(frozen=True)
class Source:
    """One entry of ``[[sources]]``: a folder or file (``path``, with include/exclude globs) or
    a JSONL/Parquet file of records (``records``)."""

    key: str  # e.g. "sources[1]", for messages
    path: Path | None = None
    records: Path | None = None
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    keep_missing: bool = False
    delete_missing: bool = False


@dataclass(frozen=True)
class Config:
    """A validated config file. `options` holds what it sets, under the names of the CLI's
    options (and `qflume.Pipeline`'s keyword arguments): only keys the file gives."""

    file: Path
    options: Mapping[str, Any] = field(default_factory=dict)
    sources: tuple[Source, ...] = ()
    prefix: str = ""  # "tool.qflume." inside pyproject.toml

    def name(self, key: str) -> str:
        """``key`` as written in the file (``tool.qflume.chunking.tokens`` in pyproject.toml)."""
        return self.prefix + key

    def api_key(self) -> str | None:
        """The API key from the environment variable ``target.api_key_env`` names (None when the
        file names none); a variable that is not set is an error."""
        var = self.options.get("api_key_env")
        if var is None:
            return None
        value = os.environ.get(var)
        if not value:
            raise ConfigError(
                f"{self.file}: '{self.name('target.api_key_env')}' names the environment "
                f"variable {var}, which is not set: export {var}=<your API key>",
                file=self.file,
                key=self.name("target.api_key_env"),
            )
        return value

    def pipeline_options(self) -> dict[str, Any]:
        """Keyword arguments for `qflume.Pipeline` (the collection, as the first argument, is
        ``options["collection"]``)."""
        skip = ("collection", "api_key_env", "alerts")  # alerts: a monitor, not a Pipeline's
        opts = {k: v for k, v in self.options.items() if k not in skip}
        key = self.api_key()
        if key is not None:
            opts["api_key"] = key
        return opts


def find_config(
    explicit: str | os.PathLike[str] | None = None, *, cwd: str | os.PathLike[str] | None = None
) -> tuple[Path, str] | None:
    """Which file holds the config, and under which table prefix: ``explicit`` (it must exist),
    else ./qflume.toml, else ./pyproject.toml when it has a ``[tool.qflume]`` table, else None."""
    if explicit is not None:
        if not isinstance(explicit, (str, os.PathLike)):
            raise InvalidTypeError(f"config file: a path, not {type(explicit).__name__}")
        path = Path(explicit)
        if not path.is_file():
            why = "is a folder" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {path}: {why}", file=path)
        prefix = "tool.qflume." if path.name == PYPROJECT else ""
        return path, prefix
    base = Path(cwd) if cwd is not None else Path()
    own = base / CONFIG_NAME
    if own.is_file():
        return own, ""
    pyproject = base / PYPROJECT
    if pyproject.is_file():
        data = _read(pyproject)
        tool = data.get("tool")
        if isinstance(tool, dict) and "qflume" in tool:
            return pyproject, "tool.qflume."
    return None


def load_config(
    explicit: str | os.PathLike[str] | None = None, *, cwd: str | os.PathLike[str] | None = None
) -> Config | None:
    """The config `find_config` finds, validated; None when there is none."""
    found = find_config(explicit, cwd=cwd)
    if found is None:
        return None
    path, prefix = found
    data = _read(path)
    if prefix:
        tool = data.get("tool")
        table = tool.get("qflume") if isinstance(tool, dict) else None
        if table is None:
            raise ConfigError(f"{path}: has no [tool.qflume] table", file=path)
        if not isinstance(table, dict):
            raise ConfigError(
                f"{path}: 'tool.qflume' must be a table, not {_type_name(table)}",
                file=path,
                key="tool.qflume",
            )
        data = table
    return parse_config(data, path, prefix=prefix)


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"config file {path}: cannot be read: {e.strerror or e}", file=path
        ) from e
    try:
        text = raw.decode("utf-8-sig")  # a BOM, as some Windows editors write, is fine
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})", file=path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}", file=path) from None


def parse_config(
    data: Mapping[str, Any], file: str | os.PathLike[str], *, prefix: str = ""
) -> Config:
    """Validate the parsed ``data`` of ``file`` (relative paths in it are relative to the
    file's folder)."""
    file = Path(file)
    base = file.parent
    shown = display(str(file))

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(
            f"{shown}: '{display(prefix + key)}' {problem}", file=file, key=prefix + key
        )

    def unknown(key: str, known: list[str], where: str = "") -> ConfigError:
        near = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1, cutoff=0.6)
        hint = f" (did you mean '{prefix}{where}{near[0]}'?)" if near else ""
        table = f" in {prefix}{where[:-1]}" if where else ""
        return ConfigError(
            f"{shown}: unknown key '{display(prefix + key)}'{hint}; the keys{table} are: "
            + ", ".join(known),
            file=file,
            key=prefix + key,
        )

    def value(key: str, kind: str, arg: Any, v: Any) -> Any:
        if kind in ("str", "path", "env", "choice"):
            if not isinstance(v, str):
                raise fail(key, f"must be a string, not {_type_name(v)} ({v!r})")
            if not v.strip() or "\x00" in v:
                raise fail(key, "must not be empty")
            if kind == "path":
                p = Path(os.path.expanduser(v))
                return p if p.is_absolute() else base / p
            if kind == "choice" and v not in arg:
                raise fail(key, f"must be one of {', '.join(arg)}, not {v!r}")
            if kind == "env" and not v.replace("_", "").isalnum():
                raise fail(
                    key,
                    f"must be the name of an environment variable (like QDRANT_API_KEY), "
                    f"not {v!r}: the key itself is read from the environment",
                )
            return v
        if kind == "bool":
            if not isinstance(v, bool):
                raise fail(key, f"must be true or false, not {_type_name(v)} ({v!r})")
            return v
        if kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise fail(key, f"must be an integer, not {_type_name(v)} ({v!r})")
            if v < arg:
                raise fail(key, f"must be at least {arg}, not {v}")
            return v
        if kind == "seconds":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise fail(key, f"must be a positive number of seconds, not {v!r}")
            return float(v)
        raise AssertionError(kind)  # pragma: no cover

    options: dict[str, Any] = {}
    sources: tuple[Source, ...] = ()
    known_top = sorted([*_TOP, *_TABLES, "alerts", "sources"])
    for key, v in data.items():
        if key in _TOP:
            dest, kind, arg = _TOP[key]
            options[dest] = value(key, kind, arg, v)
        elif key in _TABLES:
            if not isinstance(v, dict):
                raise fail(key, f"must be a table ([{key}]), not {_type_name(v)}")
            fields = _TABLES[key]
            for sub, sv in v.items():
                name = f"{key}.{sub}"
                if sub == "api_key" and key == "target":
                    raise fail(
                        name,
                        "is refused: an API key is not written into a config file. Name the "
                        'environment variable that holds it instead: api_key_env = "QDRANT_API_KEY"',
                    )
                if sub not in fields:
                    raise unknown(name, sorted(fields), where=f"{key}.")
                dest, kind, arg = fields[sub]
                options[dest] = value(name, kind, arg, sv)
        elif key == "sources":
            sources = _sources(v, fail, unknown, value)
        elif key == "alerts":
            options["alerts"] = _alerts(v, fail, unknown)
        elif key == "api_key":
            raise fail(
                key,
                "is refused: an API key is not written into a config file. Name the "
                'environment variable that holds it instead: [target] api_key_env = "QDRANT_API_KEY"',
            )
        else:
            raise unknown(key, known_top)
    if "chunk_tokens" in options and "chunk_chars" in options:
        raise fail("chunking", "sets both tokens and chars: give one")
    if "store" in options and "url" in options:
        raise fail("target", "sets both store and url: give one (embedded store or a server)")
    if "url" in options:
        from qflume._validate import url_problem

        problem = url_problem(options["url"])
        if problem:
            raise fail("target.url", f"is not usable: {problem}")
    return Config(file=file, options=options, sources=sources, prefix=prefix)


_ALERT_KEYS = ("defaults", "interval", "thresholds")


def _alerts(v: Any, fail: Any, unknown: Any) -> Any:
    """``[alerts]``: ``interval`` (seconds between checks), ``defaults`` (keep the built-in
    thresholds), ``thresholds`` (strings as `qflume.alerts.Threshold.parse` reads them, or
    tables: ``[[alerts.thresholds]]`` kind, metric, op, value, severity, window, min_count)."""
    from qflume.alerts import AlertSettings, Threshold

    if not isinstance(v, dict):
        raise fail("alerts", f"must be a table ([alerts]), not {_type_name(v)}")
    for sub in v:
        if sub not in _ALERT_KEYS:
            raise unknown(f"alerts.{sub}", sorted(_ALERT_KEYS), where="alerts.")
    interval = v.get("interval", 5.0)
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not 0 < interval < float("inf")
    ):
        raise fail("alerts.interval", f"must be a positive number of seconds, not {interval!r}")
    defaults = v.get("defaults", True)
    if not isinstance(defaults, bool):
        raise fail("alerts.defaults", f"must be true or false, not {_type_name(defaults)}")
    items = v.get("thresholds", [])
    if not isinstance(items, list):
        raise fail("alerts.thresholds", f"must be an array, not {_type_name(items)}")
    out = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, (str, dict)):
            raise fail(
                f"alerts.thresholds[{i}]",
                f"must be a string (KIND:METRIC OP VALUE[:SEVERITY]) or a table, "
                f"not {_type_name(item)}",
            )
        try:
            out.append(
                Threshold.parse(item) if isinstance(item, str) else Threshold.from_dict(item)
            )
        except (InvalidInputError, TypeError) as e:
            raise fail(f"alerts.thresholds[{i}]", f"is not usable: {e}") from None
    return AlertSettings(interval=float(interval), defaults=defaults, thresholds=tuple(out))


def _sources(v: Any, fail: Any, unknown: Any, value: Any) -> tuple[Source, ...]:
    if not isinstance(v, list):
        raise fail("sources", f"must be an array of tables ([[sources]]), not {_type_name(v)}")
    out: list[Source] = []
    for i, entry in enumerate(v, 1):
        key = f"sources[{i}]"
        if isinstance(entry, str):  # sources = ["docs", "notes"]: paths
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise fail(
                key, f"must be a table (path = ... or records = ...), not {_type_name(entry)}"
            )
        for sub in entry:
            if sub not in _SOURCE_KEYS:
                raise unknown(f"{key}.{sub}", sorted(_SOURCE_KEYS), where=f"{key}.")
        has_path, has_records = "path" in entry, "records" in entry
        if has_path == has_records:
            raise fail(
                key,
                "needs one of path (a folder or file) or records (a JSONL/Parquet file), "
                + ("not both" if has_path else "and has neither"),
            )
        globs: dict[str, tuple[str, ...] | None] = {}
        for g in ("include", "exclude"):
            gv = entry.get(g)
            if gv is None:
                globs[g] = None
                continue
            if has_records:
                raise fail(f"{key}.{g}", "applies to path sources only, not to records")
            items = [gv] if isinstance(gv, str) else gv
            if not isinstance(items, list) or not all(isinstance(x, str) and x for x in items):
                raise fail(f"{key}.{g}", f"must be a glob or an array of globs, not {gv!r}")
            globs[g] = tuple(items)
        if has_records and "keep_missing" in entry:
            raise fail(f"{key}.keep_missing", "applies to path sources; records use delete_missing")
        if has_path and "delete_missing" in entry:
            raise fail(
                f"{key}.delete_missing",
                "applies to records; path sources delete what is gone unless keep_missing = true",
            )
        out.append(
            Source(
                key=key,
                path=value(f"{key}.path", "path", None, entry["path"]) if has_path else None,
                records=(
                    value(f"{key}.records", "path", None, entry["records"]) if has_records else None
                ),
                include=globs["include"],
                exclude=globs["exclude"],
                keep_missing=value(
                    f"{key}.keep_missing", "bool", None, entry.get("keep_missing", False)
                ),
                delete_missing=value(
                    f"{key}.delete_missing", "bool", None, entry.get("delete_missing", False)
                ),
            )
        )
    deletes = {s.delete_missing for s in out if s.records is not None}
    if len(deletes) > 1:
        raise fail(
            "sources",
            "give every records source the same delete_missing: the records are ingested as "
            "one set, and delete_missing deletes the ids missing from all of them",
        )
    return tuple(out)
