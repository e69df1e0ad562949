"""What a type checker says about a user's script: ``cairn.autolog()`` is callable (a package is never
callable to mypy; ``cairn/__init__.py`` declares its type), and a misspelt option is reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

USER_SCRIPT = """\
import cairn
from cairn.autolog import AutologWarning

cairn.autolog()
cairn.autolog(log_models=False, silent=True)
warning: type[Warning] = AutologWarning
"""


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "user_script.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), str(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cairn_autolog_is_callable_to_mypy(tmp_path: Path) -> None:
    result = _mypy(tmp_path, USER_SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_misspelt_autolog_option_is_reported_by_mypy(tmp_path: Path) -> None:
    result = _mypy(tmp_path, "import cairn\n\ncairn.autolog(log_modelz=False)\n")
    assert result.returncode == 1
    assert 'Unexpected keyword argument "log_modelz"' in result.stdout
