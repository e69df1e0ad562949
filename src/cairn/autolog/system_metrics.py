"""System metrics sampled in a background thread and logged as ``system/...`` metrics of a run.

Each sample logs, timestamped with the wall time of the sample, at the current training step (given by
the integration as ``step_source``; without one, at a step counting the samples: 0, 1, 2, ...), so
system figures chart against training steps and time alike:

- ``system/cpu_percent``: CPU utilisation of the machine since the previous sample;
- ``system/memory_used_mb``, ``system/memory_percent``: RAM in use (MB = 10^6 bytes);
- ``system/process_rss_mb``: resident memory of this process;
- ``system/disk_used_percent`` (of the file system holding the working directory),
  ``system/disk_read_mb``, ``system/disk_write_mb``: bytes read/written by all disks since monitoring began;
- ``system/network_receive_mb``, ``system/network_transmit_mb``: since monitoring began;
- with ``pynvml`` importable and NVIDIA GPUs present, per GPU ``i``: ``system/gpu_<i>/utilization_percent``,
  ``system/gpu_<i>/memory_used_mb``, ``system/gpu_<i>/memory_percent``, ``system/gpu_<i>/power_watts``.

Sampling is a worker of :mod:`cairn.background` for its run: the run's end (and exit, and SIGTERM) stops
it with a final sample, first of all background work, so that sample's points are written with the rest.
Sampling needs ``psutil``. Points go through the store's metric batcher (no I/O on the sampling thread
beyond reading counters); a sample that fails is skipped and reported once on the ``cairn.autolog``
logger, and sampling goes on.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from cairn import background
from cairn.store.base import MetricPoint

__all__ = ["SystemMetricsMonitor", "sample_system_metrics"]

logger = logging.getLogger("cairn.autolog")
_MB = 1_000_000.0


class _Baseline:
    """Counters at the start of monitoring, so disk and network figures count from there."""

    def __init__(self, psutil: Any) -> None:
        disk = _call(psutil.disk_io_counters)
        net = _call(psutil.net_io_counters)
        self.disk_read = getattr(disk, "read_bytes", 0)
        self.disk_write = getattr(disk, "write_bytes", 0)
        self.net_recv = getattr(net, "bytes_recv", 0)
        self.net_sent = getattr(net, "bytes_sent", 0)


def _call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # some counters are unavailable in containers
        return None


def _gpu_metrics() -> dict[str, float]:
    try:
        import pynvml
    except ImportError:
        return {}
    values: dict[str, float] = {}
    try:
        pynvml.nvmlInit()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            prefix = f"system/gpu_{index}"
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            values[f"{prefix}/utilization_percent"] = float(util.gpu)
            values[f"{prefix}/memory_used_mb"] = memory.used / _MB
            values[f"{prefix}/memory_percent"] = 100.0 * memory.used / memory.total if memory.total else 0.0
            power = _call(functools.partial(pynvml.nvmlDeviceGetPowerUsage, handle))
            if power is not None:
                values[f"{prefix}/power_watts"] = power / 1000.0
    except Exception as exc:  # no driver, no device: no GPU metrics
        logger.debug("cairn: no GPU metrics: %s", exc)
        return {}
    return values


def sample_system_metrics(psutil: Any, baseline: _Baseline, disk_path: str) -> dict[str, float]:
    """One sample of every available figure, by metric key."""
    values: dict[str, float] = {"system/cpu_percent": float(psutil.cpu_percent(interval=None))}
    memory = psutil.virtual_memory()
    values["system/memory_used_mb"] = (memory.total - memory.available) / _MB
    values["system/memory_percent"] = float(memory.percent)
    rss = _call(lambda: psutil.Process().memory_info().rss)
    if rss is not None:
        values["system/process_rss_mb"] = rss / _MB
    usage = _call(lambda: psutil.disk_usage(disk_path))
    if usage is not None:
        values["system/disk_used_percent"] = float(usage.percent)
    disk = _call(psutil.disk_io_counters)
    if disk is not None:
        values["system/disk_read_mb"] = (disk.read_bytes - baseline.disk_read) / _MB
        values["system/disk_write_mb"] = (disk.write_bytes - baseline.disk_write) / _MB
    net = _call(psutil.net_io_counters)
    if net is not None:
        values["system/network_receive_mb"] = (net.bytes_recv - baseline.net_recv) / _MB
        values["system/network_transmit_mb"] = (net.bytes_sent - baseline.net_sent) / _MB
    values.update(_gpu_metrics())
    return values


class SystemMetricsMonitor:
    """Samples system metrics every ``interval`` seconds into run ``run_id`` until :meth:`stop`.

    Args:
        run_id: the run to log into.
        add_point: called with each :class:`MetricPoint` (e.g. the store's batcher ``add``).
        interval: seconds between samples; the first sample is taken one interval after :meth:`start`.
        disk_path: a path on the file system whose usage is reported.
        step_source: returns the current training step, read at each sample (called on the sampling
            thread: it must only read a counter); ``None``: the sample index.

    Raises:
        ImportError: ``psutil`` is not installed (``pip install psutil``).
    """

    name = "system metrics sampling"
    phase = background.Phase.SYSTEM_METRICS

    def __init__(
        self,
        run_id: str,
        add_point: Callable[[MetricPoint], None],
        *,
        interval: float = 10.0,
        disk_path: str | None = None,
        step_source: Callable[[], int] | None = None,
    ) -> None:
        try:
            import psutil
        except ImportError as exc:
            raise ImportError("log_system_metrics=True needs psutil: pip install psutil") from exc
        self._psutil = psutil
        self.run_id = run_id
        self.interval = max(0.01, float(interval))
        self.samples = 0
        self._add = add_point
        self._step_source = step_source
        self._disk_path = disk_path or os.getcwd()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    def start(self) -> None:
        """Start sampling (idempotent)."""
        if self._thread is not None:
            return
        self._baseline = _Baseline(self._psutil)
        self._psutil.cpu_percent(interval=None)  # primes the CPU counter: the first reading covers one interval
        self._thread = threading.Thread(target=self._loop, name="cairn-system-metrics", daemon=True)
        self._thread.start()
        background.register(self, run_id=self.run_id)

    def stop(self, *, final_sample: bool = True) -> None:
        """Stop sampling; with ``final_sample`` take one last sample first (so short runs get one)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=5)
        if final_sample:
            self.sample()

    def drain(self, timeout: float | None) -> bool:
        """The background service's drain: stop with a final sample."""
        self.stop(final_sample=True)
        return True

    def close(self) -> None:
        self.stop(final_sample=False)

    def raise_errors(self) -> None:
        """A failed sample is skipped and logged, never raised."""

    def sample(self) -> None:
        """Take one sample now and queue its points."""
        try:
            values = sample_system_metrics(self._psutil, self._baseline, self._disk_path)
            timestamp = time.time_ns() // 1_000_000
            step = self.samples if self._step_source is None else int(self._step_source())
        except Exception as exc:
            if not self._failed:
                self._failed = True
                logger.warning("cairn: system metrics sample failed and was skipped: %s", exc)
            return
        self.samples += 1
        for key, value in values.items():
            self._add(MetricPoint(self.run_id, key, value, timestamp, step))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
