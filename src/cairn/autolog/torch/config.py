"""The options of ``cairn.pytorch.autolog()`` and how its failures are reported."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cairn.autolog.config import AutologConfig, report_failure

__all__ = ["INTEGRATION", "FailureReporter", "PyTorchAutologConfig", "Report"]

INTEGRATION = "pytorch"
logger = logging.getLogger("cairn.autolog")

Report = Callable[[str, BaseException], None]
"""``report(what, exc)``: how the parts of the integration report a failure of their own code."""


@dataclass(frozen=True)
class PyTorchAutologConfig(AutologConfig):
    """The options of ``cairn.pytorch.autolog()``, also handed to the Lightning integration's ``enable``.

    Attributes:
        log_every_n_steps: log loss, learning rates (and grad norm) every this many optimizer steps.
        checkpoint_every_n_steps: checkpoint every this many steps (``None``: never).
        checkpoint_every_n_epochs: checkpoint every this many epochs (``None``: never).
        keep_last: checkpoints kept in the run (older ones are deleted from its artifacts).
        log_system_metrics: sample CPU, memory, disk, network (and GPU) as ``system/...`` metrics.
        system_metrics_interval: seconds between system-metric samples.
        log_grad_norm: log the total 2-norm of the gradients (``grad_norm``) at each logging step.
        resume: ``None``/``False``: start fresh; ``True`` or ``"latest"``: continue the run named by
            ``CAIRN_RUN_ID`` (if set) from its newest checkpoint (DDP and sharded FSDP2 ones alike); in
            workers restarted by torchelastic without it, the run their job's first attempt created (tagged
            with ``TORCHELASTIC_RUN_ID``); a run id: continue that run.
    """

    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_n_epochs: int | None = None
    keep_last: int = 3
    log_system_metrics: bool = False
    system_metrics_interval: float = 10.0
    log_grad_norm: bool = False
    resume: bool | str | None = None

    @property
    def checkpointing(self) -> bool:
        return bool(self.checkpoint_every_n_steps or self.checkpoint_every_n_epochs)


class FailureReporter:
    """Reports a failure of autolog's own code once per site (later ones go to the debug log).

    The training step goes on unchanged; see :func:`cairn.autolog.config.report_failure`.
    """

    def __init__(self, *, silent: bool = False) -> None:
        self.silent = silent
        self._reported: set[str] = set()

    def reset(self, *, silent: bool) -> None:
        self.silent = silent
        self._reported.clear()

    def __call__(self, what: str, exc: BaseException) -> None:
        if what in self._reported:
            logger.debug("cairn pytorch autolog: %s failed again: %r", what, exc)
            return
        self._reported.add(what)
        report_failure(INTEGRATION, what, exc, silent=self.silent)
