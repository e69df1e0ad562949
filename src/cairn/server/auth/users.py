"""The users of ``cairn server --auth``, their grants and the secrets server processes share.

Everything lives in the tracking store's database (tables ``cairn_users``, ``cairn_user_permissions``,
``cairn_server_secrets``, revision 0005), read afresh on every request: a removed user or a rotated token
stops working at once in every server process, and several processes on one PostgreSQL agree.
"""

from __future__ import annotations

import functools
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cairn.errors import InvalidArgument, NotFound, UserNotFound
from cairn.server.auth.hashing import hash_password, new_token, token_hash, verify_password
from cairn.server.auth.permissions import Permission, Principal, ResourceKind
from cairn.store._sql.schema import experiments, runs, server_secrets, user_permissions, users
from cairn.store._sql.util import now_ms

if TYPE_CHECKING:
    from cairn.store._sql.engine import Database
    from cairn.tracking.client import Client

__all__ = ["MIN_PASSWORD_LENGTH", "Grant", "Reads", "UserInfo", "UserStore", "user_store_for"]

MIN_PASSWORD_LENGTH = 8
SECRET_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,255}$")
_MAX_RESOURCE = 256
_MEMO_SIZE = 1024
_PRINCIPAL_COLUMNS = (
    users.c.id,
    users.c.name,
    users.c.is_admin,
    users.c.token_hash,
    users.c.password_hash,
    user_permissions.c.resource_type,
    user_permissions.c.resource,
    user_permissions.c.permission,
)
_JOINED = users.outerjoin(user_permissions, user_permissions.c.user_id == users.c.id)


@functools.cache
def _dummy_password_hash() -> str:
    """A hash no password matches, for spending an unknown user's login the same work as a known one's."""
    return hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Grant:
    """One user's permission on one experiment (by id) or registered model (by name)."""

    kind: ResourceKind
    resource: str
    permission: Permission


@dataclass(frozen=True)
class UserInfo:
    """A user as ``cairn users list`` shows it (never its token or password)."""

    name: str
    is_admin: bool
    has_password: bool
    created_time: int
    grants: tuple[Grant, ...]
    user_id: int


class _PasswordMemo:
    """Remembers which (password, stored hash) pairs verified, so a client sending its password with every
    request (basic auth) pays for scrypt once per process instead of once per request.

    Entries are keyed by an HMAC (a random per-process key) of the password and the stored hash: a changed
    password or a removed user no longer matches (the user row is read on every request, and its hash is
    part of the key), and the memo holds no password.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def _entry(self, password: str, encoded: str) -> bytes:
        message = encoded.encode() + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, "sha256").digest()

    def verify(self, password: str, encoded: str) -> bool:
        entry = self._entry(password, encoded)
        with self._lock:
            if entry in self._seen:
                self._seen.move_to_end(entry)
                return True
        if not verify_password(password, encoded):
            return False
        with self._lock:
            self._seen[entry] = None
            while len(self._seen) > _MEMO_SIZE:
                self._seen.popitem(last=False)
        return True


def check_user_name(name: str) -> str:
    """``name`` if it can name a user: 1-256 letters, digits and ``._@+-``, starting with a letter or digit
    (no ``:``, which HTTP basic auth uses as its separator).

    Raises:
        InvalidArgument: any other name.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(
            f"invalid user name {name!r}: use 1-256 letters, digits and . _ @ + - (starting with a letter or digit)"
        )
    return name


