"""Type stubs of qflume's Rust core (checked with mypy.stubtest)."""

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias, final, overload

import numpy as np
import numpy.typing as npt

__version__: Final[str]

# --- threads -----------------------------------------------------------------

def set_threads(n: int) -> None: ...
def get_threads() -> int: ...
def _panic_for_test(where_: str) -> None: ...

# --- cpu -------------------------------------------------------------------

def cpu_features() -> dict[str, bool]: ...

# --- hash --------------------------------------------------------------------

HASH_LEN: Final[int]

def content_hash(data: str | bytes | bytearray | memoryview) -> bytes: ...
def point_id(key: str, chunk_hash: bytes) -> str: ...
def point_ids(key: str, hashes: bytes | npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]: ...

# --- chunk -------------------------------------------------------------------

@final
class Chunker:
    def __new__(
        cls,
        *,
        max_chars: int | None = None,
        max_tokens: int | None = None,
        tokenizer_json: str | None = None,
        tokenizer_path: str | None = None,
        tokenizer_name: str | None = None,
        overlap: int = 0,
    ) -> Chunker: ...
    @property
    def max_size(self) -> int: ...
    @property
    def overlap(self) -> int: ...
    @property
    def token_mode(self) -> bool: ...
    def chunk(self, text: str) -> npt.NDArray[np.int64]: ...
    def chunk_many(self, texts: Sequence[str]) -> list[npt.NDArray[np.int64]]: ...
    def chunk_batch(
        self, texts: Sequence[str], keys: Sequence[str]
    ) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.uint8]
    ]: ...
    def chunk_file(
        self, path: str, *, block_size: int = ..., key: str | None = ...
    ) -> ChunkFileIter: ...
    def count_tokens(self, text: str) -> int | None: ...

