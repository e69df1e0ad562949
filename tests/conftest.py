"""Shared fixtures: an isolated tracking home per test, and a PostgreSQL database when reachable."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PG_ADMIN_URL = os.environ.get("CAIRN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _reset_cairn() -> None:
    from cairn.tracking import config, fluent

    fluent.reset()
    config.reset()


@pytest.fixture(autouse=True)
def _isolated_cairn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test logs into its own ./cairn-runs under tmp_path, and leaves no global state behind."""
    for name in (
        "CAIRN_TRACKING_URI",
        "CAIRN_ARTIFACT_ROOT",
        "CAIRN_RUN_ID",
        "CAIRN_EXPERIMENT_ID",
        "CAIRN_EXPERIMENT_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    _reset_cairn()
    yield
    _reset_cairn()


def postgres_available() -> str | None:
    """None when the server answers, else the reason it does not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'cairn[postgres]')"
    try:
        with psycopg.connect(PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
            return None
    except Exception as exc:
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {exc}"


def skip_or_fail_without_postgres() -> None:
    reason = postgres_available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true requires PostgreSQL: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    skip_or_fail_without_postgres()
    import psycopg

    name = f"cairn_test_{uuid.uuid4().hex[:12]}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    from cairn.tracking import config

    config.reset()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
