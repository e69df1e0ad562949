"""``cairn.import_mlflow(...)``: bring an MLflow store's history into cairn, through the mlflow package.

The MLflow store is read with ``MlflowClient`` (a ``./mlruns`` directory, an ``sqlite:///`` or
PostgreSQL database, or an ``http(s)://`` tracking server) and written by the same copier as
:func:`cairn.sync`, so an import is idempotent and resumable in the same way. mlflow is imported
here only, on first use; cairn itself never needs it.

How MLflow concepts land in cairn:

* Experiments by name, runs with their ids, params, tags, full metric histories and artifacts.
* MLflow 3 logged models (``models:/m-...``): their files are copied into the source run's
  artifacts at the model's name (``runs:/<run>/model``), or at ``models/<model id>`` when that
  name is taken; a logged model without a run goes to ``<experiment location>/models/<model id>``.
  Registered versions whose source is ``models:/m-...`` point at that copy, so
  ``cairn.pyfunc.load_model("models:/<name>@<alias>")`` loads them.
* Registered models with versions (numbers kept), tags, aliases and stages.

What cairn has no place for is named in :attr:`ImportReport.unrepresented`: dataset and model
inputs of runs, links from metric points to logged models or datasets, the params, metrics and tags
of logged-model entities, and traces.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from cairn.errors import CairnError, InvalidArgument, NotFound, UnsafePath
from cairn.registry.entities import ModelVersion, RegisteredModel
from cairn.store._sql.registry import SqlRegistryStore
from cairn.store.base import StoredMetricPoint
from cairn.sync.api import describe_uri, destination_root, open_destination, parse_since
from cairn.sync.copier import Copier, CopyOptions
from cairn.sync.progress import SyncProgress
from cairn.sync.report import ImportReport, Note
from cairn.sync.source import ArtifactSet, VersionLocation, under_root
from cairn.tracking import config
from cairn.tracking.entities import (
    Experiment,
    FileInfo,
    LifecycleStage,
    Run,
    RunData,
    RunInfo,
    RunStatus,
)

__all__ = ["MlflowSource", "check_mlflow_source", "import_mlflow", "mlflow_tracking_uri"]

_PAGE = 1000
_MODEL_PAGE = 100  # the most search_registered_models accepts on every MLflow backend
_VIEW_ALL = 3  # mlflow.entities.ViewType.ALL
_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")
_REMOTE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql", "http", "https", "file", "databricks")


def import_mlflow(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str] | None = None,
    *,
    destination_artifact_root: str | None = None,
    experiments: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    since: datetime | date | str | int | None = None,
    artifacts: bool = True,
    registry: bool = True,
    dry_run: bool = False,
    progress: bool | None = None,
    batch_size: int = 50_000,
) -> ImportReport:
    """Import experiments, runs, metric histories, artifacts, logged models and registered models
    from an MLflow store into a cairn store.

    Run ids and version numbers are kept. Importing again copies only what is new. The arguments
    after ``source`` are those of :func:`cairn.sync`.

    Args:
        source: an ``mlruns`` directory (path or ``file://``), an MLflow ``sqlite:///`` file or
            ``postgresql://`` database, or an MLflow tracking server ``http(s)://...``.
        destination: the cairn store to write (default: the current tracking URI).

    Returns:
        What was copied, and in :attr:`ImportReport.unrepresented` what cairn could not represent.

    Raises:
        CairnError: mlflow is not installed (``pip install 'cairn[interop]'``).
        NotFound: the source path does not exist.
        InvalidArgument: the source is not an MLflow store (checked before mlflow opens it, reading only).
            mlflow then reads a SQLite file through a private snapshot (upgraded to its schema there) and a
            PostgreSQL database in read-only sessions, so the source never changes.
        ExperimentNotFound / RunNotFound: a requested experiment or run is not at the source.
    """
    started = time.perf_counter()
    uri = mlflow_tracking_uri(source)
    if not uri.startswith("sqlite:///"):  # a database file is checked in the snapshot mlflow will read
        check_mlflow_source(uri, os.fspath(source))
    dest_uri = config.resolve_tracking_uri(os.fspath(destination)) if destination else config.get_tracking_uri()
    options = CopyOptions(
        experiments=tuple(experiments),
        run_ids=tuple(run_ids),
        since=parse_since(since),
        artifacts=artifacts,
        registry=registry,
        dry_run=dry_run,
        batch_size=batch_size,
    )
    report = ImportReport(source=describe_uri(uri), destination=describe_uri(dest_uri), dry_run=dry_run)
    with ExitStack() as stack:
        read_uri = stack.enter_context(_read_only(uri, os.fspath(source)))  # checked before the destination is made
        # the destination first: cairn's own settings must not see MLflow's environment, set for the source
        dest = stack.enter_context(
            open_destination(dest_uri, destination_root(dest_uri, destination_artifact_root), dry_run)
        )
        stack.enter_context(_mlflow_environment(read_uri))
        dest_registry = SqlRegistryStore.from_tracking_store(dest) if registry else None
        with SyncProgress(progress, "import") as bar:
            try:
                source_view = MlflowSource(read_uri, report, registry=registry, description=report.source)
                Copier(source_view, dest, dest_registry, report, options, bar).copy()
            except Exception as exc:
                failure = _mlflow_failure(exc, report.source)
                if failure is None:
                    raise
                raise failure from exc
        source_view.finish()
    report.elapsed = time.perf_counter() - started
    return report


def mlflow_tracking_uri(source: str | os.PathLike[str]) -> str:
    """The MLflow tracking URI of ``source``: a directory becomes ``file://``, a ``.db`` file ``sqlite:///``,
    and ``postgresql://`` uses psycopg 3 when psycopg2 (SQLAlchemy's default driver) is missing.

    Raises:
        NotFound: a local path that does not exist.
    """
    text = os.fspath(source).strip()
    scheme = text.split(":", 1)[0].lower() if "://" in text or text.startswith("sqlite:") else ""
    base_scheme = scheme.split("+", 1)[0]
    if base_scheme in ("postgresql", "postgres") and "+" not in scheme and not _has_module("psycopg2"):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    if base_scheme == "file":
        from urllib.parse import unquote, urlparse

        path = Path(unquote(urlparse(text).path))
        if not path.is_dir():
            raise NotFound(f"no MLflow store at {text!r}: {path} is not a directory")
        return path.resolve().as_uri()
    if base_scheme == "sqlite":
        database = Path(text[len("sqlite:///") :]) if text.startswith("sqlite:///") else None
        if database is not None and not database.is_file():
            raise NotFound(f"no MLflow database at {text!r}: {database} does not exist")
        return text
    if base_scheme in _REMOTE_SCHEMES:
        return text
    if scheme:
        raise InvalidArgument(
            f"MLflow store {text!r}: expected a directory, sqlite:///file.db, postgresql://... or http(s)://..."
        )
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve().as_uri()
    if path.is_file():
        return f"sqlite:///{path.resolve()}"
    raise NotFound(f"no MLflow store at {text!r}: the path does not exist")


_EXPECTED_LAYOUT = "an mlruns directory: <experiment id>/meta.yaml files and a .trash/ folder"
_MLFLOW_TABLES = {
    "alembic_version": {"version_num"},
    "experiments": {"experiment_id", "name", "artifact_location", "lifecycle_stage"},
    "runs": {"run_uuid", "experiment_id", "lifecycle_stage", "status"},
}
_SCAN_LIMIT = 10_000  # directory entries looked at to recognize a TensorBoard log directory


def check_mlflow_source(uri: str, given: str) -> None:
    """Refuse a source that is not an MLflow store, before mlflow touches it (reading only).

    mlflow's store constructors write into what they open: a file store gets ``.trash/`` (and
    ``models/`` from the registry), a database gets MLflow's tables. So the layout of a directory and the
    tables of a database are checked first, the database through a read-only connection; an
    ``http(s)://`` server must answer MLflow's REST API (one experiment search).

    Raises:
        InvalidArgument: the source is not an MLflow store; the message names the source and what it holds.
        CairnError: the database or server cannot be reached.
    """
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        _check_file_store(Path(unquote(urlparse(uri).path)), given)
    elif uri.startswith("sqlite:///"):
        _check_sqlite(Path(uri[len("sqlite:///") :]), given)
    elif uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres"):
        _check_database(uri)
    elif uri.split(":", 1)[0].lower() in ("http", "https"):
        _check_server(uri)


_SERVER_PROBE = "/api/2.0/mlflow/experiments/search"
_SERVER_TIMEOUT = 10.0


def _check_server(uri: str) -> None:
    """Ask ``uri`` for one experiment as mlflow would (with its credentials from ``MLFLOW_TRACKING_*``):
    an unreachable server or one that does not answer MLflow's REST API is refused at once, instead of
    mlflow retrying for minutes or failing on an HTML page."""
    import httpx

    shown = describe_uri(uri)
    auth: Any = None
    headers = {}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    verify = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() not in ("true", "1")
    url = uri.rstrip("/") + _SERVER_PROBE
    try:
        response = httpx.get(
            url, params={"max_results": 1}, headers=headers, auth=auth, timeout=_SERVER_TIMEOUT, verify=verify
        )
    except httpx.HTTPError as exc:
        raise CairnError(f"cannot reach the MLflow tracking server {shown}: {exc}") from exc
    if response.status_code in (401, 403):
        raise CairnError(
            f"the MLflow tracking server {shown} refused access ({response.status_code}); give credentials with "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
        )
    try:
        body = response.json() if response.status_code == 200 else None
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("experiments", []), list):
        kind = response.headers.get("content-type", "no content type").split(";", 1)[0]
        raise InvalidArgument(
            f"{shown!r} is not an MLflow tracking server: GET {_SERVER_PROBE} answered {response.status_code} "
            f"({kind}), not MLflow's JSON"
        )


def _check_file_store(root: Path, given: str) -> None:
    entries = sorted(entry.name for entry in root.iterdir())
    if not entries:
        raise InvalidArgument(f"{given!r} is an empty directory, not an MLflow store (expected {_EXPECTED_LAYOUT})")
    experiments = [
        name for name in entries if name not in (".trash", "models") and (root / name / "meta.yaml").is_file()
    ]
    if not experiments:
        events = _tensorboard_events(root)
        if events is not None:
            raise InvalidArgument(
                f"{given!r} is a TensorBoard log directory ({events}), not an MLflow store; import it with "
                f"`cairn import-tensorboard {given}`"
            )
        shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8 else "")
        raise InvalidArgument(
            f"{given!r} is not an MLflow store: expected {_EXPECTED_LAYOUT}; found no experiment "
            f"(no <id>/meta.yaml), only: {shown}"
        )
    if not (root / ".trash").is_dir():
        raise InvalidArgument(
            f"{given!r} looks like an MLflow file store ({len(experiments)} experiment folder(s)) but has no .trash/ "
            "folder, which mlflow would create in it on opening; cairn opens its source read-only: create it "
            f"(mkdir {root / '.trash'}) or import a copy"
        )


def _tensorboard_events(root: Path) -> str | None:
    """The path (below ``root``) of a TensorBoard event file, looking at a bounded number of entries."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith("events.out.tfevents."):
                return os.path.relpath(os.path.join(dirpath, name), root)
        seen += len(dirnames) + len(filenames)
        if seen > _SCAN_LIMIT:
            return None
    return None


