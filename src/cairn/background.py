"""One background service: every background worker of the process, one ordered drain, one error box.

Workers (the metric writer, checkpoint writers, system-metric sampling, uploads, fsync) run on their own
threads; small jobs (autolog's params, model summaries, uploads of single files) go to :func:`submit`,
which runs them in order on one shared daemon thread. Nothing here does I/O on the caller's thread.

**Drain order.** :func:`drain` (called by ``end_run`` for the ending run, and for everything at interpreter
exit and on SIGTERM) drains the workers phase by phase, in the order of :class:`Phase`:

1. ``SYSTEM_METRICS``: sampling stops, after one final sample;
2. ``AUTOLOG``: queued autolog tasks (the shared task thread first, then integration workers);
3. ``CHECKPOINTS``: checkpoint writes;
4. ``METRICS``: queued metric points are written (every point the phases above produced);
5. ``UPLOADS``: checkpoint and artifact uploads;
6. ``FSYNC``: files made durable;
7. ``LEASES``: the run's resume lease, released once everything above is finished (nothing to drain).

Within a phase, workers drain in the order they registered. A worker registered for a run
(``register(worker, run_id=...)``) is drained, closed (in the same order) and forgotten when that run's
drain ends.

**Errors.** A worker that fails in the background records the failure itself and calls :func:`report`
with an object whose ``raise_errors()`` raises (and forgets) it; a task given to :func:`submit` that
raises is recorded with its ``what``. The next logging call, ``flush`` or ``end_run`` raises the first
one on the caller's thread (:func:`raise_errors`); each failure is raised once. At exit, failures nobody
collected are logged on the ``cairn.background`` logger.

**Exit.** One ``atexit`` handler, registered when cairn is imported: it runs the exit hooks (ending the
fluent runs, see :func:`add_exit_hook`), then :func:`shutdown`. Registered first, it runs after every
``atexit`` handler registered later, so what those queue is drained too. SIGTERM goes through the same
two steps (:mod:`cairn.tracking.lifecycle`).

**The exit drain is bounded** (``CAIRN_EXIT_DRAIN_TIMEOUT`` seconds, default
:data:`DEFAULT_EXIT_DRAIN_TIMEOUT`; ``none`` waits forever): between :func:`begin_exit` and the end of
:func:`shutdown`, every drain (the runs' drains at their end included) shares that deadline, a worker
that did not finish in time is not closed (its daemon thread dies with the interpreter) and one warning on
stderr names each such worker, its run, what it had not finished and what becomes of it. A wait the
service does not own (an end-of-run hook waiting for its own writer) cannot be cut short: if the exit is
still blocked :data:`EXIT_GRACE_SECONDS` after the bound, a watchdog thread prints the same warning and ends
the process (``os._exit``: status 1 at exit, 128 + the signal's number on a signal). The default,
120 s, lets a checkpoint of a few GB reach S3 or a team server at ordinary throughput, while an unreachable
endpoint (whose client may retry for many minutes) cannot hold a finished job, a CI slot or a scheduler
allocation forever; under SIGTERM the platform's own grace period (30 s on Kubernetes and Slurm by
default) usually ends the process first, which is why what is lost is said as early as possible.

The service holds workers weakly (an idle checkpoint writer nobody references can be collected): keep a
reference to a worker while it has work.
"""

from __future__ import annotations

import atexit
import enum
import itertools
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from cairn.errors import BackgroundTaskError, CairnError
from cairn.tracking import background_errors
from cairn.tracking.background_errors import ErrorSource

__all__ = [
    "BackgroundService",
    "BackgroundTaskError",
    "ErrorSource",
    "Phase",
    "Worker",
    "add_exit_hook",
    "begin_exit",
    "drain",
    "raise_errors",
    "record",
    "register",
    "remove_exit_hook",
    "report",
    "reset",
    "service",
    "shutdown",
    "submit",
    "unregister",
]

logger = logging.getLogger(__name__)

#: Seconds the exit (and SIGTERM) drain may take, unless ``CAIRN_EXIT_DRAIN_TIMEOUT`` says otherwise.
DEFAULT_EXIT_DRAIN_TIMEOUT = 120.0
EXIT_DRAIN_TIMEOUT_ENV = "CAIRN_EXIT_DRAIN_TIMEOUT"
#: Seconds past the bound after which a process whose exit is blocked outside the service is ended.
EXIT_GRACE_SECONDS = 10.0


