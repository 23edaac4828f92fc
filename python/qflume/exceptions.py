"""The exception tree: everything qflume raises derives from QflumeError and the builtin that fits."""

from __future__ import annotations

__all__ = [
    "DecodeError",
    "InvalidInputError",
    "ModelError",
    "QflumeError",
    "QflumeIOError",
    "ShapeError",
    "SinkError",
    "StateCorruptError",
    "StateError",
    "StateLockedError",
    "StoreBusyError",
    "TokenizerError",
]


class QflumeError(Exception):
    """Base of every error qflume raises."""


class InvalidInputError(QflumeError, ValueError):
    """An argument or an input record that cannot be used; the message names it."""


class DecodeError(InvalidInputError):
    """Input that is not valid text in the expected encoding."""


class ShapeError(InvalidInputError):
    """Vectors, ids or payloads that do not fit together or do not fit the collection."""


class TokenizerError(InvalidInputError):
    """A tokenizer that cannot be loaded or used."""


class ModelError(QflumeError, RuntimeError):
    """An embedding model that cannot be built, loaded or run."""


class QflumeIOError(QflumeError, OSError):
    """A file or folder that cannot be read or written."""


class SinkError(QflumeError, ConnectionError):
    """The Qdrant target failed (server down, retries spent, request refused)."""


class StateError(QflumeError, RuntimeError):
    """The ingestion state is unusable."""


class StateLockedError(StateError):
    """Another run holds the lock on the same state."""


class StateCorruptError(StateError):
    """The state database is damaged; the message says how to rebuild it."""


class StoreBusyError(StateLockedError):
    """A reader of an embedded store refused at once: an ingest is writing it."""
