"""``autolog(resume=...)`` for Lightning: which run is resumed, and a requested resume that cannot happen is never
silent; an injected client's run goes through the same run resolution as the fluent API's."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="lightning is not installed (pip install 'cairn[lightning]')")

import cairn
import cairn.lightning
from cairn.autolog import _lightning_resume
from cairn.autolog import lightning as integration
from cairn.checkpoint.resume import ResumeWarning
from cairn.tracking.entities import RunStatus
from tests.autolog.test_lightning import TinyModule, _history, _loaders, _quiet, _trainer

__all__ = ["_quiet"]  # the autouse fixture of test_lightning


def _cairn_run(trainer: object) -> str:
    run_id = next(lg for lg in trainer.loggers if isinstance(lg, cairn.lightning.CairnLogger)).run_id  # type: ignore[attr-defined]
    assert run_id is not None
    return run_id


def _first_fit(tmp_path: Path) -> str:
    cairn.lightning.autolog(checkpoint_every_n_steps=4, log_models=False)
    trainer = _trainer(tmp_path, max_epochs=1, logger=False)
    trainer.fit(TinyModule(), *_loaders())
    return _cairn_run(trainer)


@pytest.mark.parametrize("resume", [True, "latest", "if_possible"])
def test_a_named_resume_without_cairn_run_id_warns_and_starts_a_new_run(tmp_path: Path, resume: object) -> None:
    first = _first_fit(tmp_path)
    cairn.lightning.autolog(log_models=False, resume=resume)
    again = _trainer(tmp_path, max_epochs=1, logger=False)
    with pytest.warns(ResumeWarning, match="CAIRN_RUN_ID is not set: nothing was resumed"):
        again.fit(TinyModule(), *_loaders())
    assert again.ckpt_path is None
    assert _cairn_run(again) != first
    assert [s for s, _ in _history(_cairn_run(again), "train_loss_step")] == list(range(8))


@pytest.mark.parametrize("resume", [True, "latest", "if_possible"])
def test_a_named_resume_continues_cairn_run_ids_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resume: object
) -> None:
    first = _first_fit(tmp_path)
    monkeypatch.setenv("CAIRN_RUN_ID", first)
    cairn.lightning.autolog(log_models=False, resume=resume)
    again = _trainer(tmp_path, max_epochs=2, logger=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResumeWarning)
        again.fit(TinyModule(), *_loaders())
    assert again.ckpt_path is not None and Path(again.ckpt_path).name == "last.ckpt"
    assert _cairn_run(again) == first
    assert [s for s, _ in _history(first, "train_loss_step")] == list(range(16))


def test_cairn_run_id_is_read_through_the_shared_resolver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _first_fit(tmp_path)
    asked: list[bool] = []

    def resolve(run_id: str | None = None, *, use_active: bool = True) -> str | None:
        asked.append(use_active)
        return first

    monkeypatch.setattr(integration, "resolve_run_id", resolve)  # CAIRN_RUN_ID itself is not set
    cairn.lightning.autolog(log_models=False, resume=True)
    again = _trainer(tmp_path, max_epochs=2, logger=False)
    again.fit(TinyModule(), *_loaders())
    assert asked == [False] and _cairn_run(again) == first


def test_resume_if_possible_of_a_run_without_checkpoints_warns_and_forks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cairn.lightning.autolog(log_models=False)  # no ModelCheckpoint of cairn's: the run gets no checkpoint
    trainer = _trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    trainer.fit(TinyModule(), *_loaders())
    first = _cairn_run(trainer)
    monkeypatch.setenv("CAIRN_RUN_ID", first)
    calls: list[tuple[str, bool]] = []
    original = _lightning_resume._resume_path

    def spy(run_id: str, *, if_possible: bool = False) -> str | None:
        calls.append((run_id, if_possible))
        return original(run_id, if_possible=if_possible)

    monkeypatch.setattr(integration, "_resume_path", spy)
    cairn.lightning.autolog(log_models=False, resume="if_possible")
    again = _trainer(tmp_path, max_epochs=1, logger=False, enable_checkpointing=False)
    with pytest.warns(ResumeWarning, match=f"run {first} has logged metrics but no checkpoint"):
        again.fit(TinyModule(), *_loaders())
    assert calls == [(first, True)]  # the run id itself, never the string "if_possible"
    second = _cairn_run(again)
    assert second != first
    assert [s for s, _ in _history(first, "train_loss_step")] == list(range(8))  # the old run is untouched
    assert [s for s, _ in _history(second, "train_loss_step")] == list(range(8))


def test_an_injected_clients_requested_run_is_continued_there(tmp_path: Path) -> None:
    other = cairn.Client(str(tmp_path / "other-store"))
    existing = other.create_run("0", run_name="made-elsewhere").info.run_id
    other.set_terminated(existing, RunStatus.KILLED)
    run_id, owned = _lightning_resume._open_run(existing, client=other)
    assert (run_id, owned) == (existing, True) and other.get_run(existing).info.status is RunStatus.RUNNING
    fresh, owned = _lightning_resume._open_run(None, client=other, run_name="fresh", tags={"k": "v"})
    run = other.get_run(fresh)
    assert owned and fresh != existing and run.info.run_name == "fresh" and run.data.tags["k"] == "v"
    assert cairn.active_run() is None  # the fluent run stack was not touched

    cairn_logger = cairn.lightning.CairnLogger(client=other, run_id=existing)
    trainer = _trainer(tmp_path, logger=cairn_logger, max_epochs=1, enable_checkpointing=False)
    trainer.fit(TinyModule(), *_loaders())
    assert cairn_logger.run_id == existing and other.get_run(existing).info.status is RunStatus.FINISHED
    assert [m.step for m in other.get_metric_history(existing, "train_loss_step")] == list(range(8))
