"""`cairn import-mlflow` opens its source read-only and refuses what is not an MLflow store.

Each refusal: exit code 1, one message naming the source and what was found, no traceback, and the
source unchanged (every path with its size and mtime, nothing created: no ``.trash/``, ``models/``,
``mlruns/`` or tables).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from cairn.cli import main
from tests.conftest import PgServer, driver_url


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below (and including) ``root`` with its size and mtime in nanoseconds."""
    found: dict[str, tuple[int, int]] = {}
    if not root.exists():
        return found
    stat = root.stat()
    found["."] = (stat.st_size if root.is_file() else 0, stat.st_mtime_ns)
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                stat = path.stat()
                found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


def _import(source: str, dest: Path) -> Result:
    return CliRunner().invoke(main, ["import-mlflow", "--from", source, "--to", str(dest)])


def _assert_refused(result: Result, *fragments: str) -> str:
    output = result.output
    assert result.exit_code == 1, output
    assert "Traceback" not in output and result.exc_info is not None and result.exc_info[0] is SystemExit, output
    assert "up to date" not in output, output
    flat = "".join(output.split())  # the console wraps long lines, anywhere
    for fragment in fragments:
        assert "".join(fragment.split()) in flat, (fragment, output)
    return flat


@pytest.fixture
def mlflow() -> ModuleType:
    return pytest.importorskip("mlflow")


def test_unrelated_folder_is_refused_untouched(tmp_path: Path) -> None:
    source = tmp_path / "stuff"
    (source / "sub").mkdir(parents=True)
    (source / "notes.txt").write_text("hello")
    (source / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = _snapshot(source)
    flat = _assert_refused(_import(str(source), tmp_path / "dest"), str(source), "not an MLflow store")
    assert "meta.yaml" in flat
    assert _snapshot(source) == before
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_tensorboard_logdir_is_named(tmp_path: Path) -> None:
    source = tmp_path / "tb"
    (source / "train").mkdir(parents=True)
    (source / "train" / "events.out.tfevents.123.host").write_bytes(b"\x00\x01tb")
    before = _snapshot(source)
    flat = _assert_refused(_import(str(source), tmp_path / "dest"), str(source), "TensorBoard")
    assert "import-tensorboard" in flat
    assert _snapshot(source) == before


def test_empty_directory_is_refused_untouched(tmp_path: Path) -> None:
    source = tmp_path / "empty"
    source.mkdir()
    before = _snapshot(source)
    _assert_refused(_import(str(source), tmp_path / "dest"), str(source), "empty")
    assert _snapshot(source) == before


def test_missing_path_is_refused_and_not_created(tmp_path: Path) -> None:
    source = tmp_path / "nowhere"
    _assert_refused(_import(str(source), tmp_path / "dest"), "nowhere", "does not exist")
    _assert_refused(_import(source.as_uri(), tmp_path / "dest"), "nowhere")
    _assert_refused(_import(f"sqlite:///{source}.db", tmp_path / "dest"), "nowhere")
    assert not source.exists() and not Path(f"{source}.db").exists()


def test_sqlite_file_that_is_not_mlflow_is_refused_untouched(tmp_path: Path) -> None:
    source = tmp_path / "other.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO people (name) VALUES ('ada')")
    conn.close()
    before = _snapshot(tmp_path)
    for form in (str(source), f"sqlite:///{source}"):
        _assert_refused(_import(form, tmp_path / "dest"), str(source), "not an MLflow database", "people")
    assert {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith("dest")} == before
    with sqlite3.connect(source) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == {"people"}


def test_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    source = tmp_path / "readme.txt"
    source.write_text("just text, long enough to not be a database header at all\n" * 4)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    before = _snapshot(tmp_path)
    _assert_refused(_import(str(source), tmp_path / "dest"), str(source), "not an MLflow database")
    _assert_refused(_import(str(empty), tmp_path / "dest"), str(empty), "not an MLflow database")
    assert {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith("dest")} == before


