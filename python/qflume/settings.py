"""`PipelineConfig`: every setting of a pipeline, validated once, frozen.

`qflume.Pipeline`, `qflume.ingest`, `AsyncPipeline`, `qflume serve` and the CLI all build one:
the keyword arguments are its fields, `add_arguments` gives argparse the matching options (one
definition per option), and `split_options` separates a call's keywords into the config's,
the components' (objects a caller passes in: an embedder, a sink, readers, a progress callback)
and the operation's (include, exclude, delete_missing, dry_run).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qflume._validate import text_problem, url_problem
from qflume.exceptions import InvalidInputError
from qflume.progress import resolve_interval, resolve_mode

__all__ = [
    "COMPONENTS",
    "DEFAULT_CHUNK_TOKENS",
    "OPERATION_OPTIONS",
    "PipelineConfig",
    "add_arguments",
    "config_from_args",
    "split_options",
]

#: Default chunk size, in the embedding model's own tokens. Measured on the Python docs with
#: all-MiniLM-L6-v2 (tests/test_search_quality.py): a verbatim sentence finds its own chunk first
#: in 92% of cases at 64 tokens, 80% at 128, and 74% at 1000 characters, where 43% of chunks
#: overflow the model's 256-token window and their tail is invisible to dense search.
DEFAULT_CHUNK_TOKENS = 64
SPLADE_NEEDS_MODEL = (
    "sparse 'splade' needs its model: --sparse-model DIR (sparse_model=), a BertForMaskedLM "
    "folder (config.json, model.safetensors, tokenizer.json) or an ONNX masked-LM folder"
)
#: Objects a caller hands a pipeline (not settings: not in a config file or on a command line).
COMPONENTS = ("embedder", "sink", "readers", "on_progress")
#: Keywords of one operation (`Pipeline.ingest` / `ingest_records`), not of the pipeline.
OPERATION_OPTIONS = ("include", "exclude", "delete_missing", "dry_run")

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class PipelineConfig:
    """The settings of one pipeline (see `qflume.Pipeline` for what each does)."""

    collection: str
    store: PathLike | None = None
    url: str | None = None
    api_key: str | None = None
    model: PathLike | None = None
    sparse: str | None = None
    sparse_model: PathLike | None = None
    chunk_chars: int | None = None
    chunk_tokens: int | None = None
    overlap: int = 0
    wait: bool = False
    state_dir: PathLike | None = None
    batch_chunks: int = 256
    max_memory: int | None = None
    max_file_size: int | None = None
    outbox_bytes: int = 1 << 30
    outage_deadline: float = 900.0
    cache_entries: int = 1_000_000
    #: The embedding cache's file (default <state folder>/<collection>.cache.sqlite): a reindex
    #: builds the next version with the live one's cache.
    cache_file: PathLike | None = None
    progress: bool | str | None = None
    progress_interval: float | None = None
    lock: bool = True
    recover_state: bool = False
    versioned: bool = True
    #: Which of model, sparse and chunking were given (a versioned collection's live version
    #: sets the others: qflume.versions).
    given: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        c = self.collection
        if not isinstance(c, str) or not c or "/" in c or c.startswith("."):
            raise InvalidInputError(f"collection name {c!r} is not usable (no '/', no leading '.')")
        if (bad := text_problem(c, "collection name")) or any(ch < " " for ch in c):
            raise InvalidInputError(bad or f"collection name {c!r} holds a control character")
        if self.sparse not in (None, "none", "bm25", "splade"):
            raise InvalidInputError(f"sparse must be none, bm25 or splade, not {self.sparse!r}")
        if self.sparse_model is not None and self.sparse not in (None, "none", "splade"):
            raise InvalidInputError(
                f"sparse_model is the SPLADE model: give it with sparse='splade', not "
                f"{self.sparse!r}"
            )
        if self.sparse == "splade" and self.sparse_model is None:
            raise InvalidInputError(SPLADE_NEEDS_MODEL)
        if self.chunk_chars is not None and self.chunk_tokens is not None:
            raise InvalidInputError("give chunk_chars or chunk_tokens, not both")
        if self.store is not None and self.url is not None:
            raise InvalidInputError("give store (embedded Qdrant Edge) or url (a server), not both")
        if self.url is not None and (problem := url_problem(self.url)):
            raise InvalidInputError(problem)
        for name in ("batch_chunks", "cache_entries", "outbox_bytes"):
            _positive_int(name, getattr(self, name))
        _positive_int("overlap", self.overlap, zero=True)
        d = self.outage_deadline
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < math.inf:
            raise InvalidInputError(f"outage_deadline must be seconds >= 0, got {d!r}")
        for name in ("chunk_chars", "chunk_tokens", "max_memory", "max_file_size"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        resolve_mode(self.progress)  # refuses an unknown mode now, not at the first ingest
        if self.progress_interval is not None:
            resolve_interval(self.progress_interval)
        given = {"model"} if self.model is not None else set()
        if self.sparse is not None:
            given.add("sparse")
        if self.chunk_chars is not None or self.chunk_tokens is not None:
            given.add("chunking")
        set_ = object.__setattr__
        set_(self, "given", frozenset(given))
        if self.chunk_chars is None and self.chunk_tokens is None:
            set_(self, "chunk_tokens", DEFAULT_CHUNK_TOKENS)
        if self.max_file_size is None:  # a file's diff holds ~1 byte per byte: half the budget
            m = self.max_memory
            set_(
                self,
                "max_file_size",
                min(256 << 20, 256 << 20 if m is None else max(1 << 20, m // 2)),
            )

    # -- derived settings ---------------------------------------------------------------------

    @property
    def file_size_limit(self) -> int:
        """``max_file_size`` as resolved (bytes; files over it are skipped as too-large)."""
        assert self.max_file_size is not None  # __post_init__ resolved it
        return self.max_file_size

    @property
    def sparse_kind(self) -> str:
        """``none``, ``bm25`` or ``splade``."""
        return self.sparse or "none"

    @property
    def queue_batches(self) -> int:
        """Batches each queue between two stages holds (~batch_chunks * 8 KiB each)."""
        if self.max_memory is None:
            return 4
        return max(1, min(64, self.max_memory // (self.batch_chunks * 8 * 1024)))

    @property
    def stream_bytes(self) -> int:
        """Files larger than this are read, chunked and sent block by block, never whole."""
        return 8 << 20 if self.max_memory is None else max(1 << 20, self.max_memory // 16)

    @property
    def stream_block(self) -> int:
        """The block size a streamed file is read in."""
        return min(1 << 20, self.stream_bytes)

    @property
    def batch_text_chars(self) -> int:
        """Characters of text planned into one batch (about batch_chunks chunks)."""
        return self.batch_chunks * (self.chunk_chars or 4 * (self.chunk_tokens or 256))

    @property
    def store_path(self) -> Path | None:
        """The embedded store's folder (None for a server)."""
        return (
            None
            if self.url is not None
            else Path(self.store if self.store is not None else ".qflume")
        )

    @property
    def state_base(self) -> Path:
        """The folder of the state and the embedding cache: the store, or for a server
        ``state_dir`` (default ./.qflume/servers/<host>_<port>)."""
        return state_base(self.store, self.url, self.state_dir)

    @property
    def state_path(self) -> Path:
        return self.state_base / f"{self.collection}.state.sqlite"

    @property
    def cache_path(self) -> Path:
        if self.cache_file is not None:
            return Path(self.cache_file)
        return self.state_base / f"{self.collection}.cache.sqlite"

    @property
    def outbox_path(self) -> Path:
        return self.state_base / f"{self.collection}.outbox"

    def chunking_id(self) -> str:
        """The chunker's part of the fingerprint."""
        size = f"tokens={self.chunk_tokens}" if self.chunk_tokens else f"chars={self.chunk_chars}"
        return f"{size}|overlap={self.overlap}"

    def replace(self, **changes: Any) -> PipelineConfig:
        """A copy with ``changes`` (validated again)."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        if ("chunk_chars" in changes or "chunk_tokens" in changes) and "chunking" not in self.given:
            kw["chunk_tokens"] = None
        if "max_memory" in changes and "max_file_size" not in changes:
            kw["max_file_size"] = None
        return PipelineConfig(**{**kw, **changes})


def state_base(store: PathLike | None, url: str | None, state_dir: PathLike | None = None) -> Path:
    """See `PipelineConfig.state_base`."""
    if url is None:
        return Path(store if store is not None else ".qflume")
    host = url.split("://", 1)[-1].rstrip("/").replace(":", "_").replace("/", "_")
    return Path(state_dir) if state_dir is not None else Path(".qflume") / "servers" / host


def _positive_int(name: str, v: object, *, zero: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < (0 if zero else 1):
        raise InvalidInputError(f"{name} must be an int >= {0 if zero else 1}, got {v!r}")


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(PipelineConfig) if f.init)


def split_options(
    options: Mapping[str, Any], *, operation: tuple[str, ...] = OPERATION_OPTIONS
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``options`` as (config fields, components, the operation's keywords); an unknown keyword
    is an InvalidInputError that names it and the known ones."""
    config: dict[str, Any] = {}
    components: dict[str, Any] = {}
    op: dict[str, Any] = {}
    for k, v in options.items():
        if k in CONFIG_FIELDS:
            config[k] = v
        elif k in COMPONENTS:
            components[k] = v
        elif k in operation:
            op[k] = v
        else:
            known = ", ".join(sorted((*CONFIG_FIELDS, *COMPONENTS, *operation)))
            raise InvalidInputError(f"unknown option {k!r}; the options are: {known}")
    return config, components, op


