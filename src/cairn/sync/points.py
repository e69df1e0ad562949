"""Which metric points a destination run lacks: a multiset difference, so a re-run never duplicates.

A sync keeps no cursor. It compares what the source holds with what the destination holds and
writes the difference, in transactions of at most ``batch_size`` points. A sync killed half-way
leaves whole committed batches behind; the next one computes the difference again from what was
committed and writes exactly the rest.

Points are compared as a multiset of ``(key, step, timestamp, value)`` (NaN equal to NaN): a
training loop may log the very same point twice, and both copies are kept, because the source
holds two of them and the destination one. The superseded flag is the one mutable part of a point
(a resumed run flags the dead process's later points), so it is reconciled separately: points the
destination holds live but the source holds superseded are flagged there, not copied again.

Why not a cursor (the highest source id copied so far)? Ids are not comparable across stores,
PostgreSQL hands out ids that commit out of order, and a cursor would miss flags set on points
already copied. The difference costs a full read of one metric of one run, and only for keys whose
counts ``(points, superseded points)`` differ: a run with nothing new costs one aggregate query.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from cairn.store.base import StoredMetricPoint

__all__ = ["PointPlan", "plan_points"]

_Identity = tuple[str, int, int, float | str]


def _identity(point: StoredMetricPoint) -> _Identity:
    value = float(point.value)
    return point.key, int(point.step), int(point.timestamp), "nan" if math.isnan(value) else value


@dataclass(slots=True)
class PointPlan:
    """What to write so the destination holds every source point once.

    Attributes:
        inserts: points to insert with their flag, in source order.
        supersede: ``(point, n)``: flag ``n`` live destination points equal to ``point`` as superseded.
        extra: destination points the source does not have (left alone; written there directly).
    """

    inserts: list[StoredMetricPoint] = field(default_factory=list)
    supersede: list[tuple[StoredMetricPoint, int]] = field(default_factory=list)
    extra: int = 0

    @property
    def flags(self) -> int:
        return sum(count for _, count in self.supersede)

    @property
    def empty(self) -> bool:
        return not self.inserts and not self.supersede


def plan_points(source: Iterable[StoredMetricPoint], destination: Iterable[StoredMetricPoint]) -> PointPlan:
    """The points and flags the destination lacks (see the module docstring)."""
    source = list(source)
    destination = list(destination)
    if not destination:  # nothing copied yet: everything goes, in source order
        return PointPlan(inserts=source)
    want: Counter[tuple[_Identity, bool]] = Counter((_identity(p), bool(p.superseded)) for p in source)
    have: Counter[tuple[_Identity, bool]] = Counter((_identity(p), bool(p.superseded)) for p in destination)
    plan = PointPlan()
    # How many source occurrences of (identity, flag) the destination already accounts for.
    present: dict[tuple[_Identity, bool], int] = {}
    first: dict[_Identity, StoredMetricPoint] = {}
    for point in source:
        first.setdefault(_identity(point), point)
    for identity in {key for key, _ in want} | {key for key, _ in have}:
        want_live, want_dead = want[identity, False], want[identity, True]
        have_live, have_dead = have[identity, False], have[identity, True]
        flip = min(max(0, want_dead - have_dead), max(0, have_live - want_live))
        if flip:
            plan.supersede.append((first[identity], flip))
        have_live, have_dead = have_live - flip, have_dead + flip
        present[identity, False] = have_live
        present[identity, True] = have_dead
        plan.extra += max(0, have_live - want_live) + max(0, have_dead - want_dead)
    seen: Counter[tuple[_Identity, bool]] = Counter()
    for point in source:
        slot = (_identity(point), bool(point.superseded))
        seen[slot] += 1
        if seen[slot] > present[slot]:  # the later occurrences are the ones not copied yet
            plan.inserts.append(point)
    plan.supersede.sort(key=lambda item: _sort_key(item[0]))
    return plan


def _sort_key(point: StoredMetricPoint) -> tuple[str, int, int]:
    return point.key, int(point.step), int(point.timestamp)
