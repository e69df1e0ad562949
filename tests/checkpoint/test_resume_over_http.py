"""Checkpoints and exact resume through a tracking server, over real HTTP.

Against ``cairn server`` (a subprocess over SQLite, artifacts proxied): a run's checkpoints are uploaded
(manifest last), listed, verified, downloaded, deleted and pruned through ``mlflow-artifacts:``; a training
script under ``autolog(checkpoint_every_n_steps=5, resume=True)`` (and a Lightning fit) SIGKILLed after a
checkpoint and resumed with ``CAIRN_TRACKING_URI=http://...`` ends bit-identical to an uninterrupted run, in
the same run, each step logged once (the dead process's later points superseded in the server's store); a
second process resuming a run whose lease another holds is refused with the holder named.

Against a real ``mlflow server``, which has no cairn endpoints: a resume of a run with history is refused,
naming the way out, and changes nothing in the run; a run that logged nothing is trained in with a warning.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import cairn
from cairn.checkpoint.formats import NATIVE
from cairn.checkpoint.manifest import MANIFEST_NAME, write_manifest
from cairn.checkpoint.resume import ResumeWarning, claim_run, continue_run
from cairn.checkpoint.retention import RetentionPolicy
from cairn.checkpoint.run_checkpoints import RunCheckpoints
from cairn.errors import CheckpointCorrupt
from cairn.store.rest import UnsupportedByServer
from tests.checkpoint.kill_resume_harness import KillResumeCase, kill_and_resume
from tests.conftest import S3Server
from tests.server.conftest import free_port, wait_until_up

SCRIPTS = Path(__file__).resolve().parent / "scripts"
MLFLOW = Path(sys.executable).with_name("mlflow")


@dataclass(frozen=True)
class Server:
    """A tracking server subprocess: its ``url`` and, for cairn, the ``store`` URI of its own database."""

    url: str
    store: str
    process: subprocess.Popen[bytes]


def _started(command: list[str], home: Path, url: str, store: str) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CAIRN_"))}
    log = open(home / "server.log", "wb")  # noqa: SIM115 - the process owns it until stopped
    process = subprocess.Popen(command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        wait_until_up(url, process, home / "server.log", timeout=90)
    except BaseException:
        _stop(process)
        raise
    return Server(url, store, process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture
def cairn_server(tmp_path: Path) -> Iterator[Server]:
    """``cairn server`` in a subprocess over a SQLite store with proxied artifacts."""
    home = tmp_path / "server"
    home.mkdir()
    port, store = free_port(), f"sqlite:///{home}/cairn.db"
    command = [sys.executable, "-m", "cairn.cli", "--store", store, "--artifact-root", str(home / "artifacts")]
    server = _started([*command, "server", "--port", str(port)], home, f"http://127.0.0.1:{port}", store)
    try:
        yield server
    finally:
        _stop(server.process)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``mlflow server`` (SQLite, artifacts proxied into a local directory)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port, store = free_port(), f"sqlite:///{home}/mlflow.db"
    command = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", store, "--artifacts-destination", str(home / "art")]
    server = _started(command, home, f"http://127.0.0.1:{port}", store)
    try:
        yield server
    finally:
        _stop(server.process)


def _local_checkpoint(root: Path, step: int) -> Path:
    directory = root / f"step-{step}"
    (directory / "nested").mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(bytes([step]) * 64)
    (directory / "nested" / "state.json").write_text(f'{{"step": {step}}}')
    write_manifest(directory, step=step, metrics={"loss": 10.0 - step}, fsync=False)
    return directory


# -- checkpoint files through the artifact proxy ---------------------------------------------------------


def _checkpoint_files_through_the_proxy(url: str, tmp_path: Path, stored: Callable[[], list[str]]) -> None:
    """Upload (manifest last), list, download, prune and delete a run's checkpoints through the server at
    ``url``; ``stored()`` lists the ``step-*`` directories in the server's artifact root."""
    cairn.set_tracking_uri(url)
    client = cairn.Client()
    run_id = client.create_run("0").info.run_id
    run = RunCheckpoints(client, run_id, NATIVE)
    assert run.store.root.startswith("mlflow-artifacts:")
    seen: list[str] = []
    original_put_file, original_put_bytes = run.store.put_file, run.store.put_bytes

    def put_file(local_path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        seen.append(Path(local_path).name)
        original_put_file(local_path, artifact_path)

    def put_bytes(data: bytes, artifact_file: str) -> None:
        seen.append(artifact_file.rsplit("/", 1)[-1])
        original_put_bytes(data, artifact_file)

    run.store.put_file, run.store.put_bytes = put_file, put_bytes  # type: ignore[method-assign]
    for step in (1, 2, 3, 4):
        run.upload_dir(_local_checkpoint(tmp_path / "local", step), f"step-{step}")
        assert seen[-1] == MANIFEST_NAME and seen.count(MANIFEST_NAME) == step  # the commit marker last
    run.store.put_bytes(b"partial", "checkpoints/step-9/model.safetensors")  # an upload cut before its manifest

    assert [(e.name, e.complete) for e in run.scan()] == [(f"step-{s}", True) for s in (1, 2, 3, 4)] + [
        ("step-9", False)
    ]
    entry = run.list()[-1]
    local = run.materialize(entry, tmp_path / "staging")
    assert (local / "nested" / "state.json").read_text() == '{"step": 4}'
    assert (local / "model.safetensors").read_bytes() == b"\x04" * 64

    deleted = run.prune(RetentionPolicy(keep_last=2, keep_best=0))
    assert sorted(deleted) == ["step-1", "step-2", "step-9"]
    assert [e.name for e in run.scan()] == ["step-3", "step-4"]
    assert stored() == ["step-3", "step-4"]  # gone from the server's artifact root
    run.delete("step-3")
    assert [e.name for e in run.list()] == ["step-4"] and stored() == ["step-4"]

    run.store.put_bytes(b"y" * 64, "checkpoints/step-4/model.safetensors")  # damaged on the server
    with pytest.raises(CheckpointCorrupt, match=r"model\.safetensors"):
        run.materialize(entry, tmp_path / "elsewhere")
    run.close()


def test_checkpoint_files_through_the_proxy_of_a_cairn_server(cairn_server: Server, tmp_path: Path) -> None:
    served = tmp_path / "server" / "artifacts"
    _checkpoint_files_through_the_proxy(
        cairn_server.url, tmp_path, lambda: sorted(p.name for p in served.rglob("step-*"))
    )


def test_checkpoint_files_through_the_proxy_to_an_s3_root(
    s3_server: S3Server, aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import boto3

    from tests.server.conftest import serve

    monkeypatch.setenv("CAIRN_S3_ENDPOINT_URL", s3_server.endpoint_url)
    prefix = f"checkpoints-{uuid.uuid4().hex[:10]}"
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)

    def stored() -> list[str]:
        listed = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}/")
        keys = [item["Key"] for item in listed.get("Contents", [])]
        return sorted({part for key in keys for part in key.split("/") if part.startswith("step-")})

    root = f"s3://{s3_server.bucket}/{prefix}"
    with serve(cairn.Client(f"sqlite:///{tmp_path}/server.db", root), root) as running:
        _checkpoint_files_through_the_proxy(running.url, tmp_path, stored)


