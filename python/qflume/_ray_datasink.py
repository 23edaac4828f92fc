"""`qflume.ray.QflumeDatasink`: the write stage as a Ray Data `Datasink`, for pipelines a user
builds with ``Dataset.write_datasink``. Apart from `qflume.ray` because it needs ray.data, which
the worker processes that run qflume.ray's own stages never import."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ray.data.block import BlockAccessor
from ray.data.datasource.datasink import Datasink, WriteResult

from qflume.ray import SinkSettings, acknowledged, write_units
from qflume.state import DocUpdate


class QflumeDatasink(Datasink):  # type: ignore[type-arg]
    """Writes units (rows with a pickled "data" column of embedded slices, and the "embedded"
    counts of `EmbedUnits`) to a Qdrant server over gRPC from the workers (`qflume.ray.write_units`:
    Rust-packed upserts, then deletes and payload updates). A write task returns the document
    updates only after the server acknowledged all it sent; on the driver, `on_write_complete`
    hands them to ``on_commit(updates, deleted_keys, counts)`` or keeps them in
    ``acknowledged``."""

    def __init__(
        self,
        url: str,
        collection: str,
        *,
        api_key: str | None = None,
        wait: bool = False,
        on_commit: Any = None,
        sink_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = SinkSettings(
            url, collection, api_key, wait, tuple(sorted((sink_options or {}).items()))
        )
        self.on_commit = on_commit
        self.acknowledged: list[tuple[list[DocUpdate], list[str], dict[str, Any]]] = []

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["on_commit"], d["acknowledged"] = None, []  # driver-side only
        return d

    def get_name(self) -> str:
        return "QflumeQdrant"

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        def units() -> Iterator[tuple[bytes, bytes | None]]:
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                data = table.column("data").to_pylist()
                stats = (
                    table.column("embedded").to_pylist()
                    if "embedded" in table.column_names
                    else [None] * len(data)
                )
                yield from zip(data, stats, strict=True)

        return write_units(self.settings, units())

    def on_write_complete(self, write_result: WriteResult) -> None:  # type: ignore[type-arg]
        for r in write_result.write_returns:
            got = acknowledged(r)
            if self.on_commit is not None:
                self.on_commit(*got)
            else:
                self.acknowledged.append(got)
