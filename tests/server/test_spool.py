"""Never lose a point when the tracking server is down: idempotency keys kept per batch, the local spool,
``end_run`` with the server still down, ``cairn sync --spool``.

Real HTTP throughout: ``cairn server`` in a subprocess killed with SIGKILL and restarted on the same port and
store, or in a uvicorn thread stopped and started again on the same port. Short retry settings keep each test
a few seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import cairn
from cairn.cli import main as cli_main
from cairn.server.app import create_server_app
from cairn.store.base import MetricPoint
from cairn.store.rest import RestTrackingStore
from cairn.store.rest.spool import RECORDS_FILE, Spool, SpoolFull
from cairn.tracking import config
from cairn.tracking.batcher import MetricBatcher
from cairn.tracking.client import Client
from cairn.tracking.entities import RunStatus
from tests.server.conftest import free_port, run_app, wait_until_up

CAIRN = Path(sys.executable).with_name("cairn")


@pytest.fixture(autouse=True)
def _short_windows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAIRN_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("CAIRN_HTTP_MAX_RETRIES", "2")
    monkeypatch.setenv("CAIRN_HTTP_BACKOFF", "0.05")
    monkeypatch.setenv("CAIRN_HTTP_MAX_BACKOFF", "0.2")
    monkeypatch.setenv("CAIRN_EXIT_DRAIN_TIMEOUT", "1")


class ServerProcess:
    """``cairn server`` in a subprocess over one SQLite store, on one port, that can be killed and restarted."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.store_url = f"sqlite:///{home}/cairn.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CAIRN_"))}
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 - the child holds it
        self.process = subprocess.Popen(
            [
                *(str(CAIRN), "--store", self.store_url, "--artifact-root", str(self.home / "artifacts")),
                *("server", "--port", str(self.port)),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until_up(self.url, self.process, self.home / "server.log")

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    home = tmp_path / "server"
    home.mkdir()
    server = ServerProcess(home)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.kill()


class ThreadServer:
    """``cairn server``'s app in a uvicorn thread on a fixed port: stopped and started again at will."""

    def __init__(self, home: Path) -> None:
        self.client = Client(f"sqlite:///{home}/cairn.db", str(home / "artifacts"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_server_app(
            self.client, serve_artifacts=True, artifact_root=str(home / "artifacts"), port=self.port
        )
        self._running: AbstractContextManager[None] | None = None

    def start(self) -> None:
        self._running = run_app(self.app, self.port)
        self._running.__enter__()

    def stop(self) -> None:
        if self._running is not None:
            self._running.__exit__(None, None, None)
            self._running = None


@pytest.fixture
def thread_server(tmp_path: Path) -> Iterator[ThreadServer]:
    server = ThreadServer(tmp_path / "server")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.client.store.close()


def _steps(client: Client, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _store(url: str) -> RestTrackingStore:
    return RestTrackingStore(url, backoff=0.05, max_backoff=0.2, max_retries=2, timeout=5)


def _new_run(store: RestTrackingStore) -> str:
    return store.create_run("0", user_id="t", start_time=int(time.time() * 1000), run_name="r").info.run_id


def _wait(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _spooled_files(root: Path) -> list[Path]:
    return sorted(root.rglob(RECORDS_FILE)) if root.exists() else []


# -- (a) the server killed with SIGKILL mid-run, restarted on the same port and store ----------------------


def test_a_server_killed_mid_run_ends_with_every_point_once(server_process: ServerProcess, tmp_path: Path) -> None:
    store = _store(server_process.url)
    run_id = _new_run(store)
    batcher = MetricBatcher(store, flush_interval=0.02, wake_at=500)
    total = 30_000
    logged = threading.Event()

    def train() -> None:
        for step in range(total):
            batcher.add(MetricPoint(run_id, "loss", 1.0 / (step + 1), 1_000 + step, step))
            if step % 1000 == 999:
                time.sleep(0.03)  # a training step's worth of work between bursts
        logged.set()

    trainer = threading.Thread(target=train)
    trainer.start()
    time.sleep(0.3)  # log-batch requests are in flight
    server_process.kill()
    time.sleep(0.5)
    assert batcher.offline  # the writer spools instead of waiting: the trainer was never blocked
    server_process.start()
    trainer.join(30)
    assert logged.is_set()
    assert batcher.drain(20)
    _wait(lambda: not batcher.offline and not _spooled_files(tmp_path / "spool"))
    batcher.close()
    store.close()
    reader = Client(server_process.store_url)
    assert _steps(reader, run_id) == list(range(total))  # every point exactly once


# -- (b) the server down longer than the retry window, then back ----------------------------------------


def test_points_spool_with_one_warning_and_are_sent_once_when_the_server_is_back(
    thread_server: ThreadServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(thread_server.url)
    run_id = _new_run(store)
    batcher = MetricBatcher(store, flush_interval=0.02)
    try:
        batcher.add_many([MetricPoint(run_id, "loss", 0.5, 1000 + i, i) for i in range(1500)])
        batcher.flush()
        thread_server.stop()
        with caplog.at_level(logging.INFO, logger="cairn"):
            for step in range(1500, 6500):
                batcher.add(MetricPoint(run_id, "loss", 0.5, 1000 + step, step))
                if step % 500 == 0:
                    time.sleep(0.05)
            _wait(lambda: batcher.offline and batcher.pending == 0)
            spooled = _spooled_files(tmp_path / "spool")
            assert len(spooled) == 1 and spooled[0].parent.name == run_id
            assert spooled[0].parent.parent.name == f"127.0.0.1_{thread_server.port}"
            thread_server.start()
            _wait(lambda: not batcher.offline)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert str(tmp_path / "spool") in warnings[0].getMessage()
        assert "unreachable" in warnings[0].getMessage()
        assert any("answers again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
        assert _spooled_files(tmp_path / "spool") == []
        assert _steps(thread_server.client, run_id) == list(range(6500))
    finally:
        batcher.close()
        store.close()


class FailingProxy(httpx.BaseTransport):
    """The real transport behind a proxy that answers the first log-batch with a 500 after the server stored it,
    and the next ``refuse`` log-batch requests with a 500 without passing them on."""

    def __init__(self, refuse: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.stored_then_failed = False
        self.refuse = refuse
        self.keys: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/runs/log-batch"):
            return self.inner.handle_request(request)
        self.keys.append(request.headers["Idempotency-Key"])
        if not self.stored_then_failed:
            self.stored_then_failed = True
            stored = self.inner.handle_request(request)
            stored.read()
            assert stored.status_code == 200
            return httpx.Response(500, text="<html>proxy error</html>")
        if self.refuse > 0:
            self.refuse -= 1
            return httpx.Response(500, text="<html>proxy error</html>")
        return self.inner.handle_request(request)


def test_a_batch_stored_then_answered_500_is_resent_whole_under_its_key(thread_server: ThreadServer) -> None:
    """Halving it (the isolation of bad points) would make new requests of stored points: they are stored once."""
    proxy = FailingProxy(refuse=3)
    store = RestTrackingStore(thread_server.url, transport=proxy, backoff=0.02, max_backoff=0.05, max_retries=1)
    run_id = _new_run(store)
    batcher = MetricBatcher(store, flush_interval=0.02)
    try:
        batcher.add_many([MetricPoint(run_id, "loss", 0.5, 1000 + i, i) for i in range(800)])
        _wait(lambda: proxy.refuse == 0 and not batcher.offline and batcher.pending == 0)
        batcher.flush()
    finally:
        batcher.close()
        store.close()
    assert _steps(thread_server.client, run_id) == list(range(800))
    assert set(proxy.keys) == {proxy.keys[0]}  # every resend under the first key, never halves


# -- (c) end_run with the server still down; cairn sync --spool later -----------------------------------


def test_end_run_leaves_the_spool_and_cairn_sync_sends_it_once(
    thread_server: ThreadServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cairn.set_tracking_uri(thread_server.url)
    with cairn.start_run() as run:
        run_id = run.info.run_id
        cairn.log_metric("loss", 1.0, step=0)
        cairn.flush()
        thread_server.stop()
        for step in range(1, 2345):
            cairn.log_metric("loss", 1.0 / step, step=step)
        started = time.monotonic()
    assert time.monotonic() - started < 10  # bounded by CAIRN_EXIT_DRAIN_TIMEOUT and the short retries
    err = capsys.readouterr().err
    run_dir = tmp_path / "spool" / f"127.0.0.1_{thread_server.port}" / run_id
    assert f"2,344 points and the run's status FINISHED of run {run_id} are spooled at {run_dir}" in err
    assert "send them with: cairn sync --spool" in err
    config.reset()  # the training process is gone

    thread_server.start()
    result = CliRunner().invoke(cli_main, ["sync", "--spool"])
    assert result.exit_code == 0, result.output
    assert "2,344" in result.output and run_id in result.output
    assert not run_dir.exists()
    assert _steps(thread_server.client, run_id) == list(range(2345))
    assert thread_server.client.get_run(run_id).info.status is RunStatus.FINISHED
    # a second sync finds nothing: the points are not sent twice
    again = CliRunner().invoke(cli_main, ["sync", "--spool"])
    assert again.exit_code == 0 and "nothing spooled" in again.output
    assert _steps(thread_server.client, run_id) == list(range(2345))


def test_cairn_sync_reports_a_server_that_still_does_not_answer(thread_server: ThreadServer, tmp_path: Path) -> None:
    store = _store(thread_server.url)
    run_id = _new_run(store)
    thread_server.stop()
    store.spool.append_points(run_id, "k-1", [MetricPoint(run_id, "loss", 0.5, 1000, 0)])
    result = CliRunner().invoke(cli_main, ["sync", "--spool", str(tmp_path / "spool")])
    assert result.exit_code == 1
    assert "does not answer" in result.output
    assert "still spooled" in result.output
    assert _spooled_files(tmp_path / "spool")  # kept for the next try
    store.close()


def test_cairn_sync_spool_to_another_server(thread_server: ThreadServer, tmp_path: Path) -> None:
    run_id = _new_run(_store(thread_server.url))
    gone = Spool(f"http://127.0.0.1:{free_port()}")  # written for a server that is no more
    gone.append_points(run_id, "k-0", [MetricPoint(run_id, "loss", 0.5, 1000 + s, s) for s in range(50)])
    gone.append_status(run_id, "FAILED", 5000)
    result = CliRunner().invoke(cli_main, ["sync", "--spool", str(gone.directory), "--to", thread_server.url])
    assert result.exit_code == 0, result.output
    assert _steps(thread_server.client, run_id) == list(range(50))
    info = thread_server.client.get_run(run_id).info
    assert (info.status, info.end_time) == (RunStatus.FAILED, 5000)
    assert not gone.run(run_id).path.exists()


# -- (d) a full spool -------------------------------------------------------------------------------------


def test_a_full_spool_is_said_and_raised_and_nothing_is_dropped(
    thread_server: ThreadServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CAIRN_SPOOL_MAX_BYTES", "60000")  # about 2,000 points
    store = _store(thread_server.url)
    run_id = _new_run(store)
    thread_server.stop()
    batcher = MetricBatcher(store, flush_interval=0.02)
    try:
        with caplog.at_level(logging.WARNING, logger="cairn"):
            batcher.add_many([MetricPoint(run_id, "loss", 0.5, 1000 + i, i) for i in range(5000)])
            _wait(lambda: any("cannot be spooled" in r.getMessage() for r in caplog.records))
        with pytest.raises(SpoolFull, match="CAIRN_SPOOL_MAX_BYTES"):
            batcher.flush()
        assert 0 < batcher.pending < 5000  # what did not fit is held in memory, not dropped
        thread_server.start()
        _wait(lambda: not batcher.offline and batcher.pending == 0)
        assert _steps(thread_server.client, run_id) == list(range(5000))
    finally:
        batcher.close()
        store.close()


# -- (e) a torn last record -------------------------------------------------------------------------------


def test_a_torn_last_record_is_reported_and_the_rest_replayed(thread_server: ThreadServer, tmp_path: Path) -> None:
    store = _store(thread_server.url)
    run_id = _new_run(store)
    spool = Spool(store.uri)
    for first in (0, 100, 200):
        spool.append_points(
            run_id, f"key-{first}", [MetricPoint(run_id, "loss", 0.5, 1000 + s, s) for s in range(first, first + 100)]
        )
    records = spool.run(run_id).records_file
    with open(records, "r+b") as file:  # a kill in the middle of writing the last record
        file.truncate(records.stat().st_size - 700)
    result = CliRunner().invoke(cli_main, ["sync", "--spool"])
    assert result.exit_code == 0, result.output
    assert "ends with a record cut short" in result.output
    assert "that record is lost" in result.output
    assert _steps(thread_server.client, run_id) == list(range(200))
    assert not records.parent.exists()
    store.close()


def test_appending_after_a_torn_record_cuts_it_off_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool("http://127.0.0.1:1")
    run_id = "a" * 32
    spool.append_points(run_id, "k0", [MetricPoint(run_id, "m", 1.0, 1, 0)])
    records = spool.run(run_id).records_file
    with open(records, "ab") as file:
        file.write(b'CAIRN-SPOOL 999 1\n{"kind"')
    later = Spool("http://127.0.0.1:1")  # another process
    with caplog.at_level(logging.WARNING, logger="cairn"):
        later.append_points(run_id, "k1", [MetricPoint(run_id, "m", 2.0, 2, 1)])
    assert any("cut off" in r.getMessage() for r in caplog.records)
    reading = later.run(run_id).read()
    assert reading.torn is None
    assert [r.data["key"] for r in reading.records] == ["k0", "k1"]


# -- (f) a checkpoint upload ------------------------------------------------------------------------------


def test_a_checkpoint_upload_is_spooled_and_completed_later(thread_server: ThreadServer, tmp_path: Path) -> None:
    from cairn.checkpoint.manifest import MANIFEST_NAME, write_manifest
    from cairn.checkpoint.run_checkpoints import RunCheckpoints

    client = Client(thread_server.url)
    run_id = client.create_run("0").info.run_id
    local = tmp_path / "staging" / "step-1"
    (local / "shards").mkdir(parents=True)
    (local / "weights.bin").write_bytes(os.urandom(4096))
    (local / "shards" / "part-0.bin").write_bytes(os.urandom(1024))
    write_manifest(local, step=1, run_id=run_id, fsync=False)
    checkpoints = RunCheckpoints(client, run_id)
    thread_server.stop()
    checkpoints.submit("uploading step-1", lambda: checkpoints.upload_dir(local, "step-1"))
    assert checkpoints.drain(20)
    assert checkpoints.take_error() is None  # spooled, not failed
    assert sorted(p.name for p in local.rglob("*") if p.is_file()) == [MANIFEST_NAME, "part-0.bin", "weights.bin"]
    spool = Spool(f"http://127.0.0.1:{thread_server.port}")
    assert spool.summary(run_id).checkpoints == 1
    checkpoints.close()

    thread_server.start()
    result = CliRunner().invoke(cli_main, ["sync", "--spool"])
    assert result.exit_code == 0, result.output
    assert "1 checkpoint" in result.output
    listed = RunCheckpoints(Client(thread_server.url), run_id).list()
    assert [entry.name for entry in listed] == ["step-1"]  # complete: its manifest was uploaded, last
    copy = RunCheckpoints(Client(thread_server.url), run_id).materialize(listed[0], tmp_path / "restored")
    assert (copy / "weights.bin").read_bytes() == (local / "weights.bin").read_bytes()
    assert not spool.run(run_id).path.exists()


def test_native_checkpoints_during_an_outage_are_spooled_in_order_and_pruning_waits(
    thread_server: ThreadServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from cairn.checkpoint.runs import list_run_checkpoints, log_checkpoint

    cairn.set_tracking_uri(thread_server.url)
    model = torch.nn.Linear(4, 2)
    with cairn.start_run() as run:
        run_id = run.info.run_id
        log_checkpoint(model=model, step=1, synchronous=True, keep_last=1)
        thread_server.stop()
        for step in (2, 3):
            cairn.log_metric("loss", 1.0 / step, step=step)
            log_checkpoint(model=model, step=step, synchronous=True, keep_last=1)  # no error: spooled
    err = capsys.readouterr().err
    assert f"2 points, 2 checkpoints and the run's status FINISHED of run {run_id} are spooled" in err
    config.reset()

    thread_server.start()
    result = CliRunner().invoke(cli_main, ["sync", "--spool"])
    assert result.exit_code == 0, result.output
    names = [info.name for info in list_run_checkpoints(run_id, client=Client(thread_server.url))]
    assert names == ["step-1", "step-2", "step-3"]  # in order; pruning (keep_last=1) waited for the server
    assert thread_server.client.get_run(run_id).info.status is RunStatus.FINISHED
    assert _steps(thread_server.client, run_id) == [2, 3]


def test_a_hostile_spool_record_uploads_nothing_from_outside_its_directory(
    thread_server: ThreadServer, tmp_path: Path
) -> None:
    """A spool file is input: a checkpoint record naming files outside its own directory is refused."""
    from cairn.store.rest.spool import _encode

    run_id = _new_run(_store(thread_server.url))
    secret = tmp_path / "secret.txt"
    secret.write_text("do not upload")
    spool = Spool(thread_server.url)
    spool.append_points(run_id, "k-0", [MetricPoint(run_id, "loss", 0.5, 1000, 0)])
    run = spool.run(run_id)
    (run.path / "checkpoint-0").mkdir()
    (run.path / "checkpoint-0" / "manifest.json").write_text("{}")
    hostile = {"kind": "checkpoint", "run_id": run_id, "base": "checkpoints/x", "dir": "checkpoint-0"}
    run.append(_encode({**hostile, "files": ["../../../../secret.txt"]}))
    result = CliRunner().invoke(cli_main, ["sync", "--spool"])
    assert result.exit_code == 1
    assert "refused a record" in result.output and "UnsafePath" in result.output
    assert _steps(thread_server.client, run_id) == [0]  # the record before it was sent
    assert thread_server.client.list_artifacts(run_id) == []  # nothing uploaded
    assert run.records_file.exists()  # kept, for the user to look at


def test_a_replay_in_another_process_loses_no_record_appended_meanwhile(tmp_path: Path) -> None:
    """``cairn sync --spool`` while the training process still spools: the two Spool objects (two open lock
    files, as in two processes) never lose an appended record to the removal of a delivered run."""
    url = "http://127.0.0.1:1"
    writer, replayer = Spool(url), Spool(url)
    run_id = "b" * 32
    appended = [f"k{n}" for n in range(300)]
    delivered: list[str] = []

    def write() -> None:
        for key in appended:
            writer.append_points(run_id, key, [MetricPoint(run_id, "m", 1.0, 1, 0)])

    thread = threading.Thread(target=write)
    thread.start()
    while thread.is_alive():
        if replayer.pending(run_id):
            replayer.replay(run_id, lambda record: delivered.append(record.data["key"]))
    thread.join()
    if replayer.pending(run_id):
        replayer.replay(run_id, lambda record: delivered.append(record.data["key"]))
    assert delivered == appended  # each once, in order
    assert not replayer.run(run_id).path.exists()


EXIT_SCRIPT = """
import sys
import cairn

cairn.set_tracking_uri(sys.argv[1])
run = cairn.start_run()
cairn.log_metric("loss", 1.0, step=0)
cairn.flush()
print(run.info.run_id, flush=True)
sys.stdin.readline()  # the server is stopped now
for step in range(1, 1001):
    cairn.log_metric("loss", 1.0 / step, step=step)
# no end_run: the interpreter's exit ends the run
"""


def test_a_process_exiting_while_the_server_is_down_leaves_the_spool_and_says_so(
    thread_server: ThreadServer, tmp_path: Path
) -> None:
    script = tmp_path / "train.py"
    script.write_text(EXIT_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), thread_server.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stdout is not None and process.stdin is not None
    run_id = process.stdout.readline().strip()
    thread_server.stop()
    started = time.monotonic()
    _, err = process.communicate("go\n", timeout=60)
    assert process.returncode == 0, err
    assert time.monotonic() - started < 20
    assert f"1,000 points and the run's status FINISHED of run {run_id} are spooled at" in err
    assert "send them with: cairn sync --spool" in err

    thread_server.start()
    result = CliRunner().invoke(cli_main, ["sync", "--spool"])
    assert result.exit_code == 0, result.output
    assert _steps(thread_server.client, run_id) == list(range(1001))
    assert thread_server.client.get_run(run_id).info.status is RunStatus.FINISHED
