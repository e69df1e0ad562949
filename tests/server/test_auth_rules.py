"""The allow-list is complete: every route of ``cairn server`` (API modules and the UI) has a rule, and every
rule names a route that exists."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.routing import BaseRoute, Mount, Route

from cairn.server.app import create_server_app
from cairn.server.auth.permissions import Permission
from cairn.server.auth.rules import RULES, Target, find_rule, rule_for_template
from cairn.tracking.client import Client


def _routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path template, method) of every route, mounted ones included (a mounted app: ``<mount>/{path:path}``)."""
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    yield prefix + route.path, method
        elif isinstance(route, Mount):
            children = route.routes
            if children:
                yield from _routes(list(children), prefix + route.path)
            else:
                yield prefix + route.path + "/{path:path}", "GET"


@pytest.fixture
def app_routes(tmp_path: Path) -> list[tuple[str, str]]:
    client = Client(f"sqlite:///{tmp_path}/cairn.db", str(tmp_path / "artifacts"))
    try:
        app = create_server_app(client, auth=True)
        return sorted(set(_routes(app.routes)))
    finally:
        client.store.close()


def test_every_route_of_the_server_has_a_rule(app_routes: list[tuple[str, str]]) -> None:
    missing = [f"{method} {path}" for path, method in app_routes if rule_for_template(path, method) is None]
    assert missing == [], f"routes without a rule in cairn/server/auth/rules.py (they would be admin-only): {missing}"
    assert len(app_routes) > 100


def test_every_rule_names_a_route_of_the_server(app_routes: list[tuple[str, str]]) -> None:
    declared = {(path, method) for path, method in app_routes}
    stale = [
        f"{sorted(rule.methods)} {rule.template}"
        for rule in RULES
        if not any((rule.template, method) in declared for method in rule.methods)
    ]
    assert stale == []


def test_rules_follow_mlflow_semantics() -> None:
    def need(method: str, path: str) -> tuple[Target, Permission]:
        found = find_rule(path, method)
        assert found is not None, (method, path)
        return found[0].target, found[0].permission

    assert need("GET", "/api/2.0/mlflow/runs/get") == (Target.RUN, Permission.READ)
    assert need("POST", "/ajax-api/2.0/mlflow/runs/log-batch") == (Target.RUN, Permission.EDIT)
    assert need("POST", "/api/2.0/mlflow/runs/delete") == (Target.RUN, Permission.MANAGE)
    assert need("DELETE", "/api/2.0/mlflow/registered-models/delete") == (Target.REGISTERED_MODEL, Permission.MANAGE)
    assert need("PUT", "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/a.txt") == (
        Target.ARTIFACT_PATH,
        Permission.EDIT,
    )
    assert need("DELETE", "/api/2.0/mlflow-artifacts/artifacts/1/x") == (Target.ARTIFACT_PATH, Permission.MANAGE)
    assert need("POST", "/api/2.0/cairn/runs/fork") == (Target.RUN, Permission.EDIT)
    assert need("GET", "/api/2.0/mlflow/logged-models/search")[0] is Target.LOGGED_MODEL  # a GET names a model id
    assert need("HEAD", "/health") == (Target.PUBLIC, Permission.NONE)
    assert find_rule("/something/else", "GET") is None  # -> admins only
    assert need("GET", "/api/2.0/mlflow/unknown")[0] is Target.NOT_FOUND