def _check_sqlite(path: Path, given: str) -> None:
    import sqlite3
    from urllib.parse import quote

    # immutable=1: no lock, journal or -wal/-shm file is created next to the source
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro&immutable=1", uri=True)
    except sqlite3.Error as exc:
        raise InvalidArgument(f"{given!r} is not an MLflow database: SQLite cannot open it ({exc})") from exc
    try:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        columns = {
            table: {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
            for table in _MLFLOW_TABLES
            if table in tables
        }
    except sqlite3.DatabaseError as exc:
        raise InvalidArgument(f"{given!r} is not an MLflow database: it is not a SQLite database ({exc})") from exc
    finally:
        conn.close()
    _check_tables(given, tables, columns)


def _check_database(uri: str) -> None:
    import sqlalchemy as sa

    shown = describe_uri(uri)
    engine = sa.create_engine(uri, connect_args={"options": "-c default_transaction_read_only=on"})
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            tables = sorted(inspector.get_table_names())
            columns = {
                table: {column["name"] for column in inspector.get_columns(table)}
                for table in _MLFLOW_TABLES
                if table in tables
            }
    except sa.exc.SQLAlchemyError as exc:
        raise CairnError(f"cannot read the MLflow database {shown}: {exc}") from exc
    finally:
        engine.dispose()
    _check_tables(shown, tables, columns)


def _check_tables(shown: str, tables: Sequence[str], columns: dict[str, set[str]]) -> None:
    expected = ", ".join(_MLFLOW_TABLES)
    missing = [table for table in _MLFLOW_TABLES if table not in columns]
    if missing:
        found = ", ".join(tables[:12]) + (f", ... ({len(tables)} tables)" if len(tables) > 12 else "")
        raise InvalidArgument(
            f"{shown!r} is not an MLflow database: expected MLflow's tables ({expected}), found "
            + (found or "no tables")
        )
    for table, wanted in _MLFLOW_TABLES.items():
        lacking = sorted(wanted - columns[table])
        if lacking:
            raise InvalidArgument(
                f"{shown!r} is not an MLflow database: its table {table!r} lacks MLflow's column(s) "
                + ", ".join(lacking)
            )


# -- opening the source read-only --------------------------------------------------------------------

_COPY_ATTEMPTS = 5
_SQLITE_FILES = ("", "-wal", "-journal")  # not -shm: SQLite rebuilds it from the WAL


@contextmanager
def _read_only(uri: str, given: str) -> Iterator[str]:
    """The URI mlflow reads instead of ``uri``, so that nothing it does can change the source.

    mlflow's SQL store opens its database read-write: it creates missing tables, refuses (or, through
    ``mlflow db upgrade``, migrates) an older schema, and inserts the default experiment when it is missing.
    A SQLite file is therefore read through a snapshot in a temporary directory (upgraded there with
    mlflow's migrations when its schema is older than the installed mlflow's), and a PostgreSQL
    session is made read-only, so any write mlflow attempts fails.
    """
    if uri.startswith("sqlite:///"):
        with _sqlite_snapshot(Path(uri[len("sqlite:///") :]), given) as copy:
            yield f"sqlite:///{copy}"
    elif uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres"):
        yield _read_only_postgres(uri)
    else:
        yield uri


def _read_only_postgres(uri: str) -> str:
    """``uri`` with ``default_transaction_read_only=on`` added to the session options libpq sends."""
    import sqlalchemy as sa

    url = sa.engine.make_url(uri)
    options = url.query.get("options")
    existing = " ".join(options) if isinstance(options, tuple) else (options or "")
    read_only = (existing + " -c default_transaction_read_only=on").strip()
    return url.update_query_dict({"options": read_only}).render_as_string(hide_password=False)


def _file_stamps(path: Path) -> list[tuple[int, int] | None]:
    stamps: list[tuple[int, int] | None] = []
    for suffix in _SQLITE_FILES:
        try:
            info = os.stat(f"{path}{suffix}")
        except FileNotFoundError:
            stamps.append(None)
        else:
            stamps.append((info.st_size, info.st_mtime_ns))
    return stamps


@contextmanager
def _sqlite_snapshot(path: Path, given: str) -> Iterator[Path]:
    """A private copy of the SQLite database ``path`` (its WAL or rollback journal included), checked to
    be an MLflow database and upgraded to the installed mlflow's schema; removed afterwards.

    The source is only read as plain files (SQLite itself never opens it, since even a read-only
    connection writes read marks into a WAL database's ``-shm`` file); a copy taken while a process was
    writing is detected by the files' sizes and mtimes changing, and taken again.
    """
    import shutil
    import sqlite3
    import tempfile

    from cairn.artifacts.leftovers import temp_dir_prefix

    directory = Path(tempfile.mkdtemp(prefix=temp_dir_prefix("mlflow-import")))
    copy = directory / "mlflow.db"
    try:
        for _attempt in range(_COPY_ATTEMPTS):
            before = _file_stamps(path)
            for suffix, stamp in zip(_SQLITE_FILES, before, strict=True):
                if stamp is not None:
                    shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
            if _file_stamps(path) == before:
                break
            for suffix in _SQLITE_FILES:
                Path(f"{copy}{suffix}").unlink(missing_ok=True)
            time.sleep(0.2)
        else:
            raise CairnError(
                f"the MLflow database {given!r} kept changing while cairn copied it ({_COPY_ATTEMPTS} attempts): "
                "a process is writing it; import again when it is idle, or import a copy"
            )
        try:  # replay the WAL or roll back a hot journal into the copy, then keep one plain file
            conn = sqlite3.connect(copy)
            try:
                conn.execute("PRAGMA journal_mode=DELETE").fetchall()
                conn.execute("PRAGMA quick_check").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise InvalidArgument(f"{given!r} is not an MLflow database: SQLite cannot read it ({exc})") from exc
        _check_sqlite(copy, given)
        _upgrade_copy(f"sqlite:///{copy}", given)
        yield copy
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _upgrade_copy(uri: str, given: str) -> None:
    """Bring the snapshot ``uri`` to the installed mlflow's schema, as ``mlflow db upgrade`` would."""
    _import_mlflow()
    import sqlalchemy as sa
    from mlflow.store.db import utils

    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            found = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        head = utils._get_latest_schema_revision()
        if found == head:
            return
        try:
            utils._upgrade_db(engine)
        except Exception as exc:
            raise CairnError(
                f"the MLflow database {given!r} has schema version {found}, not the installed mlflow's {head}, and "
                f"mlflow's migrations could not bring a copy of it there ({type(exc).__name__}: {exc}); "
                "is it from a newer mlflow? (the source was not changed)"
            ) from exc
    finally:
        engine.dispose()


def _mlflow_failure(exc: Exception, shown: str) -> CairnError | None:
    """The error to raise for ``exc`` when mlflow raised it reading the source (``None``: not mlflow's)."""
    if isinstance(exc, CairnError) or not _raised_in_mlflow(exc):
        return None
    text = str(exc)
    if "read-only transaction" in text:
        statement = text.split("[SQL:", 1)[1].split(" VALUES", 1)[0].strip() if "[SQL:" in text else text
        return CairnError(
            f"mlflow tried to write into the MLflow store {shown} ({statement[:200]}), which cairn opens read-only: "
            "nothing was changed; let mlflow open it once itself (e.g. mlflow server --backend-store-uri ...) "
            "or import a copy"
        )
    return CairnError(
        f"mlflow failed reading the MLflow store {shown} ({type(exc).__name__}: {exc}); "
        "what was copied before stays, and importing again resumes"
    )


def _raised_in_mlflow(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is mlflow's code (a store it cannot read)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.sep}mlflow{os.sep}" in tb.tb_frame.f_code.co_filename


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@contextmanager
def _mlflow_environment(uri: str) -> Iterator[None]:
    """Point MLflow's defaults at the source while importing, let it read a file store (refused without an
    opt-in since 3.x) and keep its tqdm bars quiet.

    The defaults matter: MLflow's file registry store opens ``MlflowClient()`` internally, which would
    otherwise create ``./mlflow.db`` in the working directory.
    """
    settings = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    if uri.startswith("file:"):
        settings["MLFLOW_ALLOW_FILE_STORE"] = "true"
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _import_mlflow() -> Any:
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise CairnError(
            f"cairn import-mlflow reads MLflow stores through the mlflow package, which is not installed ({exc}); "
            "install it with: pip install 'cairn[interop]'"
        ) from exc
    return mlflow, MlflowClient


class MlflowSource:
    """An MLflow store read through ``MlflowClient``, as the source of the copier.

    Args:
        uri: the MLflow tracking (and registry) URI.
        report: where notes on what cairn cannot represent go.
        registry: read the model registry too.
        description: how to name the store in messages (default: from ``uri``; the import passes the
            source's, as ``uri`` may be a snapshot of it).
    """

    def __init__(
        self, uri: str, report: ImportReport, *, registry: bool = True, description: str | None = None
    ) -> None:
        mlflow, client_class = _import_mlflow()
        self._mlflow = mlflow
        self.uri = uri
        self.description = description or describe_uri(uri)
        self.report = report
        self.client = client_class(tracking_uri=uri, registry_uri=uri)
        self.registry = registry
        self._runs: dict[str, Any] = {}
        self._experiment_names: dict[str, str] = {}
        self._logged_models: dict[str, list[Any]] = {}
        self._placements: dict[str, VersionLocation] = {}
        self._noted: set[tuple[str, str]] = set()

    def _note(self, subject: str, message: str) -> None:
        if (subject, message) not in self._noted:
            self._noted.add((subject, message))
            self.report.unrepresented.append(Note(subject, message))

    def finish(self) -> None:
        if self._placements:
            self._note(
                "logged models",
                "MLflow 3 'models:/m-...' URIs do not resolve in cairn; load an imported logged model with "
                "runs:/<run id>/<path> (see the notes above) or through the registered model",
            )

    def close(self) -> None:
        """Nothing to release: MlflowClient keeps no connection of its own to close."""

    # -- experiments and runs ----------------------------------------------------------------------

    def experiments(self) -> list[Experiment]:
        found: list[Experiment] = []
        token: str | None = None
        while True:
            page = self.client.search_experiments(view_type=_VIEW_ALL, max_results=_PAGE, page_token=token)
            for exp in page:
                self._experiment_names[exp.experiment_id] = exp.name
                found.append(
                    Experiment(
                        experiment_id=str(exp.experiment_id),
                        name=exp.name,
                        artifact_location=exp.artifact_location or "",
                        lifecycle_stage=LifecycleStage(exp.lifecycle_stage),
                        tags=dict(exp.tags or {}),
                        creation_time=exp.creation_time,
                        last_update_time=exp.last_update_time,
                    )
                )
            token = page.token
            if not token:
                return found

    def runs(self, experiment: Experiment) -> Iterator[Run]:
        self._note_traces(experiment)
        token: str | None = None
        while True:
            page = self.client.search_runs(
                [experiment.experiment_id],
                run_view_type=_VIEW_ALL,
                max_results=_PAGE,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            for run in page:
                self._runs[run.info.run_id] = run
                self._note_inputs(run)
                yield _cairn_run(run)
            token = page.token
            if not token:
                return

    def _note_traces(self, experiment: Experiment) -> None:
        from mlflow.exceptions import MlflowException

        try:
            traces = self.client.search_traces(locations=[experiment.experiment_id], max_results=1, include_spans=False)
        except (MlflowException, NotImplementedError):  # a backend without traces has none to lose
            return
        if traces:
            self._note(
                f"experiment {experiment.name!r}", "has traces; cairn does not import traces (they stay in MLflow)"
            )

    def _note_inputs(self, run: Any) -> None:
        inputs = getattr(run, "inputs", None)
        datasets = list(getattr(inputs, "dataset_inputs", None) or [])
        models = list(getattr(inputs, "model_inputs", None) or [])
        if datasets:
            names = ", ".join(sorted({d.dataset.name for d in datasets}))
            self._note(
                f"run {run.info.run_id}",
                f"{len(datasets)} dataset input(s) ({names}) not imported: cairn has no datasets",
            )
        if models:
            self._note(f"run {run.info.run_id}", f"{len(models)} logged-model input link(s) not imported")

    def metric_counts(self, run_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int]]] | None:
        return None

    def metric_points(self, run: Run, keys: Sequence[str]) -> list[StoredMetricPoint]:
        points: list[StoredMetricPoint] = []
        linked = 0
        for key in keys:
            for metric in self.client.get_metric_history(run.info.run_id, key):
                if getattr(metric, "model_id", None) or getattr(metric, "dataset_name", None):
                    linked += 1
                points.append(StoredMetricPoint(key, float(metric.value), int(metric.timestamp), int(metric.step or 0)))
        if linked:
            self._note(
                f"run {run.info.run_id}",
                f"{linked} metric point(s) are linked to a logged model or dataset in MLflow; the points are "
                "imported, the links are not",
            )
        return points

    # -- artifacts and logged models ---------------------------------------------------------------

    def _repository(self, artifact_uri: str) -> Any:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(artifact_uri, tracking_uri=self.uri)

    def _artifact_set(
        self, artifact_uri: str, anchor: Literal["run", "experiment"], relpath: str, kind: str, label: str
    ) -> ArtifactSet:
        repository = self._repository(artifact_uri)

        def list_all() -> list[FileInfo]:
            return _walk(repository, "")

        def fetch(paths: Sequence[str], local_dir: Path) -> None:
            for path in paths:
                repository.download_artifacts(path, dst_path=str(local_dir))

        return ArtifactSet(anchor, relpath, list_all, fetch, label=label, kind=kind)

    def artifact_sets(self, run: Run) -> list[ArtifactSet]:
        sets = [
            self._artifact_set(run.info.artifact_uri, "run", "", "artifacts", f"artifacts of run {run.info.run_id}")
        ]
        for model in self._models_of_run(run):
            location = self._placements[model.model_id]
            sets.append(
                self._artifact_set(
                    model.artifact_location,
                    "run",
                    location.relpath,
                    "logged_model",
                    f"logged model {model.model_id}",
                )
            )
        return sets

    def experiment_artifact_sets(self, experiment: Experiment) -> list[ArtifactSet]:
        sets = []
        for model in self._experiment_models(experiment.experiment_id):
            if model.source_run_id:
                continue
            location = self._place_orphan(model)
            sets.append(
                self._artifact_set(
                    model.artifact_location,
                    "experiment",
                    location.relpath,
                    "logged_model",
                    f"logged model {model.model_id}",
                )
            )
        return sets

    def _experiment_models(self, experiment_id: str) -> list[Any]:
        if experiment_id in self._logged_models:
            return self._logged_models[experiment_id]
        from mlflow.exceptions import MlflowException

        found: list[Any] = []
        token: str | None = None
        try:
            while True:
                page = self.client.search_logged_models(
                    experiment_ids=[experiment_id], max_results=_MODEL_PAGE, page_token=token
                )
                found.extend(page)
                token = page.token
                if not token:
                    break
        except (MlflowException, NotImplementedError) as exc:  # MLflow 2 servers have no logged models
            self._note(f"experiment {experiment_id}", f"logged models could not be listed ({exc}); none imported")
        found.sort(key=lambda m: (m.creation_timestamp or 0, m.model_id))
        for model in found:
            self._note_logged_model(model)
        self._logged_models[experiment_id] = found
        return found

    def _note_logged_model(self, model: Any) -> None:
        params = dict(getattr(model, "params", None) or {})
        metrics = list(getattr(model, "metrics", None) or [])
        tags = {k: v for k, v in (getattr(model, "tags", None) or {}).items() if not k.startswith("mlflow.")}
        if params or metrics or tags:
            self._note(
                f"logged model {model.model_id} ({model.name!r})",
                f"its {len(params)} param(s), {len(metrics)} metric(s) and {len(tags)} tag(s) are not imported: "
                "cairn keeps a model as files in its run's artifacts (the run's own params and metrics are imported)",
            )

    def _models_of_run(self, run: Run) -> list[Any]:
        models = [m for m in self._experiment_models(run.info.experiment_id) if m.source_run_id == run.info.run_id]
        if models and not all(m.model_id in self._placements for m in models):
            self._place_run_models(run.info.run_id, run.info.artifact_uri, models)
        return models

    def _place_run_models(self, run_id: str, artifact_uri: str, models: list[Any]) -> None:
        """Where each logged model of a run goes: ``<name>`` when free, else ``models/<model id>``.

        Decided from the source alone (the run's top-level artifact names, models in creation order),
        so every import places a model at the same path.
        """
        used = {info.path.split("/")[0] for info in self._repository(artifact_uri).list_artifacts("") or []}
        for model in models:
            name = str(model.name or "")
            relpath = f"models/{model.model_id}"
            if name and "/" not in name and name not in used and _safe(name):
                relpath = name
            used.add(relpath.split("/")[0])
            self._placements[model.model_id] = VersionLocation(relpath, run_id=run_id)
            self._note(
                f"logged model {model.model_id} ({model.name!r})", f"imported as files at runs:/{run_id}/{relpath}"
            )

    def _place_orphan(self, model: Any) -> VersionLocation:
        name = (
            self._experiment_names.get(str(model.experiment_id)) or self.client.get_experiment(model.experiment_id).name
        )
        location = VersionLocation(f"models/{model.model_id}", experiment_name=name)
        self._placements[model.model_id] = location
        return location

    def _placement(self, model_id: str) -> VersionLocation | None:
        if model_id in self._placements:
            return self._placements[model_id]
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_logged_model(model_id)
        except MlflowException:
            return None
        if not model.source_run_id:
            return self._place_orphan(model)
        try:
            run = self._runs.get(model.source_run_id) or self.client.get_run(model.source_run_id)
        except MlflowException:
            return None
        models = [m for m in self._experiment_models(model.experiment_id) if m.source_run_id == model.source_run_id]
        self._place_run_models(model.source_run_id, run.info.artifact_uri, models or [model])
        return self._placements.get(model_id)

    # -- registry ----------------------------------------------------------------------------------

    def _has_registry(self) -> bool:
        """A file store without ``models/`` has no registered model; mlflow would create the folder on opening."""
        if not self.uri.startswith("file:"):
            return True
        from urllib.parse import unquote, urlparse

        return (Path(unquote(urlparse(self.uri).path)) / "models").is_dir()

    def registered_models(self) -> Iterator[tuple[RegisteredModel, list[ModelVersion]]]:
        if not self.registry or not self._has_registry():
            return
        token: str | None = None
        while True:
            page = self.client.search_registered_models(max_results=_MODEL_PAGE, page_token=token)
            for model in page:
                yield _cairn_model(model), self._versions(model.name)
            token = page.token
            if not token:
                return

    def _versions(self, name: str) -> list[ModelVersion]:
        escaped = name.replace("'", "\\'")
        found: list[ModelVersion] = []
        token: str | None = None
        while True:
            page = self.client.search_model_versions(f"name = '{escaped}'", max_results=_PAGE, page_token=token)
            found.extend(_cairn_version(version) for version in page if version.name == name)
            token = page.token
            if not token:
                return found

    def version_location(self, version: ModelVersion) -> VersionLocation | None:
        source = version.source
        if source.startswith("models:/"):
            reference, _, below = source[len("models:/") :].partition("/")
            if not _MODEL_ID.match(reference):
                return None  # a models:/<name>/<version> source: nothing of its own to copy
            location = self._placement(reference)
            if location is None:
                return None
            relpath = f"{location.relpath}/{below}".rstrip("/") if below else location.relpath
            return VersionLocation(relpath, location.run_id, location.experiment_name)
        if source.startswith("runs:/"):
            run_id, _, path = source[len("runs:/") :].partition("/")
            return VersionLocation(path.strip("/"), run_id=run_id)
        if not version.run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self._runs.get(version.run_id) or self.client.get_run(version.run_id)
        except MlflowException:
            return None
        inside = under_root(source, run.info.artifact_uri)
        return None if inside is None else VersionLocation(inside, run_id=version.run_id)


def _safe(name: str) -> bool:
    from cairn.artifacts.paths import safe_relpath

    try:
        safe_relpath(name)
    except UnsafePath:
        return False
    return True


def _walk(repository: Any, path: str) -> list[FileInfo]:
    found: list[FileInfo] = []
    for entry in repository.list_artifacts(path or None) or []:
        if entry.path.rstrip("/") == path.rstrip("/"):
            continue
        if entry.is_dir:
            found.extend(_walk(repository, entry.path))
        else:
            found.append(FileInfo(entry.path, False, entry.file_size))
    return sorted(found, key=lambda info: info.path)


def _cairn_run(run: Any) -> Run:
    info = run.info
    try:
        status = RunStatus.parse(info.status)
    except InvalidArgument:
        status = RunStatus.FAILED
    return Run(
        info=RunInfo(
            run_id=info.run_id,
            experiment_id=str(info.experiment_id),
            run_name=info.run_name or "",
            user_id=info.user_id or "",
            status=status,
            start_time=int(info.start_time or 0),
            end_time=None if info.end_time is None else int(info.end_time),
            artifact_uri=info.artifact_uri or "",
            lifecycle_stage=LifecycleStage(info.lifecycle_stage),
        ),
        data=RunData(metrics=dict(run.data.metrics), params=dict(run.data.params), tags=dict(run.data.tags)),
    )


def _cairn_model(model: Any) -> RegisteredModel:
    aliases = getattr(model, "aliases", None) or {}
    if isinstance(aliases, list):  # some clients return alias entities
        aliases = {alias.alias: alias.version for alias in aliases}
    return RegisteredModel(
        name=model.name,
        creation_timestamp=int(model.creation_timestamp or 0),
        last_updated_timestamp=int(model.last_updated_timestamp or 0),
        description=model.description or None,
        tags=dict(model.tags or {}),
        aliases={str(alias): str(version) for alias, version in aliases.items()},
    )


def _cairn_version(version: Any) -> ModelVersion:
    return ModelVersion(
        name=version.name,
        version=str(version.version),
        creation_timestamp=int(version.creation_timestamp or 0),
        last_updated_timestamp=int(version.last_updated_timestamp or version.creation_timestamp or 0),
        source=version.source or "",
        run_id=version.run_id or None,
        description=version.description or None,
        user_id=version.user_id or None,
        current_stage=version.current_stage or "None",
        status=version.status or "READY",
        status_message=version.status_message or None,
        run_link=version.run_link or None,
        tags=dict(version.tags or {}),
        aliases=list(version.aliases or []),
    )
