"""The connection pool of a store: SQLAlchemy's 5 + 10 by default, sized by ``CAIRN_DB_POOL_SIZE`` and
``CAIRN_DB_MAX_OVERFLOW`` for a server whose threads outnumber that."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.pool import QueuePool

from cairn.errors import InvalidArgument
from cairn.store._sql.engine import Database


def _pool(url: str) -> QueuePool:
    database = Database(url)
    try:
        pool = database.engine.pool
        assert isinstance(pool, QueuePool)
        return pool
    finally:
        database.dispose()


def test_default_pool_is_sqlalchemys(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAIRN_DB_POOL_SIZE", raising=False)
    monkeypatch.delenv("CAIRN_DB_MAX_OVERFLOW", raising=False)
    pool = _pool(db_url)
    assert (pool.size(), pool._max_overflow) == (5, 10)


def test_environment_sizes_the_pool(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_DB_POOL_SIZE", "24")
    monkeypatch.setenv("CAIRN_DB_MAX_OVERFLOW", "0")
    pool = _pool(db_url)
    assert (pool.size(), pool._max_overflow) == (24, 0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CAIRN_DB_POOL_SIZE", "many"),
        ("CAIRN_DB_POOL_SIZE", "0"),
        ("CAIRN_DB_POOL_SIZE", "2.5"),
        ("CAIRN_DB_MAX_OVERFLOW", "-1"),
        ("CAIRN_DB_MAX_OVERFLOW", "ten"),
    ],
)
def test_a_bad_pool_setting_is_refused_by_name(
    name: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidArgument, match=name):
        Database(f"sqlite:///{tmp_path}/cairn.db")
