"""Model URI resolution: runs:/, every models:/ form, local paths, URLs, and the errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cairn.errors import InvalidArgument, NotFound, RunNotFound, UnsafePath
from cairn.registry.uris import ResolvedModel, resolve_model_uri
from tests.registry.conftest import RegistryTestClient, make_client


@pytest.fixture
def setup() -> tuple[RegistryTestClient, str, str]:
    """A run with a model, registered as versions 1 (Production, @champion) and 2 of 'churn'."""
    client = make_client()
    run_id = client.create_run("0").info.run_id
    client.log_text(run_id, "flavors: {}", "model/MLmodel")
    client.create_model_version("churn", f"runs:/{run_id}/model")
    client.create_model_version("churn", "s3://bucket/churn/v2", run_id=run_id)
    client.transition_model_version_stage("churn", 1, "Production")
    client.set_registered_model_alias("churn", "champion", 1)
    artifact_uri = client.get_run(run_id).info.artifact_uri
    return client, run_id, f"{artifact_uri}/model"


def test_runs_uri(setup: tuple[RegistryTestClient, str, str]) -> None:
    client, run_id, location = setup
    assert resolve_model_uri(f"runs:/{run_id}/model", client) == ResolvedModel(location, run_id=run_id)
    assert resolve_model_uri(f"runs:/{run_id}/model/", client).location == location
    assert resolve_model_uri(f"runs:/{run_id}", client).location == location.rsplit("/", 1)[0]


@pytest.mark.parametrize(
    ("uri", "version"),
    [
        ("models:/churn/1", "1"),
        ("models:/churn/2", "2"),
        ("models:/churn@champion", "1"),
        ("models:/churn/latest", "2"),
        ("models:/churn/Production", "1"),
        ("models:/churn/production", "1"),
        ("models:/churn/None", "2"),
    ],
)
def test_models_uri_forms(setup: tuple[RegistryTestClient, str, str], uri: str, version: str) -> None:
    client, run_id, location = setup
    resolved = resolve_model_uri(uri, client)
    expected = location if version == "1" else "s3://bucket/churn/v2"
    assert resolved == ResolvedModel(expected, run_id=run_id, name="churn", version=version)


def test_default_client_uses_the_current_tracking_store(setup: tuple[RegistryTestClient, str, str]) -> None:
    _, _, location = setup
    assert resolve_model_uri("models:/churn@champion").location == location


def test_local_paths_and_urls_pass_through(tmp_path: Path) -> None:
    assert resolve_model_uri(tmp_path / "model") == ResolvedModel(str(tmp_path / "model"))
    assert resolve_model_uri("relative/model").location == os.path.abspath("relative/model")
    assert resolve_model_uri(f"file://{tmp_path}/my%20model").location == f"{tmp_path}/my model"
    assert resolve_model_uri(f"file:{tmp_path}/m").location == f"{tmp_path}/m"
    assert resolve_model_uri("~/m").location == os.path.expanduser("~/m")
    for url in ("s3://bucket/prefix/model", "gs://b/m", "https://host/model.tar.gz"):
        assert resolve_model_uri(url) == ResolvedModel(url)


def test_a_source_that_is_itself_a_models_uri_is_followed(setup: tuple[RegistryTestClient, str, str]) -> None:
    client, run_id, location = setup
    store = client.registry_store
    store.create_model_version("copy", "models:/churn@champion")  # as a foreign tool might store it
    resolved = resolve_model_uri("models:/copy/1", client)
    assert resolved == ResolvedModel(location, run_id=run_id, name="copy", version="1")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/churn", "no version given"),
        ("models:/", "no version given"),
        ("models://churn/1", "starts with 'models:/'"),
        ("models:/churn/1/extra", "exactly a name and a version"),
        ("models:/churn/Prod", "neither a version number, 'latest' nor a stage"),
        ("models:/churn@", "needs both a name and an alias"),
        ("models:/@champion", "needs both a name and an alias"),
        ("runs:/", "is not a run id"),
        ("runs:/not-a-run/model", "'not-a-run' is not a run id"),
        ("runs://0123456789abcdef0123456789abcdef/model", "starts with 'runs:/'"),
        ("runs:0123456789abcdef0123456789abcdef/model", "starts with 'runs:/'"),
    ],
)
def test_malformed_uris_name_the_expected_forms(
    setup: tuple[RegistryTestClient, str, str], uri: str, message: str
) -> None:
    client, _, _ = setup
    with pytest.raises(InvalidArgument) as caught:
        resolve_model_uri(uri, client)
    text = str(caught.value)
    assert message in text and f"malformed model URI {uri!r}" in text
    assert "models:/<name>@<alias>" in text and "runs:/<run_id>/<path>" in text


def test_unknown_targets_are_not_found(setup: tuple[RegistryTestClient, str, str]) -> None:
    client, run_id, _ = setup
    with pytest.raises(RunNotFound, match="no run with id"):
        resolve_model_uri("runs:/" + "0" * 32 + "/model", client)
    with pytest.raises(NotFound, match="'nope' does not exist"):
        resolve_model_uri("models:/nope/1", client)
    with pytest.raises(NotFound, match="'churn' has no version 9"):
        resolve_model_uri("models:/churn/9", client)
    with pytest.raises(NotFound, match="'churn' has no alias 'gone'"):
        resolve_model_uri("models:/churn@gone", client)
    with pytest.raises(NotFound, match="no version in stage Staging"):
        resolve_model_uri("models:/churn/Staging", client)
    client.create_registered_model("empty")
    with pytest.raises(NotFound, match="'empty' has no versions"):
        resolve_model_uri("models:/empty/latest", client)
    with pytest.raises(UnsafePath):
        resolve_model_uri(f"runs:/{run_id}/../other-run", client)
    with pytest.raises(InvalidArgument, match="non-empty"):
        resolve_model_uri("  ", client)
