"""The exception tree: everything qflume raises derives from QflumeError and the builtin that fits."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DecodeError",
    "InvalidInputError",
    "InvalidTypeError",
    "ModelError",
    "QflumeError",
    "QflumeIOError",
    "RustPanicError",
    "ShapeError",
    "SinkError",
    "StateCorruptError",
    "StateError",
    "StateLockedError",
    "StoreBusyError",
    "TokenizerError",
    "VersionError",
]


class QflumeError(Exception):
    """Base of every error qflume raises."""


class InvalidInputError(QflumeError, ValueError):
    """An argument or an input record that cannot be used; the message names it."""


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument of the wrong type (a number where a list of str goes, a missing argument of a
    pair). Also a ``TypeError``, which Python raises for the same mistake, as numpy's
    ``AxisError`` is both a ``ValueError`` and an ``IndexError``."""


class DecodeError(InvalidInputError):
    """Input that is not valid text in the expected encoding."""


class ShapeError(InvalidInputError):
    """Vectors, ids or payloads that do not fit together or do not fit the collection."""


class TokenizerError(InvalidInputError):
    """A tokenizer that cannot be loaded or used."""


class ConfigError(InvalidInputError):
    """A config file (qflume.toml, [tool.qflume]) that cannot be used; the message names the
    file and the key."""

    def __init__(self, message: str, *, file: object = None, key: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.key = key


class ModelError(QflumeError, RuntimeError):
    """An embedding model that cannot be built, loaded or run."""


class QflumeIOError(QflumeError, OSError):
    """A file or folder that cannot be read or written, a port that cannot be bound, or
    another resource the system refuses (worker threads)."""


class SinkError(QflumeError, ConnectionError):
    """The Qdrant target failed (server down, retries spent, request refused)."""


class StateError(QflumeError, RuntimeError):
    """The ingestion state is unusable, or an object is used in a state that forbids it:
    after it finished or stopped, before it started, or from two threads at once."""


class StateLockedError(StateError):
    """Another run holds the lock on the same state."""


class StateCorruptError(StateError):
    """The state database is damaged; the message says how to rebuild it."""


class VersionError(StateError):
    """A reindex, rollback, gc or migrate that cannot go on (qflume.versions); the message says
    why, and the live version is left as it was."""


class StoreBusyError(StateLockedError):
    """A reader of an embedded store refused at once: an ingest is writing it."""


class RustPanicError(QflumeError, RuntimeError):
    """Rust code (qflume's core or Qdrant Edge) panicked: a bug, reported with the call it was in,
    as an ordinary exception instead of PyO3's PanicException (a BaseException that would end a
    worker thread)."""


def is_rust_panic(e: BaseException) -> bool:
    """Whether ``e`` is PyO3's PanicException (each Rust extension has its own class)."""
    return type(e).__name__ == "PanicException"


def invalid_type_from(e: TypeError, where: str) -> InvalidTypeError:
    """``e`` (a ``TypeError`` of an argument conversion, such as PyO3's) as an
    ``InvalidTypeError`` that says where it happened, with the argument it names in a note."""
    notes = [n.removeprefix("while processing ") for n in getattr(e, "__notes__", ())]
    about = f" (argument {', '.join(notes)})" if notes else ""
    return InvalidTypeError(f"{where}{about}: {e}")
