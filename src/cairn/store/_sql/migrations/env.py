"""Alembic environment of the tracking store.

cairn runs migrations programmatically (see :mod:`cairn.store._sql.migrate`) and hands over an open
connection in ``config.attributes["connection"]``, already inside the transaction that holds the
migration lock; alembic then neither opens nor commits a transaction of its own. Without a
connection (a developer running ``alembic`` by hand) ``sqlalchemy.url`` is used.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from cairn.store._sql.schema import metadata

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs go through table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes['connection']")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


if context.is_offline_mode():
    raise RuntimeError("cairn migrations run online only")
run_migrations_online()
