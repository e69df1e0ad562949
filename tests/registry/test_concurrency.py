"""Concurrent registration from several processes never produces duplicate version numbers."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from tests.registry import _workers
from tests.registry.conftest import RegistryTestClient

PROCESSES = 8


def test_eight_processes_register_into_one_new_name(client: RegistryTestClient, db_url: str, tmp_path: Path) -> None:
    run_id = client.create_run("0").info.run_id
    client.log_text(run_id, "flavors: {}", "model/MLmodel")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    workers = [
        context.Process(
            target=_workers.register,
            args=(db_url, str(tmp_path / "artifacts"), f"runs:/{run_id}/model", "race", barrier, results),
        )
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert [status for status, _ in outcomes] == ["ok"] * PROCESSES, outcomes
    assert sorted(int(version) for _, version in outcomes) == list(range(1, PROCESSES + 1))
    stored = client.search_model_versions("name = 'race'")
    assert sorted(int(v.version) for v in stored) == list(range(1, PROCESSES + 1))
    assert len({v.tags["pid"] for v in stored}) == PROCESSES  # one version per process
    assert {v.run_id for v in stored} == {run_id}
    assert len(client.search_registered_models("name = 'race'")) == 1
