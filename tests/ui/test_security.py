"""DNS-rebinding Host checks, same-origin + token checks on writes, security headers, and a guard
that the front end never turns data into HTML."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from cairn.ui.app import STATIC_DIR
from cairn.ui.security import APP_CSP, allowed_hosts_for
from tests.ui.conftest import ORIGIN, TOKEN, UiEnv


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


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Cairn-Token": TOKEN},  # no Origin, no Referer
        {"Origin": "http://evil.example", "X-Cairn-Token": TOKEN},
        {"Origin": "null", "X-Cairn-Token": TOKEN},
        {"Origin": "http://127.0.0.1:5001", "X-Cairn-Token": TOKEN},
        {"Origin": "https://127.0.0.1:5000", "X-Cairn-Token": TOKEN},
        {"Referer": "http://evil.example/page", "X-Cairn-Token": TOKEN},
        {"Origin": ORIGIN},  # right origin, no token
        {"Origin": ORIGIN, "X-Cairn-Token": "guess"},
        {"Referer": f"{ORIGIN}/", "X-Cairn-Token": "guess"},
        {"Origin": ORIGIN, "X-Cairn-Token": TOKEN, "Sec-Fetch-Site": "cross-site"},
        {"Origin": ORIGIN, "X-Cairn-Token": TOKEN, "Sec-Fetch-Site": "same-site"},
    ],
)
def test_state_changing_requests_need_same_origin_and_the_token(ui_env: UiEnv, headers: dict[str, str]) -> None:
    assert _delete(ui_env, headers) == 403
    restore = ui_env.http.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers)
    assert restore.status_code == 403
    run = ui_env.http.get(f"/api/runs/{ui_env.data.hostile}").json()["run"]
    assert run["lifecycle_stage"] == "active"


def test_same_origin_referer_with_token_is_accepted(ui_env: UiEnv) -> None:
    headers = {"Referer": f"{ORIGIN}/#/runs/{ui_env.data.hostile}", "X-Cairn-Token": TOKEN}
    assert _delete(ui_env, headers) == 200
    assert ui_env.http.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers).status_code == 200


def test_a_localhost_page_may_write_through_its_own_origin(ui_env: UiEnv) -> None:
    headers = {"Host": "localhost:5000", "Origin": "http://localhost:5000", "X-Cairn-Token": TOKEN}
    assert _delete(ui_env, headers) == 200
    headers["Origin"] = ORIGIN  # the page is on localhost: a 127.0.0.1 origin is another site
    assert ui_env.http.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers).status_code == 403
    headers["Origin"] = "http://localhost:5000"
    assert ui_env.http.post(f"/api/runs/{ui_env.data.hostile}/restore", headers=headers).status_code == 200


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