class Phase(enum.IntEnum):
    """When a worker is drained; lower first (see the module docstring)."""

    SYSTEM_METRICS = 10
    AUTOLOG = 20
    CHECKPOINTS = 30
    METRICS = 40
    UPLOADS = 50
    FSYNC = 60
    LEASES = 70


@runtime_checkable
class Worker(Protocol):
    """A long-lived background worker owned by the service."""

    @property
    def name(self) -> str:
        """What the worker does, for messages (``"metric writer"``)."""

    @property
    def phase(self) -> Phase:
        """When it is drained."""

    def drain(self, timeout: float | None) -> bool:
        """Finish everything handed over so far; False if ``timeout`` seconds passed first. Never raises
        the worker's own failures (those go through :func:`report`)."""

    def close(self) -> object:
        """Finish and stop; may raise the failures not yet raised (they are then logged). What it returns is
        ignored."""

    def raise_errors(self) -> None:
        """Raise the failures recorded since the last call, if any, and forget them."""


#: Where the work of each phase is when an exit drain runs out of time (appended to the warning).
_LEFT_BEHIND = {
    Phase.SYSTEM_METRICS: "the last system-metric sample is lost",
    Phase.AUTOLOG: "these autolog tasks (params, model summaries, models) did not run",
    Phase.CHECKPOINTS: (
        "these checkpoints were not written or, written, not uploaded (the native writer uploads each one after "
        "writing it): what was written stays in the run's staging directory; a resume continues from the newest "
        "checkpoint that was uploaded"
    ),
    Phase.METRICS: "these metric points were only in memory and are lost",
    Phase.UPLOADS: (
        "these checkpoints were not uploaded: their files stay on this machine (Lightning and Transformers "
        "ones in the trainer's output directory, native ones in the run's staging directory); a resume "
        "continues from the newest checkpoint that was uploaded"
    ),
    Phase.FSYNC: "these files were written but may not survive a power loss",
    Phase.LEASES: "the lease goes stale after its ttl",
}


