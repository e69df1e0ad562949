"""The UI behind ``cairn server --auth``: login and signed session cookies, stateless CSRF tokens that
any worker accepts, the API-client exemption, and lists filtered by the user's grants. SQLite and
PostgreSQL, real users in the tracking database, the server's real auth middleware."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the UI needs the 'ui' extra (starlette, uvicorn)")

from starlette.testclient import TestClient

from cairn.server.app import create_server_app
from cairn.server.auth.permissions import Permission, ResourceKind
from cairn.server.auth.session import COOKIE_NAME, SESSION_LIFETIME, issue_cookie, user_of_cookie
from cairn.server.auth.users import UserStore, user_store_for
from cairn.tracking.client import Client
from tests.server.conftest import cairn_server_processes
from tests.ui._data import populate
from tests.ui.conftest import UiEnv
from tests.ui.test_e2e import ARTIFACTS, E2E_DIR, browser_ready  # noqa: F401  (browser_ready is a fixture)

HOST = "127.0.0.1"
PORT = 5000
ORIGIN = f"http://{HOST}:{PORT}"
PASSWORD = "correct horse battery"


@dataclass
class AuthEnv:
    client: Client
    users: UserStore
    open_id: str
    secret_id: str
    open_run: str
    secret_run: str
    tokens: dict[str, str]

    def browser(self, base_url: str = ORIGIN) -> TestClient:
        """A fresh browser (own cookie jar) on a fresh app instance, as another worker would be."""
        app = create_server_app(self.client, host=HOST, port=PORT, auth=True)
        return TestClient(app, base_url=base_url)


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[AuthEnv]:
    client = Client(db_url, str(tmp_path / "artifacts"))
    users = user_store_for(client)
    open_id = client.create_experiment("open")
    secret_id = client.create_experiment("secret")
    open_run = client.create_run(open_id, run_name="open-run").info.run_id
    secret_run = client.create_run(secret_id, run_name="secret-run").info.run_id
    for run_id in (open_run, secret_run):
        client.log_metric(run_id, "loss", 0.5, step=1, synchronous=True)
    client.create_registered_model("open-model")
    client.create_registered_model("secret-model")
    tokens = {
        "root": users.add("root", admin=True, password=PASSWORD),
        "reader": users.add("reader", password=PASSWORD),
        "manager": users.add("manager", password=PASSWORD),
    }
    users.grant("reader", ResourceKind.EXPERIMENT, open_id, Permission.READ)
    users.grant("reader", ResourceKind.REGISTERED_MODEL, "open-model", Permission.READ)
    users.grant("manager", ResourceKind.EXPERIMENT, open_id, Permission.MANAGE)
    try:
        yield AuthEnv(client, users, open_id, secret_id, open_run, secret_run, tokens)
    finally:
        client.flush()
        client.store.close()


def _csrf(browser: TestClient) -> str:
    token: str = browser.get("/api/session").json()["csrf"]
    return token


def _login(browser: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log ``browser`` in as the page does; returns the CSRF token for its writes."""
    token = _csrf(browser)
    response = browser.post(
        "/login", json={"name": name, "password": password}, headers={"Origin": ORIGIN, "X-Cairn-Token": token}
    )
    assert response.status_code == 200, response.text
    return token


def _write_headers(token: str) -> dict[str, str]:
    return {"Origin": ORIGIN, "X-Cairn-Token": token}


def _error(response: Any) -> str:
    body = response.json()
    return str(body["error"]["message"] if "error" in body else body["message"])


# -- login, session cookies -------------------------------------------------------------------------


def test_login_sets_a_session_cookie_that_authenticates_the_browser(env: AuthEnv) -> None:
    with env.browser() as browser:
        anonymous = browser.get("/api/session").json()
        assert anonymous["auth"] is True and anonymous["user"] is None and len(anonymous["csrf"]) >= 32
        assert browser.get("/api/experiments").status_code == 401
        token = anonymous["csrf"]
        response = browser.post("/login", json={"name": "reader", "password": PASSWORD}, headers=_write_headers(token))
        assert response.status_code == 200
        assert response.json()["user"] == {"name": "reader", "is_admin": False}
        cookie = response.headers["set-cookie"]
        flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert cookie.startswith(f"{COOKIE_NAME}=") and {"httponly", "samesite", "path"} <= flags
        assert "samesite=strict" in cookie.lower() and "secure" not in flags  # plain http here
        assert browser.get("/api/session").json()["user"] == {"name": "reader", "is_admin": False}
        assert browser.get("/api/experiments").status_code == 200


