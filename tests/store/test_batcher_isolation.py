"""The metric writer never drops good points because of a bad one (issue 13, item 6), on both backends.

The points here are put into the batcher directly, past the checks made at the call, to reach the
writer: a failing batch is split so that every storable point is written and only the bad one is
dropped, with a warning naming run, key and step, and the error raised by the next flush.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytest

import cairn
from cairn.errors import InvalidArgument, StoreError
from cairn.store._sql.store import SqlTrackingStore
from cairn.store.base import MetricPoint
from cairn.tracking import batcher as batcher_module
from cairn.tracking import config, fluent
from cairn.tracking.batcher import MetricBatcher


def _run(store: SqlTrackingStore, name: str = "r") -> str:
    return store.create_run("0", user_id="u", start_time=0, tags=[], run_name=name).info.run_id


def _count(store: SqlTrackingStore, run_id: str, key: str) -> int:
    return store.metric_point_counts([run_id]).get(run_id, {}).get(key, (0, 0))[0]


def _points(run_id: str, key: str, count: int) -> list[MetricPoint]:
    return [MetricPoint(run_id, key, i / 7, 1_000 + i, i) for i in range(count)]


@pytest.mark.parametrize(
    ("bad_step", "bad_value", "bad_timestamp"),
    [(2**63, 1.0, 1000), (2**70, 1.0, 1000), (5, 1.0, 2**64), (5, 10**400, 1000)],
    ids=["step-2**63", "step-2**70", "timestamp-2**64", "value-10**400"],
)
def test_one_bad_point_costs_no_other_point_of_the_batch(
    store: SqlTrackingStore, caplog: pytest.LogCaptureFixture, bad_step: int, bad_value: Any, bad_timestamp: int
) -> None:
    run_a, run_b = _run(store, "a"), _run(store, "b")
    batcher = MetricBatcher(store, flush_interval=3600)  # only flush() writes: one batch of 3,001 points
    try:
        batcher.add_many(_points(run_a, "loss", 1_000))
        batcher.add(MetricPoint(run_a, "loss", bad_value, bad_timestamp, bad_step))
        batcher.add_many(_points(run_a, "loss", 2_000)[1_000:])
        batcher.add_many(_points(run_b, "acc", 1_000))
        with caplog.at_level(logging.WARNING, logger="cairn.tracking.batcher"), pytest.raises(InvalidArgument) as info:
            batcher.flush()
        assert batcher.pending == 0
        assert _count(store, run_a, "loss") == 2_000
        assert _count(store, run_b, "acc") == 1_000
        for text in (run_a, "'loss'", f"step {bad_step}"):
            assert text in str(info.value)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and run_a in warnings[0] and "'loss'" in warnings[0]
        batcher.flush()  # the error is raised once
    finally:
        batcher.close()
    assert [m.step for m in store.get_metric_history(run_a, "loss")] == list(range(2_000))


class _RefusingStore:
    """A store that refuses any batch holding a point whose value is -13.0 (like a database constraint
    the call-time checks do not know about)."""

    def __init__(self, store: SqlTrackingStore) -> None:
        self._store = store
        self.calls = 0

    def log_metric_points(self, points: list[MetricPoint]) -> None:
        self.calls += 1
        if any(p.value == -13.0 for p in points):
            raise StoreError("the database refused a row")
        self._store.log_metric_points(points)


def test_points_refused_by_the_store_are_found_by_halving_the_batch(
    store: SqlTrackingStore, caplog: pytest.LogCaptureFixture
) -> None:
    run_a, run_b = _run(store, "a"), _run(store, "b")
    refusing = _RefusingStore(store)
    batcher = MetricBatcher(refusing, flush_interval=3600)  # type: ignore[arg-type]
    try:
        good_a, good_b = _points(run_a, "loss", 2_000), _points(run_b, "acc", 1_000)
        batcher.add_many([*good_a[:500], MetricPoint(run_a, "loss", -13.0, 5, 99_999), *good_a[500:]])
        batcher.add_many([*good_b[:10], MetricPoint(run_b, "acc", -13.0, 5, 7_777), *good_b[10:]])
        first_error = rf"run {run_a}, key 'loss', step 99999\).*refused a row"
        with (
            caplog.at_level(logging.WARNING, logger="cairn.tracking.batcher"),
            pytest.raises(StoreError, match=first_error),
        ):
            batcher.flush()
        assert _count(store, run_a, "loss") == 2_000
        assert _count(store, run_b, "acc") == 1_000
        dropped = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
        assert len(dropped) == 2
        assert "step 7777" in dropped[1] and run_b in dropped[1]
        assert refusing.calls < 100  # halving, not one write per point
    finally:
        batcher.close()


def test_a_store_that_refuses_everything_is_given_up_quickly(store: SqlTrackingStore) -> None:
    run_id = _run(store)

    class _Broken:
        calls = 0

        def log_metric_points(self, points: list[MetricPoint]) -> None:
            _Broken.calls += 1
            raise StoreError("connection refused")

    batcher = MetricBatcher(_Broken(), flush_interval=3600)  # type: ignore[arg-type]
    try:
        batcher.add_many(_points(run_id, "loss", 50_000))
        with pytest.raises(StoreError, match="connection refused"):
            batcher.flush()
        assert batcher.pending == 0
        assert _Broken.calls < 20 + 2 * batcher_module.MAX_REFUSED_IN_A_ROW  # not 100,000 writes
    finally:
        batcher.close()


def test_the_background_writer_keeps_good_points_too(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    batcher = MetricBatcher(store, flush_interval=0.01)  # the writer thread writes
    try:
        batcher.add_many([*_points(run_id, "loss", 300), MetricPoint(run_id, "loss", math.nan, 1, 2**63)])
        deadline = time.monotonic() + 30
        while _count(store, run_id, "loss") < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _count(store, run_id, "loss") == 300
        with pytest.raises(InvalidArgument, match=r"step 9223372036854775808"):
            batcher.flush()  # the writer's error is raised by the next flush
    finally:
        batcher.close()


def test_the_error_reaches_end_run_and_the_run_is_ended_anyway(store: SqlTrackingStore) -> None:
    cairn.set_tracking_uri(store.db_uri)
    try:
        with (
            pytest.raises(InvalidArgument, match=r"key 'x', step 9223372036854775808"),
            cairn.start_run() as run,
        ):
            cairn.log_metric("x", 1.0, step=1)
            batcher = config.get_batcher(fluent._get_client().store)
            batcher.add(MetricPoint(run.info.run_id, "x", 2.0, 1, 2**63))  # past the call's checks
        finished = cairn.get_run(run.info.run_id)
        assert finished.info.status.value == "FINISHED"
        assert finished.data.metrics == {"x": 1.0}
    finally:
        cairn.set_tracking_uri(None)
