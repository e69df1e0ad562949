"""Plain-PyTorch autolog's part in :mod:`cairn.background`: its queued step values become metric points.

:class:`MetricConversion` is a worker of the background service (phase ``AUTOLOG``, before the metric
writer's): its thread converts the session's queued step values every 0.2 s, and the service's ordered
drain (``end_run``, exit, SIGTERM) converts all of them before the metric writer drains. One-off logging
tasks (params, the model summary) go to the service's shared task thread (:func:`submit_task`); their
failures are reported as autolog failures (:class:`~cairn.autolog.config.AutologWarning`), never raised
into the user's next logging call, like every failure of autolog's own code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cairn import background
from cairn.autolog.torch.config import Report

__all__ = ["MetricConversion", "submit_task"]

_CONVERT_INTERVAL_S = 0.2

Convert = Callable[[bool], None]
"""``convert(hold_newest)``: turn the queued step values into metric points (see ``Session.drain``)."""


def submit_task(task: Callable[[], None], what: str, report: Report) -> None:
    """Run ``task`` on the background service's task thread; a failure is reported as ``what``."""

    def guarded() -> None:
        try:
            task()
        except Exception as exc:
            report(what, exc)

    background.submit(guarded, what=what)


class MetricConversion:
    """A :class:`cairn.background.Worker`: converts queued step values on its thread and when drained."""

    name = "PyTorch autolog metric conversion"
    phase = background.Phase.AUTOLOG

    def __init__(self, convert: Convert, report: Report) -> None:
        self._convert = convert
        self._report = report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cairn-pytorch-autolog", daemon=True)
        self._thread.start()
        background.register(self)

    def _loop(self) -> None:
        while not self._stop.wait(_CONVERT_INTERVAL_S):
            self._run(hold_newest=True)

    def _run(self, *, hold_newest: bool) -> None:
        try:
            self._convert(hold_newest)
        except Exception as exc:
            self._report("converting metrics", exc)

    def drain(self, timeout: float | None) -> bool:
        """Convert every queued step value now (the service's ordered drain)."""
        self._run(hold_newest=False)
        return True

    def close(self) -> None:
        """Convert what is queued and stop the thread."""
        self._stop.set()
        background.unregister(self)
        self._run(hold_newest=False)

    def raise_errors(self) -> None:
        """Failures are reported as autolog warnings when they happen; nothing is deferred."""
