"""Ending runs when the process ends: normal exit, uncaught exception, SIGTERM.

Installed once, the first time a run starts. Exit marks runs FINISHED, an uncaught exception
FAILED, KeyboardInterrupt and SIGTERM KILLED; every case ends the runs (each with the background
service's ordered drain), then drains and closes every background worker (:func:`cairn.background.shutdown`),
so queued metric points, checkpoints, uploads and fsyncs are all finished, within the exit drain's bound
(``CAIRN_EXIT_DRAIN_TIMEOUT``, see :mod:`cairn.background`). Exit goes through the service's one
``atexit`` handler. (MLflow marks runs FINISHED at exit even when the script crashed.)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

from cairn import background
from cairn.tracking.entities import RunStatus

logger = logging.getLogger(__name__)

_installed = False
_exit_status = RunStatus.FINISHED
_end_all: Callable[[RunStatus], None] | None = None


def install(end_all_runs: Callable[[RunStatus], None]) -> None:
    """Register ``end_all_runs(status)`` to run at exit and on SIGTERM (idempotent)."""
    global _installed, _end_all
    _end_all = end_all_runs
    if _installed:
        return
    _installed = True
    background.add_exit_hook(_end_runs_at_exit)
    previous_hook = sys.excepthook

    def excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        global _exit_status
        _exit_status = RunStatus.KILLED if issubclass(kind, KeyboardInterrupt) else RunStatus.FAILED
        previous_hook(kind, value, tb)

    sys.excepthook = excepthook
    if threading.current_thread() is threading.main_thread():
        _install_sigterm()


def _install_sigterm() -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        background.begin_exit(signum=signum)  # bounded by CAIRN_EXIT_DRAIN_TIMEOUT, like the exit drain
        _end_runs(RunStatus.KILLED)
        background.shutdown()
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous in (None, signal.SIG_DFL) else previous)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread of the main interpreter
        pass


def _end_runs_at_exit() -> None:
    _end_runs(_exit_status)


def _end_runs(status: RunStatus) -> None:
    if _end_all is not None:
        try:
            _end_all(status)
        except Exception as exc:
            logger.error("cairn: could not end active runs at exit: %s", exc)
