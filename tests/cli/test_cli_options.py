"""Global options after the subcommand, MLflow's option names, `python -m cairn`, and `cairn run`'s child."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cairn.cli import main
from cairn.tracking.client import Client


def _experiments(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("option", ["--store", "--backend-store-uri"])
def test_store_after_the_subcommand(tmp_path: Path, option: str) -> None:
    runner = CliRunner()
    store = tmp_path / "after"
    _experiments(runner, "experiments", "create", "late", option, str(store))
    names = [e.name for e in Client(str(store)).search_experiments()]
    assert "late" in names


def test_artifact_root_after_the_subcommand(tmp_path: Path) -> None:
    runner = CliRunner()
    store, root = tmp_path / "s", tmp_path / "root"
    _experiments(runner, "experiments", "create", "x", "--store", str(store), "--default-artifact-root", str(root))
    experiment = Client(str(store)).get_experiment_by_name("x")
    assert experiment is not None and str(root) in experiment.artifact_location


def test_store_in_both_places_must_agree(tmp_path: Path) -> None:
    runner = CliRunner()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    clash = runner.invoke(main, ["--store", a, "experiments", "list", "--store", b])
    assert clash.exit_code == 2
    assert "--store" in clash.output and a in clash.output and b in clash.output
    same = runner.invoke(main, ["--store", a, "experiments", "list", "--store", a])
    assert same.exit_code == 0, same.output


def test_subcommand_store_beats_the_environment(tmp_path: Path) -> None:
    runner = CliRunner(env={"CAIRN_TRACKING_URI": str(tmp_path / "env")})
    _experiments(runner, "experiments", "create", "here", "--store", str(tmp_path / "cli"))
    assert Client(str(tmp_path / "cli")).get_experiment_by_name("here") is not None


@pytest.mark.parametrize("command", [["ui"], ["server"], ["doctor"], ["runs", "list"], ["models", "list"], ["gc"]])
def test_every_store_command_takes_the_store_options(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--store", "--backend-store-uri", "--artifact-root", "--default-artifact-root"):
        assert option in result.output


@pytest.mark.parametrize("command", ["ui", "server"])
def test_port_short_option_and_h_is_help(command: str) -> None:
    runner = CliRunner()
    result = runner.invoke(main, [command, "-h"])
    assert result.exit_code == 0 and "-p, --port" in result.output
    assert "-h is help" in result.output
    bad = runner.invoke(main, [command, "-p", "70000"])
    assert bad.exit_code == 2 and "70000" in bad.output


def test_python_dash_m_cairn() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cairn", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: cairn ")


def _cairn_run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "MLFLOW_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cairn", "--store", str(tmp_path / "runs"), "run", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _only_run(tmp_path: Path, experiment: str = "Default") -> object:
    client = Client(str(tmp_path / "runs"))
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id]).items
    assert len(runs) == 1
    return runs[0]


def test_run_sets_mlflow_variables_but_no_sqlite_tracking_uri(tmp_path: Path) -> None:
    code = (
        "import os; print(os.environ['MLFLOW_RUN_ID'], os.environ['MLFLOW_EXPERIMENT_ID'], "
        "os.environ['CAIRN_RUN_ID'], os.environ.get('MLFLOW_TRACKING_URI', 'unset'))"
    )
    result = _cairn_run(tmp_path, "--", sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    mlflow_run, mlflow_experiment, cairn_run, tracking = result.stdout.split()
    run = _only_run(tmp_path)
    assert mlflow_run == cairn_run == run.info.run_id  # type: ignore[attr-defined]
    assert mlflow_experiment == "0"
    assert tracking == "unset"


def test_run_honours_cairn_experiment_name(tmp_path: Path) -> None:
    result = _cairn_run(tmp_path, "--", sys.executable, "-c", "print('ok')", env={"CAIRN_EXPERIMENT_NAME": "from-env"})
    assert result.returncode == 0, result.stderr
    assert _only_run(tmp_path, "from-env").info.status.value == "FINISHED"  # type: ignore[attr-defined]


def test_run_experiment_name_and_id_options(tmp_path: Path) -> None:
    result = _cairn_run(tmp_path, "--experiment-name", "named", "--", sys.executable, "-c", "print(1)")
    assert result.returncode == 0, result.stderr
    experiment_id = Client(str(tmp_path / "runs")).get_experiment_by_name("named").experiment_id  # type: ignore[union-attr]
    again = _cairn_run(tmp_path, "--experiment-id", experiment_id, "--", sys.executable, "-c", "print(2)")
    assert again.returncode == 0, again.stderr
    client = Client(str(tmp_path / "runs"))
    assert len(client.search_runs([experiment_id]).items) == 2
    both = _cairn_run(tmp_path, "--experiment-name", "named", "--experiment-id", experiment_id, "--", "true")
    assert both.returncode == 2 and "not both" in both.stderr


def test_run_http_store_sets_mlflow_tracking_uri() -> None:
    from cairn.projects.cli import _child_environment

    env = _child_environment("http://tracking.example:5000", None, "abc", "3", base={})
    assert env["MLFLOW_TRACKING_URI"] == "http://tracking.example:5000"
    assert env["MLFLOW_RUN_ID"] == env["CAIRN_RUN_ID"] == "abc"
    assert env["MLFLOW_EXPERIMENT_ID"] == env["CAIRN_EXPERIMENT_ID"] == "3"
    local = _child_environment(
        "sqlite:////tmp/x/cairn.db", None, "abc", "3", base={"MLFLOW_TRACKING_URI": "sqlite:///y"}
    )
    assert local["MLFLOW_TRACKING_URI"] == "sqlite:///y"  # the user's own setting is left alone, never ours
    assert "MLFLOW_TRACKING_URI" not in _child_environment("sqlite:////tmp/x/cairn.db", None, "abc", "3", base={})
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"  # torchrun --max-restarts can restart its workers
    kept = _child_environment("http://x", None, "abc", "3", base={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "0"})
    assert kept["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "0"


@pytest.mark.parametrize(
    ("command", "expected_code"),
    [(["no-such-command-cairn-test"], 127), ([os.devnull], 126)],
)
def test_run_command_that_cannot_start_ends_failed(tmp_path: Path, command: list[str], expected_code: int) -> None:
    result = _cairn_run(tmp_path, "--", *command)
    assert result.returncode == expected_code, result.stderr
    assert f"cannot start {command[0]!r}" in result.stderr
    run = _only_run(tmp_path)
    assert run.info.status.value == "FAILED"  # type: ignore[attr-defined]
    assert "cannot start" in (Path(run.info.artifact_uri) / "stderr.txt").read_text()  # type: ignore[attr-defined]


def test_run_child_killed_by_a_signal_ends_killed(tmp_path: Path) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    result = _cairn_run(tmp_path, "--", sys.executable, "-c", code)
    assert result.returncode == 128 + 9, result.stderr
    assert _only_run(tmp_path).info.status.value == "KILLED"  # type: ignore[attr-defined]
