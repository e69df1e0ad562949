"""`cairn gc` removes emptied run directories, partial checkpoints and staging directories of killed processes.

Real processes killed with SIGKILL mid-staging (a model being logged to a remote store, a checkpoint
being written), the real CLI on the embedded SQLite store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import cairn
from cairn.cli import main
from tests.cli.test_gc_staging import _age, _tree_size

pytest.importorskip("cloudpickle")


def _gc(*args: str) -> str:
    result = CliRunner().invoke(main, ["gc", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _tree(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def _killed(script: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run ``script`` in a fresh interpreter that SIGKILLs itself mid-staging."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_purge_removes_the_emptied_run_directory_and_gc_sweeps_old_ones(tmp_path: Path) -> None:
    experiment_root = tmp_path / "cairn-runs" / "artifacts" / "0"
    with cairn.start_run() as gone:
        cairn.log_text("x", "a/b.txt")
    with cairn.start_run() as live_empty:  # a live run whose directory holds nothing
        pass
    with cairn.start_run() as kept:
        cairn.log_text("y", "c.txt")
    cairn.Client().delete_run(gone.info.run_id)
    (experiment_root / live_empty.info.run_id / "artifacts").mkdir(parents=True, exist_ok=True)
    # What an older cairn's purge left behind: the directories of a run that is gone, files removed.
    orphan = experiment_root / ("f" * 32)
    (orphan / "artifacts" / "sub").mkdir(parents=True)
    # A run being created right now (its row not yet visible): fresh, left alone.
    creating = experiment_root / ("e" * 32)
    (creating / "artifacts").mkdir(parents=True)
    # A directory of a gone run that still holds a file: never touched.
    with_file = experiment_root / ("d" * 32)
    (with_file / "artifacts").mkdir(parents=True)
    (with_file / "artifacts" / "f.txt").write_text("data")
    # An empty directory not named like a run (a user's, another experiment's): never touched.
    not_a_run = experiment_root / "keep-me"
    not_a_run.mkdir()
    for path in (orphan, with_file, not_a_run, experiment_root / live_empty.info.run_id):
        _age(path, 2 * 3600)

    dry = _gc("--dry-run")
    assert f"would remove empty run directory {orphan}" in dry
    assert "1 empty run directory found" in dry
    assert (experiment_root / gone.info.run_id / "artifacts" / "a" / "b.txt").is_file()
    assert orphan.is_dir()

    out = _gc()
    assert f"purged run {gone.info.run_id}" in out
    assert f"removed empty run directory {orphan}" in out and "1 empty run directory removed" in out
    assert sorted(p.name for p in experiment_root.iterdir()) == sorted(
        [live_empty.info.run_id, kept.info.run_id, creating.name, with_file.name, not_a_run.name]
    )
    assert (experiment_root / live_empty.info.run_id / "artifacts").is_dir()
    assert (experiment_root / kept.info.run_id / "artifacts" / "c.txt").read_text() == "y"
    assert (with_file / "artifacts" / "f.txt").read_text() == "data"
    assert "0 empty run directories removed" in _gc()  # nothing more to do


def test_gc_cleans_a_killed_model_upload_staged_in_the_system_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    script = """
import os, signal, cairn, cairn.pyfunc
import cairn.models.packaging as packaging
experiment = cairn.create_experiment("remote", artifact_location="memory://bucket/exp")
packaging.write_files_manifest = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
with cairn.start_run(experiment_id=experiment):
    cairn.pyfunc.log_model("model", python_model=lambda data: [1] * len(data), pip_requirements=[])
