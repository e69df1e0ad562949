"""`cairn models list|versions|alias|stage` against a real store."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from rich.console import Console

from cairn.cli import main
from cairn.registry import cli as registry_cli
from cairn.registry.cli import models
from tests.registry.conftest import make_client

if "models" not in main.commands:  # attached by cairn.cli once wired; attach here until then
    main.add_command(models)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(registry_cli, "console", Console(width=250))  # one table row per line
    return CliRunner()


def _invoke(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _registered() -> str:
    client = make_client()
    run_id: str = client.create_run("0").info.run_id
    client.log_text(run_id, "flavors: {}", "model/MLmodel")
    for _ in range(3):
        client.create_model_version("churn", f"runs:/{run_id}/model")
    client.create_model_version("fraud", "s3://bucket/fraud")
    return run_id


def test_list_and_versions(runner: CliRunner) -> None:
    run_id = _registered()
    make_client().set_registered_model_alias("churn", "champion", 2)
    listing = _invoke(runner, "models", "list")
    assert "churn" in listing and "fraud" in listing and "@champion -> v2" in listing
    assert "fraud" not in _invoke(runner, "models", "list", "--filter", "name LIKE 'ch%'")
    versions = _invoke(runner, "models", "versions", "churn")
    lines = [line for line in versions.splitlines() if run_id in line]
    assert [line.split()[1] for line in lines] == ["3", "2", "1"]  # newest first
    assert "@champion" in lines[1] and "@champion" not in lines[0] + lines[2]


def test_alias_set_move_and_delete(runner: CliRunner) -> None:
    _registered()
    assert "models:/churn@champion -> version 1" in _invoke(runner, "models", "alias", "churn", "champion", "1")
    moved = _invoke(runner, "models", "alias", "churn", "champion", "3")
    assert "moved from version 1" in moved
    assert make_client().get_model_version_by_alias("churn", "champion").version == "3"
    assert "deleted alias @champion" in _invoke(runner, "models", "alias", "churn", "champion", "--delete")
    assert make_client().get_registered_model("churn").aliases == {}
    assert "nothing to delete" in _invoke(runner, "models", "alias", "churn", "champion", "--delete")
    missing = runner.invoke(main, ["models", "alias", "churn", "champion"])
    assert missing.exit_code == 2 and "missing VERSION" in missing.output
    reserved = runner.invoke(main, ["models", "alias", "churn", "latest", "1"])
    assert reserved.exit_code == 1 and "reserved" in reserved.output


def test_stage_with_archive_existing(runner: CliRunner) -> None:
    _registered()
    assert "now in Production" in _invoke(runner, "models", "stage", "churn", "1", "production")
    _invoke(runner, "models", "stage", "churn", "2", "Production", "--archive-existing")
    client = make_client()
    assert [client.get_model_version("churn", v).current_stage for v in (1, 2, 3)] == [
        "Archived",
        "Production",
        "None",
    ]
    bad = runner.invoke(main, ["models", "stage", "churn", "1", "Live"])
    assert bad.exit_code == 1 and "unknown stage 'Live'" in bad.output


def test_unknown_model_is_one_error_line(runner: CliRunner) -> None:
    result = runner.invoke(main, ["models", "versions", "nope"])
    assert result.exit_code == 1
    assert "registered model 'nope' does not exist" in result.output and "Traceback" not in result.output


def test_store_option_selects_the_database(runner: CliRunner, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other-store")
    make_client(str(other)).create_model_version("elsewhere", "s3://b/m")
    assert "elsewhere" in _invoke(runner, "--store", str(other), "models", "list")
    assert "elsewhere" not in _invoke(runner, "models", "list")
