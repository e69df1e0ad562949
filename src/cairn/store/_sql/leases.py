"""Run leases at the SQL level: each operation is one statement, atomic on SQLite and PostgreSQL.

Taking a lease is an ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` whose ``WHERE`` lets the update
through only for the same owner or an expired lease: the row count (0 or 1) says who won, with no
read-then-write window. The store's methods open the transaction and check the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from cairn.errors import InvalidArgument
from cairn.store._sql.schema import run_leases
from cairn.store.base import RunLease

MAX_OWNER_LENGTH = 256


def check_owner(owner: object) -> str:
    if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER_LENGTH:
        raise InvalidArgument(f"a lease owner must be a non-empty string of at most {MAX_OWNER_LENGTH} characters")
    return owner


def ttl_ms(ttl_seconds: float) -> int:
    if not ttl_seconds > 0:
        raise InvalidArgument(f"a lease ttl must be a positive number of seconds, got {ttl_seconds!r}")
    return max(1, round(ttl_seconds * 1000))


def acquire(
    conn: sa.Connection, insert: Callable[[sa.Table], Any], run_id: str, owner: str, now: int, ttl: int
) -> bool:
    """Insert the lease, or take over an expired one, or extend ``owner``'s own; ``insert``: the dialect's."""
    statement = insert(run_leases).values(run_uuid=run_id, owner=owner, acquired_time=now, expires_time=now + ttl)
    old, new = run_leases.c, statement.excluded
    same_owner = old.owner == new.owner
    statement = statement.on_conflict_do_update(
        index_elements=[old.run_uuid],
        set_={
            "owner": new.owner,
            "acquired_time": sa.case((same_owner, old.acquired_time), else_=new.acquired_time),
            "expires_time": new.expires_time,
        },
        where=sa.or_(same_owner, old.expires_time <= now),
    )
    # SQLAlchemy counts rows of an INSERT only when asked to
    return conn.execute(statement.execution_options(preserve_rowcount=True)).rowcount == 1


def renew(conn: sa.Connection, run_id: str, owner: str, now: int, ttl: int) -> bool:
    held = sa.and_(run_leases.c.run_uuid == run_id, run_leases.c.owner == owner)
    return conn.execute(run_leases.update().where(held).values(expires_time=now + ttl)).rowcount == 1


def release(conn: sa.Connection, run_id: str, owner: str) -> None:
    conn.execute(run_leases.delete().where(run_leases.c.run_uuid == run_id, run_leases.c.owner == owner))


def get(conn: sa.Connection, run_id: str) -> RunLease | None:
    row = conn.execute(sa.select(run_leases).where(run_leases.c.run_uuid == run_id)).first()
    if row is None:
        return None
    return RunLease(
        run_id=row.run_uuid, owner=row.owner, acquired_time=row.acquired_time, expires_time=row.expires_time
    )
