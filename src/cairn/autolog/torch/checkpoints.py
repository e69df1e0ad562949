"""When autolog checkpoints, and what goes in: the policy, and the capture at the step boundary.

A step checkpoint (``checkpoint_every_n_steps``) is taken at the next *batch boundary*: before the
training loader fetches the next batch, i.e. after the loop body that made the step, so a per-batch
``scheduler.step()`` is in it; after an epoch's last batch it waits for the next epoch's ``iter()``.
Without a DataLoader it is taken right after the optimizer step that ends the step (never inside an
evaluation), or, if the optimizers have LR schedulers, right after the next ``scheduler.step()`` (else
before the model's next forward). When the run ends, the last step gets a checkpoint if it has none.

A checkpoint holds the model, every optimizer, their LR schedulers, the GradScaler, the RNG, the training
loader's position (under ``torch.distributed``: every rank's RNG and position), the losses recorded for
the step in progress and the loop's own state registered with ``track_state`` (written by
:func:`cairn.checkpoint.runs.log_checkpoint` into the integration's client's store). A
:class:`~cairn.errors.RunLeased` is not reported but raised: another process resumes the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from cairn.autolog.torch.config import PyTorchAutologConfig, Report
from cairn.autolog.torch.discovery import Constructed
from cairn.autolog.torch.loaders import DataTracking, LoaderTrack, PositionView
from cairn.autolog.torch.losses import LossRecorder
from cairn.autolog.torch.session import Session
from cairn.errors import CheckpointError, RunLeased
from cairn.tracking.client import Client

__all__ = ["CheckpointPolicy", "one_or_list", "optimizer_signature"]

UserState = Callable[[], Mapping[str, Any]]


def one_or_list(items: list[Any]) -> Any:
    return None if not items else items[0] if len(items) == 1 else list(items)


def optimizer_signature(optimizer: Any) -> list[Any]:
    """Class and parameter shapes: how a resumed process recognises the checkpoint's optimizers."""
    shapes = [list(p.shape) for group in optimizer.param_groups for p in group["params"]]
    return [f"{type(optimizer).__module__}.{type(optimizer).__qualname__}", shapes]