def exit_drain_timeout() -> float | None:
    """``CAIRN_EXIT_DRAIN_TIMEOUT`` in seconds (``none``/``inf``: no bound), else :data:`DEFAULT_EXIT_DRAIN_TIMEOUT`.

    A value that is not a number of seconds is warned about and the default used (this is read at exit,
    where raising would lose the drain).
    """
    text = os.environ.get(EXIT_DRAIN_TIMEOUT_ENV, "").strip().lower()
    if not text:
        return DEFAULT_EXIT_DRAIN_TIMEOUT
    if text in ("none", "inf", "infinity"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        logger.warning(
            "cairn: %s=%r is not a number of seconds; using %g",
            EXIT_DRAIN_TIMEOUT_ENV,
            text,
            DEFAULT_EXIT_DRAIN_TIMEOUT,
        )
        return DEFAULT_EXIT_DRAIN_TIMEOUT
    return value


class _Failure:
    """One recorded failure, raised once."""

    def __init__(self, what: str, exc: BaseException) -> None:
        self._error: BaseException | None = exc
        self._what = what

    def raise_errors(self) -> None:
        error, self._error = self._error, None
        if error is None:
            return
        if isinstance(error, CairnError):
            raise error
        raise BackgroundTaskError(f"{self._what} failed in the background: {type(error).__name__}: {error}") from error


class _TaskRunner:
    """The shared daemon thread of :func:`submit`: runs tasks in order, exits when idle."""

    name = "background tasks"
    phase = Phase.AUTOLOG

    def __init__(self, on_failure: Callable[[str, BaseException], None]) -> None:
        self._on_failure = on_failure
        self._cond = threading.Condition()
        self._tasks: deque[tuple[Callable[[], object], str]] = deque()
        self._unfinished = 0
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished yet."""
        with self._cond:
            return self._unfinished

    def submit(self, task: Callable[[], object], what: str) -> None:
        with self._cond:
            self._tasks.append((task, what))
            self._unfinished += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cairn-background-tasks", daemon=True)
                self._thread.start()

    def drain(self, timeout: float | None) -> bool:
        if threading.current_thread() is self._thread:  # a task draining: the rest runs after it
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._unfinished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        self.drain(None)

    def raise_errors(self) -> None:
        """Task failures are raised through the error box, one per task."""

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._tasks:
                    self._thread = None
                    return
                task, what = self._tasks.popleft()
            try:
                task()
            except Exception as exc:  # recorded, raised by the next logging call
                self._on_failure(what, exc)
            finally:
                with self._cond:
                    self._unfinished -= 1
                    self._cond.notify_all()


class BackgroundService:
    """The process's background workers and their ordered drain (use :func:`service`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order = itertools.count()
        self._workers: dict[int, tuple[int, weakref.ref[Worker], str | None]] = {}
        self._tasks = _TaskRunner(self.record)
        self.register(self._tasks)
        self._exit_deadline: float | None = None  # set between begin_exit() and the end of shutdown()
        self._exit_bound: float | None = None
        self._exiting = False
        self._left_behind: dict[int, tuple[Worker, str | None]] = {}  # not finished by an exit drain
        self._exit_done = threading.Event()

    def register(self, worker: Worker, *, run_id: str | None = None) -> None:
        """Own ``worker`` (idempotent): drain it with the others; with ``run_id``, close it when that run ends."""
        with self._lock:
            if id(worker) in self._workers and self._workers[id(worker)][1]() is worker:
                return
            for key in [key for key, (_, ref, _) in self._workers.items() if ref() is None]:  # collected ones
                del self._workers[key]
            self._workers[id(worker)] = (next(self._order), weakref.ref(worker), run_id)

    def has_run_workers(self, run_id: str) -> bool:
        """Whether live workers are registered for ``run_id`` (checkpoint uploads, its resume lease, ...)."""
        with self._lock:
            return any(owner == run_id and ref() is not None for _, ref, owner in self._workers.values())

    def unregister(self, worker: Worker) -> None:
        """Forget ``worker`` (no error if unknown)."""
        with self._lock:
            entry = self._workers.get(id(worker))
            if entry is not None and entry[1]() is worker:
                del self._workers[id(worker)]

    def workers(self, run_id: str | None = None) -> list[Worker]:
        """The live workers in drain order: all of them, or the process-wide ones and those of ``run_id``."""
        return [worker for worker, _ in self._owned(run_id)]

    def _owned(self, run_id: str | None) -> list[tuple[Worker, str | None]]:
        with self._lock:
            entries = sorted(self._workers.values(), key=lambda entry: entry[0])
        found = []
        for _, ref, owner in entries:
            worker = ref()
            if worker is not None and (run_id is None or owner is None or owner == run_id):
                found.append((worker, owner))
        return sorted(found, key=lambda item: item[0].phase)  # stable: registration order within a phase

    def submit(self, task: Callable[[], object], *, what: str) -> None:
        """Run ``task`` on the shared background thread, after those submitted before it.

        A task that raises is recorded as failing ``what`` (e.g. ``"logging the model summary"``). Tasks talk
        to the store (a ``Client``), never to the fluent run stack (``start_run``/``end_run``): ``end_run``
        waits for them while holding it.
        """
        self._tasks.submit(task, what)

    def record(self, what: str, exc: BaseException) -> None:
        """Record a failure of background work, to be raised by the next logging call."""
        logger.warning("cairn: %s failed in the background: %s: %s", what, type(exc).__name__, exc)
        background_errors.report(_Failure(what, exc))

    def drain(self, run_id: str | None = None, timeout: float | None = None) -> bool:
        """Drain the workers phase by phase; with ``run_id``, the process-wide ones and that run's (then
        closed and forgotten). False if ``timeout`` seconds passed before everything was done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._exit_deadline is not None:  # exiting: every drain shares the exit drain's bound
            deadline = self._exit_deadline if deadline is None else min(deadline, self._exit_deadline)
        done = True
        for worker, owner in self._owned(run_id):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                finished = worker.drain(left)
            except Exception as exc:  # a worker's bug must not stop the others from draining
                self.record(f"draining the {worker.name}", exc)
                finished = False
            if not finished:
                if self._exiting:
                    self._left_behind[id(worker)] = (worker, owner)
                else:
                    logger.warning("cairn: the %s did not finish its background work in time", worker.name)
            done = done and finished
        if run_id is not None:
            self._close_run_workers(run_id)
        return done

    def _close_run_workers(self, run_id: str) -> None:
        with self._lock:
            ending = [
                (order, key, worker)
                for key, (order, ref, owner) in self._workers.items()
                if owner == run_id and (worker := ref()) is not None
            ]
            for _, key, _ in ending:
                del self._workers[key]
        ending.sort(key=lambda item: (item[2].phase, item[0]))  # drain order: the lease after the uploads
        for _, _, worker in ending:
            if id(worker) in self._left_behind:  # closing would wait for it again, past the exit bound
                continue
            try:
                worker.close()
            except Exception as exc:
                background_errors.report(_Failure(f"closing the {worker.name}", exc))

    def begin_exit(self, timeout: float | None = None, *, signum: int | None = None) -> None:
        """Start the bounded exit drain: every drain until :meth:`shutdown` ends shares one deadline,
        ``timeout`` seconds (default: :func:`exit_drain_timeout`) from now; ``signum`` is the signal being
        handled, if any (the exit status if the watchdog has to end the process)."""
        if self._exiting:
            return
        bound = exit_drain_timeout() if timeout is None else timeout
        self._exiting = True
        self._exit_bound = bound
        self._exit_deadline = None if bound is None else time.monotonic() + bound
        self._left_behind = {}
        self._exit_done = threading.Event()
        if bound is not None:
            watchdog = threading.Thread(
                target=self._watch_exit,
                args=(self._exit_done, bound, signum),
                name="cairn-exit-watchdog",
                daemon=True,
            )
            watchdog.start()

    def _watch_exit(self, done: threading.Event, bound: float, signum: int | None) -> None:
        """End the process if its exit is still blocked (outside the service) well past the bound."""
        if done.wait(bound + EXIT_GRACE_SECONDS):
            return
        stuck = dict(self._left_behind)
        for worker, owner in self._owned(None):
            if id(worker) not in stuck and _busy(worker):
                stuck[id(worker)] = (worker, owner)
        status = 1 if signum is None else 128 + signum
        _warn_left_behind(
            list(stuck.values()),
            bound,
            ending=f"A wait outside the background service (an end-of-run hook) did not return either: the process "
            f"is ended now, {EXIT_GRACE_SECONDS:g} s past the bound, with exit status {status}.",
        )
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed stream: nothing to flush
                pass
        os._exit(status)

    def exit_time_left(self) -> float | None:
        """Seconds left of the exit drain's bound (``None``: not exiting, or no bound), for waits outside the
        service (a run's end-of-run hook) to share it."""
        deadline = self._exit_deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def shutdown(self, timeout: float | None = None) -> None:
        """Drain everything, close every worker and log the failures nobody raised (interpreter exit, SIGTERM).

        A process that goes on after SIGTERM (a framework's handler that stops training gracefully) can still
        log: closed workers are drained again by the next drain, and at exit.
        """
        self.drain(None, timeout)
        for worker in self.workers():  # they stay registered: a later drain (exit after SIGTERM) finds them
            if id(worker) in self._left_behind:  # closing would wait for it again, past the exit bound
                continue
            try:
                worker.close()
            except Exception as exc:
                logger.error("cairn: %s", exc)
        while background_errors.pending:
            try:
                background_errors.raise_pending()
            except Exception as exc:
                logger.error("cairn: %s", exc)
        left_behind, self._left_behind = list(self._left_behind.values()), {}
        self._exiting = False
        self._exit_deadline = None
        self._exit_done.set()  # the watchdog stands down
        if left_behind:
            _warn_left_behind(left_behind, self._exit_bound)


def _busy(worker: Worker) -> bool:
    """Whether ``worker`` says it has unfinished work (its ``pending`` count or ``done`` flag, if it has one)."""
    pending = getattr(worker, "pending", None)
    if isinstance(pending, int):
        return pending > 0
    done = getattr(worker, "done", None)
    return done is False


def _warn_left_behind(left_behind: list[tuple[Worker, str | None]], bound: float | None, ending: str = "") -> None:
    """One warning on stderr (logging may be shut down at exit) naming the work the exit drain gave up on."""
    lines = []
    for worker, run_id in left_behind:
        describe = getattr(worker, "unfinished", None)
        pending = getattr(worker, "pending", None)
        what = describe() if callable(describe) else f"{pending} item(s)" if isinstance(pending, int) else "its work"
        owner = f"run {run_id}" if run_id is not None else "every run of this process"
        lines.append(f"  - the {worker.name} ({owner}): {what} not finished; {_LEFT_BEHIND.get(worker.phase, '')}")
        runs = sys.modules.get("cairn.checkpoint.runs")
        if worker.phase in (Phase.CHECKPOINTS, Phase.UPLOADS) and runs is not None:
            try:
                where = f"{runs.staging_root()}/{run_id or '<run id>'}/checkpoints"
                lines.append(f"    (native checkpoints are staged in {where})")
            except Exception:  # an odd run id or tracking URI: the generic text above stands
                pass
    unfinished = "background work unfinished:\n" + "\n".join(lines) if lines else "no background work unfinished"
    sys.stderr.write(
        f"cairn: WARNING: the exit drain stopped after {bound or 0:g} s ({EXIT_DRAIN_TIMEOUT_ENV}) with {unfinished}"
        "\nRaise " + EXIT_DRAIN_TIMEOUT_ENV + " (or set it to 'none') "
        "to wait longer; an unreachable artifact store or server is the usual cause.\n"
        + (ending + "\n" if ending else "")
    )
    sys.stderr.flush()


_service: BackgroundService | None = None
_service_lock = threading.Lock()
_exit_hooks: list[Callable[[], None]] = []


def service() -> BackgroundService:
    """The process-wide service, created on first use."""
    global _service
    found = _service
    if found is None:
        with _service_lock:
            if _service is None:
                _service = BackgroundService()
            found = _service
    return found


def register(worker: Worker, *, run_id: str | None = None) -> None:
    """Own ``worker``: see :meth:`BackgroundService.register`."""
    service().register(worker, run_id=run_id)


def unregister(worker: Worker) -> None:
    service().unregister(worker)


def submit(task: Callable[[], object], *, what: str) -> None:
    """Run ``task`` on the shared background thread: see :meth:`BackgroundService.submit`."""
    service().submit(task, what=what)


def exit_time_left() -> float | None:
    """See :meth:`BackgroundService.exit_time_left`."""
    return service().exit_time_left()


def drain(run_id: str | None = None, timeout: float | None = None) -> bool:
    """The ordered drain: see :meth:`BackgroundService.drain`."""
    return service().drain(run_id, timeout)


def report(source: ErrorSource) -> None:
    """``source`` holds a failure for the next logging call to raise (through ``source.raise_errors()``)."""
    background_errors.report(source)


def record(what: str, exc: BaseException) -> None:
    """Record one failure of background work (``what`` failed), raised once by the next logging call."""
    service().record(what, exc)


def raise_errors() -> None:
    """Raise the first failure recorded in the background and not raised yet (one per call)."""
    if background_errors.pending:
        background_errors.raise_pending()


def add_exit_hook(hook: Callable[[], None]) -> None:
    """Call ``hook()`` at interpreter exit before the final drain (ending runs); idempotent."""
    with _service_lock:
        if hook not in _exit_hooks:
            _exit_hooks.append(hook)


def remove_exit_hook(hook: Callable[[], None]) -> None:
    """Forget a hook added by :func:`add_exit_hook` (no error if absent), and what it references."""
    with _service_lock:
        if hook in _exit_hooks:
            _exit_hooks.remove(hook)


def begin_exit(timeout: float | None = None, *, signum: int | None = None) -> None:
    """Start the bounded exit drain (interpreter exit, SIGTERM): see :meth:`BackgroundService.begin_exit`."""
    service().begin_exit(timeout, signum=signum)


def shutdown(timeout: float | None = None) -> None:
    """The exit drain: every worker drained in order and closed; uncollected failures logged."""
    found = _service
    if found is not None:
        found.shutdown(timeout)


def reset() -> None:
    """Forget the service and every recorded failure, without draining (for tests)."""
    global _service
    with _service_lock:
        _service = None
    background_errors.reset()


def _at_exit() -> None:
    if _service is not None or _exit_hooks:  # the hooks (ending runs) may wait too: they share the bound
        service().begin_exit()
    for hook in list(_exit_hooks):
        try:
            hook()
        except Exception as exc:
            logger.error("cairn: at exit: %s", exc)
    shutdown()


# The one exit handler, registered when cairn is imported (it does nothing until a service exists): atexit
# runs handlers last-registered first, so this drain comes after every handler registered later, by user
# code or integrations, and the points or checkpoints they queue are drained too.
atexit.register(_at_exit)
