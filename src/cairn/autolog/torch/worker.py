"""The background thread of plain-PyTorch autolog: queued logging tasks, and metric conversion every 0.2 s."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from cairn.autolog.torch.config import Report

__all__ = ["Worker"]

_DRAIN_INTERVAL_S = 0.2


class Worker:
    """One daemon thread: runs queued logging tasks (params, the model summary) and calls ``tick`` (the
    conversion of queued step values into metric points) every 0.2 s, off the training thread."""

    def __init__(self, tick: Callable[[], None], report: Report) -> None:
        self.tick = tick
        self.report = report
        self.tasks: deque[tuple[Callable[[], None], str]] = deque()
        self.wake = threading.Event()
        self.running = threading.RLock()  # held while tasks run, so the end of a run waits for one in flight
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="cairn-pytorch-autolog", daemon=True)
        self.thread.start()

    def submit(self, task: Callable[[], None], what: str) -> None:
        """Run ``task`` on the thread; a failure is reported as ``what``."""
        self.tasks.append((task, what))
        self.wake.set()

    def stop(self) -> None:
        """Run what is queued, then end the thread."""
        self.run_tasks()
        self.stopped = True
        self.wake.set()

    def _loop(self) -> None:
        while not self.stopped:
            self.wake.wait(_DRAIN_INTERVAL_S)
            self.wake.clear()
            self.run_tasks()
            try:
                self.tick()
            except Exception as exc:
                self.report("converting metrics", exc)

    def run_tasks(self) -> None:
        """Run the queued tasks; from another thread, also wait for the task this thread is running.

        Tasks only talk to the store (no lock of the fluent API), so waiting here cannot deadlock.
        """
        with self.running:
            while self.tasks:
                try:
                    task, what = self.tasks.popleft()
                except IndexError:
                    return
                try:
                    task()
                except Exception as exc:
                    self.report(what, exc)
