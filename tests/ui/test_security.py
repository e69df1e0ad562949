"""DNS-rebinding Host checks, same-origin + double-submit CSRF token checks on writes, the API-client
exemption (Authorization header, no cookie), security headers, and a guard that the front end never
turns data into HTML."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from cairn.ui.app import STATIC_DIR, create_app
from cairn.ui.security import APP_CSP, allowed_hosts_for
from tests.ui.conftest import CSRF_COOKIE, ORIGIN, TOKEN, UiEnv


@pytest.mark.parametrize(
    "host", ["evil.example:5000", "127.0.0.1:5001", "localhost", "127.0.0.1", "attacker.localhost:5000", ""]
)
def test_requests_for_another_host_are_refused(ui_env: UiEnv, host: str) -> None:
    for path in ("/", "/api/experiments", "/static/js/main.js"):
        response = ui_env.http.get(path, headers={"Host": host})
        assert response.status_code == 400, (host, path)
        assert "invalid Host header" in response.text
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("host", ["127.0.0.1:5000", "localhost:5000", "LOCALHOST:5000", "[::1]:5000"])
def test_loopback_spellings_of_the_bound_address_are_accepted(ui_env: UiEnv, host: str) -> None:
    assert ui_env.http.get("/api/experiments", headers={"Host": host}).status_code == 200


def test_allowed_hosts_for_binds() -> None:
    assert allowed_hosts_for("127.0.0.1", 5000) == {"127.0.0.1:5000", "localhost:5000", "[::1]:5000"}
    assert allowed_hosts_for("::1", 8080) == {"127.0.0.1:8080", "localhost:8080", "[::1]:8080"}
    assert allowed_hosts_for("10.1.2.3", 5000) == {"10.1.2.3:5000"}
    assert "ml-box:5000" in allowed_hosts_for("10.1.2.3", 5000, ["ml-box"])
    wildcard = allowed_hosts_for("0.0.0.0", 5000)
    assert "localhost:5000" in wildcard and f"{socket.gethostname().lower()}:5000" in wildcard
    assert "0.0.0.0:5000" not in wildcard
    assert "localhost" in allowed_hosts_for("127.0.0.1", 80)


def _delete(ui_env: UiEnv, headers: dict[str, str]) -> int:
    return ui_env.http.delete(f"/api/runs/{ui_env.data.hostile}", headers=headers).status_code


TOKENS = {"X-Cairn-Token": TOKEN, "Cookie": CSRF_COOKIE}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        TOKENS,  # no Origin, no Referer
        {"Origin": "http://evil.example", **TOKENS},
        {"Origin": "null", **TOKENS},
        {"Origin": "http://127.0.0.1:5001", **TOKENS},
        {"Origin": "https://127.0.0.1:5000", **TOKENS},
        {"Referer": "http://evil.example/page", **TOKENS},
        {"Origin": ORIGIN, "Cookie": CSRF_COOKIE},  # right origin, no token header
        {"Origin": ORIGIN, "X-Cairn-Token": TOKEN},  # right origin, header without its cookie
        {"Origin": ORIGIN, "X-Cairn-Token": "guess", "Cookie": CSRF_COOKIE},
        {"Origin": ORIGIN, "X-Cairn-Token": "guess", "Cookie": "cairn_csrf=other"},
        {"Referer": f"{ORIGIN}/", "X-Cairn-Token": "guess", "Cookie": CSRF_COOKIE},
        {"Origin": ORIGIN, **TOKENS, "Sec-Fetch-Site": "cross-site"},
        {"Origin": ORIGIN, **TOKENS, "Sec-Fetch-Site": "same-site"},
        # credentials in a header do not excuse a write that also carries cookies (a browser's) ...
        {"Authorization": "Bearer t", "Cookie": CSRF_COOKIE},
        # ... nor one a browser marks as cross-site (HTTP basic credentials it cached are sent by itself)
        {"Authorization": "Basic dTpw", "Sec-Fetch-Site": "cross-site"},
        {"Authorization": "Basic dTpw", "Origin": "http://evil.example"},
    ],
)
def test_state_changing_requests_need_same_origin_and_the_token(ui_env: UiEnv, headers: dict[str, str]) -> None:
    assert _delete(ui_env, headers) == 403
    restore = ui_env.http.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers)
    assert restore.status_code == 403
    run = ui_env.http.get(f"/api/runs/{ui_env.data.hostile}").json()["run"]
    assert run["lifecycle_stage"] == "active"


def test_same_origin_referer_with_token_is_accepted(ui_env: UiEnv) -> None:
    headers = {"Referer": f"{ORIGIN}/#/runs/{ui_env.data.hostile}", **TOKENS}
    assert _delete(ui_env, headers) == 200
    assert ui_env.http.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers).status_code == 200


def test_a_localhost_page_may_write_through_its_own_origin(ui_env: UiEnv) -> None:
    headers = {"Host": "localhost:5000", "Origin": "http://localhost:5000", **TOKENS}
    assert _delete(ui_env, headers) == 200
    headers["Origin"] = ORIGIN  # the page is on localhost: a 127.0.0.1 origin is another site
    assert ui_env.http.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers).status_code == 403
    headers["Origin"] = "http://localhost:5000"
    assert ui_env.http.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers).status_code == 200


def test_an_api_client_with_credentials_in_a_header_and_no_cookie_needs_no_origin_or_token(ui_env: UiEnv) -> None:
    """No cookie, credentials in Authorization: no browser sent this cross-site, so no CSRF check
    (without --auth the UI ignores the header itself: this is only the CSRF layer)."""
    headers = {"Authorization": "Bearer some-token"}
    assert _delete(ui_env, headers) == 200
    assert ui_env.http.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers).status_code == 200
    headers["Sec-Fetch-Site"] = "same-origin"
    assert _delete(ui_env, headers) == 200
    assert ui_env.http.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers).status_code == 200


def test_the_csrf_token_is_stateless(ui_env: UiEnv) -> None:
    """Any app instance (worker) accepts a token another one handed out: the cookie is the reference."""
    session = ui_env.http.get("/api/session")
    token = session.json()["csrf"]
    assert len(token) >= 32 and session.cookies["cairn_csrf"] == token
    cookie = session.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    again = ui_env.http.get("/api/session", headers={"Cookie": f"cairn_csrf={token}"})
    assert again.json()["csrf"] == token and "set-cookie" not in again.headers
    other = create_app(ui_env.client, host="127.0.0.1", port=5000)
    with TestClient(other, base_url=ORIGIN) as second:
        headers = {"Origin": ORIGIN, "X-Cairn-Token": token, "Cookie": f"cairn_csrf={token}"}
        assert second.delete(f"/api/runs/{ui_env.data.hostile}", headers=headers).status_code == 200
        assert second.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers).status_code == 200


def test_get_cannot_change_state(ui_env: UiEnv) -> None:
    for action in ("delete", "restore"):
        assert ui_env.http.get(f"/api/runs/{ui_env.data.hostile}/{action}").status_code in (404, 405)
    assert ui_env.http.get(f"/api/runs/{ui_env.data.hostile}").json()["run"]["lifecycle_stage"] == "active"


def test_security_headers_on_pages_api_and_static(ui_env: UiEnv) -> None:
    for path in ("/", "/api/experiments", "/static/js/main.js", "/api/nothing", "/static/nothing.js"):
        headers = ui_env.http.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["content-security-policy"] == APP_CSP, path
    csp = ui_env.http.get("/").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and "unsafe" not in csp
    assert directives["frame-ancestors"] == "'none'" and directives["default-src"] == "'none'"
    assert ui_env.http.get("/api/experiments").headers["cache-control"] == "no-store"


def _static_sources() -> list[Path]:
    return sorted(p for p in STATIC_DIR.rglob("*") if p.suffix in (".js", ".html") and "vendor" not in p.parts)


def test_front_end_never_parses_data_as_html() -> None:
    """Every page builds its DOM with createElement/textContent (js/dom.js); HTML sinks are banned."""
    banned = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setAttribute\(\s*['\"]on"
    )
    sources = _static_sources()
    assert len(sources) >= 8
    offenders = [f"{p.name}: {m.group(0)}" for p in sources for m in banned.finditer(p.read_text())]
    assert offenders == []


def test_index_has_no_inline_script_or_style() -> None:
    index = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", index) == []
    assert (
        "<style" not in index and " style=" not in index and " on" not in re.sub(r"<noscript>.*?</noscript>", "", index)
    )