# ---------------------------------------------------------------------------------------------
# Command-line options: one definition each, for `qflume ingest|search|status|verify|...` and
# `qflume serve`.

_SPARSE_MODEL_HELP = (
    "the SPLADE model for --sparse splade: a BertForMaskedLM folder (config.json, "
    "model.safetensors, tokenizer.json; built into ONNX once) or model.onnx + tokenizer.json"
)

#: group -> (flags, argparse keywords) of each option; dest is the PipelineConfig field.
_OPTIONS: dict[str, list[tuple[tuple[str, ...], dict[str, Any]]]] = {
    "target": [
        (("--state-dir",), {"help": "where state and cache live for --url (default ./.qflume)"}),
        (("--model",), {"help": "model folder (model.onnx + tokenizer.json, or BERT weights)"}),
    ],
    "sparse": [
        (("--sparse",), {"choices": ["none", "bm25", "splade"], "help": "default none"}),
    ],
    "sparse_model": [
        (("--sparse-model",), {"metavar": "DIR", "help": _SPARSE_MODEL_HELP}),
    ],
    "chunking": [
        (("--overlap",), {"type": int, "help": "overlap (chars or tokens; default 0)"}),
    ],
    "limits": [
        (
            ("--wait",),
            {"action": "store_true", "default": None,
             "help": "wait for each batch to be applied"},
        ),
        (
            ("--max-memory",),
            {"type": int,
             "help": "bytes the stage queues may hold; files over 1/16 of it are streamed, "
             "not read whole"},
        ),
        (
            ("--max-file-size",),
            {"type": int,
             "help": "skip files over this many bytes as too-large (default 256 MiB, or half "
             "of --max-memory)"},
        ),
        (
            ("--outage-deadline",),
            {"type": float,
             "help": "--url: seconds an unreachable server is waited for while updates are "
             "spooled to the outbox (default 900)"},
        ),
        (("--outbox-bytes",), {"type": int, "help": "--url: the outbox's disk budget (default 1 GiB)"}),
    ],
}  # fmt: skip


