"""``RestRegistryStore``: the :class:`~cairn.store.registry_base.RegistryStore` contract over MLflow's REST API.

It shares the HTTP session (pool, credentials, retries) of the tracking store of the same server. Version
numbers are the server's, so they stay race-free across clients. What the API cannot express:
``import_model_version`` (a version with a chosen number) and the ``user_id`` of a new version (the server
records the authenticated user, if any).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cairn.errors import InvalidArgument, NotFound
from cairn.registry.entities import ModelVersion, RegisteredModel, Stage
from cairn.store.registry_base import RegistryStore
from cairn.store.rest.errors import UnsupportedByServer
from cairn.store.rest.http import HttpSession

__all__ = ["RestRegistryStore"]

_MODELS_PAGE = 1000
_VERSIONS_PAGE = 10_000


def _quoted(value: str) -> str:
    return "'{}'".format(value.replace("\\", "\\\\").replace("'", "\\'"))


def _tags(items: Sequence[dict[str, Any]]) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in items}


def _version(js: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        name=str(js["name"]),
        version=str(js["version"]),
        creation_timestamp=int(js.get("creation_timestamp") or 0),
        last_updated_timestamp=int(js.get("last_updated_timestamp") or 0),
        source=str(js.get("source", "")),
        run_id=js.get("run_id") or None,
        description=js.get("description") or None,
        user_id=js.get("user_id") or None,
        current_stage=str(js.get("current_stage") or Stage.NONE.value),
        status=str(js.get("status") or "READY"),
        status_message=js.get("status_message") or None,
        run_link=js.get("run_link") or None,
        tags=_tags(js.get("tags", [])),
        aliases=[str(a) for a in js.get("aliases", [])],
    )


def _model(js: dict[str, Any]) -> RegisteredModel:
    return RegisteredModel(
        name=str(js["name"]),
        creation_timestamp=int(js.get("creation_timestamp") or 0),
        last_updated_timestamp=int(js.get("last_updated_timestamp") or 0),
        description=js.get("description") or None,
        tags=_tags(js.get("tags", [])),
        aliases={str(a["alias"]): str(a["version"]) for a in js.get("aliases", [])},
        latest_versions=[_version(v) for v in js.get("latest_versions", [])],
    )


class RestRegistryStore(RegistryStore):
    """The model registry of a tracking server.

    Args:
        session: the HTTP session of the server's tracking store (not closed by :meth:`close`).
    """

    def __init__(self, session: HttpSession) -> None:
        self.http = session

    def __repr__(self) -> str:
        return f"RestRegistryStore({self.http.base_url!r})"

    def _call(self, method: str, endpoint: str, payload: dict[str, Any], *, idempotent: bool = True) -> dict[str, Any]:
        return self.http.call(method, endpoint, payload, idempotent=idempotent)

    # -- registered models -----------------------------------------------------------------------

    def create_registered_model(
        self, name: str, tags: dict[str, str] | None = None, description: str | None = None
    ) -> RegisteredModel:
        payload: dict[str, Any] = {"name": name, "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}
        if description is not None:
            payload["description"] = description
        return _model(self._call("POST", "registered-models/create", payload, idempotent=False)["registered_model"])

    def get_registered_model(self, name: str) -> RegisteredModel:
        return _model(self._call("GET", "registered-models/get", {"name": name})["registered_model"])

    def search_registered_models(
        self,
        name_like: str | None = None,
        max_results: int = 1000,
        *,
        name: str | None = None,
        case_sensitive: bool = True,
    ) -> list[RegisteredModel]:
        if not 1 <= max_results <= 50_000:
            raise InvalidArgument(f"max_results must be between 1 and 50000, got {max_results}")
        clauses = []
        if name_like is not None:
            clauses.append(f"name {'LIKE' if case_sensitive else 'ILIKE'} {_quoted(name_like)}")
        if name is not None:
            clauses.append(f"name = {_quoted(name)}")
        found: list[RegisteredModel] = []
        token: str | None = None
        while len(found) < max_results:
            payload = {
                "filter": " AND ".join(clauses) or None,
                "max_results": min(_MODELS_PAGE, max_results - len(found)),
                "order_by": "name ASC",
                "page_token": token,
            }
            js = self._call("GET", "registered-models/search", payload)
            found += [_model(m) for m in js.get("registered_models", [])]
            token = js.get("next_page_token") or None
            if not token:
                break
        found.sort(key=lambda m: m.name)
        return found[:max_results]

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel:
        js = self._call("POST", "registered-models/rename", {"name": name, "new_name": new_name}, idempotent=False)
        return _model(js["registered_model"])

    def update_registered_model(self, name: str, description: str) -> RegisteredModel:
        js = self._call("PATCH", "registered-models/update", {"name": name, "description": description})
        return _model(js["registered_model"])

    def delete_registered_model(self, name: str) -> None:
        self._call("DELETE", "registered-models/delete", {"name": name}, idempotent=False)

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._call("POST", "registered-models/set-tag", {"name": name, "key": key, "value": value})

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        self.get_registered_model(name)  # an unknown model is NotFound; an unknown key is ignored
        self._call("DELETE", "registered-models/delete-tag", {"name": name, "key": key})

    # -- versions --------------------------------------------------------------------------------

    def create_model_version(
        self,
        name: str,
        source: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        description: str | None = None,
        user_id: str | None = None,
        run_link: str | None = None,
    ) -> ModelVersion:
        del user_id  # the server records who registered the version
        try:
            self.get_registered_model(name)
        except KeyError:
            try:
                self.create_registered_model(name)
            except ValueError:  # another client created it meanwhile
                pass
        payload: dict[str, Any] = {
            "name": name,
            "source": source,
            "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        }
        for key, value in (("run_id", run_id), ("description", description), ("run_link", run_link)):
            if value is not None:
                payload[key] = value
        return _version(self._call("POST", "model-versions/create", payload, idempotent=False)["model_version"])

    def get_model_version(self, name: str, version: str | int) -> ModelVersion:
        js = self._call("GET", "model-versions/get", {"name": name, "version": str(version)})
        return _version(js["model_version"])

    def search_model_versions(
        self,
        name: str | None = None,
        run_id: str | Sequence[str] | None = None,
        max_results: int = 10_000,
        *,
        name_like: str | None = None,
        case_sensitive: bool = True,
    ) -> list[ModelVersion]:
        clauses = []
        if name is not None:
            clauses.append(f"name = {_quoted(name)}")
        if name_like is not None:
            clauses.append(f"name {'LIKE' if case_sensitive else 'ILIKE'} {_quoted(name_like)}")
        if isinstance(run_id, str):
            clauses.append(f"run_id = {_quoted(run_id)}")
        elif run_id is not None:
            if not run_id:
                return []
            clauses.append(f"run_id IN ({', '.join(_quoted(r) for r in run_id)})")
        found: list[ModelVersion] = []
        token: str | None = None
        while len(found) < max_results:
            payload = {
                "filter": " AND ".join(clauses) or None,
                "max_results": min(_VERSIONS_PAGE, max_results - len(found)),
                "page_token": token,
            }
            js = self._call("GET", "model-versions/search", payload)
            found += [_version(v) for v in js.get("model_versions", [])]
            token = js.get("next_page_token") or None
            if not token:
                break
        found.sort(key=lambda v: (v.name, -int(v.version)))
        return found[:max_results]

    def update_model_version(self, name: str, version: str | int, description: str) -> ModelVersion:
        payload = {"name": name, "version": str(version), "description": description}
        return _version(self._call("PATCH", "model-versions/update", payload)["model_version"])

    def delete_model_version(self, name: str, version: str | int) -> None:
        self._call("DELETE", "model-versions/delete", {"name": name, "version": str(version)}, idempotent=False)

    def set_model_version_tag(self, name: str, version: str | int, key: str, value: str) -> None:
        payload = {"name": name, "version": str(version), "key": key, "value": value}
        self._call("POST", "model-versions/set-tag", payload)

    def delete_model_version_tag(self, name: str, version: str | int, key: str) -> None:
        self.get_model_version(name, version)
        self._call("DELETE", "model-versions/delete-tag", {"name": name, "version": str(version), "key": key})

    def transition_model_version_stage(
        self, name: str, version: str | int, stage: Stage | str, archive_existing_versions: bool = False
    ) -> ModelVersion:
        target = Stage.parse(stage)
        if archive_existing_versions and target not in (Stage.STAGING, Stage.PRODUCTION):
            raise InvalidArgument("archive_existing_versions applies only to the Staging and Production stages")
        payload = {
            "name": name,
            "version": str(version),
            "stage": target.value,
            "archive_existing_versions": archive_existing_versions,
        }
        return _version(self._call("POST", "model-versions/transition-stage", payload)["model_version"])

    def get_latest_versions(self, name: str, stages: Sequence[Stage | str] | None = None) -> list[ModelVersion]:
        wanted = [Stage.parse(s) for s in stages] if stages else list(Stage)
        js = self._call(
            "POST", "registered-models/get-latest-versions", {"name": name, "stages": [s.value for s in wanted]}
        )
        by_stage = {Stage.parse(v.current_stage): v for v in (_version(x) for x in js.get("model_versions", []))}
        return [by_stage[s] for s in wanted if s in by_stage]

    # -- aliases ---------------------------------------------------------------------------------

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        self._call("POST", "registered-models/alias", {"name": name, "alias": alias, "version": str(version)})

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self.get_registered_model(name)
        self._call("DELETE", "registered-models/alias", {"name": name, "alias": alias})

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        try:
            js = self._call("GET", "registered-models/alias", {"name": name, "alias": alias})
        except InvalidArgument as exc:  # MLflow answers INVALID_PARAMETER_VALUE for an unknown alias
            if "not found" in str(exc):
                raise NotFound(str(exc)) from exc
            raise
        return _version(js["model_version"])

    def import_model_version(self, version: ModelVersion) -> ModelVersion:
        raise UnsupportedByServer(
            f"import_model_version is not supported by the tracking server at {self.http.base_url}: "
            "MLflow's REST API cannot create a version with a chosen number"
        )