# -- kill and resume over HTTP ---------------------------------------------------------------------------


def _fresh_download(store: str, run_id: str) -> None:
    """After the kill: the checkpoints are on the server; the local staging copy is removed so the resume
    downloads and verifies the checkpoint through the proxy (as on another machine)."""
    from cairn.checkpoint import runs

    cairn.set_tracking_uri(store)
    assert [i.step for i in runs.list_run_checkpoints(run_id)] == [5, 10]
    shutil.rmtree(runs.staging_dir(run_id).parent, ignore_errors=True)


def test_autolog_killed_mid_run_resumes_exactly_through_cairn_server(cairn_server: Server, tmp_path: Path) -> None:
    case = KillResumeCase(
        name="pytorch-autolog-over-http",
        command=(str(SCRIPTS / "train_resume.py"), "autolog"),
        metric_keys=("loss", "lr"),
        steps=tuple(range(1, 25)),
        dead_steps=tuple(range(1, 13)),
        superseded_steps=(11, 12),
        after_kill=_fresh_download,
    )
    result = kill_and_resume(case, tmp_path, store=cairn_server.url, superseded_view=cairn_server.store)
    assert "CHECKPOINTED" in result.crash_output
    backend = cairn.Client(cairn_server.store)
    assert backend.store.get_run_lease(result.run_id) is None  # released when the resumed run ended
    assert backend.get_run(result.run_id).info.artifact_uri.startswith(str(tmp_path / "server" / "artifacts"))


@pytest.mark.skipif(not importlib.util.find_spec("lightning"), reason="lightning is not installed")
def test_lightning_killed_mid_fit_resumes_exactly_through_cairn_server(cairn_server: Server, tmp_path: Path) -> None:
    import json

    from cairn.lightning import _integration

    def uploaded(store: str, run_id: str) -> bool:
        cairn.set_tracking_uri(store)
        artifacts = cairn.Client().artifact_store(run_id)
        index = f"{_integration.CHECKPOINTS_DIR}/{_integration.INDEX_FILE}"
        if not artifacts.exists(index):
            return False
        with artifacts.open(index) as handle:
            return 20 in {entry["global_step"] for entry in json.load(handle)["checkpoints"]}

    case = KillResumeCase(
        name="lightning-over-http",
        command=(str(SCRIPTS / "train_lightning_resume.py"),),
        metric_keys=("loss",),
        steps=tuple(range(3 * 13)),
        dead_steps=tuple(range(23)),
        superseded_steps=(20, 21, 22),
        ready_for_kill=uploaded,
    )
    result = kill_and_resume(case, tmp_path, store=cairn_server.url, superseded_view=cairn_server.store)
    assert torch.load(result.report["restored_from"], weights_only=True)["global_step"] == 20


