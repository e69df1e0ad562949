"""Transformers ``Trainer`` integration: a native callback, ``report_to="cairn"``, autolog, checkpoints, resume.

:class:`CairnCallback` is a ``TrainerCallback``. Attach it with ``callbacks=[CairnCallback()]``, with
``report_to="cairn"`` (after ``cairn.autolog()``, :func:`autolog` or ``import cairn.transformers``), or to
every Trainer at once with :func:`autolog`. Only the main process (``state.is_world_process_zero``) logs.
From ``on_train_begin`` to ``on_train_end`` the Trainer's optimizer is claimed in
:data:`cairn.autolog.base.loops`: plain-PyTorch autolog, if on, leaves that loop alone. What it records:

- params: the model config and ``TrainingArguments``, flattened (``id2label.0``), values cut to the
  param length limit, in batches of 100; keys the run already has are not logged again, so a resume
  never conflicts;
- metrics: every ``on_log`` value (training loss, learning rate, ``eval_*`` metrics, ...) at
  ``state.global_step``, queued with no I/O on the training thread;
- checkpoints: on each ``on_save``, ``<output_dir>/checkpoint-N`` (weights, optimizer, scheduler,
  RNG state, trainer state, tokenizer) is uploaded by a background thread into the run at
  ``checkpoints/checkpoint-N/``, followed by a cairn ``manifest.json`` (sha256 of every file),
  written last: an upload without it is incomplete and ignored. The files are hard-linked into a
  staging directory first, so Trainer's ``save_total_limit`` rotation cannot pull them away mid-upload;
  checkpoints the rotation removes are deleted from the run too. The run id goes into the checkpoint
  twice: ``cairn_run.json`` and the callback's entry in ``trainer_state.json``;
- the final model (``log_models="end"``, the default): logged at ``model`` with the tokenizer, the task,
  an input example (the first training inputs, decoded) and a signature, registered under
  ``registered_model_name`` if given. ``log_models="checkpoint"`` also logs each checkpoint as a
  model at ``checkpoint_models/checkpoint-N`` (from its files, without loading it).

Resume: :func:`checkpoint_path` downloads a committed checkpoint and verifies its hashes; pass the
path to ``trainer.train(resume_from_checkpoint=...)``. The callback reads the checkpoint's run id,
re-opens that run, supersedes the points it holds after the checkpoint's step (those of the dead
process) and keeps logging there. ``CAIRN_RUN_ID`` picks the run explicitly. Transformers itself
reads ``optimizer.pt``, ``scheduler.pt`` and ``rng_state.pth`` on resume with
``torch.load(weights_only=True)`` (torch's restricted unpickler); that is its behaviour on the
resume you ask for, not cairn's, and cairn hands it only files whose sha256 matches what the run uploaded.

Any failure in cairn's own code becomes an :class:`~cairn.autolog.config.AutologWarning`; training
goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.trainer_callback import ExportableState, TrainerCallback

# The names marked "noqa: F401" are not used here: they are re-exported, so everything the module held before
# it was split (tests reach e.g. ``training_params``) is still an attribute of ``cairn.autolog.transformers``.
from cairn.autolog._transformers_model import log_final_model
from cairn.autolog._transformers_params import (
    _METRIC_KEY_BAD_CHARS,  # noqa: F401
    _flatten,  # noqa: F401
    _metric_key,
    _metric_keys,  # noqa: F401
    _metric_value,
    logger,
    training_params,
)
from cairn.autolog._transformers_resume import RUN_FILE, RUN_FILE_FORMAT, _is_resumed_checkpoint, _read_run_file
from cairn.autolog._transformers_uploads import (
    _CHECKPOINT_NAME,
    CHECKPOINT_MODELS_DIR,
    CHECKPOINTS_DIR,
    _CheckpointUploader,
    _sha256_or_none,
    _stage,
    _UploadJob,
    missing_rank_files,
    wait_for_every_rank,
)
from cairn.autolog.base import loops
from cairn.autolog.config import AutologConfig, PatchSet, report_failure, safe_autolog
from cairn.checkpoint.resume import continue_run, nothing_to_resume, resolve_run_id
from cairn.errors import InvalidArgument, NotFound
from cairn.tracking.entities import Metric, Param

if TYPE_CHECKING:
    from cairn.tracking.client import Client

__all__ = [
    "CHECKPOINTS_DIR",
    "CHECKPOINT_MODELS_DIR",
    "REPORT_TO_NAME",
    "RUN_FILE",
    "CairnCallback",
    "TransformersAutologConfig",
    "autolog",
    "checkpoint_path",
    "register_report_to",
]

INTEGRATION = "transformers"
REPORT_TO_NAME = "cairn"
RESUMED_FROM_TAG = "cairn.transformers.resumed_from_step"
STAGING_DIR = ".cairn-staging"
_PARAM_BATCH = 100
_OWNER_ATTR = "_cairn_callback"  # set on the TrainerState: which CairnCallback logs this training
_LOG_MODELS = ("end", "checkpoint")

# Checkpoints materialised by checkpoint_path() in this process: local path -> run id.
_materialized: dict[str, str] = {}


# ----------------------------------------------------------------------------------------- resume


def checkpoint_path(
    run_id: str | None = None,
    step: str | int = "latest",
    *,
    dst: str | os.PathLike[str] | None = None,
    which: str | int | None = None,
    client: Client | None = None,
) -> str:
    """Download a checkpoint a :class:`CairnCallback` uploaded into a run and return its local path.

    Only committed checkpoints count (their ``manifest.json`` exists), and the download is verified
    against the manifest's sha256 before the path is returned. Pass the path to
    ``trainer.train(resume_from_checkpoint=...)``: the callback then continues the same run.
    Transformers reads the checkpoint's ``optimizer.pt``, ``scheduler.pt`` and ``rng_state.pth`` with
    ``torch.load(weights_only=True)`` on that resume; cairn itself unpickles nothing here.

    The same shape as ``cairn.pytorch.checkpoint_path`` and ``cairn.lightning.checkpoint_path``.

    Args:
        run_id: the run the checkpoints were logged into (default: ``CAIRN_RUN_ID``, else the active run).
        step: ``"latest"`` (the highest step whose download verifies; a damaged newer one is skipped with a
            :class:`~cairn.checkpoint.resume.ResumeWarning` naming it and the one used) or a global step.
        dst: the directory to download into (a new temporary directory by default); the checkpoint
            lands in ``<dst>/checkpoints/checkpoint-N``.
        which: the former name of ``step`` (deprecated).
        client: the client of the run's store (default: the fluent API's; with one, the run is ``run_id`` or
            ``CAIRN_RUN_ID``, never the fluent active run).

    Raises:
        NoCheckpoint: the run has no complete checkpoint (at that step); a ``CheckpointError`` and an
            ``ArtifactNotFound``.
        CheckpointCorrupt: the checkpoint at the requested step does not match its manifest.
        InvalidArgument: ``step`` is neither ``"latest"`` nor a step, or no run can be determined.
    """
    from cairn.checkpoint.formats import TRANSFORMERS
    from cairn.checkpoint.resume import NoCheckpoint, plan_resume, require_run_id
    from cairn.tracking import fluent

    if which is not None:
        warnings.warn("checkpoint_path(which=) is deprecated: use step=", DeprecationWarning, stacklevel=2)
        step = which
    wanted: str | int
    if step == "latest":
        wanted = "latest"
    elif isinstance(step, int) and not isinstance(step, bool) and step >= 0:
        wanted = step
    elif isinstance(step, str) and step.isdigit():
        wanted = int(step)
    else:
        raise InvalidArgument(f"step must be 'latest' or a global step (an integer >= 0), got {step!r}")
    run_id = require_run_id(run_id, use_active=client is None)
    root = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="cairn-hf-checkpoint-"))
    tracking = client if client is not None else fluent._get_client()
    plan = plan_resume(tracking, run_id, fmt=TRANSFORMERS, destination=root / CHECKPOINTS_DIR, which=wanted)
    if plan is None:
        raise NoCheckpoint(
            f"run {run_id} has no complete checkpoint at all under {CHECKPOINTS_DIR}/ (uploads without a manifest "
            "are incomplete and do not count)"
        )
    _materialized[str(plan.path.resolve())] = run_id
    return str(plan.path)


def _state_run_id(state: Any) -> str | None:
    """The run id this callback stored in ``trainer_state.json`` (read back by Trainer on resume)."""
    entry = (getattr(state, "stateful_callbacks", None) or {}).get(CairnCallback.__name__)
    for item in entry if isinstance(entry, list) else [entry]:
        if isinstance(item, dict):
            run_id = (item.get("attributes") or {}).get("_checkpoint_run_id")
            if isinstance(run_id, str) and run_id:
                return run_id
    return None


def _checkpoint_run_id(args: Any, state: Any) -> str | None:
    """The run a resumed training came from: the callback's entry in the trainer state, else ``cairn_run.json``."""
    found = _state_run_id(state)
    if found:
        return found
    step = int(state.global_step)
    candidates = []
    resume = getattr(args, "resume_from_checkpoint", None)
    if isinstance(resume, str):
        candidates.append(Path(resume))
    if getattr(args, "output_dir", None):
        candidates.append(Path(args.output_dir) / f"checkpoint-{step}")
    candidates.extend(Path(p) for p in _materialized)
    for directory in candidates:
        content = _read_run_file(directory)
        if content is not None and _is_resumed_checkpoint(directory, content, state):
            return str(content["run_id"])
    return None


