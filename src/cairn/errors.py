"""Errors raised by cairn.

Every error derives from :class:`CairnError` and also from the builtin that best describes it,
so ``except KeyError`` keeps working for code written against dictionaries or MLflow.
"""

from __future__ import annotations


class CairnError(Exception):
    """Root of every error cairn raises."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr of its message
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidArgument(CairnError, ValueError):
    """An argument has a value cairn cannot accept (bad key, unserializable value, ...)."""


class ParamConflict(InvalidArgument):
    """A param was logged again with a different value; params are immutable."""


class SchemaMismatch(InvalidArgument):
    """Model input, output or params do not match the model's signature (names the field, dtype, shape)."""


class FilterSyntaxError(InvalidArgument):
    """A search filter or order-by string could not be parsed.

    Attributes:
        position: character offset of the offending token in the filter string.
    """

    def __init__(self, message: str, *, text: str = "", position: int = 0) -> None:
        pointer = f"\n  {text}\n  {' ' * position}^" if text else ""
        super().__init__(f"{message}{pointer}")
        self.text = text
        self.position = position


class ResourceAlreadyExists(CairnError, ValueError):
    """An experiment, model or other named resource already exists."""


class NotFound(CairnError, KeyError):
    """A resource looked up by id or name does not exist."""


class RunNotFound(NotFound):
    """No run has this id."""


class ExperimentNotFound(NotFound):
    """No experiment has this id or name."""


class UserNotFound(NotFound):
    """No user of ``cairn server --auth`` has this name."""


class RunNotActive(CairnError, RuntimeError):
    """The run is deleted (or otherwise not writable) and cannot take new data."""


class StoreError(CairnError, RuntimeError):
    """The backing database failed in a way cairn cannot recover from."""


class StoreLocked(StoreError, TimeoutError):
    """The database stayed locked by another process past the busy timeout."""


class SchemaOutOfDate(StoreError):
    """The database schema is older (or newer) than this version of cairn expects."""


class ForeignStore(StoreError):
    """The database holds tables cairn did not create (an application's, or an MLflow store); cairn leaves it alone."""


class RunLeased(CairnError, RuntimeError):
    """Another process holds the run's resume lease: two processes may not resume one run at once.

    Attributes:
        run_id: the run.
        holder: the lease owner, ``host:pid:token``.
        expires_time: when the lease goes stale unless renewed (ms since the epoch).
    """

    def __init__(self, message: str, *, run_id: str = "", holder: str = "", expires_time: int = 0) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.holder = holder
        self.expires_time = expires_time


class UnsafePath(CairnError, ValueError):
    """An artifact path would escape its root (``..``, absolute, encoded or symlinked)."""


class ArtifactNotFound(NotFound, FileNotFoundError):
    """No artifact exists at this path."""


class ArtifactWriteError(CairnError, OSError):
    """Artifacts could not be written or made durable (disk full, I/O error); the message names the files."""


class UnsafeModel(CairnError, PermissionError):
    """Loading this model would run code cairn does not trust (unpickling without the opt-in, or a
    ``loader_module`` outside cairn's allow-list)."""


class ModelIntegrityError(UnsafeModel):
    """A model file does not match the sha256 recorded when the model was saved (or is missing)."""


class CheckpointError(CairnError, RuntimeError):
    """A training checkpoint could not be written, read or applied."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint directory has no valid manifest (missing, unreadable, or a file whose size or sha256
    differs from it); such a checkpoint does not exist."""


class CheckpointWriteError(CheckpointError):
    """A background checkpoint write failed (disk full, permissions, ...); the message says which one."""


class StateMismatch(CheckpointError, ValueError):
    """Saved state does not fit the object it is restored into (shapes, missing or unexpected keys)."""


class BackgroundTaskError(CairnError, RuntimeError):
    """Work handed to the background service failed (the message says which; the cause is chained). Raised on
    the caller's thread by the next logging call, ``flush`` or ``end_run`` (see :mod:`cairn.background`)."""
