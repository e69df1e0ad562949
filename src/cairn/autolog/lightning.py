"""Lightning integration: a native ``Logger``, a checkpoint callback, exact resume, and autologging.

Works with ``lightning`` (``lightning.pytorch``) and, when it is installed, ``pytorch_lightning``.

- :class:`CairnLogger` is a Lightning ``Logger``: ``self.log`` values reach the run at Lightning's
  logging step (queued, no I/O on the training thread), hyperparameters become params, and the run is
  ended with the status Lightning reports (FINISHED, FAILED, KILLED on ``KeyboardInterrupt``). Only
  global rank zero logs.
- :class:`CairnCheckpointCallback` uploads every ``.ckpt`` file a ``ModelCheckpoint`` writes into the
  run (``lightning_checkpoints/``, by a background thread), deletes from the run the files
  ``ModelCheckpoint`` prunes (``save_top_k``), stores in each checkpoint what Lightning leaves out
  (the Python/numpy/torch RNG states under ``"cairn_rng"``, the run id under ``"cairn_run_id"``, the
  logging step under ``"cairn_log_step"``, the training DataLoader's position under ``"cairn_loaders"``),
  continues the training DataLoader's epoch exactly on a mid-epoch resume, and logs the trained model
  when ``fit`` ends.
- :func:`checkpoint_path` downloads a checkpoint of a run so ``trainer.fit(model, ckpt_path=...)``
  resumes exactly, in the same run: the next CairnLogger re-attaches to it and the points the dead
  process logged after the checkpoint are superseded (kept, hidden), so no curve has a duplicate or
  backward step. Resuming from an older checkpoint while newer ones exist forks a new run instead.
- :func:`enable` / :func:`disable` wrap ``Trainer.__init__`` so every Trainer gets a CairnLogger
  (added beside the user's loggers) and the callback (``cairn.lightning.autolog()``,
  ``cairn.pytorch.autolog()``).

Only Lightning's published extension points are used; nothing of ``ModelCheckpoint``, the strategy or the
DataLoader is patched, replaced or subclassed:

- *Which files to upload*: ``Logger.after_save_checkpoint`` (right after each save, when a CairnLogger is
  attached) or the callback's next hook after its ``on_save_checkpoint`` saw a save (CairnCheckpointCallback
  alone); the files are read from ``ModelCheckpoint``'s public ``last_model_path``/``best_model_path``/
  ``best_k_models`` and told apart by their ``stat``, removals by their absence from disk, as Lightning's
  own loggers do (:mod:`cairn.autolog._lightning_checkpoint_files`). The file ``ModelCheckpoint(
  save_on_exception=True)`` writes is in none of those attributes: a save after the callback's ``on_exception``
  (which Lightning runs before ``ModelCheckpoint``'s) is matched with the checkpoint files new in ``dirpath``
  since the last look (always so for a CairnLogger alone); without a CairnLogger no hook follows that save, and
  a warning says the file is not uploaded.
- *RNG*: ``Callback.on_save_checkpoint`` stores it, ``on_load_checkpoint`` restores it.
- *Data position*: Lightning 2.6 resumes the position of *stateful* loaders only (``state_dict`` on the
  loader, kept in Lightning's loop state, which a Trainer with a plain loader then refuses to load); a
  plain ``DataLoader`` restarts the epoch with a new shuffle, shortened to the batches that were left.
  The callback records the epoch's random state at ``on_train_epoch_start`` and the batches consumed in
  its own checkpoint entry, and at ``on_train_start`` of the resumed fit sets, for that one epoch, the
  ``BatchSampler``'s public ``sampler`` attribute to a replay of the interrupted epoch's remaining indices
  (:mod:`cairn.autolog._lightning_loaders` explains the details and limits). A checkpoint written with
  the callback therefore still resumes (inexactly, as usual) in a Trainer without it.

Loading a ``.ckpt`` is ``torch.load``: Lightning 2.6 passes ``weights_only=None``, which torch >= 2.6
treats as ``weights_only=True`` (a restricted unpickler) for local files, unless you pass
``trainer.fit(..., weights_only=False)``, which unpickles fully; only do that for files you trust.
Everything cairn adds to a checkpoint is plain tensors, numbers, strings and tuples, so it loads
under ``weights_only=True``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# The integration's parts live in private sibling modules; the names marked "noqa: F401" are not used here but
# are part of this module's surface (checkpoint keys, and ``_take_pending`` for tests).
from cairn.autolog._lightning_callback import _CheckpointCallbackImpl
from cairn.autolog._lightning_frameworks import (
    CHECKPOINTS_DIR,
    INDEX_FILE,
    INTEGRATION,
    LOADERS_KEY,  # noqa: F401
    LOG_STEP_KEY,  # noqa: F401
    RNG_KEY,  # noqa: F401
    RUN_ID_KEY,  # noqa: F401
    _Framework,
    _framework_of,
    frameworks,
)
from cairn.autolog._lightning_logger import _CairnLoggerImpl
from cairn.autolog._lightning_resume import (
    _resume_path,
    _take_pending,  # noqa: F401
    checkpoint_path,
)
from cairn.autolog.config import AutologConfig, PatchSet, safe_autolog
from cairn.checkpoint.resume import IF_POSSIBLE, RUN_ID_ENV, ResumeWarning, resolve_run_id

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback as _CallbackBase
    from lightning.pytorch.loggers.logger import Logger as _LoggerBase
else:
    try:
        from lightning.pytorch.callbacks import Callback as _CallbackBase
        from lightning.pytorch.loggers.logger import Logger as _LoggerBase
    except ImportError:  # only the older package is installed
        from pytorch_lightning.callbacks import Callback as _CallbackBase
        from pytorch_lightning.loggers.logger import Logger as _LoggerBase

__all__ = [
    "CHECKPOINTS_DIR",
    "INDEX_FILE",
    "CairnCheckpointCallback",
    "CairnLogger",
    "LightningAutologConfig",
    "checkpoint_path",
    "disable",
    "enable",
]


# ------------------------------------------------------------------------------------------------ the logger


class CairnLogger(_CairnLoggerImpl, _LoggerBase):
    """A Lightning ``Logger`` writing to a cairn run: ``Trainer(logger=CairnLogger())``.

    The run is, in order: ``run_id`` if given; the run a :func:`checkpoint_path` call just prepared
    (resuming it, or a fork of it); the active run (``cairn.start_run()``, left open at the end); else a
    new run (``experiment_name``, ``run_name``, ``tags``), or the run of ``CAIRN_RUN_ID``. A run the logger
    started or resumed is ended by Lightning's ``finalize``.

    Args:
        run_id: log into this existing run.
        experiment_name: experiment of a new run (created if missing); default: the active experiment.
        run_name: name of a new run.
        tags: tags set on the run.
        log_model: without a :class:`CairnCheckpointCallback`, upload the checkpoints ``ModelCheckpoint``
            writes (and delete pruned ones from the run). The callback does this and more.
        prefix: put before every metric name, joined with ``-`` (as Lightning's MLFlowLogger).
        save_dir: reported as ``save_dir`` (``ModelCheckpoint`` then saves under ``save_dir/name/version``);
            by default checkpoints go under the Trainer's ``default_root_dir``.
        client: log through this :class:`cairn.tracking.client.Client` instead of the fluent API's: the run is
            ``run_id`` or a new run in that client's store (the active run and :func:`checkpoint_path`'s
            pending resume are fluent-API notions and are not consulted).
    """


# ------------------------------------------------------------------------------------------------ the callback


class CairnCheckpointCallback(_CheckpointCallbackImpl, _CallbackBase):
    """Uploads Lightning checkpoints into the run and makes resuming from them exact.

    Add it next to a ``ModelCheckpoint`` (autolog does both): every file the ``ModelCheckpoint``
    callbacks write is uploaded to ``lightning_checkpoints/`` of the run in the background (files of
    a second ``ModelCheckpoint`` go to ``lightning_checkpoints/1/``...), and files they prune are deleted
    from the run too. Each checkpoint also holds the RNG states, the run id and the logging step.

    Args:
        upload_checkpoints: upload ``ModelCheckpoint``'s files (and delete pruned ones remotely).
        log_model: log the trained LightningModule (cairn's ``lightning`` flavor) when ``fit`` ends.
        model_name: the artifact path of that model.
        restore_rng: restore the RNG states stored in a checkpoint when Lightning loads it.
        resumable_dataloaders: record the training ``DataLoader``'s position so a mid-epoch resume continues
            the same shuffled epoch (one loader, ``num_workers=0`` or ``persistent_workers=True``; otherwise a warning
            says why the epoch continues with a new shuffle; with workers, random numbers drawn inside them are not
            replayed, which a warning says; loaders with a ``state_dict`` of their own are left to Lightning).
        log_system_metrics: sample CPU, memory, disk, network (and GPU with pynvml) as ``system/...`` metrics
            every ``system_metrics_interval`` seconds during ``fit``, in a background thread.
        log_grad_norm: log ``grad_norm`` (``grad_norm/opt<i>`` for several optimizers), the total 2-norm of
            the gradients before each optimizer step (reading it waits for the device).
        silent: report problems of cairn's own code on the ``cairn.autolog`` logger instead of as warnings.
        client: use this :class:`cairn.tracking.client.Client` instead of the fluent API's (default: the attached
            CairnLogger's). Without a CairnLogger, the callback then starts its own run in that client's store and
            ends it after ``fit``.
    """


# ------------------------------------------------------------------------------------------------ autolog


@dataclass(frozen=True)
class LightningAutologConfig(AutologConfig):
    """Options of ``cairn.lightning.autolog()`` (``cairn.pytorch.autolog()`` passes its own config object,
    read through the same attribute names).

    Attributes:
        log_every_n_steps: Lightning's ``log_every_n_steps`` for Trainers that do not set it.
        checkpoint_every_n_steps: add a ``ModelCheckpoint(every_n_train_steps=...)`` (``save_last=True``,
            the newest ``keep_last`` kept) to Trainers that have no ``ModelCheckpoint`` of their own.
        checkpoint_every_n_epochs: the same, every so many epochs.
        keep_last: how many of those checkpoints to keep (locally and in the run).
        resume: a run id (or ``True``/``"latest"`` for ``CAIRN_RUN_ID``): ``fit`` without ``ckpt_path``
            resumes from that run's last Lightning checkpoint, in that run. ``"if_possible"``: the same for
            ``CAIRN_RUN_ID``, but a run without checkpoint gives a warning and a new run instead of an error. A
            named resume without ``CAIRN_RUN_ID`` warns (:class:`~cairn.checkpoint.resume.ResumeWarning`).
        log_system_metrics, system_metrics_interval, log_grad_norm: see :class:`CairnCheckpointCallback`.
    """

    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int | None = None
    checkpoint_every_n_epochs: int | None = None
    keep_last: int = 3
    resume: str | bool | None = None
    log_system_metrics: bool = False
    system_metrics_interval: float = 10.0
    log_grad_norm: bool = False


_patches = PatchSet()
_config: Any = None


def enable(config: Any) -> None:
    """Patch every importable ``Trainer`` according to ``config`` (replacing an earlier call's patches).

    ``config`` is a :class:`LightningAutologConfig` or any object with the same attribute names
    (missing ones take the defaults); ``config.disable`` turns autolog off.
    """
    global _config
    disable()
    if getattr(config, "disable", False):
        return
    _config = config
    for framework in frameworks():
        _patches.patch(framework.trainer, "__init__", _wrap_init)
        _patches.patch(framework.trainer, "fit", _wrap_fit)


def disable() -> None:
    """Undo :func:`enable`'s patches (Trainers created meanwhile keep their logger and callback)."""
    global _config
    _patches.restore()
    _config = None


def is_enabled() -> bool:
    return len(_patches) > 0


def _option(name: str, default: Any) -> Any:
    value = getattr(_config, name, default)
    return default if value is None and default is not None else value


def _wrap_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if _config is not None:
            kwargs.setdefault("log_every_n_steps", _option("log_every_n_steps", 1))
            _maybe_add_model_checkpoint(self, kwargs)
        original(self, *args, **kwargs)
        if _config is not None:
            with safe_autolog(INTEGRATION, "attaching CairnLogger and CairnCheckpointCallback", silent=_silent()):
                _attach(self)

    return __init__


def _silent() -> bool:
    return bool(getattr(_config, "silent", False))


def _maybe_add_model_checkpoint(trainer: Any, kwargs: dict[str, Any]) -> None:
    every_steps = getattr(_config, "checkpoint_every_n_steps", None)
    every_epochs = getattr(_config, "checkpoint_every_n_epochs", None)
    if (not every_steps and not every_epochs) or kwargs.get("enable_checkpointing") is False:
        return
    framework = _framework_of(trainer)
    callbacks = kwargs.get("callbacks")
    listed = [] if callbacks is None else [callbacks] if not isinstance(callbacks, list | tuple) else list(callbacks)
    if any(isinstance(cb, framework.model_checkpoint) for cb in listed):
        return
    keep = int(_option("keep_last", 3))
    listed.append(
        framework.model_checkpoint(
            every_n_train_steps=every_steps or None,
            every_n_epochs=None if every_steps else every_epochs,
            save_top_k=keep,
            monitor="step",
            mode="max",
            save_last=True,
        )
    )
    kwargs["callbacks"] = listed


_classes: dict[str, tuple[type, type]] = {}


def _classes_for(framework: _Framework) -> tuple[type, type]:
    """(CairnLogger, CairnCheckpointCallback) built on ``framework``'s base classes."""
    if framework.package == "lightning.pytorch" or issubclass(CairnLogger, framework.logger):
        return CairnLogger, CairnCheckpointCallback
    if framework.package not in _classes:
        _classes[framework.package] = (
            type("CairnLogger", (_CairnLoggerImpl, framework.logger), {"__doc__": CairnLogger.__doc__}),
            type(
                "CairnCheckpointCallback",
                (_CheckpointCallbackImpl, framework.callback),
                {"__doc__": CairnCheckpointCallback.__doc__},
            ),
        )
    return _classes[framework.package]


def _attach(trainer: Any) -> None:
    logger_class, callback_class = _classes_for(_framework_of(trainer))
    loggers = list(trainer.loggers)
    if not any(isinstance(lg, _CairnLoggerImpl) for lg in loggers):
        extra = getattr(_config, "extra_tags", None) or {}
        loggers.append(logger_class(tags={"cairn.autolog": INTEGRATION, **dict(extra)}, log_model=False))
        trainer.loggers = loggers
    if not any(isinstance(cb, _CheckpointCallbackImpl) for cb in trainer.callbacks):
        callback = callback_class(
            log_model=bool(getattr(_config, "log_models", True)),
            log_system_metrics=bool(getattr(_config, "log_system_metrics", False)),
            system_metrics_interval=float(getattr(_config, "system_metrics_interval", 10.0)),
            log_grad_norm=bool(getattr(_config, "log_grad_norm", False)),
            silent=_silent(),
        )
        callbacks = trainer.callbacks
        position = next(
            (i for i, cb in enumerate(callbacks) if isinstance(cb, _framework_of(trainer).model_checkpoint)),
            len(callbacks),
        )
        callbacks.insert(position, callback)


def _wrap_fit(original: Callable[..., Any]) -> Callable[..., Any]:
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        resume = getattr(_config, "resume", None)
        if resume and kwargs.get("ckpt_path") is None and len(args) < 5:  # (model, train, val, datamodule)
            kwargs["ckpt_path"] = _autolog_resume_path(resume)
        return original(self, *args, **kwargs)

    return fit


def _autolog_resume_path(resume: str | bool) -> str | None:
    """``fit``'s ``ckpt_path`` for ``autolog(resume=...)``: a run id, or ``True``/``"latest"``/``"if_possible"`` for
    ``CAIRN_RUN_ID``'s run. Nothing to resume is never silent: a :class:`~cairn.checkpoint.resume.ResumeWarning`
    when no run is named, and :func:`_resume_path`'s error or warning when the run has no checkpoint."""
    if_possible = resume == IF_POSSIBLE
    named = resume is True or resume == "latest" or if_possible
    run_id = resolve_run_id(use_active=False) if named else str(resume)
    if not run_id:
        warnings.warn(
            f"cairn: autolog(resume={resume!r}) asked to resume, but {RUN_ID_ENV} is not set: nothing was resumed "
            "and training starts from scratch in a new run (set it to the run's id, or pass resume=<run id>)",
            ResumeWarning,
            stacklevel=3,
        )
        return None
    return _resume_path(run_id, if_possible=if_possible)
