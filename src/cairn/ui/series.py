"""Metric series for charts, down-sampled on the server so a browser never receives a million points.

A series with at most ``max_points`` points is sent as it is. A longer one is cut into
``(max_points - 2) // 2`` buckets of equal width along the x axis (step, or timestamp when every
point has the same step) and each bucket keeps its minimum and its maximum point, with their own
x positions; the first and last points are kept too. This min/max scheme preserves the shape of a
curve (every spike survives, the global minimum and maximum are always in the result) and draws
the same picture as the full series once buckets are about one pixel wide.

On the SQL store the bucketing runs inside the database, so the points never travel to Python:

* SQLite: per bucket, a range scan of the ``(run_uuid, key, step)`` index for the minimum and one
  for the maximum (a lone ``min()``/``max()`` makes SQLite return the bare ``id`` of the extreme
  row), all in one statement; no sort of the million rows. Buckets along the timestamp, which has
  no index, use ``GROUP BY`` instead.
* PostgreSQL: one ``GROUP BY`` pass with ``min(ARRAY[value, step, timestamp])`` and
  ``max(ARRAY[value, -step, timestamp])`` (arrays compare element by element).

Any other store goes through :func:`downsample_minmax` on the full history in numpy.
NaN points (stored as NULL) are dropped by down-sampling; a short series keeps them as ``None``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cairn.store.base import TrackingStore

__all__ = [
    "DEFAULT_MAX_POINTS",
    "MAX_POINTS_LIMIT",
    "MetricSeries",
    "XAxis",
    "buckets_for",
    "downsample_minmax",
    "metric_series",
]

DEFAULT_MAX_POINTS = 2000
MAX_POINTS_LIMIT = 20_000
_CACHE_SIZE = 64

XAxis = Literal["step", "time"]


@dataclass(frozen=True, slots=True)
class MetricSeries:
    """Points of one metric of one run, ordered by x.

    Attributes:
        steps, timestamps, values: parallel lists; ``values`` holds ``None`` for NaN and +/-inf.
        total: points of the metric, superseded ones excluded (and, once down-sampled, NaN ones too).
        downsampled: whether the lists are a min/max reduction of the stored points.
        bucket_by: the column the buckets were cut along (``"step"`` or ``"timestamp"``).
    """

    key: str
    steps: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    total: int = 0
    downsampled: bool = False
    bucket_by: str = "step"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "steps": self.steps,
            "timestamps": self.timestamps,
            "values": self.values,
            "total": self.total,
            "downsampled": self.downsampled,
            "bucket_by": self.bucket_by,
        }


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def buckets_for(max_points: int) -> int:
    """How many buckets keep a series within ``max_points`` (two points each, plus first and last)."""
    return max(1, (max_points - 2) // 2)


def downsample_minmax(
    steps: Sequence[int] | np.ndarray,
    timestamps: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    max_points: int,
    *,
    bucket_by: Literal["step", "timestamp"] = "step",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduce a series to at most ``max_points`` points: min and max of each bucket, first and last.

    The input must be ordered by step (then timestamp). NaN values are dropped first. Returns the
    kept ``(steps, timestamps, values)``, ordered by ``bucket_by`` and then step.
    """
    s = np.asarray(steps, dtype=np.int64)
    t = np.asarray(timestamps, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v)
    s, t, v = s[keep], t[keep], v[keep]
    if len(v) <= max_points:
        return s, t, v
    x = s if bucket_by == "step" else t
    order = np.lexsort((s, x))
    s, t, v, x = s[order], t[order], v[order], x[order]
    n = buckets_for(max_points)
    lo, hi = int(x[0]), int(x[-1])
    span = hi - lo + 1
    bucket = ((x - lo) * n) // span
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    # Buckets are contiguous runs of the x order, so bucket k starts at offset starts[k] in any order
    # sorted by bucket first: sorted by (bucket, value, index) its first member is the bucket's
    # minimum, sorted by (bucket, -value, index) its maximum (the earliest one on ties).
    idx = np.arange(len(v))
    mins = np.lexsort((idx, v, bucket))[starts]
    maxs = np.lexsort((idx, -v, bucket))[starts]
    chosen = np.unique(np.r_[0, mins, maxs, len(v) - 1])
    return s[chosen], t[chosen], v[chosen]


class _Cache:
    """A small thread-safe LRU of computed series, keyed by what makes them stale."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[Any, ...], MetricSeries] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> MetricSeries | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[Any, ...], value: MetricSeries) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_cache = _Cache(_CACHE_SIZE)


def metric_series(
    store: TrackingStore, run_id: str, key: str, *, max_points: int = DEFAULT_MAX_POINTS, x: XAxis = "step"
) -> MetricSeries:
    """The points of ``key`` in ``run_id``, down-sampled to at most ``max_points`` (see the module doc).

    Args:
        x: the chart's x axis; ``"time"`` cuts buckets along the timestamp instead of the step.

    Raises:
        RunNotFound: no run has this id.
        InvalidArgument: ``max_points`` is outside 10..20000.
    """
    from cairn.errors import InvalidArgument

    if isinstance(max_points, bool) or not 10 <= max_points <= MAX_POINTS_LIMIT:
        raise InvalidArgument(f"max_points must be from 10 to {MAX_POINTS_LIMIT}, got {max_points!r}")
    from cairn.ui import sql

    database = sql.database_of(store)
    if database is None:
        return _from_history(store, run_id, key, max_points, x)
    return sql.downsampled_series(database, run_id, key, max_points, x, _cache)


def _from_history(store: TrackingStore, run_id: str, key: str, max_points: int, x: XAxis) -> MetricSeries:
    history = store.get_metric_history(run_id, key)
    steps = [m.step for m in history]
    timestamps = [m.timestamp for m in history]
    values = [m.value for m in history]
    if len(history) <= max_points:
        return MetricSeries(key, steps, timestamps, [_finite_or_none(v) for v in values], len(history))
    bucket_by: Literal["step", "timestamp"] = "timestamp" if x == "time" or steps[0] == steps[-1] else "step"
    s, t, v = downsample_minmax(steps, timestamps, values, max_points, bucket_by=bucket_by)
    return MetricSeries(
        key,
        [int(i) for i in s],
        [int(i) for i in t],
        [_finite_or_none(float(i)) for i in v],
        len(history),
        True,
        bucket_by,
    )
