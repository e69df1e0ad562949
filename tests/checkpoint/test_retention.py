"""keep_last / keep_best decide; a pluggable callable deletes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cairn.checkpoint.local import CheckpointInfo
from cairn.checkpoint.retention import RetentionPolicy, apply_retention
from cairn.errors import InvalidArgument


def info(step: int, **metrics: float) -> CheckpointInfo:
    return CheckpointInfo(
        name=f"step-{step}",
        path=Path(f"/ck/step-{step}"),
        step=step,
        epoch=0,
        run_id=None,
        created_at="",
        metrics=metrics,
    )


LOSSES = {1: 0.9, 2: 0.3, 3: 0.5, 4: 0.3, 5: 0.7, 6: 0.8, 7: float("nan")}


def steps(selected: list[CheckpointInfo]) -> list[int]:
    return [c.step for c in selected]


def test_keep_last_only() -> None:
    ckpts = [info(s) for s in (3, 1, 2, 5, 4)]
    assert steps(RetentionPolicy(keep_last=3).select_for_deletion(ckpts)) == [1, 2]
    assert RetentionPolicy(keep_last=None).select_for_deletion(ckpts) == []
    assert RetentionPolicy(keep_last=10).select_for_deletion(ckpts) == []


def test_keep_best_min_and_max_with_ties_to_the_later_step() -> None:
    ckpts = [info(s, val_loss=v) for s, v in LOSSES.items()]
    policy = RetentionPolicy(keep_last=2, keep_best=1, monitor="val_loss", mode="min")
    assert steps(policy.select_for_deletion(ckpts)) == [1, 2, 3, 5]  # keeps 4 (best, tie with 2), 6, 7
    policy = RetentionPolicy(keep_last=1, keep_best=2, monitor="val_loss", mode="max")
    assert steps(policy.select_for_deletion(ckpts)) == [2, 3, 4, 5]  # keeps 1 (0.9), 6 (0.8), 7 (last)


def test_checkpoints_without_the_metric_are_never_best() -> None:
    ckpts = [info(1), info(2, val_loss=5.0), info(3), info(4)]
    policy = RetentionPolicy(keep_last=1, keep_best=1, monitor="val_loss")
    assert steps(policy.select_for_deletion(ckpts)) == [1, 3]


def test_only_best_kept() -> None:
    ckpts = [info(s, acc=a) for s, a in ((1, 0.5), (2, 0.9), (3, 0.7))]
    policy = RetentionPolicy(keep_last=0, keep_best=1, monitor="acc", mode="max")
    assert steps(policy.select_for_deletion(ckpts)) == [1, 3]


def test_apply_calls_the_deleter_oldest_first() -> None:
    deleted: list[str] = []
    doomed = apply_retention(
        [info(s) for s in (4, 1, 5, 3, 2)], RetentionPolicy(keep_last=2), lambda c: deleted.append(c.name)
    )
    assert deleted == ["step-1", "step-2", "step-3"] == [c.name for c in doomed]


def test_invalid_policies() -> None:
    with pytest.raises(InvalidArgument, match="delete every checkpoint"):
        RetentionPolicy(keep_last=0, keep_best=1)  # no monitor: nothing would be kept
    with pytest.raises(InvalidArgument, match="mode"):
        RetentionPolicy(mode="avg")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="keep_last"):
        RetentionPolicy(keep_last=-1)
