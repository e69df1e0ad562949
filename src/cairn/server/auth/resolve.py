"""Which resources a request touches, and the permission it needs on each (blocking: database lookups).

The rule of :mod:`cairn.server.auth.rules` says where the id is; this module reads it from the request
and follows it to what grants name: a run to its experiment, a logged model to its run's (or its own)
experiment, an artifact-proxy path to the experiment of its first segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cairn.errors import UnsafePath
from cairn.server.auth.permissions import Permission, ResourceKind
from cairn.server.auth.refusals import invalid
from cairn.server.auth.rules import After, Rule, Source, Target
from cairn.server.auth.users import Reads

__all__ = ["BODY_METHODS", "Need", "RequestParts", "Resolver", "reads_body"]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class RequestParts:
    """The parts of a request the rules read."""

    method: str
    path: str
    path_params: dict[str, str]
    query: dict[str, list[str]]
    body: dict[str, Any] | None


def _values(request: RequestParts, rule: Rule) -> list[Any]:
    """The values of the rule's first key the request carries (a list for repeated query keys)."""
    source = rule.source
    if source is Source.ARGS:
        source = Source.QUERY if request.method not in BODY_METHODS or request.body is None else Source.BODY
    for key in rule.keys:
        if source is Source.PATH:
            if key in request.path_params:
                return [request.path_params[key]]
        elif source is Source.QUERY:
            if request.query.get(key):
                return list(request.query[key])
        else:
            value = (request.body or {}).get(key)
            if value is not None and value != "":
                return value if isinstance(value, list) else [value]
    return [rule.default] if rule.default is not None else []


def _ids(request: RequestParts, rule: Rule) -> list[str]:
    values = _values(request, rule)
    if not values:
        raise invalid(f"Missing value for required parameter '{rule.keys[0]}'.")
    ids = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise invalid(f"Invalid value {value!r} for parameter '{rule.keys[0]}': expected a string.")
        ids.append(str(value))
    return ids


Need = tuple[ResourceKind, str, Permission, str]
"""A resource, the permission needed on it, and how to name it in a refusal."""


class Resolver:
    """Turns a rule and a request into the resources whose permission is checked (blocking: DB lookups)."""

    def __init__(self, reads: Reads) -> None:
        self.reads = reads

    def needs(self, rule: Rule, request: RequestParts) -> list[Need]:
        target, permission = rule.target, rule.permission
        if target is Target.EXPERIMENT:
            return [self._experiment(i, permission) for i in _ids(request, rule)]
        if target is Target.EXPERIMENT_NAME:
            [name] = _ids(request, rule)[:1]
            found = self.reads.experiment_id_by_name(name)
            return [] if found is None else [self._experiment(found, permission, f"experiment {name!r} ({found})")]
        if target in (Target.RUN, Target.RUNS):
            return [need for run_id in _ids(request, rule) for need in self._run(run_id, permission)]
        if target is Target.LOGGED_MODEL:
            return [need for model_id in _ids(request, rule) for need in self._logged_model(model_id, permission)]
        if target is Target.REGISTERED_MODEL:
            return [self._model(name, permission) for name in _ids(request, rule)]
        if target is Target.MODEL_VERSION_SOURCE:
            return self._model_version_source(rule, request)
        if target is Target.ARTIFACT_PATH:
            return self._artifact_path(rule, request)
        raise AssertionError(f"no resolution for {target}")

    @staticmethod
    def _experiment(experiment_id: str, permission: Permission, label: str | None = None) -> Need:
        return ResourceKind.EXPERIMENT, experiment_id, permission, label or f"experiment {experiment_id}"

    @staticmethod
    def _model(name: str, permission: Permission) -> Need:
        return ResourceKind.REGISTERED_MODEL, name, permission, f"registered model {name!r}"

    def _run(self, run_id: str, permission: Permission) -> list[Need]:
        experiment_id = self.reads.experiment_of_run(run_id)
        if experiment_id is None:
            return []  # no such run: the handler answers RESOURCE_DOES_NOT_EXIST
        return [self._experiment(experiment_id, permission, f"experiment {experiment_id} (of run {run_id})")]

    def _logged_model(self, model_id: str, permission: Permission) -> list[Need]:
        from cairn.server.logged_models import owner_of_model_id

        owner = owner_of_model_id(model_id)
        if owner is None:
            return []  # not an id this server hands out: the handler answers RESOURCE_DOES_NOT_EXIST
        kind, owner_id = owner
        if kind == "run":
            return self._run(owner_id, permission)
        return [self._experiment(owner_id, permission, f"experiment {owner_id} (of logged model {model_id})")]

    def _model_version_source(self, rule: Rule, request: RequestParts) -> list[Need]:
        """EDIT on the registered model, READ on where the version's files come from (a run, a logged
        model, or an experiment's proxied artifacts): registering must not expose what one cannot read."""
        needs = [self._model(name, rule.permission) for name in _ids(request, rule)]
        body = request.body or {}
        run_id, source = body.get("run_id"), body.get("source")
        if isinstance(run_id, str) and run_id:
            needs += self._run(run_id, Permission.READ)
        if isinstance(source, str):
            if source.startswith("runs:/"):
                needs += self._run(source[len("runs:/") :].lstrip("/").partition("/")[0], Permission.READ)
            elif source.startswith("models:/"):
                ref = source[len("models:/") :].strip("/")
                if "/" not in ref and "@" not in ref:
                    needs += self._logged_model(ref, Permission.READ)
            elif source.startswith("mlflow-artifacts:"):
                rest = source[len("mlflow-artifacts:") :]
                if rest.startswith("//"):
                    rest = "/" + rest[2:].partition("/")[2]
                needs += [self._artifact_experiment(rest.lstrip("/"), Permission.READ)]
        return needs

    def _artifact_path(self, rule: Rule, request: RequestParts) -> list[Need]:
        values = _values(request, rule)
        path = values[0] if values else ""
        if not isinstance(path, str):
            raise invalid(f"Invalid value {path!r} for parameter 'path': expected a string.")
        return [self._artifact_experiment(path, rule.permission)]

    @staticmethod
    def _artifact_experiment(path: str, permission: Permission) -> Need:
        from cairn.artifacts.paths import safe_relpath

        try:
            relative = safe_relpath(path)
        except UnsafePath as exc:
            raise invalid(str(exc)) from None
        first = relative.partition("/")[0]
        if not first.isdecimal():
            return ResourceKind.EXPERIMENT, "", Permission.MANAGE, f"the artifact path {relative!r} (no experiment's)"
        return ResourceKind.EXPERIMENT, first, permission, f"experiment {first} (artifacts {relative!r})"


def reads_body(rule: Rule, method: str) -> bool:
    """Whether checking the rule, or what follows it, needs the request's JSON body."""
    if rule.after in (After.GRANT_MODEL, After.RENAME_MODEL, After.FORGET_MODEL):
        return True
    if rule.target in (Target.PUBLIC, Target.AUTHENTICATED, Target.NOT_FOUND, Target.ADMIN):
        return False
    if rule.target is Target.MODEL_VERSION_SOURCE:
        return True
    return rule.source is Source.BODY or (rule.source is Source.ARGS and method in BODY_METHODS)
