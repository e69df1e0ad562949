"""Shared fixtures: an isolated tracking home per test, a PostgreSQL server and a moto S3 server.

PostgreSQL tests use databases created here (uniquely named, dropped afterwards) on the server of
``CAIRN_TEST_POSTGRES_URL`` (default: local trust auth). An unreachable server skips them, except
under ``CI=true`` where it fails them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _reset_cairn() -> None:
    from cairn.models import verified_files
    from cairn.tracking import config, fluent

    fluent.reset()
    config.reset()
    verified_files.forget_all()


@pytest.fixture(autouse=True)
def _isolated_cairn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test logs into its own ./cairn-runs under tmp_path, and leaves no global state behind."""
    for name in (
        "CAIRN_TRACKING_URI",
        "CAIRN_ARTIFACT_ROOT",
        "CAIRN_RUN_ID",
        "CAIRN_EXPERIMENT_ID",
        "CAIRN_EXPERIMENT_NAME",
        "MLFLOW_TRACKING_URI",  # read when the CAIRN_ name is unset (cairn.tracking.env)
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAIRN_CACHE_DIR", str(tmp_path / ".cairn-cache"))
    monkeypatch.delenv("CAIRN_VERIFY_CACHE", raising=False)
    _reset_cairn()
    yield
    _reset_cairn()


# -- PostgreSQL -----------------------------------------------------------------------------------

PG_ADMIN_URL = os.environ.get("CAIRN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def driver_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@dataclass
class PgServer:
    """The test server: creates and drops throwaway databases."""

    admin: sa.Engine

    def database_url(self, name: str) -> str:
        return self.admin.url.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")

    @contextlib.contextmanager
    def new_database(self, prefix: str = "cairn_store_test") -> Iterator[str]:
        """Yield the URL of a new empty database; drop it afterwards."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield self.database_url(name)
        finally:
            with self.admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    admin = sa.create_engine(
        driver_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        admin.dispose()
        reason = f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {reason}")
        pytest.skip(reason)
    yield PgServer(admin)
    admin.dispose()


# -- S3 (moto server on loopback) ---------------------------------------------------------------

BUCKET = "cairn-test-artifacts"
_DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 with one bucket; lives for the whole test session."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield S3Server(endpoint, BUCKET)
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials, and no user AWS config or profile leaking into the test."""
    for name, value in _DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "CAIRN_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def truncate_all(url: str) -> None:
    """Empty every cairn table of a PostgreSQL test database (schema kept, ids restarted)."""
    from cairn.store._sql.schema import metadata

    engine = sa.create_engine(driver_url(url))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {', '.join(metadata.tables)} RESTART IDENTITY CASCADE")
    finally:
        engine.dispose()


# -- the SQL store suites (store, registry): every test on SQLite and on PostgreSQL --------------------------

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_store_url(pg_server: PgServer) -> Iterator[str]:
    """One PostgreSQL database with cairn's schema for the function-scoped stores; emptied before each test."""
    from cairn.store._sql import SqlTrackingStore

    with pg_server.new_database() as url:
        SqlTrackingStore(url, "/unused").close()  # create the schema once
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """URL of an empty-of-data store database (schema present on PostgreSQL, absent on SQLite)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/db/cairn.db"
    url: str = request.getfixturevalue("pg_store_url")
    truncate_all(url)
    return url
