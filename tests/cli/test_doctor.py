"""`cairn doctor`: exit 0 only when every check passed; otherwise say which failed and exit non-zero."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from click.testing import CliRunner, Result

from cairn.cli import main


def _doctor(store: str) -> Result:
    return CliRunner().invoke(main, ["--store", store, "doctor"], catch_exceptions=False)


def _flat(text: str) -> str:
    """The output with table wrapping undone."""
    return " ".join(text.split())


def test_doctor_passes_on_a_working_store(tmp_path: Path) -> None:
    result = _doctor(f"sqlite:///{tmp_path / 'cairn.db'}")
    assert result.exit_code == 0, result.output
    assert "store check ok" in _flat(result.output)


def test_doctor_fails_when_the_store_is_an_application_database(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    result = _doctor(f"sqlite:///{path}")
    output = _flat(result.output)
    assert result.exit_code == 1, result.output
    assert "store check failed" in output and "users" in output
    assert "1 check(s) failed: store check" in output


def test_doctor_fails_when_the_store_file_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database at all\n" * 100)
    result = _doctor(f"sqlite:///{path}")
    assert result.exit_code == 1, result.output
    assert "check(s) failed: store check" in _flat(result.output)
