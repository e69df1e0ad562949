"""``cairn.lightning``: Lightning logging, checkpoints that resume exactly, and LightningModule models.

>>> cairn.lightning.autolog()                     # every Trainer logs; or, explicitly:
>>> trainer = Trainer(logger=cairn.lightning.CairnLogger(), callbacks=[cairn.lightning.CairnCheckpointCallback()])
>>> trainer.fit(model, loader)
>>> # after a crash, in a new process: same run, same weights as if nothing happened
>>> trainer.fit(model, loader, ckpt_path=cairn.lightning.checkpoint_path(run_id, "last"))
>>> model = cairn.lightning.load_model(f"runs:/{run_id}/model")

``cairn.pytorch.autolog()`` covers Lightning too. Works with ``lightning`` and ``pytorch_lightning``; see
:mod:`cairn.autolog.lightning` for what is logged and how resuming works, and :mod:`cairn.flavors.lightning`
for the model format. Importing this module imports Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping

from cairn.autolog import lightning as _integration
from cairn.autolog.lightning import CairnCheckpointCallback, CairnLogger, LightningAutologConfig, checkpoint_path
from cairn.flavors.lightning import FLAVOR_NAME, load_model, log_model, save_model

__all__ = [
    "FLAVOR_NAME",
    "CairnCheckpointCallback",
    "CairnLogger",
    "LightningAutologConfig",
    "autolog",
    "checkpoint_path",
    "load_model",
    "log_model",
    "save_model",
]


def autolog(
    log_every_n_steps: int = 1,
    log_models: bool = True,
    checkpoint_every_n_steps: int | None = None,
    checkpoint_every_n_epochs: int | None = None,
    keep_last: int = 3,
    resume: str | bool | None = None,
    disable: bool = False,
    silent: bool = False,
    extra_tags: Mapping[str, str] | None = None,
    *,
    log_system_metrics: bool = False,
    system_metrics_interval: float = 10.0,
    log_grad_norm: bool = False,
) -> None:
    """Make every Lightning ``Trainer`` created from now on log to cairn, with no other change.

    Each new Trainer gets a :class:`CairnLogger` (beside the loggers it already has) and a
    :class:`CairnCheckpointCallback` (unless it has one): ``self.log`` metrics at Lightning's steps,
    hyperparameters as params, ``ModelCheckpoint`` files uploaded (pruned ones deleted from the run),
    mid-epoch resume made exact, and the trained model logged when ``fit`` ends. The run is the active
    one, else one started per ``fit`` and ended with Lightning's final status.

    Args:
        log_every_n_steps: Lightning's ``log_every_n_steps`` for Trainers that do not set it.
        log_models: log the trained model (artifact ``model``) at the end of ``fit``.
        checkpoint_every_n_steps: add ``ModelCheckpoint(every_n_train_steps=..., save_last=True)`` keeping
            the newest ``keep_last``, to Trainers without a ``ModelCheckpoint`` of their own.
        checkpoint_every_n_epochs: the same, every so many epochs.
        keep_last: how many of those checkpoints to keep, locally and in the run.
        resume: a run id, or ``True`` for ``CAIRN_RUN_ID``: ``fit`` without ``ckpt_path`` resumes from that
            run's last checkpoint, in that run (from scratch, in that run, if it has none yet).
        disable: undo autolog (Trainers created meanwhile keep what they got).
        silent: report failures of cairn's own code on the ``cairn.autolog`` logger instead of as warnings.
        extra_tags: tags set on every run autolog logs into.
        log_system_metrics: sample ``system/...`` metrics (CPU, memory, disk, network, GPU with pynvml) every
            ``system_metrics_interval`` seconds during ``fit``.
        log_grad_norm: log ``grad_norm``, the total 2-norm of the gradients before each optimizer step.
    """
    if disable:
        _integration.disable()
        return
    _integration.enable(
        LightningAutologConfig(
            log_every_n_steps=log_every_n_steps,
            log_models=log_models,
            checkpoint_every_n_steps=checkpoint_every_n_steps,
            checkpoint_every_n_epochs=checkpoint_every_n_epochs,
            keep_last=keep_last,
            resume=resume,
            silent=silent,
            extra_tags=dict(extra_tags or {}),
            log_system_metrics=log_system_metrics,
            system_metrics_interval=system_metrics_interval,
            log_grad_norm=log_grad_norm,
        )
    )