def test_a_token_logs_in_too_and_a_form_body_works(env: AuthEnv) -> None:
    with env.browser() as browser:
        token = _csrf(browser)
        response = browser.post(
            "/login", data={"name": "manager", "password": env.tokens["manager"]}, headers=_write_headers(token)
        )
        assert response.status_code == 200, response.text
        assert browser.get("/api/session").json()["user"]["name"] == "manager"


def test_a_wrong_password_and_an_unknown_user_get_the_same_401(env: AuthEnv) -> None:
    with env.browser() as browser:
        token = _csrf(browser)
        answers = [
            browser.post("/login", json={"name": name, "password": secret}, headers=_write_headers(token))
            for name, secret in (("reader", "wrong password"), ("nobody", PASSWORD))
        ]
        assert [a.status_code for a in answers] == [401, 401]
        assert _error(answers[0]) == _error(answers[1]) == "wrong user name or password (or token)"
        assert all(COOKIE_NAME not in a.headers.get("set-cookie", "") for a in answers)
        missing = browser.post("/login", json={"name": "reader"}, headers=_write_headers(token))
        assert missing.status_code == 400 and "password" in _error(missing)


def test_login_is_protected_against_csrf(env: AuthEnv) -> None:
    """Another site must not log the browser in under its own account (login CSRF)."""
    with env.browser() as browser:
        token = _csrf(browser)
        credentials = {"name": "reader", "password": PASSWORD}
        for headers in (
            {"Origin": ORIGIN},
            {"X-Cairn-Token": token},
            {"Origin": "http://evil.example", "X-Cairn-Token": token},
        ):
            response = browser.post("/login", json=credentials, headers=headers)
            assert response.status_code == 403, headers
        assert browser.get("/api/session").json()["user"] is None


def test_altered_expired_and_foreign_cookies_are_refused(env: AuthEnv) -> None:
    good = issue_cookie("reader", env.users)
    version, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    as_root = base64.urlsafe_b64encode(json.dumps({**claims, "u": "root"}).encode()).rstrip(b"=").decode()
    expired = issue_cookie("reader", env.users, now=time.time() - SESSION_LIFETIME - 5)
    future = issue_cookie("reader", env.users, now=time.time() + 3600)
    bad = {
        "payload swapped": f"{version}.{as_root}.{signature}",
        "signature altered": f"{good[:-2]}{'A' if good[-2] != 'A' else 'B'}{good[-1]}",
        "expired": expired,
        "issued in the future": future,
        "other version": f"v0.{payload}.{signature}",
        "garbage": "not-a-cookie",
    }
    for label, value in bad.items():
        assert user_of_cookie(value, env.users) is None, label
        with env.browser() as browser:
            browser.cookies.set(COOKIE_NAME, value)
            response = browser.get("/api/experiments")
            assert response.status_code == 401, label
            assert browser.get("/api/session").json()["user"] is None, label
    assert user_of_cookie(good, env.users) == "reader"


def test_a_removed_users_cookie_stops_working_at_once(env: AuthEnv) -> None:
    with env.browser() as browser:
        _login(browser, "reader")
        assert browser.get("/api/experiments").status_code == 200
        env.users.remove("reader")
        response = browser.get("/api/experiments")
        assert response.status_code == 401 and "session" in _error(response)


def test_logout_clears_the_cookie(env: AuthEnv) -> None:
    with env.browser() as browser:
        token = _login(browser, "reader")
        response = browser.post("/logout", headers=_write_headers(token))
        assert response.status_code == 200
        assert (
            f'{COOKIE_NAME}=""' in response.headers["set-cookie"]
            or "max-age=0" in response.headers["set-cookie"].lower()
        )
        assert browser.get("/api/session").json()["user"] is None
        assert browser.get("/api/experiments").status_code == 401
        assert browser.post("/logout").status_code == 403  # a cross-site logout is refused too


