"""The client's registry methods and ``register_model``: registration, stages, aliases, rename, lineage."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import cairn
from cairn.errors import ArtifactNotFound, FilterSyntaxError, InvalidArgument, NotFound, RunNotFound
from cairn.registry import register_model
from cairn.registry.lineage import ModelVersionLineage
from cairn.tracking import context
from tests.registry.conftest import RegistryTestClient, make_client


def _run_with_model(client: RegistryTestClient, path: str = "model") -> str:
    run_id: str = client.create_run("0").info.run_id
    client.log_text(run_id, "flavors: {}", f"{path}/MLmodel")
    return run_id


def _artifact_uri(client: RegistryTestClient, run_id: str) -> str:
    return str(client.get_run(run_id).info.artifact_uri)


# -- register_model --------------------------------------------------------------------------------


def test_register_model_from_a_run_records_location_and_run(tmp_path: Path) -> None:
    client = make_client()
    run_id = _run_with_model(client)
    first = register_model(f"runs:/{run_id}/model", "churn", tags={"stage": "candidate"})
    second = register_model(f"runs:/{run_id}/model", "churn")
    assert (first.name, first.version, second.version) == ("churn", "1", "2")
    assert first.source == f"{_artifact_uri(client, run_id)}/model"
    assert first.run_id == run_id and first.status == "READY" and first.tags == {"stage": "candidate"}
    assert first.user_id == context.current_user()
    assert client.get_registered_model("churn").name == "churn"  # created on first use
    # nothing was copied: the run's artifacts are the only copy of the model
    copies = [p for p in tmp_path.rglob("MLmodel")]
    assert copies == [Path(first.source) / "MLmodel"]


def test_register_model_errors(tmp_path: Path) -> None:
    client = make_client()
    run_id = _run_with_model(client)
    with pytest.raises(RunNotFound, match="no run with id"):
        register_model("runs:/" + "a" * 32 + "/model", "churn")
    with pytest.raises(ArtifactNotFound, match=f"run {run_id} has no artifact at 'missing'") as caught:
        register_model(f"runs:/{run_id}/missing", "churn")
    assert isinstance(caught.value, NotFound)
    with pytest.raises(ArtifactNotFound, match="does not exist"):
        register_model(tmp_path / "no-such-dir", "churn")
    with pytest.raises(InvalidArgument, match="malformed model URI"):
        register_model(f"runs:{run_id}/model", "churn")
    with pytest.raises(InvalidArgument, match="'/'"):
        register_model(f"runs:/{run_id}/model", "team/churn")
    assert client.search_registered_models() == []  # no failed call created anything


def test_register_local_paths_urls_and_other_versions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = make_client()
    (tmp_path / "exported").mkdir()
    monkeypatch.chdir(tmp_path)
    local = register_model("exported", "m")
    assert local.source == str(tmp_path / "exported") and local.run_id is None
    assert register_model("s3://bucket/models/m", "m").source == "s3://bucket/models/m"
    run_id = _run_with_model(client)
    register_model(f"runs:/{run_id}/model", "m")
    copied = client.copy_model_version("models:/m/3", "m-prod")
    assert (copied.name, copied.version, copied.run_id) == ("m-prod", "1", run_id)
    assert copied.source == client.get_model_version("m", 3).source
    assert client.get_model_version_download_uri("m-prod", 1) == copied.source


def test_register_model_is_exported_where_mlflow_users_look() -> None:
    client = make_client()
    run_id = _run_with_model(client)
    entry = getattr(cairn, "register_model", register_model)  # cairn.register_model once the lead wires it
    assert entry(f"runs:/{run_id}/model", "exported").version == "1"


# -- client methods on each backend ----------------------------------------------------------------


def test_mlflow_style_model_lifecycle(client: RegistryTestClient) -> None:
    run_id = _run_with_model(client)
    client.create_registered_model("churn", tags={"team": "growth"}, description="first")
    versions = [client.create_model_version("churn", f"runs:/{run_id}/model", run_id=run_id) for _ in range(3)]
    assert [v.version for v in versions] == ["1", "2", "3"]
    client.update_registered_model("churn", description="second")
    assert client.update_registered_model("churn").description == "second"  # None changes nothing
    client.update_model_version("churn", 2, description="the good one")
    assert client.update_model_version("churn", 2).description == "the good one"
    client.set_model_version_tag("churn", "2", "validated", True)
    client.set_registered_model_tag("churn", "owner", "ana")
    client.delete_registered_model_tag("churn", "team")
    model = client.get_registered_model("churn")
    assert model.tags == {"owner": "ana"} and model.description == "second"
    assert client.get_model_version("churn", 2).tags == {"validated": "True"}
    client.delete_model_version_tag("churn", 2, "validated")
    assert client.get_model_version("churn", 2).tags == {}
    client.delete_model_version("churn", 3)
    assert [v.version for v in client.search_model_versions("name = 'churn'")] == ["2", "1"]
    client.delete_registered_model("churn")
    with pytest.raises(NotFound):
        client.get_registered_model("churn")


def test_stage_transitions_archive_existing_versions(client: RegistryTestClient) -> None:
    for i in range(3):
        client.create_model_version("m", f"s3://b/{i}")
    client.transition_model_version_stage("m", 1, "Production")
    client.transition_model_version_stage("m", 2, "staging")
    promoted = client.transition_model_version_stage("m", 2, "Production", archive_existing_versions=True)
    assert promoted.current_stage == "Production"
    assert client.get_model_version("m", 1).current_stage == "Archived"
    latest = client.get_latest_versions("m", stages=["Production"])
    assert [v.version for v in latest] == ["2"]
    assert {v.current_stage: v.version for v in client.get_latest_versions("m")} == {
        "None": "3",
        "Production": "2",
        "Archived": "1",
    }


def test_aliases_move_and_go_with_a_deleted_version(client: RegistryTestClient) -> None:
    for i in range(2):
        client.create_model_version("m", f"s3://b/{i}")
    client.set_registered_model_alias("m", "champion", 1)
    client.set_registered_model_alias("m", "champion", 2)
    assert client.get_model_version_by_alias("m", "champion").version == "2"
    assert client.get_model_version("m", 1).aliases == []
    client.delete_model_version("m", 2)
    with pytest.raises(NotFound, match="no alias 'champion'"):
        client.get_model_version_by_alias("m", "champion")
    assert client.get_registered_model("m").aliases == {}
    client.set_registered_model_alias("m", "champion", 1)
    client.delete_registered_model_alias("m", "champion")
    assert client.get_registered_model("m").aliases == {}


def test_rename_keeps_versions_and_models_uris_follow_the_new_name(client: RegistryTestClient) -> None:
    from cairn.registry.uris import resolve_model_uri

    client.create_model_version("old", "s3://b/1")
    client.set_registered_model_alias("old", "champion", 1)
    renamed = client.rename_registered_model("old", "new")
    assert renamed.aliases == {"champion": "1"}
    assert resolve_model_uri("models:/new@champion", client).location == "s3://b/1"
    with pytest.raises(NotFound, match="'old' does not exist"):
        resolve_model_uri("models:/old/1", client)
    assert client.create_model_version("new", "s3://b/2").version == "2"


def test_search_filters(client: RegistryTestClient) -> None:
    run_a, run_b = "a" * 32, "b" * 32
    client.create_model_version("churn-eu", "s3://b/1", run_id=run_a)
    client.create_model_version("churn-us", "s3://b/2", run_id=run_b)
    client.create_model_version("Fraud", "s3://b/3", run_id=run_a)

    def names(filter_string: str | None, **kwargs: object) -> list[str]:
        return [m.name for m in client.search_registered_models(filter_string, **kwargs)]  # type: ignore[arg-type]

    assert names(None) == ["Fraud", "churn-eu", "churn-us"]
    assert names("name LIKE 'churn%'") == ["churn-eu", "churn-us"]
    assert names("name ilike 'FRAUD'") == ["Fraud"]
    assert names('name = "churn-us"') == ["churn-us"]
    assert names(None, max_results=1) == ["Fraud"]
    assert names(None, order_by=["name DESC"]) == ["churn-us", "churn-eu", "Fraud"]
    assert names(None, order_by=["last_updated_timestamp DESC", "name"], max_results=1) == ["Fraud"]

    def versions(filter_string: str) -> list[tuple[str, str]]:
        return [(v.name, v.version) for v in client.search_model_versions(filter_string)]

    assert versions(f"run_id = '{run_a}'") == [("Fraud", "1"), ("churn-eu", "1")]
    assert versions(f"run_id IN ('{run_a}', '{run_b}') AND name LIKE 'churn%'") == [
        ("churn-eu", "1"),
        ("churn-us", "1"),
    ]
    assert versions(f"name = 'churn-us' and run_id = '{run_a}'") == []
    assert versions("name = 'Fraud' AND name = 'churn-us'") == []
    for bad in ("tags.x = 'y'", "name > 'a'", "name = 'a' OR name = 'b'", "run_id LIKE 'a%'", "name IN ('a')"):
        with pytest.raises(FilterSyntaxError):
            client.search_model_versions(bad)
    with pytest.raises(FilterSyntaxError, match="cannot filter on run_id"):
        client.search_registered_models(f"run_id = '{run_a}'")
    with pytest.raises(FilterSyntaxError, match="cannot order"):
        client.search_registered_models(order_by=["version"])


# -- lineage ---------------------------------------------------------------------------------------


def _git_repo(path: Path) -> str:
    path.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (path / "train.py").write_text("print('train')\n")
    git("add", "train.py")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "train")
    return git("rev-parse", "HEAD")


def test_lineage_returns_run_params_metrics_git_commit_and_source(
    client: RegistryTestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = _git_repo(tmp_path / "repo")
    script = str(tmp_path / "repo" / "train.py")
    monkeypatch.setattr(context, "source_name", lambda: script)
    run_id = _run_with_model(client)
    client.log_param(run_id, "lr", 0.01)
    client.log_metric(run_id, "accuracy", 0.93)  # queued: lineage flushes it
    version = client.create_model_version("churn", f"runs:/{run_id}/model")

    lineage = client.get_model_version_lineage("churn", version.version)
    assert isinstance(lineage, ModelVersionLineage)
    assert lineage.model_version == client.get_model_version("churn", 1)
    assert lineage.run is not None and lineage.run_id == run_id and lineage.experiment_id == "0"
    assert lineage.params == {"lr": "0.01"} and lineage.metrics == {"accuracy": 0.93}
    assert lineage.git_commit == commit and lineage.git_dirty is False
    assert lineage.code_source == script
    assert lineage.source == f"{_artifact_uri(client, run_id)}/model"
    assert lineage.tags["mlflow.source.git.commit"] == commit


def test_lineage_without_a_run(client: RegistryTestClient) -> None:
    client.create_model_version("external", "s3://b/m")
    client.create_model_version("orphan", "s3://b/o", run_id="c" * 32)
    plain = client.get_model_version_lineage("external", 1)
    assert (plain.run_id, plain.run, plain.params, plain.git_commit) == (None, None, {}, None)
    orphan = client.get_model_version_lineage("orphan", 1)
    assert orphan.run_id == "c" * 32 and orphan.run is None and orphan.source == "s3://b/o"
