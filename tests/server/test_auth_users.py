"""Users, tokens, passwords, grants and shared secrets in the tracking database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cairn.errors import InvalidArgument, NotFound, ResourceAlreadyExists, UserNotFound
from cairn.server.auth import hashing
from cairn.server.auth.permissions import Permission, Principal, ResourceKind
from cairn.server.auth.users import UserStore, user_store_for
from cairn.store._sql import HEAD_REVISION, current_revision, upgrade_schema
from cairn.tracking.client import Client
from tests.conftest import driver_url
from tests.store.conftest import empty_db_url  # noqa: F401  (the fixture, for the upgrade test)
from tests.store.old_revisions import database_at

EXPERIMENT, MODEL = ResourceKind.EXPERIMENT, ResourceKind.REGISTERED_MODEL


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[Client]:
    opened = Client(db_url, str(tmp_path / "artifacts"))
    yield opened
    opened.store.close()


@pytest.fixture
def users(client: Client) -> UserStore:
    return user_store_for(client)


def _database_text(db_url: str) -> str:
    """Every value of every row of every table, as one string."""
    engine = sa.create_engine(driver_url(db_url))
    try:
        with engine.connect() as connection:
            tables = sa.inspect(connection).get_table_names()
            rows = [repr(tuple(row)) for t in tables for row in connection.execute(sa.text(f'SELECT * FROM "{t}"'))]
    finally:
        engine.dispose()
    return "\n".join(rows)


def test_a_token_and_a_password_are_stored_hashed_only(users: UserStore, db_url: str) -> None:
    token = users.add("alice", password="correct horse")
    assert token.startswith("cairn_") and len(token) > 40
    text = _database_text(db_url)
    assert "alice" in text
    assert token not in text and token[len("cairn_") :] not in text and "correct horse" not in text
    assert hashing.token_hash(token) in text
    assert f"scrypt${2**14}$8$1$" in text  # the parameters travel with the hash


def test_password_hashes_are_salted_scrypt_with_their_parameters() -> None:
    first, second = hashing.hash_password("pw-123456"), hashing.hash_password("pw-123456")
    assert first != second  # a random salt each time
    scheme, n, r, p, salt, key = first.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", 2**14, 8, 1)
    assert len(hashing.base64.b64decode(salt)) == 16 and len(hashing.base64.b64decode(key)) == 32
    assert hashing.verify_password("pw-123456", first) and not hashing.verify_password("pw-1234567", first)
    assert not hashing.verify_password("pw-123456", "plain-text") and not hashing.verify_password(
        "x", "scrypt$3$8$1$a$b"
    )


def test_token_and_login_authenticate_and_carry_the_grants(users: UserStore) -> None:
    token = users.add("alice", password="s3cret-pw")
    users.grant("alice", EXPERIMENT, "0", Permission.EDIT)
    users.grant("alice", MODEL, "churn", Permission.READ)
    expected = Principal("alice", False, {"0": Permission.EDIT}, {"churn": Permission.READ})
    assert users.by_token(token) == expected
    assert users.by_login("alice", "s3cret-pw") == expected
    assert users.by_login("alice", token) == expected  # basic auth with the token as the password
    assert users.by_login("alice", "wrong-pw") is None and users.by_login("nobody", "s3cret-pw") is None
    assert users.by_token("cairn_unknown") is None
    assert users.by_name("alice") == expected
    assert expected.experiment_permission("0") is Permission.EDIT
    assert expected.experiment_permission("1") is Permission.NONE
    admin = Principal("root", True, {}, {})
    assert admin.experiment_permission("42") is Permission.MANAGE and admin.model_permission("x") is Permission.MANAGE


def test_rotating_the_token_or_removing_the_user_ends_the_old_token(users: UserStore) -> None:
    old = users.add("bob")
    new = users.rotate_token("bob")
    assert users.by_token(old) is None and users.by_token(new) is not None
    users.grant("bob", EXPERIMENT, "0", Permission.READ)
    users.remove("bob")
    assert users.by_token(new) is None and users.by_name("bob") is None
    assert users.list_users() == []
    with pytest.raises(UserNotFound, match="no user named 'bob'"):
        users.remove("bob")
    users.add("bob")  # the name is free again, with no grants left over
    assert users.by_name("bob") == Principal("bob", False, {}, {})


def test_grants_replace_revoke_and_follow_a_renamed_model(users: UserStore) -> None:
    users.add("carol")
    users.grant("carol", MODEL, "churn", Permission.READ)
    users.grant("carol", MODEL, "churn", Permission.MANAGE)  # replaces
    users.grant("carol", EXPERIMENT, "7", Permission.EDIT)
    [info] = users.list_users()
    assert {(g.kind, g.resource, g.permission) for g in info.grants} == {
        (MODEL, "churn", Permission.MANAGE),
        (EXPERIMENT, "7", Permission.EDIT),
    }
    users.rename_resource(MODEL, "churn", "churn-v2")
    assert users.by_name("carol") == Principal("carol", False, {"7": Permission.EDIT}, {"churn-v2": Permission.MANAGE})
    users.forget_resource(MODEL, "churn-v2")
    users.revoke("carol", EXPERIMENT, "7")
    assert users.by_name("carol") == Principal("carol", False, {}, {})
    with pytest.raises(NotFound, match="no grant"):
        users.revoke("carol", EXPERIMENT, "7")


def test_bad_names_passwords_and_grants_are_refused(users: UserStore) -> None:
    for name in ("", "a:b", " alice", "x" * 300, "-dash"):
        with pytest.raises(InvalidArgument, match="invalid user name"):
            users.add(name)
    with pytest.raises(InvalidArgument, match="at least 8"):
        users.add("dave", password="short")
    users.add("dave")
    with pytest.raises(ResourceAlreadyExists, match="'dave' already exists"):
        users.add("dave")
    with pytest.raises(InvalidArgument, match="numeric id"):
        users.grant("dave", EXPERIMENT, "Default", Permission.READ)
    with pytest.raises(UserNotFound):
        users.grant("erin", EXPERIMENT, "0", Permission.READ)
    with pytest.raises(InvalidArgument, match="READ, EDIT or MANAGE"):
        Permission.parse("WRITE")
    assert Permission.parse("manage") is Permission.MANAGE and Permission.parse("NO_PERMISSIONS") is Permission.NONE


def test_a_shared_secret_is_the_same_for_every_process_and_created_once(client: Client, db_url: str) -> None:
    others = [Client(db_url, "/unused") for _ in range(4)]
    try:
        found: list[bytes] = []
        threads = [
            threading.Thread(target=lambda c=c: found.append(user_store_for(c).shared_secret("ui"))) for c in others
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(found) == 4 and len(set(found)) == 1 and len(found[0]) == 32
        assert user_store_for(client).shared_secret("ui") == found[0]
        assert user_store_for(client).shared_secret("other") != found[0]
    finally:
        for other in others:
            other.store.close()


def test_users_need_a_sql_store() -> None:
    class NotSql:
        store = object()

    with pytest.raises(InvalidArgument, match="--auth needs a SQLite or PostgreSQL store"):
        user_store_for(NotSql())  # type: ignore[arg-type]


def test_upgrade_from_0004_adds_the_user_tables(
    empty_db_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    database_at(empty_db_url, str(tmp_path / "artifacts"), "0004", check_absent="users")
    assert upgrade_schema(empty_db_url) == ("0004", HEAD_REVISION)
    assert current_revision(empty_db_url) == HEAD_REVISION
    client = Client(empty_db_url, str(tmp_path / "artifacts"))
    try:
        users = user_store_for(client)
        token = users.add("alice")
        assert users.by_token(token) == Principal("alice", False, {}, {})
    finally:
        client.store.close()
