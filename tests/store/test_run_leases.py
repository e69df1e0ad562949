"""Run leases in the SQL store (the contract of TrackingStore.acquire_run_lease and friends), on SQLite and
PostgreSQL: free, live, expired and own leases; the race for a free lease; release; the 0002 -> 0003 upgrade."""

from __future__ import annotations

import threading
import time

import pytest

from cairn.errors import InvalidArgument, RunNotActive, RunNotFound, SchemaOutOfDate
from cairn.store._sql import SqlTrackingStore, current_revision, upgrade_schema
from cairn.store._sql import migrate as migrate_module
from cairn.store._sql.util import now_ms
from tests.store.old_revisions import database_at

TTL = 30.0


def _run(store: SqlTrackingStore) -> str:
    return store.create_run("0", user_id="alice", start_time=1000, run_name="r").info.run_id


def test_a_free_lease_is_taken_and_a_live_one_refused(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    assert store.get_run_lease(run_id) is None
    before = now_ms()
    assert store.acquire_run_lease(run_id, "host:1:a", TTL)
    lease = store.get_run_lease(run_id)
    assert lease is not None and (lease.run_id, lease.owner) == (run_id, "host:1:a")
    assert before <= lease.acquired_time <= now_ms()
    assert lease.expires_time == pytest.approx(lease.acquired_time + TTL * 1000, abs=1000)
    assert not lease.expired(now_ms())

    assert not store.acquire_run_lease(run_id, "host:2:b", TTL)
    assert store.get_run_lease(run_id) == lease  # the refused attempt changed nothing


def test_the_owner_reacquires_and_renews_its_own_lease(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    assert store.acquire_run_lease(run_id, "me", 1.0)
    first = store.get_run_lease(run_id)
    assert first is not None
    time.sleep(0.01)
    assert store.acquire_run_lease(run_id, "me", TTL)
    again = store.get_run_lease(run_id)
    assert again is not None and again.acquired_time == first.acquired_time  # held since the first time
    assert again.expires_time > first.expires_time
    assert store.renew_run_lease(run_id, "me", 2 * TTL)
    renewed = store.get_run_lease(run_id)
    assert renewed is not None and renewed.expires_time > again.expires_time
    assert not store.renew_run_lease(run_id, "someone else", TTL)
    assert store.get_run_lease(run_id) == renewed


def test_an_expired_lease_is_taken_over_and_its_old_owner_cannot_renew_it(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    assert store.acquire_run_lease(run_id, "crashed", 0.05)
    time.sleep(0.1)
    stale = store.get_run_lease(run_id)
    assert stale is not None and stale.expired(now_ms())
    assert store.acquire_run_lease(run_id, "successor", TTL)
    lease = store.get_run_lease(run_id)
    assert lease is not None and lease.owner == "successor" and lease.acquired_time > stale.acquired_time
    assert not store.renew_run_lease(run_id, "crashed", TTL)  # it woke up: the lease is no longer its
    store.release_run_lease(run_id, "crashed")  # releasing what one does not hold changes nothing
    assert store.get_run_lease(run_id) == lease


def test_release_frees_the_lease_at_once(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    assert store.acquire_run_lease(run_id, "first", TTL)
    store.release_run_lease(run_id, "first")
    assert store.get_run_lease(run_id) is None
    assert not store.renew_run_lease(run_id, "first", TTL)
    assert store.acquire_run_lease(run_id, "second", TTL)
    store.release_run_lease(run_id, "second")
    store.release_run_lease(run_id, "second")  # twice: no effect, no error


def test_of_many_processes_racing_for_a_free_lease_exactly_one_wins(store: SqlTrackingStore) -> None:
    run_id = _run(store)
    barrier = threading.Barrier(8)
    won: list[str] = []
    errors: list[BaseException] = []

    def contend(owner: str) -> None:
        try:
            barrier.wait()
            if store.acquire_run_lease(run_id, owner, TTL):
                won.append(owner)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=contend, args=(f"owner-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(won) == 1
    lease = store.get_run_lease(run_id)
    assert lease is not None and lease.owner == won[0]


def test_leases_of_unknown_deleted_and_purged_runs(store: SqlTrackingStore) -> None:
    with pytest.raises(RunNotFound):
        store.acquire_run_lease("0" * 32, "me", TTL)
    run_id = _run(store)
    assert store.acquire_run_lease(run_id, "me", TTL)
    store.delete_run(run_id)
    with pytest.raises(RunNotActive):
        store.acquire_run_lease(run_id, "other", TTL)
    store.purge_run(run_id)
    assert store.get_run_lease(run_id) is None  # removed with its run


@pytest.mark.parametrize(("owner", "ttl"), [("", TTL), ("x" * 257, TTL), ("me", 0.0), ("me", -1.0)])
def test_bad_owner_or_ttl_is_refused(store: SqlTrackingStore, owner: str, ttl: float) -> None:
    run_id = _run(store)
    with pytest.raises(InvalidArgument):
        store.acquire_run_lease(run_id, owner, ttl)
    assert store.get_run_lease(run_id) is None


def test_a_0002_store_with_runs_upgrades_to_leases(empty_db_url: str, artifact_root: str) -> None:
    database_at(empty_db_url, artifact_root, "0002")
    with pytest.raises(SchemaOutOfDate, match="cairn db upgrade"):
        SqlTrackingStore(empty_db_url, artifact_root)
    assert upgrade_schema(empty_db_url) == ("0002", migrate_module.HEAD_REVISION)  # through 0003
    assert current_revision(empty_db_url) == migrate_module.HEAD_REVISION
    store = SqlTrackingStore(empty_db_url, artifact_root)
    try:
        assert store.get_run("a" * 32).info.run_name == "old"  # the run survived the migration
        assert store.acquire_run_lease("a" * 32, "me", TTL)
        assert not store.acquire_run_lease("a" * 32, "other", TTL)
    finally:
        store.close()
