"""``cairn users ...`` and ``cairn server/ui --auth`` through click's CliRunner, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cairn.cli import main
from cairn.server.auth.permissions import Permission, Principal
from cairn.server.auth.users import user_store_for
from cairn.tracking.client import Client


def _cairn(db_url: str, *args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--store", db_url, *args], input=input)
    return result.exit_code, result.stdout, result.stderr


def _token(stdout: str) -> str:
    match = re.search(r"^token: (cairn_\S+)$", stdout, re.MULTILINE)
    assert match is not None, stdout
    return match.group(1)


def test_add_prints_the_token_once_and_the_store_knows_it(db_url: str) -> None:
    code, out, err = _cairn(db_url, "users", "add", "alice", "--admin")
    assert code == 0, err
    token = _token(out)
    assert "Shown once" in err
    client = Client(db_url)
    try:
        assert user_store_for(client).by_token(token) == Principal("alice", True, {}, {})
    finally:
        client.store.close()
    code, out, err = _cairn(db_url, "users", "add", "alice")
    assert code == 1 and "'alice' already exists" in err


def test_add_with_a_password_asks_twice_hidden(db_url: str) -> None:
    code, out, err = _cairn(db_url, "users", "add", "bob", "--password", input="bob-secret-1\nbob-secret-1\n")
    assert code == 0, err
    assert "bob-secret-1" not in out
    client = Client(db_url)
    try:
        assert user_store_for(client).by_login("bob", "bob-secret-1") is not None
    finally:
        client.store.close()
    code, _, err = _cairn(db_url, "users", "add", "carl", "--password", input="short\nshort\n")
    assert code == 1 and "at least 8" in err


def test_grant_revoke_list_token_remove(db_url: str) -> None:
    client = Client(db_url)
    experiment_id = client.create_experiment("vision")
    client.store.close()
    assert _cairn(db_url, "users", "add", "dana")[0] == 0
    code, out, err = _cairn(db_url, "users", "grant", "dana", "--experiment", "vision", "--permission", "edit")
    assert code == 0, err
    assert f"dana has EDIT on experiment {experiment_id}" in out
    assert _cairn(db_url, "users", "grant", "dana", "--model", "churn", "--permission", "READ")[0] == 0
    code, out, _ = _cairn(db_url, "users", "list")
    assert code == 0 and "dana" in out and f"experiment {experiment_id}: EDIT" in out and "model churn: READ" in out
    client = Client(db_url)
    try:
        users = user_store_for(client)
        assert users.by_name("dana") == Principal(
            "dana", False, {experiment_id: Permission.EDIT}, {"churn": Permission.READ}
        )
        assert _cairn(db_url, "users", "revoke", "dana", "--model", "churn")[0] == 0
        code, out, _ = _cairn(db_url, "users", "token", "dana")
        new = _token(out)
        assert code == 0 and users.by_token(new) == Principal("dana", False, {experiment_id: Permission.EDIT}, {})
        assert _cairn(db_url, "users", "remove", "dana")[0] == 0
        assert users.by_token(new) is None
    finally:
        client.store.close()
    code, _, err = _cairn(db_url, "users", "remove", "dana")
    assert code == 1 and "no user named 'dana'" in err
    code, _, err = _cairn(db_url, "users", "grant", "x", "--experiment", "nope", "--permission", "READ")
    assert code == 1 and "no experiment with id or name 'nope'" in err
    code, _, err = _cairn(db_url, "users", "grant", "x", "--permission", "READ")
    assert code == 2 and "exactly one of --experiment" in err


@pytest.mark.parametrize("command", ["server", "ui"])
def test_a_public_host_needs_auth_or_the_insecure_flag(command: str, tmp_path: Path) -> None:
    code, _, err = _cairn(str(tmp_path / "store"), command, "--host", "0.0.0.0")
    assert code == 2 and "--auth" in err and "--insecure-no-auth" in err


def test_users_refuse_a_store_that_is_not_sql(tmp_path: Path) -> None:
    code, _, err = _cairn("http://127.0.0.1:9", "users", "list")
    assert code == 1 and "--auth needs a SQLite or PostgreSQL store" in err


def test_allow_host_accepts_a_public_name_behind_a_reverse_proxy() -> None:
    from cairn.server.app import server_hosts

    hosts = server_hosts("127.0.0.1", 5000, ["Cairn.Example.com"])
    assert {"cairn.example.com", "127.0.0.1:5000", "localhost:5000"} <= hosts
    assert "evil.example" not in hosts
