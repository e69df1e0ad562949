"""`cairn gc` cleans what killed ``log_model`` processes leave in local artifact directories."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import cairn
import cairn.pyfunc
from cairn.artifacts.leftovers import find_leftovers
from cairn.cli import main
from tests.artifacts.test_atomic_replace import NEW, WRITER, first_model, run_script

pytest.importorskip("cloudpickle")


def _gc(*args: str) -> str:
    result = CliRunner().invoke(main, ["gc", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` and everything below it look untouched for ``seconds``."""
    when = time.time() - seconds
    for current, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.utime(os.path.join(current, name), (when, when), follow_symlinks=False)
    os.utime(path, (when, when), follow_symlinks=False)


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def test_gc_cleans_the_leftovers_of_killed_log_model_processes(tmp_path: Path) -> None:
    run_id = first_model()
    artifacts = Path(cairn.Client().get_run(run_id).info.artifact_uri)
    # A log_model killed while saving leaves its staging directory with a half-written model.
    killed = run_script(WRITER, run_id, str(NEW), "in-save", "exchange", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # One killed between moving the new model in and removing the old one (no atomic exchange).
    killed = run_script(WRITER, run_id, str(NEW), "step:moved-in", "renames", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    staging = [p for p in artifacts.iterdir() if p.name.startswith(".cairn-tmp-")]
    assert len(staging) == 2 and all(p.is_dir() for p in staging)  # the second writer's is empty
    old_model = artifacts / ".cairn-old-model"
    assert (old_model / "MLmodel").is_file()
    # An entry moved aside whose replacement never arrived: the only copy, to be restored, not removed.
    cairn.Client().log_text(run_id, "kept", "notes/a.txt")
    (artifacts / "notes").rename(artifacts / ".cairn-old-notes")
    leftovers = [*staging, old_model, artifacts / ".cairn-old-notes"]
    expected_bytes = sum(_tree_size(p) for p in [*staging, old_model])
    assert expected_bytes > 2 * 1024 * 1024  # the old model's 2 MB artifact, at least

    # Fresh leftovers may belong to a live writer: left alone.
    assert "0 leftover(s)" in _gc()
    assert all(p.exists() for p in leftovers)

    for path in leftovers:
        _age(path, 2 * 3600)
    dry = _gc("--dry-run")
    for path in staging:
        assert f"would remove {path}" in dry
    assert f"would remove {old_model}" in dry
    assert f"would restore {artifacts / 'notes'} from {artifacts / '.cairn-old-notes'}" in dry
    assert f"4 leftover(s) of interrupted writes found, would free {expected_bytes} bytes" in dry
    assert all(p.exists() for p in leftovers)

    done = _gc()
    assert f"4 leftover(s) of interrupted writes cleaned, freed {expected_bytes} bytes" in done
    assert not any(p.exists() for p in leftovers)
    assert (artifacts / "notes" / "a.txt").read_text() == "kept"
    assert sorted(p.name for p in artifacts.iterdir()) == ["model", "notes"]
    assert cairn.pyfunc.load_model(f"runs:/{run_id}/model", allow_pickle=True).predict([0]) == [NEW]
    assert find_leftovers(artifacts, older_than=0) == []
    bad = CliRunner().invoke(main, ["gc", "--stale-after", "soon"])
    assert bad.exit_code == 1 and "--stale-after" in bad.output
