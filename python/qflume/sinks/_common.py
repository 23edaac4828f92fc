"""Helpers shared by sinks: array coercion, and Qdrant gRPC values back to Python (point ids:
`qflume.ids`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from qflume.exceptions import ShapeError
from qflume.sinks.base import SparseBatch

if TYPE_CHECKING:  # pragma: no cover
    from qdrant_client import grpc as qg

SparseArrays = tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], npt.NDArray[np.float32]]


def dense_array(dense: Any, n: int) -> npt.NDArray[np.float32] | None:
    """Dense vectors as a C-contiguous float32 (n, dim) array (no copy if already one)."""
    if dense is None:
        return None
    arr = np.ascontiguousarray(dense, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ShapeError(f"dense must have shape ({n}, dim) for {n} ids, got {arr.shape}")
    return arr


def sparse_arrays(
    sparse: Mapping[str, SparseBatch | SparseArrays] | None, n: int
) -> dict[str, SparseArrays] | None:
    """Sparse batches as (indptr int64, indices uint32, values float32) CSR triples."""
    if not sparse:
        return None
    out: dict[str, SparseArrays] = {}
    for name, csr in sparse.items():
        if isinstance(csr, SparseBatch):
            indptr, indices, values = csr.indptr, csr.indices, csr.values
        else:
            indptr, indices, values = csr
        triple = (
            np.ascontiguousarray(indptr, dtype=np.int64),
            np.ascontiguousarray(indices, dtype=np.uint32),
            np.ascontiguousarray(values, dtype=np.float32),
        )
        if triple[0].ndim != 1 or len(triple[0]) != n + 1:
            raise ShapeError(
                f"sparse vector {name!r}: indptr has {len(triple[0])} entries, expected {n + 1} "
                f"({n} points + 1)"
            )
        out[name] = triple
    return out


def int64_array(a: Any, name: str, n: int) -> npt.NDArray[np.int64]:
    arr = np.ascontiguousarray(a, dtype=np.int64)
    if arr.shape != (n,):
        raise ShapeError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr


# --- gRPC values back to Python ---------------------------------------------------------------


def value_to_py(v: qg.Value) -> Any:
    """A `qdrant.Value` as the Python value it encodes."""
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "integer_value":
        return v.integer_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return {k: value_to_py(x) for k, x in v.struct_value.fields.items()}
    if kind == "list_value":
        return [value_to_py(x) for x in v.list_value.values]
    return None


def payload_to_py(entries: Mapping[str, qg.Value]) -> dict[str, Any]:
    return {k: value_to_py(v) for k, v in entries.items()}


def _dense_of(vo: Any) -> npt.NDArray[np.float32] | None:
    kind = vo.WhichOneof("vector")
    if kind == "dense":
        return np.asarray(vo.dense.data, dtype=np.float32)
    if kind is None and len(vo.data) and not vo.HasField("indices"):
        return np.asarray(vo.data, dtype=np.float32)
    return None


def _sparse_of(vo: Any) -> tuple[list[int], list[float]] | None:
    kind = vo.WhichOneof("vector")
    if kind == "sparse":
        return list(vo.sparse.indices), list(vo.sparse.values)
    if kind is None and vo.HasField("indices"):
        return list(vo.indices.data), list(vo.data)
    return None


def vectors_to_py(
    vectors: Any,
) -> tuple[npt.NDArray[np.float32] | None, dict[str, tuple[list[int], list[float]]] | None]:
    """(default dense vector, {sparse name: (indices, values)}) of a `qdrant.VectorsOutput`."""
    which = vectors.WhichOneof("vectors_options")
    if which == "vector":
        return _dense_of(vectors.vector), None
    if which != "vectors":
        return None, None
    dense = None
    sparse: dict[str, tuple[list[int], list[float]]] = {}
    for name, vo in vectors.vectors.vectors.items():
        if name == "":
            dense = _dense_of(vo)
            continue
        sp = _sparse_of(vo)
        if sp is not None:
            sparse[name] = sp
    return dense, (sparse or None)


def chunked(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]