def test_cookies_are_secure_over_https(env: AuthEnv) -> None:
    with env.browser(base_url=f"https://{HOST}:{PORT}") as browser:
        session = browser.get("/api/session")
        assert "secure" in session.headers["set-cookie"].lower()
        token = session.json()["csrf"]
        headers = {"Origin": f"https://{HOST}:{PORT}", "X-Cairn-Token": token}
        response = browser.post("/login", json={"name": "reader", "password": PASSWORD}, headers=headers)
        assert response.status_code == 200, response.text
        assert "secure" in response.headers["set-cookie"].lower()


def test_without_auth_there_is_no_login(ui_env: UiEnv) -> None:
    session = ui_env.http.get("/api/session").json()
    assert session["auth"] is False and session["user"] is None
    response = ui_env.http.post("/login", json={"name": "x", "password": "y"}, headers=ui_env.write_headers())
    assert response.status_code == 404 and "without --auth" in _error(response)
    experiments = ui_env.http.get("/api/experiments").json()["experiments"]
    assert experiments and {e["permission"] for e in experiments} == {"MANAGE"}


# -- CSRF ---------------------------------------------------------------------------------------------


def test_a_cookie_authenticated_write_needs_the_csrf_token(env: AuthEnv) -> None:
    with env.browser() as browser:
        token = _login(browser, "manager")
        url = f"/api/runs/{env.open_run}"
        refused = [
            browser.delete(url),
            browser.delete(url, headers={"Origin": ORIGIN}),
            browser.delete(url, headers={"Origin": ORIGIN, "X-Cairn-Token": "guess"}),
            browser.delete(url, headers={"X-Cairn-Token": token}),
            # credentials in a header do not excuse a request that carries the browser's cookies
            browser.delete(url, headers={"Authorization": f"Bearer {env.tokens['manager']}"}),
        ]
        assert [r.status_code for r in refused] == [403] * len(refused)
        assert env.client.get_run(env.open_run).info.lifecycle_stage.value == "active"
        assert browser.delete(url, headers=_write_headers(token)).status_code == 200
        assert browser.post(f"{url}/restore", headers=_write_headers(token)).status_code == 200


