"""Type stubs of qflume's Rust core (checked with mypy.stubtest)."""

from typing import Final

import numpy as np
import numpy.typing as npt

__version__: Final[str]

# --- threads -----------------------------------------------------------------

def set_threads(n: int) -> None: ...
def get_threads() -> int: ...

# --- hash --------------------------------------------------------------------

HASH_LEN: Final[int]

def content_hash(data: str | bytes | bytearray | memoryview) -> bytes: ...
def point_id(key: str, chunk_hash: bytes) -> str: ...

# --- chunk -------------------------------------------------------------------

# --- scan --------------------------------------------------------------------

# --- pack --------------------------------------------------------------------

# --- sparse ------------------------------------------------------------------
