"""Which checkpoints to keep: the last ``keep_last`` by step plus the best ``keep_best`` by a metric.

Deciding (:meth:`RetentionPolicy.select_for_deletion`) is separate from deleting
(:func:`apply_retention` with a ``delete`` callable), so a caller that mirrors checkpoints into an
artifact store deletes them there too, not only on the local disk.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from cairn.checkpoint.local import CheckpointInfo
from cairn.errors import InvalidArgument

__all__ = ["RetentionPolicy", "apply_retention", "delete_local"]


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep the union of the newest ``keep_last`` checkpoints and the ``keep_best`` best by ``monitor``.

    Args:
        keep_last: how many of the highest-step checkpoints to keep; ``None`` keeps all of them.
        keep_best: how many best checkpoints to keep in addition; only applies when ``monitor`` is set.
        monitor: metric name looked up in each checkpoint's manifest metrics. Checkpoints without it,
            or where it is NaN, are never "best". Ties go to the later step.
        mode: ``"min"`` (lower is better, e.g. a loss) or ``"max"``.
    """

    keep_last: int | None = 3
    keep_best: int = 1
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 0:
            raise InvalidArgument(f"keep_last must be >= 0 or None, got {self.keep_last}")
        if self.keep_best < 0:
            raise InvalidArgument(f"keep_best must be >= 0, got {self.keep_best}")
        if self.mode not in ("min", "max"):
            raise InvalidArgument(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.keep_last == 0 and not (self.keep_best and self.monitor):
            raise InvalidArgument("keep_last=0 without keep_best and monitor would delete every checkpoint")

    def select_for_deletion(self, checkpoints: Sequence[CheckpointInfo]) -> list[CheckpointInfo]:
        """The checkpoints this policy drops, oldest first; ``checkpoints`` should be the valid ones."""
        if self.keep_last is None:
            return []
        by_step = sorted(checkpoints, key=lambda c: (c.step, c.created_at, c.name))
        keep = {c.path for c in by_step[max(0, len(by_step) - self.keep_last) :]} if self.keep_last else set()
        if self.keep_best and self.monitor is not None:
            sign = 1.0 if self.mode == "min" else -1.0
            ranked = [c for c in by_step if _score(c, self.monitor) is not None]
            # Stable sort on (score) after sorting by descending step: ties go to the later step.
            ranked = sorted(reversed(ranked), key=lambda c: sign * (_score(c, self.monitor) or 0.0))
            keep.update(c.path for c in ranked[: self.keep_best])
        return [c for c in by_step if c.path not in keep]


def _score(info: CheckpointInfo, monitor: str | None) -> float | None:
    value = info.metrics.get(monitor) if monitor is not None else None
    return None if value is None or math.isnan(value) else value


def delete_local(info: CheckpointInfo) -> None:
    """Remove a checkpoint directory from the local disk (the default deleter)."""
    shutil.rmtree(info.path, ignore_errors=False)


def apply_retention(
    checkpoints: Sequence[CheckpointInfo],
    policy: RetentionPolicy,
    delete: Callable[[CheckpointInfo], None] = delete_local,
) -> list[CheckpointInfo]:
    """Call ``delete`` on each checkpoint ``policy`` drops, oldest first, and return them.

    ``delete`` may remove the local directory, the artifact-store copy, or both. An error from it stops
    the pruning and propagates; checkpoints not yet deleted are left in place.
    """
    doomed = policy.select_for_deletion(checkpoints)
    for info in doomed:
        delete(info)
    return doomed