# ----------------------------------------------------------------------------------------- the callback


class CairnCallback(TrainerCallback, ExportableState):
    """Log a ``transformers.Trainer`` run into cairn: params, metrics, checkpoints, the final model.

    Args:
        run: the run to log into (a run id or a run object); default: the active run, else the
            checkpoint's run when resuming (or ``CAIRN_RUN_ID``), else a new run that the callback
            ends when training ends.
        log_models: ``"end"`` logs the final model at ``model``; ``"checkpoint"`` also logs each
            checkpoint as a model at ``checkpoint_models/checkpoint-N``; ``False`` logs none.
        log_checkpoints: upload each ``checkpoint-N`` in the background (needed for resume).
        registered_model_name: register the final model under this name.
        task: the pipeline task of the logged model; default: inferred from the model class.
        input_example: the logged model's input example; default: the first training inputs, decoded.
        silent: report cairn's own failures on the ``cairn.autolog`` logger instead of as warnings.
        client: the :class:`~cairn.Client` to log through (as dvclive's ``live=``); default: the fluent
            API's client, whose active run is then used. With a client, the run is ``run``, else the
            checkpoint's run or ``CAIRN_RUN_ID``'s, else a new run in the default experiment.

    Training that starts from step 0 in ``CAIRN_RUN_ID``'s run when that run already has metrics would
    restart inside its history: the callback warns (:class:`~cairn.checkpoint.resume.ResumeWarning`) and
    logs into a new run instead. Resume with ``trainer.train(resume_from_checkpoint=checkpoint_path(...))``.
    """

    def __init__(
        self,
        run: Any = None,
        log_models: str | bool = "end",
        log_checkpoints: bool = True,
        registered_model_name: str | None = None,
        *,
        task: str | None = None,
        input_example: Any = None,
        silent: bool = False,
        client: Client | None = None,
    ) -> None:
        if log_models is True:
            log_models = "end"
        if log_models not in (*_LOG_MODELS, False, None):
            raise InvalidArgument(f"log_models must be 'end', 'checkpoint' or False, got {log_models!r}")
        if run is not None and not isinstance(run, str):
            run = getattr(getattr(run, "info", None), "run_id", None)
            if not isinstance(run, str):
                raise InvalidArgument("run must be a run id or a run object with info.run_id")
        self.log_models: str | None = log_models or None
        self.log_checkpoints = bool(log_checkpoints)
        self.registered_model_name = registered_model_name
        self.task = task
        self.input_example = input_example
        self.silent = silent
        self._run_arg: str | None = run
        self._checkpoint_run_id: str | None = None  # exported in trainer_state.json (see state())
        self.run_id: str | None = None
        self._created_run = False
        self._given_client = client
        self._client: Any = client
        self._uploader: _CheckpointUploader | None = None
        self._staging_root: Path | None = None
        self._committed: list[int] = []  # of this train() call, once its uploader is closed
        self._told_duplicate = False
        self._experiment_id: str | None = None
        self._last_logged: dict[str, tuple[int, float]] = {}  # key -> (step, value) last logged
        self._driven: Any = None  # the optimizer claimed in ``loops`` while train() runs

    # -- ExportableState: what trainer_state.json keeps of this callback ---------------------------

    def state(self) -> dict[str, Any]:
        """Saved by Trainer in each checkpoint's ``trainer_state.json``: the options and the run id."""
        return {
            "args": {
                "log_models": self.log_models or False,
                "log_checkpoints": self.log_checkpoints,
                "registered_model_name": self.registered_model_name,
                "task": self.task,
            },
            "attributes": {"_checkpoint_run_id": self.run_id or self._checkpoint_run_id},
        }

    # -- public helpers ---------------------------------------------------------------------------

    @property
    def committed_checkpoints(self) -> list[int]:
        """Global steps of the checkpoints of the current (or last) ``train()`` whose upload is committed."""
        return self._committed + (self._uploader.committed if self._uploader is not None else [])

    def wait_for_uploads(self, timeout: float | None = None) -> bool:
        """Block until every checkpoint handed to the uploader is committed or failed; False on timeout."""
        return self._uploader.wait(timeout) if self._uploader is not None else True

    # -- hooks ------------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        optimizer = kwargs.get("optimizer")
        if optimizer is not None:  # this Trainer drives its loop: the plain-PyTorch hooks stand down for it
            loops.claim(INTEGRATION, [optimizer])
            self._driven = optimizer
        if not state.is_world_process_zero or not self._claim(state):
            return
        self._close_uploader()
        self._committed = []
        self.run_id = None
        with safe_autolog(INTEGRATION, "starting the run", silent=self.silent):
            self._setup(args, state, model, resuming=state.global_step > 0)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or not self._claim(state):
            return
        if self.run_id is None:  # evaluate() or log() outside train()
            with safe_autolog(INTEGRATION, "starting the run", silent=self.silent):
                self._setup(args, state, model, resuming=False)
            if self.run_id is None:
                return
        with safe_autolog(INTEGRATION, "logging metrics", silent=self.silent):
            step = int(state.global_step)
            now = time.time_ns() // 1_000_000
            metrics = []
            last = self._last_logged
            for key, value in logs.items():
                number = _metric_value(value)
                if number is None:
                    continue
                name = _metric_key(key)
                if last.get(name) == (step, number):
                    continue  # Trainer repeats ``epoch`` in its final log at the same step: one point
                last[name] = (step, number)
                metrics.append(Metric(name, number, now, step))
            if metrics:
                self._client.log_batch(self.run_id, metrics=metrics, synchronous=False)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        wait_for_every_rank(args)  # every rank joins, before any return: the main process uploads complete folders
        if not state.is_world_process_zero or self.run_id is None or not self._claim(state):
            return
        self._report_upload_errors()
        with safe_autolog(INTEGRATION, "recording the checkpoint", silent=self.silent):
            checkpoint = self._record_run(args, state)
            missing = missing_rank_files(checkpoint, args)
            if missing:
                self._warn(
                    f"{checkpoint.name} lacks {', '.join(missing)} (written on other nodes? put output_dir on a "
                    "shared filesystem): it is uploaded without them, and a resume from it cannot restore those ranks' "
                    "RNG (Trainer logs that and continues with their current RNG: not exact)"
                )
            if self.log_checkpoints and self._uploader is not None:
                self._queue_checkpoint(args, state, checkpoint)

    def on_train_end(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        processing_class: Any = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        driven, self._driven = self._driven, None
        if driven is not None:
            loops.release([driven])
        if not state.is_world_process_zero or self.run_id is None:
            return
        if self.log_models == "checkpoint":  # its uploads log models too: one writer of the run's model history
            self._finish_uploads()
        if self.log_models and model is not None:  # overlaps with the last checkpoint's upload
            with safe_autolog(INTEGRATION, "logging the model", silent=self.silent):
                log_final_model(
                    self._client,
                    self.run_id,
                    model,
                    processing_class=processing_class,
                    train_dataloader=train_dataloader,
                    task=self.task,
                    input_example=self.input_example,
                    registered_model_name=self.registered_model_name,
                    silent=self.silent,
                )
        self._finish_uploads()  # train() returns with every checkpoint committed
        with safe_autolog(INTEGRATION, "ending the run", silent=self.silent):
            self._client.flush()
            if self._created_run and self._given_client is not None:
                self._client.set_terminated(self.run_id, "FINISHED")
                self._created_run = False
            elif self._created_run:
                from cairn.tracking import fluent

                fluent.end_run("FINISHED", _run_id=self.run_id)
                self._created_run = False

    # -- internals --------------------------------------------------------------------------------

    def _claim(self, state: Any) -> bool:
        """Whether this callback logs this training: the first CairnCallback of a Trainer does, a second
        one (``callbacks=[CairnCallback()]`` together with ``report_to="cairn"``) stays silent."""
        owner = getattr(state, _OWNER_ATTR, None)
        if owner is None:
            try:
                setattr(state, _OWNER_ATTR, id(self))  # an id, not a reference: the state stays copyable
            except AttributeError:  # a state object that takes no attributes: no duplicate check
                return True
            return True
        if owner != id(self) and not self._told_duplicate:
            self._told_duplicate = True
            self._warn("this Trainer has two CairnCallbacks (callbacks=[...] and report_to='cairn'?); one logs")
        return bool(owner == id(self))

    def _setup(self, args: Any, state: Any, model: Any, *, resuming: bool) -> None:
        from cairn.tracking import fluent

        client = self._given_client or fluent._get_client()
        self._client = client
        stateful = getattr(state, "stateful_callbacks", None)
        if isinstance(stateful, dict):
            # Trainer indexes this entry at every save; a resumed state written without cairn lacks it.
            stateful.setdefault(type(self).__name__, self.state())
        from_checkpoint = _checkpoint_run_id(args, state) if resuming else None
        if from_checkpoint is not None:
            try:
                client.get_run(from_checkpoint)
            except NotFound:
                self._warn(
                    f"the checkpoint was logged into run {from_checkpoint}, which this tracking store does not "
                    "have; logging into another run"
                )
                from_checkpoint = None
        self.run_id, self._created_run = self._choose_run(args, from_checkpoint, resuming=resuming)
        self._checkpoint_run_id = self.run_id
        self._experiment_id = client.get_run(self.run_id).info.experiment_id
        if resuming:
            continue_run(client, self.run_id, int(state.global_step))
            client.set_tag(self.run_id, RESUMED_FROM_TAG, str(int(state.global_step)))
        with safe_autolog(INTEGRATION, "logging params", silent=self.silent):
            self._log_params(args, model)
        if self.log_checkpoints:
            self._uploader = _CheckpointUploader(client, self.run_id)

    def _choose_run(self, args: Any, from_checkpoint: str | None, *, resuming: bool) -> tuple[str, bool]:
        """The run to log into and whether this callback started it (and ends it)."""
        from cairn.tracking import fluent

        if self._run_arg is not None:
            self._client.get_run(self._run_arg)  # RunNotFound now rather than at the first metric
            return self._run_arg, False
        active = fluent.active_run() if self._given_client is None else None
        if active is not None:
            if from_checkpoint is not None and from_checkpoint != active.info.run_id:
                self._warn(
                    f"the checkpoint was logged into run {from_checkpoint}, but run {active.info.run_id} is active; "
                    "logging into the active run"
                )
            return active.info.run_id, False
        env_run = resolve_run_id(use_active=False)
        if env_run is not None and from_checkpoint is not None and env_run != from_checkpoint:
            self._warn(
                f"the checkpoint was logged into run {from_checkpoint}, but CAIRN_RUN_ID names {env_run}; "
                "logging into CAIRN_RUN_ID's run"
            )
        target = env_run or from_checkpoint
        if target is not None and not resuming:  # a fresh start never restarts inside a run's history
            target = nothing_to_resume(self._client, target, if_possible=True, what=f"{CHECKPOINTS_DIR}/")
        run_name = getattr(args, "run_name", None) if target is None else None
        if self._given_client is not None:
            if target is None:
                created = self._client.create_run("0", run_name=run_name if isinstance(run_name, str) else None)
                return str(created.info.run_id), True
            self._client.update_run(target, status="RUNNING")
            return target, True
        run = fluent.start_run(run_id=target, run_name=run_name if isinstance(run_name, str) else None)
        return run.info.run_id, True

    def _warn(self, message: str) -> None:
        if self.silent:
            logger.warning("cairn transformers: %s", message)
        else:
            from cairn.autolog.config import AutologWarning

            warnings.warn(f"cairn transformers: {message}", AutologWarning, stacklevel=3)

    def _log_params(self, args: Any, model: Any) -> None:
        assert self.run_id is not None
        params = training_params(args, model)
        existing = self._client.get_run(self.run_id).data.params
        fresh = [(k, v) for k, v in params.items() if k not in existing]
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            logger.info("cairn transformers: params already logged with other values, kept as they were: %s", changed)
        for start in range(0, len(fresh), _PARAM_BATCH):
            batch = [Param(k, v) for k, v in fresh[start : start + _PARAM_BATCH]]
            self._client.log_batch(self.run_id, params=batch)

    def _record_run(self, args: Any, state: Any) -> Path:
        """Write ``cairn_run.json`` (the run id) into the checkpoint Trainer just saved; return its path."""
        step = int(state.global_step)
        name = f"checkpoint-{step}"
        checkpoint = Path(args.output_dir) / name
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"Trainer reported a save but {checkpoint} does not exist")
        run_file = {
            "format": RUN_FILE_FORMAT,
            "format_version": 1,
            "run_id": self.run_id,
            "experiment_id": self._experiment_id,
            "global_step": step,
            "artifact_path": f"{CHECKPOINTS_DIR}/{name}",
            "trainer_state_sha256": _sha256_or_none(checkpoint / "trainer_state.json"),
        }
        (checkpoint / RUN_FILE).write_text(json.dumps(run_file, indent=1) + "\n", encoding="utf-8")
        return checkpoint

    def _queue_checkpoint(self, args: Any, state: Any, checkpoint: Path) -> None:
        assert self._uploader is not None
        step = int(state.global_step)
        name = checkpoint.name
        self._staging_root = checkpoint.parent / STAGING_DIR
        staged = _stage(checkpoint, self._staging_root)
        best = getattr(state, "best_model_checkpoint", None)
        best_match = _CHECKPOINT_NAME.match(Path(best).name) if isinstance(best, str) else None
        limit = getattr(args, "save_total_limit", None)
        self._uploader.submit(
            _UploadJob(
                step=step,
                name=name,
                source=staged if staged is not None else checkpoint,
                cleanup=staged,
                save_total_limit=int(limit) if limit else None,
                best_step=int(best_match.group(1)) if best_match else None,
                log_model=self.log_models == "checkpoint",
                task=self.task,
            )
        )

    def _finish_uploads(self) -> None:
        if self._uploader is not None:
            self._uploader.wait()
            self._report_upload_errors()
            self._close_uploader()

    def _report_upload_errors(self) -> None:
        if self._uploader is None:
            return
        for error in self._uploader.take_errors():
            report_failure(INTEGRATION, "a checkpoint upload", RuntimeError(error), silent=self.silent)

    def _close_uploader(self) -> None:
        if self._uploader is not None:
            self._uploader.close()
            self._committed.extend(self._uploader.committed)
            self._uploader = None
        if self._staging_root is not None:
            with contextlib.suppress(OSError):
                self._staging_root.rmdir()  # only if empty
            self._staging_root = None