def check_password(password: str) -> str:
    """``password`` if it is acceptable (at least 8 characters). Raises InvalidArgument otherwise."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgument(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


def _check_resource(kind: ResourceKind, resource: str) -> str:
    if not resource or len(resource) > _MAX_RESOURCE:
        raise InvalidArgument(f"invalid {kind.value} {resource!r}: give 1 to {_MAX_RESOURCE} characters")
    if kind is ResourceKind.EXPERIMENT and not resource.isdecimal():
        raise InvalidArgument(f"invalid experiment id {resource!r}: grants name experiments by their numeric id")
    return resource


def _principal(rows: list[Any]) -> Principal:
    experiments: dict[str, Permission] = {}
    models: dict[str, Permission] = {}
    for row in rows:
        if row.resource_type is None:
            continue
        target = experiments if row.resource_type == ResourceKind.EXPERIMENT.value else models
        target[row.resource] = Permission[row.permission]
    first = rows[0]
    return Principal(name=first.name, is_admin=bool(first.is_admin), experiments=experiments, models=models)


class Reads:
    """Lookups on one open connection: who a request is, and which experiment its run belongs to."""

    def __init__(self, connection: sa.Connection, memo: _PasswordMemo) -> None:
        self._connection = connection
        self._memo = memo

    def _rows(self, condition: sa.ColumnElement[bool]) -> list[Any]:
        query = sa.select(*_PRINCIPAL_COLUMNS).select_from(_JOINED).where(condition)
        return list(self._connection.execute(query))

    def by_token(self, token: str) -> Principal | None:
        """The user holding ``token`` with its grants (one indexed query), or None for an unknown token."""
        digest = token_hash(token)
        rows = self._rows(users.c.token_hash == digest)
        if not rows or not hmac.compare_digest(rows[0].token_hash, digest):
            return None
        return _principal(rows)

    def by_login(self, name: str, secret: str) -> Principal | None:
        """The user ``name`` if ``secret`` is its token or its password, else None.

        An unknown name costs the same scrypt work as a wrong password, so timing does not tell which
        names exist.
        """
        rows = self._rows(users.c.name == name)
        if not rows:
            verify_password(secret, _dummy_password_hash())
            return None
        first = rows[0]
        if hmac.compare_digest(first.token_hash, token_hash(secret)):
            return _principal(rows)
        if first.password_hash and self._memo.verify(secret, first.password_hash):
            return _principal(rows)
        return None

    def by_name(self, name: str) -> Principal | None:
        """The user ``name`` with its grants, or None."""
        rows = self._rows(users.c.name == name)
        return _principal(rows) if rows else None

    def experiment_of_run(self, run_id: str) -> str | None:
        """The experiment id of the run (deleted runs included), or None when no run has this id."""
        found = self._connection.execute(sa.select(runs.c.experiment_id).where(runs.c.run_uuid == run_id)).scalar()
        return None if found is None else str(found)

    def experiment_id_by_name(self, name: str) -> str | None:
        """The id of the experiment named ``name`` (deleted ones included), or None."""
        query = sa.select(experiments.c.experiment_id).where(experiments.c.name == name)
        found = self._connection.execute(query).scalar()
        return None if found is None else str(found)


class UserStore:
    """Users, grants and shared secrets in the tracking store's database (the same engine).

    Args:
        db: the tracking store's database (``SqlTrackingStore._db``), at schema revision 0005 or newer.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
        self._memo = _PasswordMemo()

    def __repr__(self) -> str:
        return f"UserStore({self._db.description!r})"

    # -- authentication ----------------------------------------------------------------------------

    @contextmanager
    def reads(self) -> Iterator[Reads]:
        """The lookups of one request, on one connection in one read transaction (fewer round trips)."""
        with self._db.transaction() as connection:
            yield Reads(connection, self._memo)

    def by_token(self, token: str) -> Principal | None:
        """The user holding ``token`` with its grants (one indexed query), or None for an unknown token."""
        with self.reads() as reads:
            return reads.by_token(token)

    def by_login(self, name: str, secret: str) -> Principal | None:
        """The user ``name`` if ``secret`` is its token or its password, else None (see :meth:`Reads.by_login`)."""
        with self.reads() as reads:
            return reads.by_login(name, secret)

    def by_name(self, name: str) -> Principal | None:
        """The user ``name`` with its grants, or None (for instance once the user is removed)."""
        with self.reads() as reads:
            return reads.by_name(name)

    # -- users -------------------------------------------------------------------------------------

    def add(self, name: str, *, admin: bool = False, password: str | None = None) -> str:
        """Create a user; returns its token (shown once: only its hash is stored).

        Raises:
            InvalidArgument: a bad name or a too-short password.
            ResourceAlreadyExists: a user of that name exists.
        """
        check_user_name(name)
        encoded = hash_password(check_password(password)) if password is not None else None
        token = new_token()
        with self._db.transaction(write=True, conflict=f"user {name!r} already exists") as connection:
            connection.execute(
                users.insert().values(
                    name=name,
                    is_admin=admin,
                    token_hash=token_hash(token),
                    password_hash=encoded,
                    created_time=now_ms(),
                )
            )
        return token

    def _user_id(self, connection: sa.Connection, name: str) -> int:
        found = connection.execute(sa.select(users.c.id).where(users.c.name == name)).scalar()
        if found is None:
            raise UserNotFound(f"no user named {name!r} (`cairn users list` shows the users)")
        return int(found)

    def remove(self, name: str) -> None:
        """Delete the user and its grants; its token stops working at once. Raises UserNotFound."""
        with self._db.transaction(write=True) as connection:
            connection.execute(users.delete().where(users.c.id == self._user_id(connection, name)))

    def rotate_token(self, name: str) -> str:
        """A new token for the user (returned once); the old one stops working. Raises UserNotFound."""
        token = new_token()
        with self._db.transaction(write=True) as connection:
            user_id = self._user_id(connection, name)
            connection.execute(users.update().where(users.c.id == user_id).values(token_hash=token_hash(token)))
        return token

    def set_password(self, name: str, password: str | None) -> None:
        """Set (or, with None, remove) the user's password. Raises UserNotFound, InvalidArgument."""
        encoded = hash_password(check_password(password)) if password is not None else None
        with self._db.transaction(write=True) as connection:
            user_id = self._user_id(connection, name)
            connection.execute(users.update().where(users.c.id == user_id).values(password_hash=encoded))

    def set_admin(self, name: str, admin: bool) -> None:
        """Make the user an admin or take that away. Raises UserNotFound."""
        with self._db.transaction(write=True) as connection:
            user_id = self._user_id(connection, name)
            connection.execute(users.update().where(users.c.id == user_id).values(is_admin=admin))

    def count(self) -> int:
        """How many users exist."""
        with self._db.transaction() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())

    def list_users(self) -> list[UserInfo]:
        """Every user with its grants, by name."""
        return self._infos(None)

    def user_info(self, name: str) -> UserInfo:
        """The user ``name`` with its grants. Raises UserNotFound."""
        found = self._infos(users.c.name == name)
        if not found:
            raise UserNotFound(f"no user named {name!r} (`cairn users list` shows the users)")
        return found[0]

    def _infos(self, condition: sa.ColumnElement[bool] | None) -> list[UserInfo]:
        query = sa.select(*_PRINCIPAL_COLUMNS, users.c.created_time).select_from(_JOINED)
        if condition is not None:
            query = query.where(condition)
        query = query.order_by(users.c.name, user_permissions.c.resource_type, user_permissions.c.resource)
        with self._db.transaction() as connection:
            rows = list(connection.execute(query))
        grants: dict[str, list[Grant]] = {}
        first: dict[str, Any] = {}
        for row in rows:
            first.setdefault(row.name, row)
            held = grants.setdefault(row.name, [])
            if row.resource_type is not None:
                held.append(Grant(ResourceKind(row.resource_type), row.resource, Permission[row.permission]))
        return [
            UserInfo(
                name, bool(row.is_admin), bool(row.password_hash), int(row.created_time), tuple(grants[name]), row.id
            )
            for name, row in first.items()
        ]

    # -- grants ------------------------------------------------------------------------------------

    def grant(self, name: str, kind: ResourceKind, resource: str, permission: Permission) -> None:
        """Give the user ``permission`` on the resource, replacing an earlier grant on it.

        Raises:
            UserNotFound: no such user.
            InvalidArgument: NONE (use :meth:`revoke`) or a malformed resource.
        """
        if permission is Permission.NONE:
            raise InvalidArgument("granting NO_PERMISSIONS is revoking: use revoke")
        _check_resource(kind, resource)
        with self._db.transaction(write=True) as connection:
            user_id = self._user_id(connection, name)
            values = {"user_id": user_id, "resource_type": kind.value, "resource": resource}
            connection.execute(
                self._insert(user_permissions)
                .values(**values, permission=permission.name)
                .on_conflict_do_update(
                    index_elements=["user_id", "resource_type", "resource"], set_={"permission": permission.name}
                )
            )

    def revoke(self, name: str, kind: ResourceKind, resource: str) -> None:
        """Remove the user's grant on the resource.

        Raises:
            UserNotFound: no such user.
            NotFound: the user has no grant on it.
        """
        with self._db.transaction(write=True) as connection:
            user_id = self._user_id(connection, name)
            deleted = connection.execute(
                user_permissions.delete().where(
                    user_permissions.c.user_id == user_id,
                    user_permissions.c.resource_type == kind.value,
                    user_permissions.c.resource == resource,
                )
            ).rowcount
        if not deleted:
            raise NotFound(f"user {name!r} has no grant on {kind.value} {resource!r}")

    def rename_resource(self, kind: ResourceKind, old: str, new: str) -> None:
        """Move every grant on ``old`` to ``new`` (a registered model was renamed)."""
        with self._db.transaction(write=True) as connection:
            connection.execute(
                user_permissions.update()
                .where(user_permissions.c.resource_type == kind.value, user_permissions.c.resource == old)
                .values(resource=new)
            )

    def forget_resource(self, kind: ResourceKind, resource: str) -> None:
        """Drop every grant on the resource (it was deleted; a new one of that name starts without grants)."""
        with self._db.transaction(write=True) as connection:
            connection.execute(
                user_permissions.delete().where(
                    user_permissions.c.resource_type == kind.value, user_permissions.c.resource == resource
                )
            )

    # -- resources the rules name ------------------------------------------------------------------

    def experiment_of_run(self, run_id: str) -> str | None:
        """The experiment id of the run (deleted runs included), or None when no run has this id."""
        with self.reads() as reads:
            return reads.experiment_of_run(run_id)

    def experiment_id_by_name(self, name: str) -> str | None:
        """The id of the experiment named ``name`` (deleted ones included), or None."""
        with self.reads() as reads:
            return reads.experiment_id_by_name(name)

    # -- shared secrets ----------------------------------------------------------------------------

    def shared_secret(self, name: str) -> bytes:
        """32 random bytes stored under ``name``, created on first use: every server process on this database
        gets the same value (concurrent first uses agree: the insert does nothing when the row exists)."""
        query = sa.select(server_secrets.c.value).where(server_secrets.c.name == name)
        with self._db.transaction() as connection:  # the common case: it exists, and reading takes no write lock
            found = connection.execute(query).scalar()
        if found is not None:
            return bytes(found)
        with self._db.transaction(write=True) as connection:
            connection.execute(
                self._insert(server_secrets)
                .values(name=name, value=secrets.token_bytes(SECRET_BYTES))
                .on_conflict_do_nothing(index_elements=["name"])
            )
            return bytes(connection.execute(query).scalar_one())


def user_store_for(client: Client) -> UserStore:
    """The user store on ``client``'s tracking database.

    Raises:
        InvalidArgument: the client's store is not a SQLite or PostgreSQL store (e.g. an http:// server).
    """
    from cairn.store._sql.store import SqlTrackingStore

    store = client.store
    if not isinstance(store, SqlTrackingStore):
        raise InvalidArgument(
            f"--auth needs a SQLite or PostgreSQL store to keep its users in, not {store!r}; "
            "give --store sqlite:///... or postgresql://... (or set CAIRN_TRACKING_URI)"
        )
    return UserStore(store._db)


def resources(grants: Iterable[Grant], kind: ResourceKind) -> dict[str, Permission]:
    """The grants of one kind as resource -> permission."""
    return {g.resource: g.permission for g in grants if g.kind is kind}
