"""The resume lease across real processes, on SQLite and PostgreSQL: a second process is refused with the
holder named; a holder killed with SIGKILL keeps the run until its lease goes stale, then the run is taken
over; release, the end of the run and interpreter exit free the lease at once; the renewer keeps a live
holder's lease."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cairn
from cairn.checkpoint.lease import acquire_resume_lease, lease_ttl_seconds
from cairn.errors import InvalidArgument, RunLeased
from cairn.store._sql.util import now_ms

SCRIPT = Path(__file__).resolve().parent / "scripts" / "hold_lease.py"
TTL = 3.0  # seconds: the holder renews every second, so a loaded machine may delay a renewal by 2 s


@pytest.fixture
def run_id(db_url: str) -> str:
    """A run in a store on each backend (``db_url``: tests/conftest.py), which is also the tracking URI."""
    cairn.set_tracking_uri(db_url)
    return cairn.Client().create_run("0", run_name="leased").info.run_id


def _launch(tmp_path: Path, run_id: str, mode: str, ttl: float = TTL) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env.update(
        CAIRN_TRACKING_URI=cairn.get_tracking_uri(),
        CAIRN_ARTIFACT_ROOT=str(tmp_path / "artifacts"),
        CAIRN_RESUME_LEASE_TTL=str(ttl),
    )
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), run_id, mode],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.wait(timeout=30)
        raise AssertionError(f"the lease script printed nothing; stderr:\n{proc.stderr.read() if proc.stderr else ''}")
    return line


@pytest.fixture
def holder(tmp_path: Path, run_id: str) -> Iterator[subprocess.Popen[str]]:
    """A subprocess holding the run's lease (ttl TTL)."""
    proc = _launch(tmp_path, run_id, "hold")
    try:
        assert _first_line(proc).startswith(f"HELD {socket.gethostname()}:{proc.pid}:")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_a_second_process_is_refused_with_the_holder_named(
    tmp_path: Path, run_id: str, holder: subprocess.Popen[str]
) -> None:
    contender = _launch(tmp_path, run_id, "try")
    out, err = contender.communicate(timeout=60)
    assert contender.returncode == 3, err[-3000:]
    assert out.startswith(f"REFUSED run {run_id} is being resumed by another process")
    assert f"host {socket.gethostname()}, pid {holder.pid}" in out
    assert "goes stale at" in out

    time.sleep(TTL + 1)  # longer than the ttl: only the holder's renewals keep the lease alive
    with pytest.raises(RunLeased) as refused:
        acquire_resume_lease(cairn.Client(), run_id, ttl_seconds=TTL)
    assert refused.value.run_id == run_id
    assert refused.value.holder.startswith(f"{socket.gethostname()}:{holder.pid}:")
    assert refused.value.expires_time > now_ms()


def test_a_killed_holder_on_this_host_is_taken_over_at_once(run_id: str, holder: subprocess.Popen[str]) -> None:
    """crash -> resume -> crash -> resume must not wait for the ttl: the dead pid is checked on this host."""
    client = cairn.Client()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    lease = acquire_resume_lease(client, run_id, ttl_seconds=600)
    try:
        stored = client.store.get_run_lease(run_id)
        assert stored is not None and stored.owner == lease.owner
    finally:
        lease.release()


def test_a_silent_holder_on_another_host_is_taken_over_after_the_ttl(run_id: str) -> None:
    client = cairn.Client()
    assert client.store.acquire_run_lease(run_id, "other-host:4242:token", TTL)  # never renewed: a crash there
    taken_at = now_ms()
    with pytest.raises(RunLeased) as refused:  # not stale yet: another host's pid cannot be checked
        acquire_resume_lease(client, run_id, ttl_seconds=TTL)
    assert "host other-host, pid 4242" in str(refused.value)
    stale_at = refused.value.expires_time
    assert stale_at - taken_at <= TTL * 1000

    deadline = time.monotonic() + 10 * TTL
    while True:
        try:
            lease = acquire_resume_lease(client, run_id, ttl_seconds=TTL)
            break
        except RunLeased:
            assert time.monotonic() < deadline, "the silent holder's lease never went stale"
            time.sleep(0.1)
    try:
        assert now_ms() >= stale_at  # taken over only once stale
        stored = client.store.get_run_lease(run_id)
        assert stored is not None and stored.owner == lease.owner
        assert lease.owner.startswith(f"{socket.gethostname()}:{os.getpid()}:")
    finally:
        lease.release()


