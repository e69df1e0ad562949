"""Tables of the tracking store, as SQLAlchemy Core metadata.

This module describes the schema at the newest migration; the migrations in ``migrations/versions``
are what creates it. A test compares the two, so a change here needs a new migration revision
(and :data:`cairn.store._sql.migrate.HEAD_REVISION` updated) to pass.

Notes on choices that are not obvious:

* NaN metric values are stored as ``value = NULL, is_nan = true``: NULL takes part in no
  comparison, so a filter such as ``metrics.loss < 1`` never matches a NaN, and ordering puts NaN
  after every number. +/-inf are stored as themselves (SQLite REAL and PostgreSQL double precision
  hold them).
* ``metrics.id`` is a BIGINT on PostgreSQL but an INTEGER on SQLite, because only
  ``INTEGER PRIMARY KEY`` is SQLite's auto-assigned rowid.
* The search indexes on params and tags cover ``(key, substr(value, 1, 200))`` rather than the
  whole value: a PostgreSQL b-tree entry must stay under ~2.7 kB and values may hold 8000
  characters. Equality filters add the matching ``substr`` predicate so the index is usable.
"""

from __future__ import annotations

from collections.abc import Set

import sqlalchemy as sa

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Characters of a param/tag value covered by the (key, value) search indexes.
INDEXED_VALUE_PREFIX = 200

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

_LIFECYCLE_CHECK = "lifecycle_stage IN ('active', 'deleted')"

experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("experiment_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("artifact_location", sa.String(1000), nullable=False),
    sa.Column("lifecycle_stage", sa.String(32), nullable=False),
    sa.Column("creation_time", sa.BigInteger),
    sa.Column("last_update_time", sa.BigInteger),
    sa.UniqueConstraint("name"),
    sa.CheckConstraint(_LIFECYCLE_CHECK, name="lifecycle_stage"),
    sqlite_autoincrement=True,
)