class CheckpointPolicy:
    """Takes the checkpoints ``config`` asks for at the moments described in the module docstring."""

    def __init__(
        self,
        config: PyTorchAutologConfig,
        *,
        constructed: Constructed,
        data: DataTracking,
        losses: LossRecorder,
        report: Report,
        client: Client | None = None,
    ) -> None:
        self.config = config
        self.client = client  # the run's store (None: the fluent API's)
        self.constructed = constructed
        self.data = data
        self.losses = losses
        self.report = report
        self.user_state: UserState | None = None  # track_state()'s getter, saved in each checkpoint

    # -- when -------------------------------------------------------------------------------------------

    def after_step(self, session: Session) -> None:
        """The primary optimizer stepped: schedule a step checkpoint if one is due."""
        every = self.config.checkpoint_every_n_steps
        if every and session.step % every == 0:
            self.schedule(session)

    def schedule(self, session: Session) -> None:
        session.ckpt_due = True
        if self.data.train_track is not None:
            return  # at the training loader's next batch boundary
        model = session.current_model()
        if not self.discover(session)[0] or model is None:
            self.checkpoint_now(session, None, boundary=False)
        elif session.forward_ckpt_handle is None:  # a per-step scheduler.step() follows: wait for it

            def before_forward(module: nn.Module, args: Any) -> None:
                if session.ckpt_due:
                    self.checkpoint_now(session, None, boundary=False)

            session.forward_ckpt_handle = model.register_forward_pre_hook(before_forward)

    def after_scheduler_step(self, session: Session) -> None:
        """An LR scheduler stepped: take a checkpoint deferred until then."""
        if session.ckpt_due and session.forward_ckpt_handle is not None:
            self.checkpoint_now(session, None, boundary=False)

    def before_batch(self, session: Session, track: LoaderTrack) -> None:
        """The training loader is about to fetch a batch of the same epoch."""
        if session.ckpt_due and track.train and track.batch_follows():
            self.checkpoint_now(session, track, boundary=False)

    def at_epoch_start(self, session: Session, track: LoaderTrack) -> None:
        """``iter()`` of a training loader that ran an epoch before: a due step or epoch checkpoint."""
        if track.train and track.epoch >= 0 and (session.ckpt_due or self._epoch_due(track)):
            self.checkpoint_now(session, track, boundary=True)

    def at_run_end(self, session: Session, *, failed: bool = False) -> None:
        """The last checkpoint if due, or the last step's if it has none.

        ``failed`` (the run ends through an exception or a signal) in a job of several ranks: none. Rank 0
        would write it alone, without the other ranks' RNG and data position, and a job restarted by
        torchelastic (one rank died, the others were stopped) would then resume from it inexactly instead of
        from the newest checkpoint all ranks took; a warning says so.
        """
        from cairn.checkpoint import distributed

        track = self.data.train_track
        final_due = self.config.checkpointing and session.step > max(session.last_ckpt_step, 0)
        epoch_due = track is not None and track.finished and self._epoch_due(track)
        due = session.ckpt_due or epoch_due or final_due
        if due and failed and session.run_id is not None and distributed.group() is not None:
            self.report(
                f"checkpointing at the end of run {session.run_id}",
                CheckpointError(
                    f"no checkpoint at the end of run {session.run_id} (step {session.step}): it ended through an "
                    "error or a signal, and rank 0 alone cannot checkpoint the other ranks' state; a resume (or a "
                    f"torchelastic restart) continues from the newest checkpoint, step {max(session.last_ckpt_step, 0)}"
                ),
            )
            return
        if due:
            boundary = bool(track is not None and track.finished)
            self.checkpoint_now(session, track, boundary=boundary, final=True)

    def _epoch_due(self, track: LoaderTrack) -> bool:
        every = self.config.checkpoint_every_n_epochs or 0
        return every > 0 and track.finished and (track.epoch + 1) % every == 0

    # -- what --------------------------------------------------------------------------------------------

    def discover(self, session: Session) -> tuple[list[Any], Any]:
        """The LR schedulers of the session's optimizers and the live GradScaler (cached per session)."""
        if session.discovered is None:
            session.discovered = (self.constructed.schedulers_of(session.optimizers), self.constructed.scaler())
        return session.discovered

    def checkpoint_now(
        self, session: Session, track: LoaderTrack | None, *, boundary: bool, final: bool = False
    ) -> None:
        """Take the due checkpoint (reported on failure; the training step is never disturbed).

        Under ``torch.distributed`` every rank gets here at the same step (the same loop on every rank) and
        takes part; ``final`` (run end, rank 0 only): rank 0 writes it alone.
        """
        session.ckpt_due = False
        if session.forward_ckpt_handle is not None:
            session.forward_ckpt_handle.remove()
            session.forward_ckpt_handle = None
        if (session.run_id is None and not session.peer) or session.step == session.last_ckpt_step:
            return
        try:
            if session.run_id is None:  # a rank > 0: its RNG and loader position, gathered to rank 0
                self._take_part(session, track, boundary=boundary)
            else:
                self._take(session, track, boundary=boundary, final=final)
        except RunLeased:  # another process is resuming the run: training on would write into it twice
            raise
        except Exception as exc:
            self.report(f"checkpointing at step {session.step}", exc)

    @staticmethod
    def _position(track: LoaderTrack | None, *, boundary: bool) -> tuple[int | None, int | None, Any]:
        if track is None:
            return None, None, None
        epoch = track.epoch + 1 if boundary else track.epoch
        batch = 0 if boundary else track.batch
        return epoch, batch, PositionView(track.position(boundary=boundary))

    def _take_part(self, session: Session, track: LoaderTrack | None, *, boundary: bool) -> None:
        from cairn.checkpoint import runs

        session.last_ckpt_step = session.step
        epoch, batch, loader = self._position(track, boundary=boundary)
        model = session.current_model()  # used when rank 0 checkpoints in shards (FSDP2): every rank writes its own
        runs.log_checkpoint(
            model=model,
            optimizer=one_or_list(session.optimizers),
            step=session.step,
            epoch=epoch,
            batch_in_epoch=batch,
            loader=loader,
        )

    def _take(self, session: Session, track: LoaderTrack | None, *, boundary: bool, final: bool) -> None:
        from cairn.checkpoint import distributed, runs, sharded

        assert session.run_id is not None
        job = distributed.group()
        if final and job is not None and sharded.is_sharded(session.current_model()):
            raise CheckpointError(
                f"no checkpoint at run end (step {session.step}): a sharded (FSDP2) model is checkpointed by every "
                f"rank together, and at run end only rank 0 is here; the newest checkpoint is step "
                f"{max(session.last_ckpt_step, 0)} (call cairn.pytorch.log_checkpoint on every rank after the loop "
                "to keep the final state)"
            )
        try:
            schedulers, scaler = self.discover(session)
            epoch, batch, loader = self._position(track, boundary=boundary)
            extra: dict[str, Any] = {
                "autolog": {
                    "optimizers": [optimizer_signature(o) for o in session.optimizers],
                    "pending_losses": self.losses.as_floats(),
                }
            }
            if self.user_state is not None:
                extra["user"] = dict(self.user_state())
        except BaseException:
            if job is not None and not final:
                distributed.exchange(b"", job)  # the other ranks wait for rank 0 in the gather
            raise
        session.last_ckpt_step = session.step
        runs.log_checkpoint(
            model=session.current_model(),
            optimizer=one_or_list(session.optimizers),
            scheduler=one_or_list(schedulers),
            scaler=scaler,
            step=session.step,
            epoch=epoch,
            batch_in_epoch=batch,
            extra=extra,
            run_id=session.run_id,
            keep_last=self.config.keep_last,
            loader=loader,
            client=self.client,
            per_rank=not final,
        )
