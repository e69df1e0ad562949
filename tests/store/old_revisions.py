"""A database at an older schema revision holding one run (``"a" * 32``), for migration tests."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command

from cairn.store._sql import migrate as migrate_module
from tests.conftest import driver_url

OLD_RUN_ID = "a" * 32


def database_at(url: str, artifact_root: str, revision: str, *, check_absent: str | None = None) -> None:
    """Migrate the empty database at ``url`` to ``revision`` and insert the Default experiment and one run;
    ``check_absent``: a table the revision must not have yet."""
    parsed = sa.make_url(driver_url(url))
    if parsed.get_backend_name() == "sqlite":
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed)
    try:
        with engine.begin() as connection:
            command.upgrade(migrate_module.alembic_config(connection), revision)
            connection.execute(
                sa.text(
                    "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
                    "VALUES (0, 'Default', :root, 'active')"
                ),
                {"root": f"{artifact_root}/0"},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO runs (run_uuid, name, experiment_id, user_id, status, start_time, "
                    "lifecycle_stage, artifact_uri) VALUES (:r, 'old', 0, 'alice', 'RUNNING', 1, 'active', 'x')"
                ),
                {"r": OLD_RUN_ID},
            )
            if check_absent is not None:
                assert check_absent not in sa.inspect(connection).get_table_names()
    finally:
        engine.dispose()
