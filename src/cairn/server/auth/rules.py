"""The allow-list: which permission every endpoint of ``cairn server`` needs, on which resource.

One table, :data:`RULES`, maps each route (its path template, as the app declares it, and its methods)
to a :class:`Rule`: the kind of resource the request touches, where its id is in the request, and the
permission needed on it. MLflow's semantics: READ reads; EDIT creates runs, logs, sets tags and uploads
artifacts; MANAGE also deletes, restores and renames. Runs resolve to their experiment, logged models to
their experiment (their id embeds their run's or experiment's id), model versions to their registered
model, artifact-proxy paths to the experiment their first segment names.

A request whose path and method no rule covers is for admins only; a test walks every route of the
server app and fails when one has no rule.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cairn.server.auth.permissions import Permission

__all__ = ["RULES", "After", "Rule", "Source", "Target", "find_rule", "rule_for_template"]

READ, EDIT, MANAGE = Permission.READ, Permission.EDIT, Permission.MANAGE


class Target(enum.Enum):
    """What a request touches, and so what its permission is checked on."""

    PUBLIC = "public"
    """No credentials needed (health, version, the UI's page, static files, login)."""
    AUTHENTICATED = "authenticated"
    """Any user (creates; searches, which filter their results by the user's grants)."""
    NOT_FOUND = "not-found"
    """A catch-all route answering ENDPOINT_NOT_FOUND: any user gets that answer."""
    ADMIN = "admin"
    """Admins only."""
    EXPERIMENT = "experiment"
    EXPERIMENT_NAME = "experiment-name"
    RUN = "run"
    RUNS = "runs"
    """Several runs (a list of ids): the permission is needed on each run's experiment."""
    LOGGED_MODEL = "logged-model"
    REGISTERED_MODEL = "registered-model"
    MODEL_VERSION_SOURCE = "model-version-source"
    """EDIT on the registered model, and READ on the run (or experiment) the version's files come from."""
    ARTIFACT_PATH = "artifact-path"
    """An artifact-proxy path ``<experiment id>/<run id>/artifacts/...``: the experiment it names."""


class Source(enum.Enum):
    """Where in the request the resource id is."""

    ARGS = "args"
    """The query string for GET (and DELETE without a body), the JSON body otherwise (as the handlers read)."""
    PATH = "path"
    """A path parameter of the route template."""
    QUERY = "query"
    BODY = "body"


class After(enum.Enum):
    """What the middleware does after a successful (200) answer."""

    GRANT_EXPERIMENT = "grant-experiment"
    """The creator gets MANAGE on the new experiment (``experiment_id`` of the answer)."""
    GRANT_MODEL = "grant-model"
    """The creator gets MANAGE on the new registered model (``name`` of the request)."""
    RENAME_MODEL = "rename-model"
    """Grants on ``name`` move to ``new_name``."""
    FORGET_MODEL = "forget-model"
    """Grants on the deleted model are dropped (a new model of that name starts without grants)."""


@dataclass(frozen=True)
class Rule:
    """The check for one route template and its methods.

    Attributes:
        template: the route path as the app declares it (``/api/2.0/mlflow/runs/get``,
            ``/api/2.0/mlflow/logged-models/{model_id}``).
        methods: the HTTP methods it covers (HEAD comes with GET).
        target: what the request touches.
        keys: the names of the id, tried in order (``run_id`` then MLflow's legacy ``run_uuid``).
        source: where the id is.
        permission: what the user needs on the resource.
        default: the id when the request leaves it out (runs/create: the Default experiment "0").
        after: what to do after a successful answer.
    """

    template: str
    methods: frozenset[str]
    target: Target
    keys: tuple[str, ...] = ()
    source: Source = Source.ARGS
    permission: Permission = Permission.NONE
    default: str | None = None
    after: After | None = None
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.template))

    def covers(self, method: str) -> bool:
        return method in self.methods or (method == "HEAD" and "GET" in self.methods)


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]+\})", template)
    regex = []
    for part in parts:
        if part.startswith("{") and part.endswith("}"):
            name, _, kind = part[1:-1].partition(":")
            regex.append(f"(?P<{name}>.*)" if kind == "path" else f"(?P<{name}>[^/]+)")
        else:
            regex.append(re.escape(part))
    return re.compile("".join(regex))


