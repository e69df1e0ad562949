"""Superseding points after a resume step, and forking a run at a step (both backends)."""

from __future__ import annotations

import math

import pytest

from cairn.errors import RunNotActive, RunNotFound
from cairn.store._sql import SqlTrackingStore
from cairn.store.base import MetricPoint
from cairn.tracking import system_tags
from cairn.tracking.entities import Param, RunTag


def _run_with_curve(store: SqlTrackingStore, steps: int = 10) -> str:
    run_id = store.create_run("0", user_id="u", start_time=1, run_name="orig", tags=[RunTag("team", "a")]).info.run_id
    store.log_batch(run_id, params=[Param("lr", "0.1")])
    points = [MetricPoint(run_id, "loss", 1.0 / (s + 1), 1000 + s, s) for s in range(steps)]
    points.append(MetricPoint(run_id, "loss", math.nan, 2000, 3))
    points.append(MetricPoint(run_id, "val", 0.5, 3000, 9))
    store.log_metric_points(points)
    return run_id


def test_supersede_hides_later_points_and_moves_latest_back(store: SqlTrackingStore) -> None:
    run_id = _run_with_curve(store)
    assert store.supersede_metrics_after(run_id, 5) == 5  # loss steps 6..9, val step 9
    assert [m.step for m in store.get_metric_history(run_id, "loss")] == [0, 1, 2, 3, 3, 4, 5]
    assert len(store.get_metric_history(run_id, "loss", include_superseded=True)) == 11
    assert store.get_metric_history(run_id, "val") == []
    latest = store.get_run(run_id).data.metrics
    assert latest == {"loss": pytest.approx(1 / 6)}
    # the resumed process logs step 6 again: the curve continues without a duplicate step
    store.log_metric_points([MetricPoint(run_id, "loss", 0.01, 5000, 6)])
    history = store.get_metric_history(run_id, "loss")
    assert [m.step for m in history][-2:] == [5, 6] and history[-1].value == 0.01
    assert store.get_run(run_id).data.metrics["loss"] == 0.01
    found = store.search_runs(["0"], "metrics.val > 0")
    assert found.items == []  # superseded values do not match searches either
    assert store.supersede_metrics_after(run_id, 100) == 0


def test_fork_copies_history_up_to_the_step_and_leaves_the_source(store: SqlTrackingStore) -> None:
    run_id = _run_with_curve(store)
    fork = store.fork_run(run_id, 4, start_time=9999)
    assert fork.info.run_id != run_id and fork.info.status.value == "RUNNING"
    assert fork.data.params == {"lr": "0.1"}
    assert fork.data.tags["team"] == "a"
    assert fork.data.tags[system_tags.FORKED_FROM] == run_id
    assert fork.data.tags[system_tags.FORKED_AT_STEP] == "4"
    assert fork.info.run_name == "orig-fork-4" == fork.data.tags[system_tags.RUN_NAME]
    steps = [m.step for m in store.get_metric_history(fork.info.run_id, "loss")]
    assert steps == [0, 1, 2, 3, 3, 4]
    assert math.isnan(store.get_metric_history(fork.info.run_id, "loss")[4].value)
    assert fork.data.metrics == {"loss": pytest.approx(0.2)}
    assert len(store.get_metric_history(run_id, "loss")) == 11  # source untouched


def test_errors(store: SqlTrackingStore) -> None:
    with pytest.raises(RunNotFound):
        store.supersede_metrics_after("0" * 32, 1)
    with pytest.raises(RunNotFound):
        store.fork_run("0" * 32, 1, start_time=1)
    run_id = _run_with_curve(store, 3)
    store.delete_run(run_id)
    with pytest.raises(RunNotActive):
        store.supersede_metrics_after(run_id, 1)
