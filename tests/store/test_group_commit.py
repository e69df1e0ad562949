"""Several metric-only log-batch requests in one transaction (``SqlTrackingStore.log_metric_batches``, used by
``cairn server``'s group commit), on SQLite and PostgreSQL: each batch is stored as ``log_batch`` would store
it, keys are recorded with their batches, a refused batch fails the group and writes nothing, and
:class:`GroupCommit` answers each request of concurrent writers with its own outcome."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from cairn.errors import InvalidArgument, RunNotActive, RunNotFound
from cairn.server.group_commit import GroupCommit
from cairn.store._sql import SqlTrackingStore
from cairn.store._sql.store import KeyedMetrics
from cairn.tracking.entities import Metric


def _run(store: SqlTrackingStore) -> str:
    return store.create_run("0", user_id="alice", start_time=1000, run_name="r").info.run_id


def _metrics(step0: int = 0, n: int = 5) -> list[Metric]:
    return [Metric("loss", 0.5 + i, 2000 + i, step0 + i) for i in range(n)]


def _steps(store: SqlTrackingStore, run_id: str) -> list[int]:
    return [m.step for m in store.get_metric_history(run_id, "loss")]


def _keys(store: SqlTrackingStore) -> set[str]:
    with store._db.engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT key FROM idempotency_keys")).scalars())


def test_batches_of_several_runs_are_stored_with_their_keys(store: SqlTrackingStore) -> None:
    a, b = _run(store), _run(store)
    store.log_metric_batches(
        [KeyedMetrics(a, _metrics(0)), KeyedMetrics(b, _metrics(0), "kb", "f"), KeyedMetrics(a, _metrics(5))]
    )
    assert _steps(store, a) == list(range(10))
    assert _steps(store, b) == list(range(5))
    assert store.get_run(a).data.metrics["loss"] == 4.5  # the newest of the run's two batches
    assert _keys(store) == {"kb"}
    # a replay in a later group, and a key used twice in one group, are stored once
    store.log_metric_batches([KeyedMetrics(b, _metrics(0), "kb", "f"), KeyedMetrics(b, _metrics(5), "kc", "g")])
    store.log_metric_batches([KeyedMetrics(b, _metrics(10), "kd", "h"), KeyedMetrics(b, _metrics(10), "kd", "h")])
    assert _steps(store, b) == list(range(15))


@pytest.mark.parametrize("refused", ["unknown run", "deleted run", "reused key", "bad value"])
def test_a_refused_batch_fails_the_group_and_writes_nothing(store: SqlTrackingStore, refused: str) -> None:
    good, other = _run(store), _run(store)
    store.log_metric_batches([KeyedMetrics(other, _metrics(0), "used", "f")])
    bad = {
        "unknown run": KeyedMetrics("0" * 32, _metrics(0)),
        "deleted run": KeyedMetrics(other, _metrics(5)),
        "reused key": KeyedMetrics(other, _metrics(5), "used", "another body"),
        "bad value": KeyedMetrics(other, [Metric("loss", 0.5, 1, 2**64)]),
    }[refused]
    if refused == "deleted run":
        store.delete_run(other)
    with pytest.raises((RunNotFound, RunNotActive, InvalidArgument)):
        store.log_metric_batches([KeyedMetrics(good, _metrics(0), "new", "g"), bad])
    assert _steps(store, good) == []
    assert _keys(store) == {"used"}


def test_an_unkeyed_batch_without_metrics_still_needs_an_active_run(store: SqlTrackingStore) -> None:
    with pytest.raises(RunNotFound):
        store.log_metric_batches([KeyedMetrics("0" * 32, [])])


def test_group_commit_answers_each_concurrent_request_with_its_own_outcome(store: SqlTrackingStore) -> None:
    runs = [_run(store) for _ in range(6)]
    deleted = _run(store)
    store.delete_run(deleted)
    group = GroupCommit(store)
    outcomes: dict[int, object] = {}
    start = threading.Barrier(len(runs) + 2)

    def write(index: int, batch: KeyedMetrics) -> None:
        start.wait()
        try:
            for round_ in range(5):
                group.write(batch._replace(metrics=_metrics(round_ * 5), idempotency_key=f"{index}-{round_}"))
            outcomes[index] = "ok"
        except Exception as exc:
            outcomes[index] = type(exc)

    batches = [KeyedMetrics(run_id, []) for run_id in runs] + [KeyedMetrics(deleted, []), KeyedMetrics("0" * 32, [])]
    threads = [threading.Thread(target=write, args=(i, batch)) for i, batch in enumerate(batches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes == {**{i: "ok" for i in range(len(runs))}, len(runs): RunNotActive, len(runs) + 1: RunNotFound}
    for run_id in runs:
        assert _steps(store, run_id) == list(range(25))
