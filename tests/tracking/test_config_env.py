"""MLflow's environment names (``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID``, ``MLFLOW_EXPERIMENT_NAME/ID``) as
fallbacks of cairn's, and tracking URIs in the forms MLflow parses (issue 16, items 1 and 2)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

import cairn
from cairn.checkpoint.resume import require_run_id, resolve_run_id
from cairn.errors import CairnError, ForeignStore, InvalidArgument
from cairn.tracking import config, env

_MLFLOW_NAMES = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _MLFLOW_NAMES:
        monkeypatch.delenv(name, raising=False)


def _db(uri: str) -> Path:
    assert uri.startswith("sqlite:///"), uri
    return Path(uri[len("sqlite:///") :])


# -- which name wins ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cairn_value", "mlflow_value", "expected"),
    [(None, None, None), ("c", None, "c"), (None, "m", "m"), ("c", "m", "c"), ("", "m", "m")],
)
def test_cairn_name_first_then_mlflow_name(
    monkeypatch: pytest.MonkeyPatch, cairn_value: str | None, mlflow_value: str | None, expected: str | None
) -> None:
    for name, value in (("CAIRN_RUN_ID", cairn_value), ("MLFLOW_RUN_ID", mlflow_value)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert env.get(env.RUN_ID) == expected
    found = env.lookup(env.RUN_ID)
    assert (found.value if found else None) == expected
    if found is not None:
        assert found.name == ("CAIRN_RUN_ID" if cairn_value else "MLFLOW_RUN_ID")


def test_mlflow_tracking_uri_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "team"))
    assert config.get_tracking_uri() == f"sqlite:///{tmp_path / 'team' / 'cairn.db'}"
    with cairn.start_run() as run:
        cairn.log_metric("loss", 1.0)
    assert (tmp_path / "team" / "cairn.db").is_file()
    assert not (tmp_path / "cairn-runs").exists()
    assert cairn.get_run(run.info.run_id).data.metrics == {"loss": 1.0}


def test_cairn_tracking_uri_wins_over_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_TRACKING_URI", str(tmp_path / "mine"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "theirs"))
    assert config.get_tracking_uri() == f"sqlite:///{tmp_path / 'mine' / 'cairn.db'}"


def test_set_tracking_uri_wins_over_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_TRACKING_URI", str(tmp_path / "mine"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "theirs"))
    cairn.set_tracking_uri(tmp_path / "code")
    assert config.get_tracking_uri() == f"sqlite:///{tmp_path / 'code' / 'cairn.db'}"


def test_nothing_set_is_cairn_runs(tmp_path: Path) -> None:
    assert config.get_tracking_uri() == f"sqlite:///{tmp_path / 'cairn-runs' / 'cairn.db'}"


def test_a_bad_uri_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    with pytest.raises(InvalidArgument, match="MLFLOW_TRACKING_URI"):
        config.get_tracking_uri()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"MLFLOW_EXPERIMENT_NAME": "mlflow-name"}, "mlflow-name"),
        ({"CAIRN_EXPERIMENT_NAME": "cairn-name", "MLFLOW_EXPERIMENT_NAME": "mlflow-name"}, "cairn-name"),
        ({"CAIRN_EXPERIMENT_NAME": "cairn-name", "MLFLOW_EXPERIMENT_ID": "<id>"}, "cairn-name"),
        ({"MLFLOW_EXPERIMENT_ID": "<id>"}, "by-id"),
        ({"MLFLOW_EXPERIMENT_ID": "<id>", "MLFLOW_EXPERIMENT_NAME": "mlflow-name"}, "by-id"),
        ({"CAIRN_EXPERIMENT_ID": "<id>", "MLFLOW_EXPERIMENT_NAME": "mlflow-name"}, "by-id"),
    ],
)
def test_experiment_from_environment(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str) -> None:
    by_id = cairn.create_experiment("by-id")
    for name, value in variables.items():
        monkeypatch.setenv(name, by_id if value == "<id>" else value)
    with cairn.start_run() as run:
        pass
    assert cairn.get_experiment(run.info.experiment_id).name == expected


def test_mlflow_run_id_continues_the_run_as_cairn_run_id_does(monkeypatch: pytest.MonkeyPatch) -> None:
    with cairn.start_run() as run:
        cairn.log_param("origin", "first")
    run_id = run.info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    assert resolve_run_id(use_active=False) == run_id
    assert require_run_id(use_active=False) == run_id
    with cairn.start_run() as again:
        cairn.log_param("second", "yes")
    assert again.info.run_id == run_id
    assert cairn.get_run(run_id).data.params == {"origin": "first", "second": "yes"}
    assert len(cairn.search_runs(output_format="list")) == 1


def test_cairn_run_id_wins_over_mlflow_run_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_RUN_ID", "from-cairn")
    monkeypatch.setenv("MLFLOW_RUN_ID", "from-mlflow")
    assert resolve_run_id(use_active=False) == "from-cairn"


def test_no_run_id_names_both_variables() -> None:
    with pytest.raises(InvalidArgument, match=r"CAIRN_RUN_ID.*MLFLOW_RUN_ID"):
        require_run_id(use_active=False)


# -- tracking URIs as MLflow parses them ----------------------------------------------------------------


def test_file_uri_forms_land_in_the_directory(tmp_path: Path) -> None:
    target = tmp_path / "my" / "local" / "dir"
    expected = f"sqlite:///{target / 'cairn.db'}"
    assert config.resolve_tracking_uri(f"file:{target}") == expected  # file:/abs
    assert config.resolve_tracking_uri(f"file://{target}") == expected  # file:///abs
    assert config.resolve_tracking_uri(f"file://localhost{target}") == expected
    assert config.resolve_tracking_uri("file:my/local/dir") == expected  # file:rel, cwd is tmp_path
    assert config.resolve_tracking_uri(target.as_uri()) == expected
    assert not (tmp_path / "file:").exists()


def test_file_colon_slash_uri_does_not_create_a_file_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "elsewhere"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{target}")
    with cairn.start_run():
        cairn.log_metric("loss", 0.5)
    assert (target / "cairn.db").is_file()
    assert not list(tmp_path.glob("file*"))
    assert not (tmp_path / "cairn-runs").exists()


def test_file_uri_on_another_host_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="host"):
        config.resolve_tracking_uri("file://server/share/runs")


@pytest.mark.parametrize("uri", ["databricks", "databricks://profile", "databricks-uc", "Databricks"])
def test_databricks_is_refused(tmp_path: Path, uri: str) -> None:
    with pytest.raises(InvalidArgument, match="Databricks") as info:
        config.resolve_tracking_uri(uri)
    assert "sqlite" in str(info.value) and "postgresql" in str(info.value) and "file:" in str(info.value)
    assert not (tmp_path / "databricks").exists()


@pytest.mark.parametrize("uri", ["mysql://u:p@host/db", "mysql+pymysql://u@host/db", "mssql://host/db"])
def test_other_databases_are_refused_saying_why(uri: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        config.resolve_tracking_uri(uri)
    message = str(info.value)
    assert repr(uri.split(":", 1)[0]) in message
    assert "SQLite and PostgreSQL" in message
    assert "cairn import-mlflow" in message


@pytest.mark.parametrize("uri", ["s3://bucket/runs", "runs:/abc/model", "ftp://host/x"])
def test_unsupported_scheme_names_it_and_what_is_supported(uri: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        config.resolve_tracking_uri(uri)
    message = str(info.value)
    assert repr(uri.split(":", 1)[0]) in message
    for supported in ("sqlite:///", "postgresql://", "http(s)://", "file:"):
        assert supported in message


def _mlflow_file_store(root: Path) -> Path:
    for experiment in ("0", "412345678901234567"):
        (root / experiment).mkdir(parents=True)
        (root / experiment / "meta.yaml").write_text(f"experiment_id: '{experiment}'\nname: e{experiment}\n")
    run = root / "412345678901234567" / "0123456789abcdef0123456789abcdef"
    run.mkdir()
    (run / "meta.yaml").write_text("run_uuid: 0123456789abcdef0123456789abcdef\n")
    (root / ".trash").mkdir()
    return run


def test_an_mlflow_file_store_is_refused_naming_import_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlruns = tmp_path / "mlruns"
    _mlflow_file_store(mlruns)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "./mlruns")
    with pytest.raises(ForeignStore, match=re.escape(f"cairn import-mlflow --from {mlruns}")) as info:
        cairn.start_run()
    assert "MLFLOW_TRACKING_URI" in str(info.value)
    for form in (str(mlruns), f"file:{mlruns}", mlruns.as_uri(), "file:mlruns"):
        with pytest.raises(ForeignStore, match="import-mlflow"):
            config.resolve_tracking_uri(form)
    assert not (mlruns / "cairn.db").exists()


def test_a_directory_inside_an_mlflow_file_store_is_refused(tmp_path: Path) -> None:
    run = _mlflow_file_store(tmp_path / "mlruns")
    for inside in (run, run.parent):
        with pytest.raises(ForeignStore, match=re.escape(f"cairn import-mlflow --from {tmp_path / 'mlruns'}")):
            config.resolve_tracking_uri(str(inside))


def test_a_trash_only_mlflow_file_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mlruns" / ".trash" / "7").mkdir(parents=True)
    (tmp_path / "mlruns" / ".trash" / "7" / "meta.yaml").write_text("experiment_id: '7'\n")
    with pytest.raises(ForeignStore, match="import-mlflow"):
        config.resolve_tracking_uri("mlruns")


def test_a_project_directory_beside_mlruns_is_a_cairn_store(tmp_path: Path) -> None:
    _mlflow_file_store(tmp_path / "project" / "mlruns")
    assert config.resolve_tracking_uri(str(tmp_path / "project")) == f"sqlite:///{tmp_path / 'project' / 'cairn.db'}"


def test_an_existing_cairn_store_is_used_whatever_lies_beside_it(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    cairn.set_tracking_uri(store)
    with cairn.start_run():
        pass
    (store / "0").mkdir()
    (store / "0" / "meta.yaml").write_text("experiment_id: '0'\n")
    assert config.resolve_tracking_uri(str(store)) == f"sqlite:///{store / 'cairn.db'}"


def test_an_mlflow_database_is_refused_naming_import_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "mlflow.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('1b5f0d9ad7c1')")
        connection.execute(
            "CREATE TABLE runs (run_uuid VARCHAR(32) PRIMARY KEY, source_type VARCHAR(20), "
            "source_name VARCHAR(500), entry_point_name VARCHAR(50))"
        )
    connection.close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    with pytest.raises(ForeignStore, match="cairn import-mlflow"):
        cairn.start_run()


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidArgument, match="is a file"):
        config.resolve_tracking_uri(str(tmp_path / "notes.txt"))


def test_artifact_root_file_uri_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_ARTIFACT_ROOT", f"file:{tmp_path / 'art'}")
    assert config.get_artifact_root() == str(tmp_path / "art")
    assert not (tmp_path / "file:").exists()


def test_errors_are_cairn_errors() -> None:
    with pytest.raises(CairnError):
        config.resolve_tracking_uri("mysql://host/db")
