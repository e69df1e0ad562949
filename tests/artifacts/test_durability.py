"""Background fsync of logged models: waited for at run end, failures raised, never lost silently."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

import cairn
from cairn.artifacts import durability
from cairn.errors import ArtifactWriteError
from cairn.models.packaging import log_model, save_model_dir


def _write(directory: Path) -> None:
    (directory / "weights.bin").write_bytes(b"w" * 4096)


def _save(path: Path, **kwargs: object) -> object:
    return save_model_dir(
        path,
        flavor_name="python_function",
        flavor_conf={},
        loader_module="cairn.pyfunc",
        write_data=_write,
        **kwargs,  # type: ignore[arg-type]
    )


def test_log_model_leaves_fsync_to_the_background_and_end_run_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    synced: list[str] = []
    real = durability.fsync_file

    def slow_fsync(path: str | os.PathLike[str]) -> None:
        gate.wait(10)
        synced.append(os.path.basename(path))
        real(path)

    monkeypatch.setattr(durability, "fsync_file", slow_fsync)
    with cairn.start_run() as run:
        info = log_model(_save, "model")
        assert durability.pending() == 1 and synced == []  # log_model returned before any fsync
        local = Path(cairn.Client().download_artifacts(run.info.run_id, "model"))
        assert (local / "weights.bin").read_bytes() == b"w" * 4096  # in place, whole
        gate.set()
    assert durability.pending() == 0 and "weights.bin" in synced
    assert info.model_uri.endswith("/model")


def test_a_failed_fsync_is_raised_at_the_next_log_call_and_at_run_end(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(path: str | os.PathLike[str]) -> None:
        raise OSError(errno.EIO, "Input/output error", os.fspath(path))

    monkeypatch.setattr(durability, "fsync_file", failing)
    run = cairn.start_run()
    log_model(_save, "model")
    while durability.pending():
        pass
    with pytest.raises(ArtifactWriteError, match=r"fsync failed\): \S+/model/\S+: Input/output error"):
        cairn.log_metric("loss", 1.0)
    cairn.log_metric("loss", 2.0)
    log_model(_save, "again")
    with pytest.raises(ArtifactWriteError, match="could not be made durable"):
        cairn.end_run()
    assert cairn.get_run(run.info.run_id).info.status.value == "FINISHED"
    assert [m.value for m in cairn.Client().get_metric_history(run.info.run_id, "loss")] == [1.0, 2.0]
