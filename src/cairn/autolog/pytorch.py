"""Plain-PyTorch autologging: ``cairn.pytorch.autolog()`` makes an ordinary training loop log itself.

What is logged: each optimizer's class and constructor hyperparameters once as params (the param groups'
values as built, not as a hand-set warm-up left them); at every ``log_every_n_steps``-th step of the
primary optimizer (the first that steps; its steps are the run's steps, from 1) ``loss`` (per step the
sum of the ``backward()`` scalars since the previous step, so under gradient accumulation the objective
whose gradients were accumulated, and for a closure optimizer such as LBFGS the first evaluation; its
mean over the interval), the learning rate of every param group (read after the step), ``epoch`` when it
changes, optionally ``grad_norm`` and system metrics (numbered by training step); the model summary at
the first step and the model (with a 5-row input example) when the run ends; checkpoints at step
boundaries, and resume from the newest one (see :mod:`cairn.autolog.torch.checkpoints` and
:mod:`cairn.autolog.torch.resume`).

Cost on the training thread: a few µs per step (one Python call per hook, a tuple queued per logged step);
no I/O and no ``.item()`` of a device tensor. A background thread turns the queue into metric points
every 0.2 s; values are flushed before each checkpoint is uploaded and when the run ends
(``benchmarks/pytorch_autolog.py`` measures it). Optimizers stepped inside a Lightning or Transformers
``Trainer`` are left to those integrations, and :func:`suppressed` turns plain-loop logging off for a block.

The integration is an object, :class:`~cairn.autolog.torch.integration.PyTorchIntegration`, created by
:func:`autolog` (see :mod:`cairn.autolog.torch` for its parts); the functions here reach the enabled one.
Errors in autolog's own code are reported as :class:`~cairn.autolog.config.AutologWarning` (once per
site) and the training step goes on unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch.utils.data import DataLoader

from cairn.autolog.torch import integration
from cairn.autolog.torch.config import PyTorchAutologConfig
from cairn.autolog.torch.integration import PyTorchIntegration, active
from cairn.autolog.torch.loaders import PositionView
from cairn.errors import InvalidArgument
from cairn.tracking.client import Client

__all__ = [
    "PyTorchAutologConfig",
    "PyTorchIntegration",
    "active",
    "arm_loader",
    "autolog",
    "current_run_id",
    "drain_metrics",
    "is_enabled",
    "loader_position",
    "note_resumed",
    "suppressed",
    "track_state",
]


def autolog(
    log_every_n_steps: int = 1,
    log_models: bool = True,
    checkpoint_every_n_steps: int | None = None,
    checkpoint_every_n_epochs: int | None = None,
    keep_last: int = 3,
    log_system_metrics: bool = False,
    log_grad_norm: bool = False,
    resume: bool | str | None = None,
    disable: bool = False,
    silent: bool = False,
    *,
    system_metrics_interval: float = 10.0,
    extra_tags: Mapping[str, Any] | None = None,
    client: Client | None = None,
) -> Any:
    """Turn autologging of plain PyTorch training loops on (again, with new options) or off.

    Also turns on the Lightning integration when Lightning is installed, with the same options.

    Args:
        log_every_n_steps: log ``loss`` (per step the sum of its ``backward()`` scalars, averaged over the
            interval), ``lr`` (``lr/group<j>``, ``lr/opt<i>/...`` for several) and ``epoch`` every this many
            optimizer steps.
        log_models: log the model when the run ends (``model``), with the first forward's input slice
            as input example, and its summary (``model_summary.txt``) at the first step.
        checkpoint_every_n_steps, checkpoint_every_n_epochs: checkpoint into the run (see
            :mod:`cairn.autolog.torch.checkpoints` for when exactly); ``keep_last`` checkpoints are kept.
        log_system_metrics: sample system metrics in a background thread every ``system_metrics_interval`` s.
        log_grad_norm: also log ``grad_norm``, the total 2-norm of the primary optimizer's gradients.
        resume: ``True``/``"latest"`` continues the run in ``CAIRN_RUN_ID`` (if set), a run id continues
            that run, from its newest checkpoint: the run becomes active now and the model, optimizer,
            scheduler, scaler and RNG are loaded when training starts (see :mod:`cairn.autolog.torch.resume`),
            the training loader fast-forwarded to the interrupted position. A named run with metrics but no
            checkpoint raises :class:`~cairn.errors.CheckpointError`; ``"if_possible"`` (run from
            ``CAIRN_RUN_ID``) warns and starts a new run instead.
        disable: undo every hook and patch; the active session logs nothing more.
        silent: report autolog failures on the ``cairn.autolog`` logger instead of as warnings.
        extra_tags: tags set on runs autolog starts.
        client: log into this client's store (run, params, metrics, model) instead of the fluent API's;
            the run autolog creates there ends at ``autolog(disable=True)`` or interpreter exit.

    Returns:
        With ``resume``: the :class:`~cairn.checkpoint.runs.ResumeState` (``epoch`` is where the loop
        should start; ``resumed`` is False when there was nothing to resume). Otherwise ``None``.

    Raises:
        InvalidArgument: ``log_every_n_steps`` < 1, or checkpoints into a ``client`` whose store is not the
            fluent API's (not supported yet).
    """
    config = PyTorchAutologConfig(
        log_models=log_models,
        disable=disable,
        silent=silent,
        extra_tags=dict(extra_tags or {}),
        log_every_n_steps=log_every_n_steps,
        checkpoint_every_n_steps=checkpoint_every_n_steps,
        checkpoint_every_n_epochs=checkpoint_every_n_epochs,
        keep_last=keep_last,
        log_system_metrics=log_system_metrics,
        system_metrics_interval=system_metrics_interval,
        log_grad_norm=log_grad_norm,
        resume=resume,
    )
    return integration.autolog(config, client=client)


def is_enabled() -> bool:
    return active() is not None


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """Log nothing from plain-loop hooks inside this block (for integrations that log themselves)."""
    enabled = active()
    if enabled is None:
        yield
        return
    with enabled.suppressed():
        yield


def current_run_id() -> str | None:
    """The run plain-PyTorch autolog logs into; on ranks other than 0, the run rank 0 logs into."""
    enabled = active()
    return enabled.current_run_id() if enabled is not None else None


def drain_metrics() -> None:
    """Write the enabled integration's queued step values into the store's metric writer now."""
    enabled = active()
    if enabled is not None:
        enabled.drain_metrics()


def track_state(getter: Callable[[], Mapping[str, Any]]) -> dict[str, Any] | None:
    """Register the loop's own state for autolog's checkpoints, and (resuming) restore the training state now.

    ``getter`` returns a mapping (tensors, numbers, strings, containers: what ``log_checkpoint(extra=)``
    takes); it is called at every checkpoint, right after the optimizer step that ends a step. Call this
    where the loop is about to start (model and optimizer built): with a pending resume, model (before its
    next forward), optimizers, schedulers, scaler and RNG are restored here, so the loop goes on exactly.

    Returns:
        The mapping saved in the checkpoint resumed from (also ``ResumeState.user_state``), else ``None``.

    Raises:
        InvalidArgument: autolog is off, or ``getter`` is not callable.
        CheckpointError: a resume is pending but its optimizers are not built yet.
    """
    enabled = active()
    if enabled is None:
        raise InvalidArgument("track_state() needs cairn.pytorch.autolog() to be on")
    return enabled.track_state(getter)


def loader_position(loader: Any) -> PositionView | None:
    """The position of a plain DataLoader autolog tracks (for ``log_checkpoint(loader=...)``), else None."""
    enabled = active()
    return enabled.loader_position(loader) if enabled is not None else None


def arm_loader(loader: DataLoader[Any], tree: dict[str, Any] | None, epoch: int | None = None) -> None:
    """Make the next ``iter(loader)`` resume the epoch recorded in ``tree`` (from a checkpoint)."""
    enabled = active()
    if enabled is not None:
        enabled.arm_loader(loader, tree, epoch)


def note_resumed(step: int, loader: Any = None, epoch: int | None = None) -> None:
    """Called by :func:`cairn.checkpoint.runs.resume`: autolog's step count continues at ``step`` (and the
    epoch count of ``loader``, a DataLoader or a ResumableLoader, at ``epoch``)."""
    enabled = active()
    if enabled is not None:
        enabled.note_resumed(step, loader, epoch)
