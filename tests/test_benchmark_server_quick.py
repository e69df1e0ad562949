"""``benchmarks/server.py --quick`` runs end to end (both servers as subprocesses) and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "server.py"
RESULTS = SCRIPT.parent / "RESULTS.md"

ROWS = (
    "log-batch of 10, 4 clients: points/s",
    "log-batch of 10, 2 clients: points/s",
    "log-batch of 500, 4 clients: points/s",
    "log-batch of 500, 2 clients: points/s",
    "create-run, 4 clients: runs/s (failed)",
    "search-runs, 200 runs, 1 client: p50 ms",
    "get-history, 2,000 points, 1 client: p50 / p99 ms (of 2 calls)",
    "one cairn process via HTTP, 2,000 `log_metric` calls: points/s",
    "one cairn process: caller p50 / p99 µs per call",
)


@pytest.mark.slow
def test_quick_run_prints_every_row_and_leaves_results_alone() -> None:
    before = RESULTS.read_bytes() if RESULTS.exists() else None
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--seconds", "0.3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for row in ROWS:
        matching = [line for line in table if line.startswith(f"| {row} |")]
        assert matching, f"row {row!r} missing from:\n{done.stdout}"
        cells = [cell.strip() for cell in matching[0].strip("|").split("|")]
        assert cells[1] not in ("", "—"), matching[0]  # cairn's figure
        if "cairn process" not in row:
            assert cells[2] not in ("", "—"), matching[0]  # MLflow's figure
    assert "2,000 of 2,000 points" in done.stdout  # the HTTP logger lost nothing
    assert "Failed requests (non-200, left out of the rates): none." in done.stdout
    assert "CAIRN_DB_POOL_SIZE=4" in done.stdout and "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=4" in done.stdout
    assert (RESULTS.read_bytes() if RESULTS.exists() else None) == before  # --quick only prints
