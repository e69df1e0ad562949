"""The `cairn` command line against a real store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cairn
from cairn.cli import main


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def _invoke(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_experiments_list_and_create(runner: CliRunner) -> None:
    assert "created experiment" in _invoke(runner, "experiments", "create", "vision")
    output = _invoke(runner, "experiments", "list")
    assert "vision" in output and "Default" in output
    failed = runner.invoke(main, ["experiments", "create", "vision"])
    assert failed.exit_code == 1 and "already exists" in failed.output


def test_runs_list_describe_delete_restore(runner: CliRunner) -> None:
    with cairn.start_run(run_name="alpha") as run:
        cairn.log_param("lr", 0.1)
        cairn.log_metric("acc", 0.93)
    run_id = run.info.run_id
    listing = _invoke(runner, "runs", "list")
    assert run_id in listing and "alpha" in listing and "0.93" in listing
    described = _invoke(runner, "runs", "describe", run_id)
    assert "lr" in described and "0.1" in described and "FINISHED" in described
    assert "deleted run" in _invoke(runner, "runs", "delete", run_id)
    assert run_id not in _invoke(runner, "runs", "list")
    assert run_id in _invoke(runner, "runs", "list", "--deleted")
    _invoke(runner, "runs", "restore", run_id)
    assert run_id in _invoke(runner, "runs", "list", "--filter", "metrics.acc > 0.9")
    bad = runner.invoke(main, ["runs", "list", "--filter", "metrics.acc >> 1"])
    assert bad.exit_code == 1 and "^" in bad.output
    missing = runner.invoke(main, ["runs", "describe", "0" * 32])
    assert missing.exit_code == 1 and "0" * 32 in missing.output


def test_gc_purges_deleted_runs_and_their_artifacts(runner: CliRunner) -> None:
    with cairn.start_run() as kept:
        cairn.log_text("keep", "a.txt")
    with cairn.start_run() as doomed:
        cairn.log_text("bye", "a.txt")
        doomed_dir = Path(cairn.get_artifact_uri())
    client = cairn.Client()
    client.delete_run(doomed.info.run_id)
    assert "would purge" in _invoke(runner, "gc", "--dry-run")
    assert doomed_dir.exists()
    assert "1 run(s) purged" in _invoke(runner, "gc")
    assert not (doomed_dir / "a.txt").exists()
    with pytest.raises(KeyError):
        client.get_run(doomed.info.run_id)
    assert client.get_run(kept.info.run_id).info.status.value == "FINISHED"
    bad = runner.invoke(main, ["gc", "--older-than", "soon"])
    assert bad.exit_code == 1 and "--older-than" in bad.output


def test_db_upgrade_and_doctor(runner: CliRunner, tmp_path: Path) -> None:
    store = tmp_path / "fresh"
    first = _invoke(runner, "--store", str(store), "db", "upgrade")
    assert "upgraded schema" in first or "already at revision" in first
    assert "already at revision" in _invoke(runner, "--store", str(store), "db", "upgrade")
    doctor = _invoke(runner, "--store", str(store), "doctor")
    assert "sqlite:///" in doctor and "ok" in doctor and "sqlalchemy" in doctor


def test_cairn_run_wraps_a_command(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        "import cairn, sys\ncairn.log_metric('acc', 0.5)\nprint('hello from child')\n"
        "print('warning!', file=sys.stderr)\nsys.exit(int(sys.argv[1]))\n"
    )
    env = {**os.environ, "CAIRN_TRACKING_URI": str(tmp_path / "cairn-runs")}
    cli = [sys.executable, "-m", "cairn.cli"]
    ok = subprocess.run(
        [*cli, "run", "--experiment-name", "jobs", "-n", "good", "--", sys.executable, str(script), "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "hello from child" in ok.stdout
    bad = subprocess.run(
        [*cli, "run", "--experiment-name", "jobs", "-n", "bad", "--", sys.executable, str(script), "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 3
    runs = {r.info.run_name: r for r in cairn.search_runs(experiment_names=["jobs"], output_format="list")}
    assert runs["good"].info.status.value == "FINISHED"
    assert runs["bad"].info.status.value == "FAILED"
    assert runs["good"].data.metrics == {"acc": 0.5}
    artifacts = Path(runs["good"].info.artifact_uri)
    assert (artifacts / "stdout.txt").read_text().strip() == "hello from child"
    assert "warning!" in (artifacts / "stderr.txt").read_text()


def test_error_text_keeps_square_brackets(runner: CliRunner, tmp_path: Path) -> None:
    """An error line is printed as text, not as rich markup: `pip install 'cairn[ui]'` keeps its brackets."""
    result = runner.invoke(main, ["runs", "describe", "[ui]-not-a-run"])
    assert result.exit_code == 1
    assert "[ui]-not-a-run" in result.output