def test_an_api_client_with_a_header_needs_no_origin_or_token(env: AuthEnv) -> None:
    """The request mlflow's client or curl sends: credentials in Authorization, no cookie, no Origin."""
    with env.browser() as api:
        url = f"/api/runs/{env.open_run}"
        bearer = {"Authorization": f"Bearer {env.tokens['manager']}"}
        assert api.delete(url, headers=bearer).status_code == 200
        basic = base64.b64encode(f"manager:{PASSWORD}".encode()).decode()
        assert api.post(f"{url}/restore", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        reader = api.delete(url, headers={"Authorization": f"Bearer {env.tokens['reader']}"})
        assert reader.status_code == 403 and "MANAGE" in _error(reader)
        assert api.delete(url).status_code in (401, 403)


def test_two_workers_accept_each_others_cookies_and_csrf_tokens(env: AuthEnv) -> None:
    """Two app instances over one database (two processes of ``--workers 2``): nothing in memory."""
    with env.browser() as first, env.browser() as second:
        token = _login(first, "manager")
        second.cookies = first.cookies
        assert second.get("/api/session").json()["user"]["name"] == "manager"
        assert second.get("/api/experiments").status_code == 200
        url = f"/api/runs/{env.open_run}"
        assert second.delete(url, headers=_write_headers(token)).status_code == 200
        assert first.post(f"{url}/restore", headers=_write_headers(token)).status_code == 200


# -- what each user sees ------------------------------------------------------------------------------


def test_a_read_user_sees_only_granted_experiments_and_models(env: AuthEnv) -> None:
    with env.browser() as browser:
        token = _login(browser, "reader")
        experiments = browser.get("/api/experiments", params={"view": "all"}).json()["experiments"]
        assert [(e["name"], e["permission"]) for e in experiments] == [("open", "READ")]
        assert browser.get(f"/api/experiments/{env.open_id}").json()["experiment"]["permission"] == "READ"
        runs = browser.get(f"/api/experiments/{env.open_id}/runs").json()
        assert [r["run_name"] for r in runs["runs"]] == ["open-run"] and runs["permission"] == "READ"
        assert browser.get(f"/api/runs/{env.open_run}").json()["permission"] == "READ"
        models = browser.get("/api/models").json()["models"]
        assert [(m["name"], m["permission"]) for m in models] == [("open-model", "READ")]
        denied = [
            browser.get(f"/api/experiments/{env.secret_id}"),
            browser.get(f"/api/experiments/{env.secret_id}/runs"),
            browser.get(f"/api/runs/{env.secret_run}"),
            browser.get(f"/api/runs/{env.secret_run}/metric", params={"key": "loss"}),
            browser.get(f"/api/runs/{env.secret_run}/artifacts"),
            browser.get("/api/compare", params={"runs": [env.open_run, env.secret_run]}),
            browser.get("/api/model", params={"name": "secret-model"}),
            browser.delete(f"/api/runs/{env.open_run}", headers=_write_headers(token)),
        ]
        assert [d.status_code for d in denied] == [403] * len(denied)
        assert all("ermission denied" in _error(d) for d in denied)
        assert env.client.get_run(env.open_run).info.lifecycle_stage.value == "active"


def test_permissions_follow_the_grants_admins_see_everything(env: AuthEnv) -> None:
    with env.browser() as browser:
        _login(browser, "manager")
        experiments = browser.get("/api/experiments").json()["experiments"]
        assert [(e["name"], e["permission"]) for e in experiments] == [("open", "MANAGE")]
        assert browser.get("/api/models").json()["models"] == []
    with env.browser() as browser:
        _login(browser, "root")
        assert browser.get("/api/session").json()["user"] == {"name": "root", "is_admin": True}
        names = {e["name"]: e["permission"] for e in browser.get("/api/experiments").json()["experiments"]}
        assert names == {"Default": "MANAGE", "open": "MANAGE", "secret": "MANAGE"}
        assert {m["name"] for m in browser.get("/api/models").json()["models"]} == {"open-model", "secret-model"}
        assert browser.get(f"/api/runs/{env.secret_run}").json()["permission"] == "MANAGE"


# -- in a browser -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("browser_ready")
def test_login_permissions_and_delete_in_headless_chromium(tmp_path: Path) -> None:
    """`cairn server --auth --workers 2` (the real command, two processes: every request may reach
    either) and Chromium: a READ user logs in, sees only its experiment and no delete control, gets
    a 403 shown for another experiment; a MANAGE user opens MLflow's run URL and deletes the run."""
    home = tmp_path / "store"
    client = Client(str(home))
    data = populate(client, tmp_path / "scratch")
    users = user_store_for(client)
    for name in ("reader", "manager"):
        users.add(name, password=PASSWORD)
    users.grant("reader", ResourceKind.EXPERIMENT, data.experiment_id, Permission.READ)
    users.grant("manager", ResourceKind.EXPERIMENT, data.experiment_id, Permission.MANAGE)
    client.flush()
    client.store.close()
    scenario = tmp_path / "scenario.json"
    scenario.write_text(
        json.dumps(
            {
                "password": PASSWORD,
                "reader": "reader",
                "manager": "manager",
                "experiment_id": data.experiment_id,
                "hidden_experiment_id": data.empty_experiment_id,
                "run_id": data.wider,
                "run_name": "wider",
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    with cairn_server_processes(str(home), None, tmp_path, [["--auth", "--workers", "2"]], env, timeout=30) as running:
        completed = subprocess.run(
            ["node", str(E2E_DIR / "run_auth.mjs"), running[0].url, str(ARTIFACTS), str(scenario)],
            cwd=E2E_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON result from run_auth.mjs:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
    result = json.loads(lines[-1])
    failed = [f"{c['name']}: {c['detail']}" for c in result["checks"] if not c["ok"]]
    assert failed == [], "\n".join(failed)
    names = {c["name"] for c in result["checks"]}
    for expected in (
        "a READ user sees only the experiments granted to it",
        "a READ user sees no delete button on the run page",
        "a 403 is shown as an error",
        "a MANAGE user deletes a run",
        "a 401 from any call brings the login view back and clears the header",
    ):
        assert expected in names, f"check {expected!r} did not run"
    assert result["console_errors"] == [] and result["dialogs"] == []
    reopened = Client(str(home))
    try:
        assert reopened.get_run(data.wider).info.lifecycle_stage.value == "deleted"
    finally:
        reopened.store.close()