def add_arguments(
    p: argparse.ArgumentParser,
    *groups: str,
    collection_required: bool = False,
    api_key_default: str | None = None,
    helps: Mapping[str, str] | None = None,
    dest_prefix: str = "",
    target: bool = True,
) -> None:
    """Add the options of ``groups`` to ``p``: ``target`` (always: --collection, --store |
    --url, --api-key, --state-dir, --model), ``sparse``, ``sparse_model``, ``chunking``
    (--chunk-chars | --chunk-tokens, --overlap) and ``limits`` (--wait, memory, outbox).
    ``helps`` replaces the help of options by their dest; ``dest_prefix`` prefixes the dests
    of all but the target's (``to_`` for reindex's new settings); ``target=False`` adds only
    ``groups``."""
    if target:
        where = "" if collection_required else " (or `collection` in qflume.toml)"
        p.add_argument(
            "--collection", "-c", required=collection_required, help=f"collection name{where}"
        )
        t = p.add_mutually_exclusive_group()
        t.add_argument("--store", help="embedded Qdrant Edge store folder (default ./.qflume)")
        t.add_argument("--url", help="Qdrant server gRPC URL, e.g. http://localhost:6334")
        p.add_argument(
            "--api-key", default=api_key_default, help="server API key (default: $QDRANT_API_KEY)"
        )
    for group in ("target", *groups) if target else groups:
        _add_group(p, group, "" if group == "target" else dest_prefix, helps or {})


def _add_group(
    p: argparse.ArgumentParser, group: str, prefix: str, helps: Mapping[str, str]
) -> None:
    if group == "chunking":
        size = p.add_mutually_exclusive_group()
        size.add_argument(
            "--chunk-chars", dest=f"{prefix}chunk_chars", type=int, help="chunk size in characters"
        )
        size.add_argument(
            "--chunk-tokens",
            dest=f"{prefix}chunk_tokens",
            type=int,
            help=f"chunk size in model tokens (default {DEFAULT_CHUNK_TOKENS})",
        )
    for flags, kw in _OPTIONS[group]:
        dest = flags[0].lstrip("-").replace("-", "_")
        kw = {**kw, "dest": prefix + dest}
        if dest in helps:
            kw["help"] = helps[dest]
        p.add_argument(*flags, **kw)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> PipelineConfig:
    """The PipelineConfig of parsed options: every config field ``args`` has and is not None
    (so that a default stays the config's), then ``overrides``."""
    kw = {k: getattr(args, k) for k in CONFIG_FIELDS if getattr(args, k, None) is not None}
    return PipelineConfig(**{**kw, **overrides})
