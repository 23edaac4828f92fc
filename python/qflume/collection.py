"""`Collection`: one collection's settings and components, what every operation takes.

A Collection holds a validated `PipelineConfig`, the state (opened, locked), the live version
(qflume.versions) and the components built lazily from the config on first use: the sink
(Qdrant Edge or a server over gRPC), the embedder, the chunker, the embedding cache and the
sparse encoder. The stages (qflume.stages), search (qflume.search), the batch operations
(qflume.ops) and health (qflume.metrics) take one; `qflume.Pipeline` is a Collection with the
ingest front on top.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qflume.exceptions import InvalidInputError, StateCorruptError
from qflume.readers import Readers
from qflume.settings import SPLADE_NEEDS_MODEL, PipelineConfig
from qflume.sinks.base import CollectionSpec, Sink, SparseBatch
from qflume.stages.chunk import Chunking
from qflume.state import State

__all__ = ["Collection", "sparse_encoder_of"]


def sparse_encoder_of(kind: str, model: str | os.PathLike[str] | None) -> Any:
    """The sparse encoder of a kind: `Bm25`, or `Splade` of ``model``."""
    if kind == "bm25":
        from qflume.sparse import Bm25

        return Bm25()
    if model is None:
        raise InvalidInputError(SPLADE_NEEDS_MODEL)
    from qflume.sparse import Splade

    return Splade(model)


class Collection:
    """A collection: its config, state, live version and lazily built components.

    ``embedder`` and ``sink`` replace the ones the config would build (a caller's embedder
    stays open after `close`); ``readers`` adds or replaces document readers
    (``{".ext": fn}``, see qflume.readers)."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        embedder: Any = None,
        sink: Sink | None = None,
        readers: Mapping[str, Callable[[str], Any]] | None = None,
    ) -> None:
        #: Which files a reader turns into text (PDF, HTML, DOCX, plug-ins: qflume.readers).
        self.readers = Readers(readers)
        self._embedder = embedder
        self._owns_embedder = embedder is None
        self._sink = sink
        self._sparse_encoder: Any = None
        self._query_encoder: tuple[str, Any] | None = None
        self._sparse_lock = threading.Lock()
        self._chunker: Any = None
        self._cache: Any = None
        self._fingerprint: str | None = None
        #: The last run failed: `close` lets the sink go without waiting out an outage (what it
        #: holds was not committed; the next run sends it again).
        self.failed = False
        # Readers of an embedded store take the shared lock: only one process may open its shard,
        # so a reader refuses at once while an ingest writes it (and never harms that writer).
        mode: bool | str = "shared" if not config.lock and config.url is None else config.lock
        #: Where a damaged state was moved when ``recover_state`` opened a fresh one; the next
        #: ``verify(repair=True)`` rebuilds the state from the collection.
        self.recovered_from: Path | None = None
        try:
            self.state = State(config.state_path, lock=mode)
        except StateCorruptError:
            if not config.recover_state:
                raise
            self.recovered_from = State.set_aside(config.state_path)
            self.state = State(config.state_path, lock=mode)
        #: Collections behind versions (a server: the collection is an alias of
        #: ``<collection>__vN``; see qflume.versions); ``version`` is the live one read and
        #: written, by its physical name (None: not versioned yet, or plain). The live version's
        #: settings complete the config (what was not given).
        self.version: Any = None
        if config.versioned:
            from qflume.versions import open_version

            self.version, config = open_version(self.state, config)
        self.config = config

    # -- what the config names ----------------------------------------------------------------

    @property
    def collection(self) -> str:
        """The collection's name."""
        return self.config.collection

    @property
    def url(self) -> str | None:
        return self.config.url

    @property
    def store(self) -> Path | None:
        return self.config.store_path

    @property
    def state_path(self) -> Path:
        return self.config.state_path

    @property
    def cache_path(self) -> Path:
        return self.config.cache_path

    @property
    def model(self) -> str | os.PathLike[str] | None:
        return self.config.model

    @property
    def sparse_kind(self) -> str:
        return self.config.sparse_kind

    # -- lazily built components --------------------------------------------------------------

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from qflume.embed import Embedder

            self._embedder = Embedder(self.config.model)
        return self._embedder

    @property
    def loaded_embedder(self) -> Any:
        """The embedder if its model is loaded (None: what needs only the model's config, such
        as health's vector size check, reads it without loading the model)."""
        emb = self._embedder
        return emb if emb is not None and getattr(emb, "loaded", True) else None

    @property
    def loaded_sink(self) -> Sink | None:
        """The sink if it is built (None: nothing opened the collection yet)."""
        return self._sink

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            c = self.config
            name = self.version.name if self.version is not None else c.collection
            if c.url is not None:
                from qflume.sinks.grpc import GrpcSink

                self._sink = GrpcSink(
                    c.url,
                    name,
                    api_key=c.api_key,
                    wait=c.wait,
                    outbox=c.outbox_path,
                    outbox_bytes=c.outbox_bytes,
                    outage_deadline=c.outage_deadline,
                    versioned=c.versioned and self.version is None,
                )
            else:
                from qflume.sinks.edge import EdgeSink

                assert c.store_path is not None
                # by its physical name: the state's live version
                self._sink = EdgeSink(c.store_path, name, follow_pointer=self.version is None)
        return self._sink

    @property
    def chunker(self) -> Any:
        if self._chunker is None:
            from qflume.chunk import Chunker

            c = self.config
            if c.chunk_tokens is not None:
                tok = self.model_folder() / "tokenizer.json"
                self._chunker = Chunker(
                    max_tokens=c.chunk_tokens, tokenizer=str(tok), overlap=c.overlap
                )
            else:
                self._chunker = Chunker(max_chars=c.chunk_chars, overlap=c.overlap)
        return self._chunker

    def chunking(self) -> Chunking:
        """What the chunk stage needs: the chunker and the fingerprints its plans record."""
        c = self.config
        return Chunking(
            self.chunker, self.fingerprint(), self.reader_fingerprint(), c.batch_chunks,
            c.stream_block,
        )  # fmt: skip

    @property
    def cache(self) -> Any:
        if self._cache is None:
            from qflume.cache import EmbeddingCache

            self._cache = EmbeddingCache(
                self.config.cache_path, max_entries=self.config.cache_entries
            )
        return self._cache

    @property
    def sparse_encoder(self) -> Any:
        """The documents' sparse encoder (`Bm25`, or `Splade` of ``sparse_model``); None
        without sparse vectors."""
        kind = self.config.sparse_kind
        if self._sparse_encoder is None and kind != "none":
            with self._sparse_lock:  # serve's searches and writes may both ask first
                if self._sparse_encoder is None:
                    self._sparse_encoder = sparse_encoder_of(kind, self.config.sparse_model)
        return self._sparse_encoder

    def with_components(self, *, embedder: Any = None, sink: Sink | None = None) -> Collection:
        """This collection (same config, state and version) with another embedder or sink:
        e.g. serve's searches, on their own server connection."""
        view = copy.copy(self)
        if embedder is not None:
            view._embedder, view._owns_embedder = embedder, False
        if sink is not None:
            view._sink = sink
        return view

    # -- what produced the points ------------------------------------------------------------

    def sparse_id(self) -> str:
        """The sparse vectors' part of the fingerprint: ``none``, ``bm25``, or for SPLADE
        ``splade|sparse_model=<its model id>`` (another SPLADE model re-sends every document)."""
        c = self.config
        if c.sparse_kind != "splade":
            return c.sparse_kind
        from qflume.sparse import splade_fingerprint

        if self._sparse_encoder is not None:
            return f"splade|sparse_model={self._sparse_encoder.model_id}"
        if c.sparse_model is None:
            raise InvalidInputError(SPLADE_NEEDS_MODEL)
        return f"splade|sparse_model={splade_fingerprint(c.sparse_model)}"

    def fingerprint(self) -> str:
        """What produced the points: model, chunker settings, sparse vectors (and model)."""
        if self._fingerprint is None:
            chunking = self.config.chunking_id()
            self._fingerprint = f"{self.model_id()}|{chunking}|sparse={self.sparse_id()}"
        return self._fingerprint

    def reader_fingerprint(self) -> str:
        """The fingerprint of documents a reader made (PDF, HTML, DOCX, plug-ins): a file
        ingested before as plain text (HTML) is read again by its reader."""
        return f"{self.fingerprint()}|reader=1"

    def model_folder(self) -> Path:
        """The model folder, without loading the model into ONNX Runtime."""
        if self._embedder is not None:
            return Path(self._embedder.model_path)
        from qflume.embed import model_folder

        return model_folder(self.config.model)

    def model_id(self) -> str:
        """The embedding model's id, without loading the model when it is not loaded yet."""
        if self._embedder is not None:
            return str(self._embedder.model_id)
        try:
            from qflume.embed import model_fingerprint
        except ImportError:  # no cheap fingerprint available: load the model
            return str(self.embedder.model_id)
        return str(model_fingerprint(self.config.model))

    def collection_spec(self) -> CollectionSpec:
        kind = self.config.sparse_kind
        return CollectionSpec(dim=int(self.embedder.dim), sparse=() if kind == "none" else (kind,))

    # -- sparse queries -----------------------------------------------------------------------

    def record_sparse(self) -> None:
        """Record in the state which sparse vector the collection's points carry (and the
        SPLADE model that made them): what `query_sparse` encodes queries for."""
        c = self.config
        rec: dict[str, Any] = {"kind": c.sparse_kind}
        if c.sparse_kind == "splade":
            rec["model"] = str(Path(c.sparse_model).resolve())  # type: ignore[arg-type]
            rec["model_id"] = self.sparse_encoder.model_id
        self.state.set_meta("sparse", rec)

    def query_sparse(self, queries: Sequence[str]) -> tuple[str, SparseBatch]:
        """The collection's sparse vector name and the query vectors of ``queries`` for it.

        The encoder is the one the last ingest recorded (`record_sparse`): BM25, or SPLADE with
        the model it recorded; a ``sparse``/``sparse_model`` given to this pipeline is used
        instead, and a SPLADE model other than the collection's is refused. A collection with
        no record (ingested before qflume recorded it, or a server's collection searched from
        another state folder) is taken as BM25 unless ``sparse`` says otherwise."""
        if self._query_encoder is None:
            with self._sparse_lock:
                if self._query_encoder is None:
                    self._query_encoder = self._resolve_query_encoder()
        kind, encoder = self._query_encoder
        return kind, encoder.embed_query(list(queries))

    def _resolve_query_encoder(self) -> tuple[str, Any]:
        rec = self.state.get_meta("sparse")
        rec = rec if isinstance(rec, dict) else {}
        name = repr(self.config.collection)
        mine, my_model = self.config.sparse_kind, self.config.sparse_model
        kind = mine if mine != "none" else str(rec.get("kind") or "bm25")
        if kind == "none":
            raise InvalidInputError(
                f"collection {name} has no sparse vectors (ingested with sparse none): ingest it "
                "with --sparse bm25, or --sparse splade --sparse-model DIR, for sparse or hybrid "
                "search"
            )
        if kind != "splade":
            return kind, sparse_encoder_of(kind, None)
        if mine == "splade":
            encoder = self._sparse_encoder or sparse_encoder_of(kind, my_model)
            self._sparse_encoder = encoder
        else:
            model = my_model or rec.get("model")
            if model is None:
                raise InvalidInputError(
                    f"collection {name} holds SPLADE vectors: pass --sparse-model DIR "
                    "(sparse_model=), the model it was ingested with"
                )
            if my_model is None and not Path(model).is_dir():
                raise InvalidInputError(
                    f"collection {name} was ingested with the SPLADE model {model}, which is "
                    "not there any more: pass --sparse-model DIR with the same model"
                )
            encoder = sparse_encoder_of(kind, model)
        want = rec.get("model_id")
        if rec.get("kind") == "splade" and want and encoder.model_id != want:
            raise InvalidInputError(
                f"collection {name} was ingested with SPLADE model {want} "
                f"({rec.get('model')}); {encoder.model_path} is {encoder.model_id}: query it "
                "with the same --sparse-model (or ingest again with this one)"
            )
        return kind, encoder

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._sink is not None:
            with contextlib.suppress(Exception):
                self._sink.abandon() if self.failed else self._sink.close()
        if self._cache is not None:
            with contextlib.suppress(Exception):
                self._cache.close()
        emb = self._embedder
        if self._owns_embedder and emb is not None and hasattr(emb, "close"):
            with contextlib.suppress(Exception):
                emb.close()
        self.state.close()
