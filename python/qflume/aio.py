"""`AsyncPipeline`: the Pipeline for asyncio applications.

Same operations and semantics as `qflume.Pipeline`; the blocking work (model, Qdrant, SQLite) runs
in dedicated threads, so a slow Qdrant or a long ingest never blocks the event loop. Writes
(ingest, updates, deletes, verify) run one at a time, in call order, in a writer thread; reads
(search, status, health, aembed) run in a reader thread, so a search is not queued behind a bulk
ingest.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from qflume.exceptions import InvalidInputError
from qflume.settings import PipelineConfig

__all__ = ["AsyncPipeline"]

T = TypeVar("T")
_END = object()


class AsyncPipeline:
    """Async front of a `qflume.Pipeline`: built from the same arguments (a collection name and
    `qflume.settings.PipelineConfig`'s fields, or a PipelineConfig), or given as `pipeline`.

    ``async with AsyncPipeline("docs", store="./.qflume") as ap: hits = await ap.search([...])``.
    `read_threads` bounds concurrent reads (searches embed their queries in that thread too).
    A Pipeline's ``on_progress`` callback runs in a background thread, not on the event loop:
    reach the loop from it with ``loop.call_soon_threadsafe``.
    """

    def __init__(
        self,
        collection: str | PipelineConfig | None = None,
        *,
        pipeline: Any = None,
        read_threads: int = 1,
        **options: Any,
    ) -> None:
        if pipeline is None:
            if collection is None:
                raise InvalidInputError("AsyncPipeline needs a collection name or pipeline=")
            from qflume.pipeline import Pipeline

            pipeline = Pipeline(collection, **options)
        elif collection is not None or options:
            raise InvalidInputError("give pipeline= alone, or the Pipeline's arguments")
        if read_threads < 1:
            raise InvalidInputError(f"read_threads must be >= 1, got {read_threads}")
        self.pipeline = pipeline
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="qflume-aio-write")
        self._reader = ThreadPoolExecutor(read_threads, thread_name_prefix="qflume-aio-read")
        self._closed = False

    @property
    def collection(self) -> str:
        return str(self.pipeline.collection)

    async def _run(
        self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kw: Any
    ) -> T:
        if self._closed:
            raise InvalidInputError("AsyncPipeline is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, functools.partial(fn, *args, **kw))

    async def _ingest(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        fut = self._run(self._writer, fn, *args, **kw)
        try:
            return await fut
        except asyncio.CancelledError:
            # The thread cannot be killed: ask the run to stop reading, drain and commit.
            self.pipeline.stop()
            raise

    # --- writes ---------------------------------------------------------------------------------

    async def ingest(
        self,
        paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        **options: Any,
    ) -> Any:
        """`Pipeline.ingest` (include=, exclude=, delete_missing=, dry_run=) -> IngestReport.

        Cancelling the awaiting task stops the run cleanly (what is in flight is committed).
        """
        return await self._ingest(self.pipeline.ingest, paths, **options)

    async def ingest_records(
        self,
        records: Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]],
        **options: Any,
    ) -> Any:
        """`Pipeline.ingest_records`; `records` may also be an async iterable (read in batches)."""
        if isinstance(records, AsyncIterable):
            loop = asyncio.get_running_loop()
            records = _bridge(records, loop)
        return await self._ingest(self.pipeline.ingest_records, records, **options)

    async def update_payload(self, updates: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """`qflume.ops.update_payload`: per-item results."""
        from qflume.ops import update_payload

        return await self._run(self._writer, update_payload, self.pipeline, list(updates))

    async def delete(
        self,
        *,
        ids: Sequence[Any] | None = None,
        sources: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """`qflume.ops.delete`: per-item results."""
        from qflume.ops import delete

        return await self._run(
            self._writer, delete, self.pipeline, ids=ids, sources=sources, filter=filter
        )

    async def verify(self, *, repair: bool = False) -> dict[str, Any]:
        """`Pipeline.verify`."""
        return await self._run(self._writer, self.pipeline.verify, repair=repair)

    # --- reads ----------------------------------------------------------------------------------

    async def search(
        self,
        queries: Sequence[str],
        *,
        limit: int = 10,
        filter: Mapping[str, Any] | None = None,
        mode: str = "dense",
    ) -> list[Any]:
        """`Pipeline.search`: one list of hits per query."""
        return await self._run(
            self._reader, self.pipeline.search, list(queries), limit=limit, filter=filter, mode=mode
        )

    async def aembed(self, texts: Sequence[str]) -> Any:
        """The pipeline's embedder's `embed` (float32 (n, dim)), in the reader thread: loading
        the model on first use and the model calls never block the event loop."""
        if isinstance(texts, str):
            raise InvalidInputError("aembed() takes a sequence of texts; use aembed_query(text)")
        texts = list(texts)
        return await self._run(self._reader, lambda: self.pipeline.embedder.embed(texts))

    async def aembed_query(self, text: str) -> Any:
        """One text's vector (float32 (dim,)), as `aembed`."""
        if not isinstance(text, str):
            raise InvalidInputError(f"query is {type(text).__name__}, not str")
        return await self._run(self._reader, lambda: self.pipeline.embedder.embed([text])[0])

    async def status(self) -> dict[str, Any]:
        """`Pipeline.status`."""
        return await self._run(self._reader, self.pipeline.status)

    async def health(self, **options: Any) -> dict[str, Any]:
        """`qflume.metrics.health` of the pipeline."""
        from qflume.metrics import health

        return await self._run(self._reader, health, self.pipeline, **options)

    # --- lifecycle ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Wait for running work, then close the pipeline (flushes the sink, releases the state)."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()

        def shutdown() -> None:
            self._writer.shutdown(wait=True)
            self._reader.shutdown(wait=True)
            self.pipeline.close()

        await loop.run_in_executor(None, shutdown)

    async def __aenter__(self) -> AsyncPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _bridge(
    records: AsyncIterable[Mapping[str, Any]], loop: asyncio.AbstractEventLoop, batch: int = 256
) -> Iterator[Mapping[str, Any]]:
    """A blocking iterator (for the worker thread) over an async iterable on `loop`."""
    it = aiter(records)

    async def take() -> list[Any]:
        out: list[Any] = []
        for _ in range(batch):
            try:
                out.append(await anext(it))
            except StopAsyncIteration:
                out.append(_END)
                break
        return out

    def gen() -> Iterator[Mapping[str, Any]]:
        while True:
            part = asyncio.run_coroutine_threadsafe(take(), loop).result()
            for x in part:
                if x is _END:
                    return
                yield x

    return gen()