# ----------------------------------------------------------------------------------------- report_to and autolog


def register_report_to() -> None:
    """Make ``TrainingArguments(report_to="cairn")`` attach :class:`CairnCallback` (idempotent)."""
    from transformers.integrations import integration_utils

    integration_utils.INTEGRATION_TO_CALLBACK[REPORT_TO_NAME] = CairnCallback


@dataclass(frozen=True)
class TransformersAutologConfig(AutologConfig):
    """:class:`AutologConfig` plus the Trainer options (see :class:`CairnCallback`)."""

    log_models_mode: str | None = "end"
    log_checkpoints: bool = True
    registered_model_name: str | None = None


class _State:
    def __init__(self) -> None:
        self.config: TransformersAutologConfig | None = None
        self.patches = PatchSet()


_state = _State()


def autolog(
    log_models: str | bool = "end",
    log_checkpoints: bool = True,
    registered_model_name: str | None = None,
    disable: bool = False,
    silent: bool = False,
) -> None:
    """Attach a :class:`CairnCallback` to every ``transformers.Trainer`` (subclasses included) created from now on.

    ``Trainer.__init__`` is wrapped; a Trainer that already has a CairnCallback (passed in
    ``callbacks`` or through ``report_to="cairn"``) gets no second one. ``disable=True`` restores
    ``Trainer.__init__``.

    Args:
        log_models: ``"end"``, ``"checkpoint"`` or False (see :class:`CairnCallback`).
        log_checkpoints: upload checkpoints into the run in the background.
        registered_model_name: register the final model under this name.
        disable: turn autologging off.
        silent: report cairn's failures on the ``cairn.autolog`` logger rather than as warnings.

    Raises:
        InvalidArgument: ``log_models`` has another value.
    """
    if log_models is True:
        log_models = "end"
    if log_models not in (*_LOG_MODELS, False, None):
        raise InvalidArgument(f"log_models must be 'end', 'checkpoint' or False, got {log_models!r}")
    if disable:
        _state.patches.restore()
        _state.config = None
        return
    register_report_to()
    _state.config = TransformersAutologConfig(
        log_models=bool(log_models),
        log_models_mode=log_models or None,
        log_checkpoints=log_checkpoints,
        registered_model_name=registered_model_name,
        silent=silent,
    )
    if len(_state.patches) == 0:
        from transformers import Trainer

        _state.patches.patch(Trainer, "__init__", _wrap_init)


def is_enabled() -> bool:
    """True while Trainer autologging is on."""
    return _state.config is not None


def _wrap_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def patched(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)  # the user's call: its errors propagate
        config = _state.config
        if config is None:
            return
        with safe_autolog(INTEGRATION, "attaching CairnCallback", silent=config.silent):
            handler = getattr(self, "callback_handler", None)
            if handler is None or any(isinstance(cb, CairnCallback) for cb in handler.callbacks):
                return
            self.add_callback(
                CairnCallback(
                    log_models=config.log_models_mode or False,
                    log_checkpoints=config.log_checkpoints,
                    registered_model_name=config.registered_model_name,
                    silent=config.silent,
                )
            )

    return patched