MLFLOW = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")
ARTIFACTS = ("/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow-artifacts/")
MLFLOW_3 = ("/api/3.0/mlflow/", "/ajax-api/3.0/mlflow/")
CAIRN = ("/api/2.0/cairn/",)
UI = ("/",)
ANY_METHOD = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
RUN_ID = ("run_id", "run_uuid")


def _rules(
    prefixes: Iterable[str],
    suffix: str,
    methods: Iterable[str],
    target: Target,
    keys: tuple[str, ...] | str = (),
    permission: Permission = Permission.NONE,
    *,
    source: Source = Source.ARGS,
    default: str | None = None,
    after: After | None = None,
) -> Iterator[Rule]:
    names = (keys,) if isinstance(keys, str) else keys
    for prefix in prefixes:
        yield Rule(prefix + suffix, frozenset(methods), target, names, source, permission, default, after)


def _table() -> list[Rule]:
    T, S = Target, Source
    rules: list[Rule] = []
    add = rules.extend
    # -- tracking: experiments
    add(_rules(MLFLOW, "experiments/create", ["POST"], T.AUTHENTICATED, after=After.GRANT_EXPERIMENT))
    add(_rules(MLFLOW, "experiments/get", ["GET"], T.EXPERIMENT, "experiment_id", READ))
    add(_rules(MLFLOW, "experiments/get-by-name", ["GET"], T.EXPERIMENT_NAME, "experiment_name", READ))
    add(_rules(MLFLOW, "experiments/search", ["GET", "POST"], T.AUTHENTICATED))
    add(_rules(MLFLOW, "experiments/update", ["POST"], T.EXPERIMENT, "experiment_id", EDIT))
    add(_rules(MLFLOW, "experiments/set-experiment-tag", ["POST"], T.EXPERIMENT, "experiment_id", EDIT))
    add(_rules(MLFLOW, "experiments/delete", ["POST"], T.EXPERIMENT, "experiment_id", MANAGE))
    add(_rules(MLFLOW, "experiments/restore", ["POST"], T.EXPERIMENT, "experiment_id", MANAGE))
    # -- tracking: runs and their data
    add(_rules(MLFLOW, "runs/create", ["POST"], T.EXPERIMENT, "experiment_id", EDIT, default="0"))
    add(_rules(MLFLOW, "runs/get", ["GET"], T.RUN, RUN_ID, READ))
    add(_rules(MLFLOW, "runs/search", ["POST"], T.AUTHENTICATED))
    for write in ("update", "log-metric", "log-parameter", "set-tag", "delete-tag", "log-inputs", "log-batch"):
        add(_rules(MLFLOW, f"runs/{write}", ["POST"], T.RUN, RUN_ID, EDIT))
    add(_rules(MLFLOW, "runs/outputs", ["POST"], T.RUN, RUN_ID, EDIT))
    add(_rules(MLFLOW, "runs/delete", ["POST"], T.RUN, RUN_ID, MANAGE))
    add(_rules(MLFLOW, "runs/restore", ["POST"], T.RUN, RUN_ID, MANAGE))
    add(_rules(MLFLOW, "metrics/get-history", ["GET"], T.RUN, RUN_ID, READ))
    add(_rules(MLFLOW, "metrics/get-history-bulk-interval", ["GET"], T.RUNS, "run_ids", READ))
    add(_rules(MLFLOW, "artifacts/list", ["GET"], T.RUN, RUN_ID, READ))
    # -- MLflow 3 logged models
    add(_rules(MLFLOW, "logged-models", ["POST"], T.EXPERIMENT, "experiment_id", EDIT))
    add(_rules(MLFLOW, "logged-models/search", ["POST"], T.AUTHENTICATED))
    add(_rules(MLFLOW, "logged-models/{model_id}", ["GET"], T.LOGGED_MODEL, "model_id", READ, source=S.PATH))
    add(_rules(MLFLOW, "logged-models/{model_id}", ["PATCH"], T.LOGGED_MODEL, "model_id", EDIT, source=S.PATH))
    add(_rules(MLFLOW, "logged-models/{model_id}", ["DELETE"], T.LOGGED_MODEL, "model_id", MANAGE, source=S.PATH))
    add(_rules(MLFLOW, "logged-models/{model_id}/tags", ["PATCH"], T.LOGGED_MODEL, "model_id", EDIT, source=S.PATH))
    add(
        _rules(
            MLFLOW,
            "logged-models/{model_id}/tags/{tag_key:path}",
            ["DELETE"],
            T.LOGGED_MODEL,
            "model_id",
            EDIT,
            source=S.PATH,
        )
    )
    add(_rules(MLFLOW, "logged-models/{model_id}/params", ["POST"], T.LOGGED_MODEL, "model_id", EDIT, source=S.PATH))
    # -- model registry
    model = T.REGISTERED_MODEL
    add(_rules(MLFLOW, "registered-models/create", ["POST"], T.AUTHENTICATED, after=After.GRANT_MODEL))
    add(_rules(MLFLOW, "registered-models/get", ["GET"], model, "name", READ))
    add(_rules(MLFLOW, "registered-models/search", ["GET"], T.AUTHENTICATED))
    add(_rules(MLFLOW, "registered-models/get-latest-versions", ["GET", "POST"], model, "name", READ))
    add(_rules(MLFLOW, "registered-models/update", ["PATCH"], model, "name", EDIT))
    add(_rules(MLFLOW, "registered-models/set-tag", ["POST"], model, "name", EDIT))
    add(_rules(MLFLOW, "registered-models/delete-tag", ["DELETE"], model, "name", EDIT))
    add(_rules(MLFLOW, "registered-models/alias", ["GET"], model, "name", READ))
    add(_rules(MLFLOW, "registered-models/alias", ["POST", "DELETE"], model, "name", EDIT))
    add(_rules(MLFLOW, "registered-models/rename", ["POST"], model, "name", MANAGE, after=After.RENAME_MODEL))
    add(_rules(MLFLOW, "registered-models/delete", ["DELETE"], model, "name", MANAGE, after=After.FORGET_MODEL))
    add(_rules(MLFLOW, "model-versions/create", ["POST"], T.MODEL_VERSION_SOURCE, "name", EDIT))
    add(_rules(MLFLOW, "model-versions/search", ["GET"], T.AUTHENTICATED))
    for read in ("get", "get-download-uri"):
        add(_rules(MLFLOW, f"model-versions/{read}", ["GET"], model, "name", READ))
    add(_rules(MLFLOW, "model-versions/update", ["PATCH"], model, "name", EDIT))
    add(_rules(MLFLOW, "model-versions/transition-stage", ["POST"], model, "name", EDIT))
    add(_rules(MLFLOW, "model-versions/set-tag", ["POST"], model, "name", EDIT))
    add(_rules(MLFLOW, "model-versions/delete-tag", ["DELETE"], model, "name", EDIT))
    add(_rules(MLFLOW, "model-versions/delete", ["DELETE"], model, "name", MANAGE))
    # -- artifact proxy: <experiment id>/<run id>/artifacts/... (a multipart part: its upload id, handed out
    # by mpu/create to a user with EDIT on the target's experiment, is the key)
    path = T.ARTIFACT_PATH
    add(_rules(ARTIFACTS, "artifacts", ["GET"], path, "path", READ, source=S.QUERY))
    add(_rules(ARTIFACTS, "artifacts/{path:path}", ["GET"], path, "path", READ, source=S.PATH))
    add(_rules(ARTIFACTS, "artifacts/{path:path}", ["PUT"], path, "path", EDIT, source=S.PATH))
    add(_rules(ARTIFACTS, "artifacts/{path:path}", ["DELETE"], path, "path", MANAGE, source=S.PATH))
    add(_rules(ARTIFACTS, "mpu/part/{upload_id}/{part_number}", ["PUT"], T.AUTHENTICATED))
    for action in ("create", "complete", "abort"):
        # without a path the upload lands at the artifact root, outside every experiment: admins only
        add(_rules(ARTIFACTS, f"mpu/{action}", ["POST"], T.ADMIN))
        add(_rules(ARTIFACTS, f"mpu/{action}/{{path:path}}", ["POST"], path, "path", EDIT, source=S.PATH))
    # -- user management (MLflow's basic-auth paths; users/current tells any user who it is)
    for suffix, methods in (
        ("users/create", ["POST"]),
        ("users/get", ["GET"]),
        ("users/list", ["GET"]),
        ("users/update-password", ["PATCH"]),
        ("users/update-admin", ["PATCH"]),
        ("users/delete", ["DELETE"]),
    ):
        add(_rules(MLFLOW, suffix, methods, T.ADMIN))
    add(_rules(MLFLOW, "users/current", ["GET"], T.AUTHENTICATED))
    for resource in ("experiments", "registered-models"):
        for action, method in (("create", "POST"), ("get", "GET"), ("update", "PATCH"), ("delete", "DELETE")):
            add(_rules(MLFLOW, f"{resource}/permissions/{action}", [method], T.ADMIN))
    # -- cairn's resume endpoints
    for write in ("supersede-metrics", "fork", "lease/acquire", "lease/renew", "lease/release"):
        add(_rules(CAIRN, f"runs/{write}", ["POST"], T.RUN, "run_id", EDIT, source=S.BODY))
    add(_rules(CAIRN, "runs/lease/get", ["POST"], T.RUN, "run_id", READ, source=S.BODY))
    add(_rules(CAIRN, "capabilities", ["GET"], T.AUTHENTICATED))
    # -- server
    add(_rules(UI, "health", ["GET"], T.PUBLIC))
    add(_rules(UI, "version", ["GET"], T.PUBLIC))
    add(_rules(MLFLOW_3, "server-info", ["GET"], T.PUBLIC))
    # -- the UI (its own JSON API filters its lists by the user's grants)
    add(_rules(UI, "", ["GET"], T.PUBLIC))
    add(_rules(UI, "static/{path:path}", ["GET"], T.PUBLIC))
    add(_rules(UI, "login", ANY_METHOD, T.PUBLIC))
    add(_rules(UI, "logout", ANY_METHOD, T.PUBLIC))
    add(_rules(UI, "api/session", ["GET"], T.PUBLIC))
    add(_rules(UI, "api/experiments", ["GET"], T.AUTHENTICATED))
    for suffix in ("", "/keys", "/runs"):
        add(
            _rules(
                UI,
                f"api/experiments/{{experiment_id}}{suffix}",
                ["GET"],
                T.EXPERIMENT,
                "experiment_id",
                READ,
                source=S.PATH,
            )
        )
    for suffix in ("", "/metric", "/artifacts", "/artifacts/preview", "/artifacts/raw", "/checkpoints"):
        add(_rules(UI, f"api/runs/{{run_id}}{suffix}", ["GET"], T.RUN, "run_id", READ, source=S.PATH))
    add(_rules(UI, "api/runs/{run_id}", ["DELETE"], T.RUN, "run_id", MANAGE, source=S.PATH))
    add(_rules(UI, "api/runs/{run_id}/delete", ["POST"], T.RUN, "run_id", MANAGE, source=S.PATH))
    add(_rules(UI, "api/runs/{run_id}/restore", ["POST"], T.RUN, "run_id", MANAGE, source=S.PATH))
    add(_rules(UI, "api/compare", ["GET"], T.RUNS, "runs", READ, source=S.QUERY))
    add(_rules(UI, "api/models", ["GET"], T.AUTHENTICATED))
    add(_rules(UI, "api/model", ["GET"], model, "name", READ, source=S.QUERY))
    add(_rules(UI, "api/model-version", ["GET"], model, "name", READ, source=S.QUERY))
    # -- catch-alls answering ENDPOINT_NOT_FOUND / the UI's 404: last, so every real route matches first
    for template in (
        "/api/2.0/mlflow{rest:path}",
        "/api/2.0/mlflow-artifacts{rest:path}",
        "/api/3.0/mlflow{rest:path}",
        "/ajax-api/{rest:path}",
        "/api/2.0/cairn{rest:path}",
        "/api/{rest:path}",
    ):
        rules.append(Rule(template, frozenset(ANY_METHOD), T.NOT_FOUND))
    return rules


RULES: tuple[Rule, ...] = tuple(_table())


_STATIC: dict[str, list[Rule]] = {}
for _rule in RULES:
    if "{" not in _rule.template:
        _STATIC.setdefault(_rule.template, []).append(_rule)
_TEMPLATED = tuple(rule for rule in RULES if "{" in rule.template)


def find_rule(path: str, method: str) -> tuple[Rule, dict[str, str]] | None:
    """The rule for ``path`` and ``method`` with the path parameters: a rule of a fixed path first, then the
    first templated rule (in table order, so the catch-alls come last) whose template matches."""
    for rule in _STATIC.get(path, ()):
        if rule.covers(method):
            return rule, {}
    for rule in _TEMPLATED:
        match = rule.pattern.fullmatch(path)
        if match is not None and rule.covers(method):
            return rule, match.groupdict()
    return None


def rule_for_template(template: str, method: str) -> Rule | None:
    """The rule declared for exactly this route template and method (for the completeness test)."""
    for rule in RULES:
        if rule.template == template and rule.covers(method):
            return rule
    return None
