"""SQLAlchemy implementation of the tracking store (SQLite and PostgreSQL), with alembic migrations."""

from cairn.store._sql.migrate import HEAD_REVISION, current_revision, upgrade_schema
from cairn.store._sql.store import SqlTrackingStore

__all__ = ["HEAD_REVISION", "SqlTrackingStore", "current_revision", "upgrade_schema"]