@final
class DocDiffer:
    def __new__(
        cls,
        prev_chunks: bytes,
        prev_offsets: bytes,
        prev_meta: bytes,
        pending: bytes,
        resend_all: bool,
    ) -> DocDiffer: ...
    def take(
        self,
        hashes: npt.NDArray[np.uint8],
        offsets: npt.NDArray[np.int64],
        j0: int,
        digests: bytes | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...
    def count(self) -> int: ...
    def uncommitted(self) -> npt.NDArray[np.uint8]: ...
    def finish(self) -> tuple[bytes, bytes, bytes, npt.NDArray[np.uint8]]: ...

@final
class ChunkFileIter:
    def __iter__(self) -> ChunkFileIter: ...
    def __next__(
        self,
    ) -> tuple[npt.NDArray[np.int64], list[str], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]: ...

# --- scan --------------------------------------------------------------------

SKIP_REASONS: Final[tuple[str, ...]]

@final
class FileEntry:
    def __new__(
        cls,
        key: str,
        path: str,
        size: int,
        mtime_ns: int,
        hash: bytes | None = None,
        skip: str | None = None,
        detail: str | None = None,
        unchanged: bool = False,
    ) -> FileEntry: ...
    @property
    def key(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def mtime_ns(self) -> int: ...
    @property
    def hash(self) -> bytes | None: ...
    @property
    def skip(self) -> str | None: ...
    @property
    def detail(self) -> str | None: ...
    @property
    def unchanged(self) -> bool: ...
    @property
    def ok(self) -> bool: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __reduce__(
        self,
    ) -> tuple[
        type[FileEntry], tuple[str, str, int, int, bytes | None, str | None, str | None, bool]
    ]: ...

def scan(
    paths: list[str],
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    max_file_size: int = 67108864,
    known: object = None,
    follow_links: bool = True,
    hidden: bool = False,
    ignore_files: bool = True,
    raw_extensions: list[str] | None = None,
) -> list[FileEntry]: ...
def read_text(path: str) -> str: ...
def _raise_core_error(kind: str, input: str) -> None: ...

# --- pack --------------------------------------------------------------------

#: The chunk payload layout the packer writes: (text key, metadata key) and the per-chunk
#: metadata keys in the order it writes them (qflume.payload holds the same names).
PAYLOAD_KEYS: Final[tuple[str, str]]
CHUNK_KEYS: Final[tuple[str, str, str, str]]

_Sparse: TypeAlias = Mapping[str, Any]

@overload
def pack_upsert(
    collection: str,
    ids: npt.NDArray[np.uint8],
    dense: npt.NDArray[np.float32] | None = None,
    *,
    sparse: _Sparse | None = None,
    payloads: Sequence[Mapping[str, Any]] | None = None,
    texts: Sequence[str] | None = None,
    doc_index: npt.NDArray[np.int64] | None = None,
    doc_metadata: Sequence[Mapping[str, Any]] | None = None,
    chunk_index: npt.NDArray[np.int64] | None = None,
    start: npt.NDArray[np.int64] | None = None,
    end: npt.NDArray[np.int64] | None = None,
    chunk_hash: npt.NDArray[np.uint8] | None = None,
    wait: bool | None = None,
    ordering: str | None = None,
    max_bytes: int = 8388608,
    max_points: int = 256,
    hard_limit: int = 33554432,
    return_counts: Literal[False] = False,
) -> list[bytes]: ...
@overload
def pack_upsert(
    collection: str,
    ids: npt.NDArray[np.uint8],
    dense: npt.NDArray[np.float32] | None = None,
    *,
    sparse: _Sparse | None = None,
    payloads: Sequence[Mapping[str, Any]] | None = None,
    texts: Sequence[str] | None = None,
    doc_index: npt.NDArray[np.int64] | None = None,
    doc_metadata: Sequence[Mapping[str, Any]] | None = None,
    chunk_index: npt.NDArray[np.int64] | None = None,
    start: npt.NDArray[np.int64] | None = None,
    end: npt.NDArray[np.int64] | None = None,
    chunk_hash: npt.NDArray[np.uint8] | None = None,
    wait: bool | None = None,
    ordering: str | None = None,
    max_bytes: int = 8388608,
    max_points: int = 256,
    hard_limit: int = 33554432,
    return_counts: Literal[True],
) -> tuple[list[bytes], list[int]]: ...
def pack_delete(
    collection: str,
    ids: npt.NDArray[np.uint8],
    *,
    wait: bool | None = None,
    ordering: str | None = None,
    max_bytes: int = 8388608,
    max_points: int = 4096,
) -> list[bytes]: ...
def pack_delete_by_values(
    collection: str,
    values: Sequence[str],
    *,
    key: str = "metadata.source",
    wait: bool | None = None,
    ordering: str | None = None,
    max_bytes: int = 8388608,
    max_points: int = 1024,
) -> list[bytes]: ...
def pack_set_payload(
    collection: str,
    payload: Mapping[str, Any],
    ids: npt.NDArray[np.uint8],
    *,
    key: str | None = None,
    wait: bool | None = None,
    ordering: str | None = None,
    max_bytes: int = 8388608,
    max_points: int = 4096,
) -> list[bytes]: ...

# --- sparse ------------------------------------------------------------------

_CsrArrays = tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], npt.NDArray[np.float32]]

@final
class Bm25Encoder:
    def __new__(
        cls,
        *,
        language: str = "english",
        k: float = 1.2,
        b: float = 0.75,
        avg_len: float = 256.0,
        stopwords: list[str] | None = None,
        token_max_length: int = 40,
        threads: int | None = None,
    ) -> Bm25Encoder: ...
    def embed(self, texts: list[str]) -> _CsrArrays: ...
    def embed_query(self, texts: list[str]) -> _CsrArrays: ...
    def tokens(self, text: str) -> list[str]: ...
    @staticmethod
    def token_id(token: str) -> int: ...
    @property
    def language(self) -> str: ...
    @property
    def k(self) -> float: ...
    @property
    def b(self) -> float: ...
    @property
    def avg_len(self) -> float: ...

def splade_pool(
    logits: npt.NDArray[np.float32],
    attention_mask: npt.NDArray[np.int64],
    *,
    top_k: int | None = None,
    threshold: float = 0.0,
    threads: int | None = None,
) -> _CsrArrays: ...