"""
    _killed(script, tmp_path, {"TMPDIR": str(system_tmp)})
    (staged,) = system_tmp.iterdir()
    assert staged.name.startswith("cairn-tmp-") and "-model-" in staged.name
    assert (staged / "model" / "python_model.pkl").is_file()
    # A live process's staging directory, even an old one: left alone.
    live = system_tmp / f"cairn-tmp-{os.getpid()}-model-live"
    (live / "model").mkdir(parents=True)
    (live / "model" / "weights.bin").write_bytes(b"w" * 100)
    _age(live, 2 * 3600)
    size = _tree_size(staged)

    assert "0 staging director(ies) of dead processes" in _gc()  # fresh: the process may have just died
    assert staged.is_dir()
    _age(staged, 2 * 3600)
    dry = _gc("--dry-run")
    assert f"would remove {staged} ({size} bytes)" in dry
    assert f"1 staging director(ies) of dead processes in {system_tmp} found, would free {size} bytes" in dry
    assert staged.is_dir()
    out = _gc()
    assert f"removed {staged} ({size} bytes)" in out
    assert f"1 staging director(ies) of dead processes in {system_tmp} cleaned, freed {size} bytes" in out
    assert not staged.exists()
    assert (live / "model" / "weights.bin").is_file()


def test_gc_cleans_partial_checkpoints_of_a_killed_writer_and_purged_runs_staging(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    staging = tmp_path / "cairn-runs" / "staging"
    script = """
import os, signal, torch, cairn, cairn.pytorch
import cairn.checkpoint.writer as writer
net = torch.nn.Linear(4, 2)
with cairn.start_run() as run:
    print(run.info.run_id, flush=True)
    cairn.pytorch.log_checkpoint(model=net, step=1, synchronous=True)
    writer.write_manifest = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    cairn.pytorch.log_checkpoint(model=net, step=2, synchronous=True)
"""
    _killed(script, tmp_path)
    (run_dir,) = staging.iterdir()
    run_id = run_dir.name
    checkpoints = run_dir / "checkpoints"
    partial = [p for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]
    assert len(partial) == 1 and (checkpoints / "step-1" / "manifest.json").is_file()
    assert "0 leftover(s) in the checkpoint staging area" in _gc()
    assert partial[0].is_dir()  # fresh: the writer may still be at work

    _age(run_dir, 2 * 3600)
    size = _tree_size(partial[0])
    dry = _gc("--dry-run")
    assert f"would remove {partial[0]} ({size} bytes)" in dry
    assert partial[0].is_dir()
    out = _gc()
    assert f"1 leftover(s) in the checkpoint staging area {staging} cleaned, freed {size} bytes" in out
    assert _tree(checkpoints) == ["step-1", *sorted(f"step-1/{n}" for n in os.listdir(checkpoints / "step-1"))]

    # The staging of a purged run goes with the run; one whose run vanished otherwise, once stale.
    cairn.Client().delete_run(run_id)
    orphan = staging / ("c" * 32) / "checkpoints" / "step-3"
    orphan.mkdir(parents=True)
    (orphan / "model.safetensors").write_bytes(b"x" * 10)
    _age(staging / ("c" * 32), 2 * 3600)
    out = _gc()
    assert f"purged run {run_id}" in out
    assert f"removed {staging / ('c' * 32)} (10 bytes)" in out
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("where", ["sqlite", "env", "postgres-like"])
def test_gc_finds_the_staging_area_where_checkpoints_put_it(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc locates the staging area without importing torch; it must stay the one checkpoints write to."""
    pytest.importorskip("torch")
    from cairn.checkpoint import runs
    from cairn.housekeeping import STAGING_ENV, _checkpoint_staging
    from cairn.tracking.client import Client

    assert STAGING_ENV == runs.STAGING_ENV and runs.ARTIFACT_DIR == "checkpoints"
    client = Client(f"sqlite:///{tmp_path}/db/cairn.db", str(tmp_path / "artifacts"))
    if where == "env":
        monkeypatch.setenv(STAGING_ENV, str(tmp_path / "elsewhere"))
    if where == "postgres-like":
        monkeypatch.setattr(client.store, "db_uri", "postgresql://db/x", raising=False)
    root, own = _checkpoint_staging(client)
    assert root == runs.staging_root(client)
    assert own is (where == "sqlite")


def test_gc_does_not_import_torch(tmp_path: Path) -> None:
    code = """
import sys
from cairn.cli import main
try:
    main(["gc"])
except SystemExit as exit:
    assert not exit.code, exit.code
assert "torch" not in sys.modules, "torch imported"
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "checkpoint staging area" in done.stdout