experiment_tags = sa.Table(
    "experiment_tags",
    metadata,
    sa.Column(
        "experiment_id",
        sa.Integer,
        sa.ForeignKey("experiments.experiment_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_uuid", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(250), nullable=False),
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.experiment_id"), nullable=False),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("start_time", sa.BigInteger, nullable=False),
    sa.Column("end_time", sa.BigInteger),
    sa.Column("lifecycle_stage", sa.String(32), nullable=False),
    sa.Column("artifact_uri", sa.String(1000), nullable=False),
    sa.Column("deleted_time", sa.BigInteger),
    sa.CheckConstraint(_LIFECYCLE_CHECK, name="lifecycle_stage"),
    sa.Index("ix_runs_experiment_id_lifecycle_stage_start_time", "experiment_id", "lifecycle_stage", "start_time"),
)


def _run_fk() -> sa.Column[str]:
    return sa.Column("run_uuid", sa.String(32), sa.ForeignKey("runs.run_uuid", ondelete="CASCADE"), primary_key=True)


params = sa.Table(
    "params",
    metadata,
    _run_fk(),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
sa.Index(
    "ix_params_key_value",
    params.c.key,
    sa.func.substr(params.c.value, 1, INDEXED_VALUE_PREFIX),
)

tags = sa.Table(
    "tags",
    metadata,
    _run_fk(),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
sa.Index(
    "ix_tags_key_value",
    tags.c.key,
    sa.func.substr(tags.c.value, 1, INDEXED_VALUE_PREFIX),
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    # no foreign key (revision 0006): the store checks the run in each write's transaction and purges points
    sa.Column("run_uuid", sa.String(32), nullable=False),
    sa.Column("key", sa.String(250), nullable=False),
    sa.Column("value", sa.Double),
    sa.Column("is_nan", sa.Boolean, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("timestamp", sa.BigInteger, nullable=False),
    sa.Column("superseded", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_metrics_run_uuid_key_step", "run_uuid", "key", "step"),
)

latest_metrics = sa.Table(
    "latest_metrics",
    metadata,
    _run_fk(),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("value", sa.Double),
    sa.Column("is_nan", sa.Boolean, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("timestamp", sa.BigInteger, nullable=False),
    sa.Index("ix_latest_metrics_key_value", "key", "value"),
)

# -- model registry (revision 0002) ----------------------------------------------------------------
#
# Registered models have a surrogate key so a rename is one UPDATE. ``last_version`` is the counter
# new versions take their number from (``UPDATE ... SET last_version = last_version + 1`` under the
# row lock), so numbers are never reused, even after the newest version is deleted. Versions do not
# reference ``runs``: a registered version outlives the purge of its run (and may name a run of
# another store). Aliases reference their version, so deleting a version removes its aliases.

_STAGE_CHECK = "current_stage IN ('None', 'Staging', 'Production', 'Archived')"

registered_models = sa.Table(
    "registered_models",
    metadata,
    sa.Column("model_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("creation_time", sa.BigInteger, nullable=False),
    sa.Column("last_updated_time", sa.BigInteger, nullable=False),
    sa.Column("last_version", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.UniqueConstraint("name"),
    sqlite_autoincrement=True,
)


def _model_fk() -> sa.Column[int]:
    return sa.Column(
        "model_id",
        sa.Integer,
        sa.ForeignKey("registered_models.model_id", ondelete="CASCADE"),
        primary_key=True,
    )


registered_model_tags = sa.Table(
    "registered_model_tags",
    metadata,
    _model_fk(),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    _model_fk(),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(32)),
    sa.Column("run_link", sa.Text),
    sa.Column("description", sa.Text),
    sa.Column("user_id", sa.String(256)),
    sa.Column("current_stage", sa.String(20), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("status_message", sa.Text),
    sa.Column("creation_time", sa.BigInteger, nullable=False),
    sa.Column("last_updated_time", sa.BigInteger, nullable=False),
    sa.CheckConstraint(_STAGE_CHECK, name="current_stage"),
    sa.Index("ix_model_versions_run_id", "run_id"),
)


def _version_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["model_id", "version"], ["model_versions.model_id", "model_versions.version"], ondelete="CASCADE"
    )


model_version_tags = sa.Table(
    "model_version_tags",
    metadata,
    sa.Column("model_id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key", sa.String(250), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    _version_fk(),
)

registered_model_aliases = sa.Table(
    "registered_model_aliases",
    metadata,
    sa.Column("model_id", sa.Integer, primary_key=True),
    sa.Column("alias", sa.String(256), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    _version_fk(),
)

# -- resume leases (revision 0003) ------------------------------------------------------------------
#
# At most one lease per run: the process that resumes a run holds it and renews it; another process
# may take it over only once ``expires_time`` has passed. Times are the writers' clocks (ms).

run_leases = sa.Table(
    "run_leases",
    metadata,
    _run_fk(),
    sa.Column("owner", sa.String(256), nullable=False),
    sa.Column("acquired_time", sa.BigInteger, nullable=False),
    sa.Column("expires_time", sa.BigInteger, nullable=False),
)

# -- idempotency keys (revision 0004) -------------------------------------------------------------
#
# One row per log-batch written with an ``Idempotency-Key``, inserted in the batch's own transaction:
# a replay of the key finds it and writes nothing. ``fingerprint`` identifies the request the key
# was first used for; rows older than ``IDEMPOTENCY_KEY_TTL_MS`` are pruned by later keyed writes.

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key", sa.String(256), primary_key=True),
    sa.Column("fingerprint", sa.String(128), nullable=False),
    sa.Column("created_time", sa.BigInteger, nullable=False),
    sa.Index("ix_idempotency_keys_created_time", "created_time"),
)

# -- users and permissions (revision 0005) -----------------------------------------------------------
#
# ``cairn server --auth``: a user authenticates with a token (stored as its sha256: tokens are random,
# so a fast hash is enough) or a password (scrypt, with its parameters in the stored string). A grant
# gives one user READ, EDIT or MANAGE on one experiment (by id) or registered model (by name); the
# grants go with their user. ``cairn_server_secrets`` holds random keys every server process on this
# database shares (e.g. the key signing UI session cookies).

users = sa.Table(
    "cairn_users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("is_admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("password_hash", sa.String(256)),
    sa.Column("created_time", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("name"),
    sa.UniqueConstraint("token_hash"),
    sqlite_autoincrement=True,
)

user_permissions = sa.Table(
    "cairn_user_permissions",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("cairn_users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("resource_type", sa.String(32), primary_key=True),
    sa.Column("resource", sa.String(256), primary_key=True),
    sa.Column("permission", sa.String(16), nullable=False),
    sa.CheckConstraint("permission IN ('READ', 'EDIT', 'MANAGE')", name="permission"),
    sa.Index("ix_cairn_user_permissions_resource_type_resource", "resource_type", "resource"),
)

server_secrets = sa.Table(
    "cairn_server_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
)

#: Every table this schema owns (the alembic version table aside).
TABLE_NAMES = frozenset(metadata.tables)
#: Columns of MLflow's ``runs`` table that cairn's ``runs`` never had: they mark an MLflow tracking database.
MLFLOW_RUN_COLUMNS = frozenset({"source_type", "source_name", "entry_point_name"})


def holds_foreign_tables(tables: Set[str], runs_columns: Set[str]) -> bool:
    """Whether a database with these tables (``alembic_version`` aside) and ``runs`` columns holds what cairn
    did not create: tables outside cairn's schema, or MLflow's ``runs`` table."""
    return bool(tables - TABLE_NAMES - {"alembic_version"}) or bool(runs_columns & MLFLOW_RUN_COLUMNS)