# -- the resume lease over HTTP ----------------------------------------------------------------------------


def _env(url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAIRN_", "MLFLOW_"))}
    env.update(
        CAIRN_TRACKING_URI=url,
        CAIRN_CHECKPOINT_STAGING=str(tmp_path / "staging"),
        PYTHONUNBUFFERED="1",
        PYTHONWARNINGS="ignore",
    )
    return env


def _run_with_checkpoint(url: str) -> str:
    """A run on the server with a metric and a committed checkpoint of step 3, left RUNNING."""
    from cairn.checkpoint.runs import log_checkpoint

    cairn.set_tracking_uri(url)
    client = cairn.Client()
    run_id = client.create_run("0").info.run_id
    client.log_metric(run_id, "loss", 1.0, step=3, synchronous=True)
    log_checkpoint(model=torch.nn.Linear(2, 2), step=3, run_id=run_id, client=client, synchronous=True)
    return run_id


def test_a_second_process_resuming_a_leased_run_is_refused_naming_the_holder(
    cairn_server: Server, tmp_path: Path
) -> None:
    run_id = _run_with_checkpoint(cairn_server.url)
    env = _env(cairn_server.url, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "hold_lease.py"), run_id, "resume"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline().strip()
        assert line == "HELD resumed at 3", holder.stderr.read() if holder.stderr else ""
        lease = cairn.Client(cairn_server.store).store.get_run_lease(run_id)
        assert lease is not None and lease.owner.startswith(f"{socket.gethostname()}:{holder.pid}:")

        contender = subprocess.run(
            [sys.executable, str(SCRIPTS / "train_resume.py"), "autolog", "resume", str(tmp_path / "contender")],
            env=env,
            input=f"{run_id}\n",
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert contender.returncode != 0
        assert f"RunLeased: run {run_id} is being resumed by another process: " in contender.stderr
        assert f"host {socket.gethostname()}, pid {holder.pid}" in contender.stderr
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    history = cairn.Client(cairn_server.store).get_metric_history(run_id, "loss", include_superseded=True)
    assert [(m.step, m.value) for m in history] == [(3, 1.0)]  # the refused resume wrote nothing


# -- against an MLflow server --------------------------------------------------------------------------------


def test_resuming_a_run_with_history_through_an_mlflow_server_is_refused_and_changes_nothing(
    mlflow_server: Server, tmp_path: Path
) -> None:
    run_id = _run_with_checkpoint(mlflow_server.url)
    resumed = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_resume.py"), "autolog", "resume", str(tmp_path / "out")],
        env=_env(mlflow_server.url, tmp_path),
        input=f"{run_id}\n",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode != 0
    assert "UnsupportedByServer: acquire_run_lease is not supported by the tracking server at " in resumed.stderr
    assert f"Resuming run {run_id} (continuing it, or forking it at an older checkpoint) needs a cairn server" in (
        resumed.stderr
    )
    assert "Point CAIRN_TRACKING_URI at a `cairn server`" in resumed.stderr
    assert not (tmp_path / "out" / "final.safetensors").exists()  # no training from scratch

    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=mlflow_server.url)
    assert [(m.step, m.value) for m in mlflow.get_metric_history(run_id, "loss")] == [(3, 1.0)]
    assert mlflow.get_run(run_id).info.status == "RUNNING"
    assert len(mlflow.search_runs(["0"])) == 1  # no new run either


def test_an_mlflow_server_run_that_logged_nothing_is_trained_in_with_a_warning(mlflow_server: Server) -> None:
    cairn.set_tracking_uri(mlflow_server.url)
    client = cairn.Client()
    run_id = client.create_run("0").info.run_id
    with pytest.warns(ResumeWarning, match=rf"cannot lease run {run_id} .* nothing stops another process"):
        claim_run(client, run_id)
        assert continue_run(client, run_id, 0) == 0  # nothing to hide

    client.log_metric(run_id, "loss", 0.5, step=1, synchronous=True)
    with pytest.raises(UnsupportedByServer, match=r"needs a cairn server"):
        claim_run(client, run_id)
    with pytest.raises(UnsupportedByServer, match=r"supersede_metrics_after is not supported"):
        client.store.supersede_metrics_after(run_id, 0)
    with pytest.raises(UnsupportedByServer, match=r"fork_run is not supported"):
        client.store.fork_run(run_id, 0, start_time=0)