def _pg_tables(url: str) -> set[str]:
    engine = sa.create_engine(driver_url(url))
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_postgresql_database_that_is_not_mlflow_is_refused_untouched(pg_server: PgServer, tmp_path: Path) -> None:
    with pg_server.new_database("cairn_not_mlflow") as url:
        engine = sa.create_engine(driver_url(url))
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE people (id serial PRIMARY KEY, name text)")
        engine.dispose()
        _assert_refused(_import(url, tmp_path / "dest"), "cairn_not_mlflow", "not an MLflow database", "people")
        assert _pg_tables(url) == {"people"}

    with pg_server.new_database("cairn_empty_pg") as url:
        _assert_refused(_import(url, tmp_path / "dest"), "cairn_empty_pg", "not an MLflow database")
        assert _pg_tables(url) == set()


def test_real_mlflow_file_store_imports_untouched(
    mlflow: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store mlflow made (runs and artifacts, no registered model) imports, and stays as it was."""
    from mlflow import MlflowClient

    source = tmp_path / "mlruns"
    uri = source.resolve().as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("exp")
    run = client.create_run(experiment, run_name="r").info.run_id
    client.log_metric(run, "loss", 0.5, step=1)
    client.log_text(run, "hi", "notes/hi.txt")
    client.set_terminated(run)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    assert not (source / "models").exists()
    before = _snapshot(source)

    result = _import(str(source), tmp_path / "dest")
    assert result.exit_code == 0, result.output
    assert _snapshot(source) == before
    again = _import(str(source), tmp_path / "dest")
    assert again.exit_code == 0 and "up to date" in again.output, again.output
    assert _snapshot(source) == before


def test_mlflow_file_store_without_trash_is_refused_untouched(
    mlflow: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow would create ``.trash`` in the source on opening it: refused, with what to do."""
    from mlflow import MlflowClient

    source = tmp_path / "mlruns"
    uri = source.resolve().as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    MlflowClient(uri, uri).create_experiment("exp")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    (source / ".trash").rmdir()
    before = _snapshot(source)
    _assert_refused(_import(str(source), tmp_path / "dest"), str(source), ".trash")
    assert _snapshot(source) == before


def test_real_mlflow_sqlite_store_imports_untouched(mlflow: ModuleType, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    source = tmp_path / "src" / "mlflow.db"
    source.parent.mkdir()
    uri = f"sqlite:///{source}"
    client = MlflowClient(uri, uri)
    run = client.create_run(client.create_experiment("exp", artifact_location=str(tmp_path / "art"))).info.run_id
    client.log_metric(run, "loss", 0.5, step=1)
    client.set_terminated(run)
    before = _snapshot(source.parent)

    result = _import(uri, tmp_path / "dest")
    assert result.exit_code == 0, result.output
    assert _snapshot(source.parent) == before


def test_unreadable_mlflow_store_fails_without_traceback(mlflow: ModuleType, tmp_path: Path) -> None:
    """A store that looks like MLflow's but that mlflow cannot read: mlflow's error in one line, exit 1."""
    source = tmp_path / "broken"
    (source / "0").mkdir(parents=True)
    (source / ".trash").mkdir()
    (source / "0" / "meta.yaml").write_text("name: x\n")
    before = _snapshot(source)
    _assert_refused(_import(str(source), tmp_path / "dest"), str(source), "mlflow failed reading", "experiment_id")
    assert _snapshot(source) == before


def test_real_mlflow_postgresql_store_passes_the_check(mlflow: ModuleType, pg_server: PgServer, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from cairn.sync.mlflow_import import mlflow_tracking_uri

    with pg_server.new_database("cairn_real_mlflow") as url:
        uri = mlflow_tracking_uri(url)
        client = MlflowClient(uri, uri)
        run = client.create_run(client.create_experiment("exp", artifact_location=str(tmp_path / "art"))).info.run_id
        client.log_metric(run, "loss", 0.5, step=1)
        client.set_terminated(run)
        tables = _pg_tables(url)
        result = _import(url, tmp_path / "dest")
        assert result.exit_code == 0, result.output
        assert _pg_tables(url) == tables


def _contents(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file below ``root`` with its size, mtime in nanoseconds and sha256."""
    import hashlib

    return {
        str(path.relative_to(root)): (
            path.stat().st_size,
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _dest_metrics(dest: Path, run_id: str) -> dict[str, float]:
    from cairn.tracking.client import Client

    return dict(Client(f"sqlite:///{dest}/cairn.db", str(dest / "artifacts")).get_run(run_id).data.metrics)


def test_sqlite_source_in_wal_mode_stays_byte_identical(mlflow: ModuleType, tmp_path: Path) -> None:
    """A live MLflow database (WAL mode, a writer's connection open, recent rows only in the -wal file):
    imported with those rows, and its main file, -wal and -shm keep their bytes and mtimes."""
    from mlflow import MlflowClient

    source = tmp_path / "src" / "mlflow.db"
    source.parent.mkdir()
    uri = f"sqlite:///{source}"
    client = MlflowClient(uri, uri)
    run = client.create_run(client.create_experiment("exp", artifact_location=str(tmp_path / "art"))).info.run_id
    keeper = sqlite3.connect(source)  # the writer that stays open: the WAL is not checkpointed away
    try:
        assert keeper.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
        keeper.execute("PRAGMA wal_autocheckpoint=0")
        client.log_metric(run, "loss", 0.25, step=1)
        client.set_terminated(run)
        assert Path(f"{source}-wal").stat().st_size > 0 and Path(f"{source}-shm").is_file()
        before = _contents(source.parent)
        result = _import(str(source), tmp_path / "dest")
        assert result.exit_code == 0, result.output
        assert _contents(source.parent) == before
        assert _dest_metrics(tmp_path / "dest", run) == {"loss": 0.25}
    finally:
        keeper.close()
    assert not list(Path(tempfile.gettempdir()).glob(f"cairn-tmp-{os.getpid()}-mlflow-import-*"))  # the copy is gone


def test_sqlite_source_with_an_older_schema_is_imported_from_an_upgraded_copy(
    mlflow: ModuleType, tmp_path: Path
) -> None:
    """mlflow refuses a database whose schema is older than its own (``mlflow db upgrade``); cairn upgrades
    its private copy and imports, the source keeps its schema version and its bytes."""
    from mlflow import MlflowClient
    from mlflow.store.db.utils import _get_latest_schema_revision

    source = tmp_path / "old.db"
    uri = f"sqlite:///{source}"
    (tmp_path / "x").mkdir()
    made_by = f"sqlite:///{tmp_path / 'x' / '..' / 'old.db'}"  # mlflow caches its stores per URI: not the import's
    client = MlflowClient(made_by, made_by)
    run = client.create_run(client.create_experiment("exp", artifact_location=str(tmp_path / "art"))).info.run_id
    client.log_metric(run, "acc", 0.75, step=3)
    client.set_terminated(run)
    head = _get_latest_schema_revision()
    previous = mlflow.store.db.utils._get_alembic_config(uri)
    from alembic.script import ScriptDirectory

    older = ScriptDirectory.from_config(previous).get_revision(head).down_revision
    assert isinstance(older, str)
    with sqlite3.connect(source) as conn:  # the previous revision (its migration changes nothing on SQLite)
        conn.execute("UPDATE alembic_version SET version_num = ?", (older,))
    conn.close()
    engine = sa.create_engine(uri)
    with pytest.raises(Exception, match="out-of-date database schema"):  # what mlflow itself says
        mlflow.store.db.utils._verify_schema(engine)
    engine.dispose()
    before = _contents(tmp_path)

    result = _import(str(source), tmp_path / "dest")
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in _contents(tmp_path).items() if not k.startswith("dest")} == before
    assert _dest_metrics(tmp_path / "dest", run) == {"acc": 0.75}
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (older,)
    conn.close()


def _pg_rows(url: str) -> dict[str, list[tuple[object, ...]]]:
    engine = sa.create_engine(driver_url(url))
    try:
        with engine.connect() as conn:
            return {
                table: sorted(map(tuple, conn.execute(sa.text(f'SELECT * FROM "{table}"'))), key=repr)
                for table in sorted(sa.inspect(conn).get_table_names())
            }
    finally:
        engine.dispose()


def test_postgresql_source_is_read_in_a_read_only_session(
    mlflow: ModuleType, pg_server: PgServer, tmp_path: Path
) -> None:
    """Every row stays as it was; a write mlflow attempts on opening (here: re-creating the default experiment
    someone deleted) fails instead of landing in the source, with a clear error."""
    from mlflow import MlflowClient

    from cairn.sync.mlflow_import import mlflow_tracking_uri

    with pg_server.new_database("cairn_ro_mlflow") as url:
        uri = mlflow_tracking_uri(url)
        client = MlflowClient(uri, uri)
        run = client.create_run(client.create_experiment("exp", artifact_location=str(tmp_path / "art"))).info.run_id
        client.log_metric(run, "loss", 0.5, step=1)
        client.set_terminated(run)
        before = _pg_rows(url)
        result = _import(url, tmp_path / "dest")
        assert result.exit_code == 0, result.output
        assert _dest_metrics(tmp_path / "dest", run) == {"loss": 0.5}
        assert _pg_rows(url) == before

    with pg_server.new_database("cairn_ro_no_default") as url:  # a new URL: mlflow caches its stores per URL
        uri = mlflow_tracking_uri(url)
        MlflowClient(uri, uri).create_experiment("exp", artifact_location=str(tmp_path / "art"))
        engine = sa.create_engine(driver_url(url))
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM experiment_tags WHERE experiment_id = 0")
            conn.exec_driver_sql("DELETE FROM experiments WHERE experiment_id = 0")
        engine.dispose()
        before = _pg_rows(url)
        _assert_refused(
            _import(url, tmp_path / "dest2"),
            "cairn_ro_no_default",
            "mlflow tried to write",
            "INSERT INTO experiments",
            "opens read-only: nothing was changed",
        )
        assert _pg_rows(url) == before


def test_http_source_that_is_unreachable_or_not_mlflow_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from tests.server.conftest import free_port

    port = free_port()
    started = time.monotonic()
    _assert_refused(_import(f"http://127.0.0.1:{port}", tmp_path / "dest"), "cannot reach", f"127.0.0.1:{port}")
    assert time.monotonic() - started < 15
    assert not (tmp_path / "dest").exists()

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<html>hello</html>")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path / "site",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        flat = _assert_refused(
            _import(f"http://127.0.0.1:{port}", tmp_path / "dest"), "not an MLflow tracking server", "404"
        )
        assert "experiments/search" in flat
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert not (tmp_path / "dest").exists()


def test_http_source_served_by_a_tracking_server_imports(tmp_path: Path) -> None:
    """A server answering MLflow's REST API (here cairn's own) passes the check and imports."""
    pytest.importorskip("mlflow")
    from cairn.tracking.client import Client
    from tests.server.conftest import serve

    root = tmp_path / "server"
    client = Client(f"sqlite:///{root}/cairn.db", str(root / "artifacts"))
    run = client.create_run(client.create_experiment("served")).info.run_id
    client.log_metric(run, "loss", 0.125, step=2)
    client.set_terminated(run)
    with serve(client, str(root / "artifacts")) as running:
        result = _import(running.url, tmp_path / "dest")
    assert result.exit_code == 0, result.output
    assert _dest_metrics(tmp_path / "dest", run) == {"loss": 0.125}
