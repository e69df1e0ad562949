"""The error box of :mod:`cairn.background`: failures of background work, raised by the next logging call.

A background worker that fails calls :func:`report` with an object whose ``raise_errors()`` raises
(and forgets) its recorded failures. The fluent and client logging calls check :data:`pending`
after queuing their own data, so nothing the caller logs is lost, and call :func:`raise_pending`,
which raises the first failure on the caller's thread. Checking costs one attribute read.
"""

from __future__ import annotations

import threading
from typing import Protocol

__all__ = ["ErrorSource", "pending", "raise_pending", "report", "reset"]


class ErrorSource(Protocol):
    def raise_errors(self) -> None:
        """Raise the failures recorded since the last call, if any, and forget them."""


#: True while some source has reported a failure not yet raised (read on every logging call).
pending = False
_sources: list[ErrorSource] = []
_lock = threading.Lock()


def report(source: ErrorSource) -> None:
    """Mark ``source`` as holding a failure for the next logging call to raise."""
    global pending
    with _lock:
        if not any(known is source for known in _sources):
            _sources.append(source)
        pending = True


def raise_pending() -> None:
    """Raise the first reported failure (a source with nothing left to raise is dropped)."""
    global pending
    with _lock:
        sources = list(_sources)
        _sources.clear()
        pending = False
    for index, source in enumerate(sources):
        try:
            source.raise_errors()
        except BaseException:
            rest = sources[index + 1 :]
            if rest:
                with _lock:
                    _sources.extend(rest)
                    pending = True
            raise


def reset() -> None:
    """Forget every reported source (for tests and :func:`cairn.tracking.fluent.reset`)."""
    global pending
    with _lock:
        _sources.clear()
        pending = False