def test_release_frees_the_lease_at_once(tmp_path: Path, run_id: str) -> None:
    holder = _launch(tmp_path, run_id, "hold", ttl=600)
    try:
        assert _first_line(holder).startswith("HELD ")
        assert holder.stdin is not None
        holder.stdin.write("release\n")
        holder.stdin.flush()
        assert _first_line(holder) == "RELEASED"
        lease = acquire_resume_lease(cairn.Client(), run_id, ttl_seconds=600)  # no wait for a 600 s ttl
        lease.release()
        assert lease.released and cairn.Client().store.get_run_lease(run_id) is None
    finally:
        holder.kill()
        holder.communicate(timeout=30)


def test_interpreter_exit_releases_the_lease(tmp_path: Path, run_id: str) -> None:
    proc = _launch(tmp_path, run_id, "exit", ttl=600)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.startswith("HELD "), err[-3000:]
    assert cairn.Client().store.get_run_lease(run_id) is None


def test_the_end_of_the_run_releases_the_lease(run_id: str) -> None:
    client = cairn.Client()
    other = client.create_run("0", run_name="other").info.run_id
    with cairn.start_run(run_id=run_id):
        lease = acquire_resume_lease(client, run_id, ttl_seconds=600)
        with cairn.start_run(run_id=other, nested=True):
            pass  # another run ending leaves this run's lease alone
        assert not lease.released
        stored = client.store.get_run_lease(run_id)
        assert stored is not None and stored.owner == lease.owner
    assert lease.released
    assert client.store.get_run_lease(run_id) is None
    acquire_resume_lease(client, run_id, ttl_seconds=600).release()


def test_a_lease_used_as_a_context_manager_is_released_on_leaving(run_id: str) -> None:
    client = cairn.Client()
    refused = pytest.raises(RunLeased, match=rf"pid {os.getpid()} \(this process: release its lease first\)")
    with acquire_resume_lease(client, run_id, ttl_seconds=600) as lease, refused:
        acquire_resume_lease(client, run_id, ttl_seconds=600)  # this process's second resume is refused too
    assert lease.released and client.store.get_run_lease(run_id) is None


def test_a_lease_lost_to_another_owner_is_reported(run_id: str) -> None:
    client = cairn.Client()
    with pytest.warns(RuntimeWarning, match=f"lost the resume lease of run {run_id}"):
        lease = acquire_resume_lease(client, run_id, ttl_seconds=0.6)
        client.store.release_run_lease(run_id, lease.owner)  # as if it went stale and was taken over
        assert client.store.acquire_run_lease(run_id, "elsewhere:1:x", 600)
        deadline = time.monotonic() + 5
        while not lease.lost:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    lease.release()  # does not touch the new owner's lease
    stored = client.store.get_run_lease(run_id)
    assert stored is not None and stored.owner == "elsewhere:1:x"


def test_ttl_comes_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAIRN_RESUME_LEASE_TTL", raising=False)
    assert lease_ttl_seconds() == 60.0
    monkeypatch.setenv("CAIRN_RESUME_LEASE_TTL", "2.5")
    assert lease_ttl_seconds() == 2.5 and lease_ttl_seconds(7) == 7.0
    monkeypatch.setenv("CAIRN_RESUME_LEASE_TTL", "soon")
    with pytest.raises(InvalidArgument, match="CAIRN_RESUME_LEASE_TTL"):
        lease_ttl_seconds()
    with pytest.raises(InvalidArgument):
        lease_ttl_seconds(0)


def test_a_run_being_resumed_by_another_process_cannot_be_resumed(
    tmp_path: Path, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume planner takes the lease: a second resume of the same run is refused, naming the holder;
    once the holder is gone (killed on this host) the run resumes at once."""
    import torch

    from cairn.checkpoint.runs import log_checkpoint, resume

    monkeypatch.setenv("CAIRN_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("CAIRN_CHECKPOINT_STAGING", str(tmp_path / "staging"))
    cairn.set_tracking_uri(cairn.get_tracking_uri())
    model = torch.nn.Linear(2, 2)
    with cairn.start_run(run_id=run_id):
        cairn.log_metric("loss", 1.0, step=3)
        log_checkpoint(model=model, step=3, synchronous=True)
    first = _launch(tmp_path, run_id, "resume", ttl=600)
    try:
        assert _first_line(first) == "HELD resumed at 3"
        with pytest.raises(RunLeased, match=rf"run {run_id} is being resumed by another process: .*pid {first.pid}"):
            resume(run_id, model=torch.nn.Linear(2, 2))
        assert cairn.active_run() is None  # the refused resume activated nothing
    finally:
        first.kill()
        first.communicate(timeout=30)
    state = resume(run_id, model=torch.nn.Linear(2, 2))
    try:
        assert state.step == 3 and state.run_id == run_id
    finally:
        cairn.end_run()
    assert cairn.Client().store.get_run_lease(run_id) is None
