"""The resume lease: while a process resumes a run, no other process may resume it.

:func:`acquire_resume_lease` takes the run's lease in the store (owner ``host:pid:token``) or raises
:class:`~cairn.errors.RunLeased` naming the holder and when its lease goes stale. A daemon thread
renews the lease every third of its ttl; it is released by :meth:`ResumeLease.release`, and when the run
ends, at interpreter exit and on SIGTERM: the lease is a ``LEASES`` worker of the background service
registered for its run, released when the run's ordered drain has finished everything else of the run
(its checkpoints, metric points, uploads and fsyncs), so no other process resumes the run while this one
still writes into it. A process killed without a word stops renewing, so its lease goes stale after the
ttl and the next resume takes it over.

Two holders are known dead without waiting for the ttl: a process of this host that no longer exists, and a
worker of an earlier attempt of the same torchelastic job. Under ``torchrun --max-restarts=K`` the owner
names the job and attempt (``host:pid:token@<TORCHELASTIC_RUN_ID>#<TORCHELASTIC_RESTART_COUNT>``); torchelastic
stops every worker of an attempt before it starts the next one (on every node: the rendezvous round
restarts them all), so a lease held by an earlier attempt of the same job is taken over at once, on any
host.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import warnings
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from cairn import background
from cairn.errors import CairnError, InvalidArgument, RunLeased

if TYPE_CHECKING:
    from cairn.store.base import RunLease, TrackingStore
    from cairn.tracking.client import Client

#: Seconds a lease lives without renewal (the time a crashed holder blocks a resume); env overrides.
DEFAULT_TTL_SECONDS = 60.0
TTL_ENV = "CAIRN_RESUME_LEASE_TTL"
_ACQUIRE_ATTEMPTS = 3  # a lease released between a refused acquire and the read of its holder: try again

_log = logging.getLogger(__name__)


def lease_ttl_seconds(ttl_seconds: float | None = None) -> float:
    """``ttl_seconds``, else ``CAIRN_RESUME_LEASE_TTL``, else :data:`DEFAULT_TTL_SECONDS`.

    Raises:
        InvalidArgument: the value is not a positive number.
    """
    if ttl_seconds is None:
        text = os.environ.get(TTL_ENV, "").strip()
        try:
            ttl_seconds = float(text) if text else DEFAULT_TTL_SECONDS
        except ValueError:
            raise InvalidArgument(f"{TTL_ENV}={text!r} is not a number of seconds") from None
    if not ttl_seconds > 0:
        raise InvalidArgument(f"the resume lease ttl must be a positive number of seconds, got {ttl_seconds!r}")
    return float(ttl_seconds)


def lease_owner() -> str:
    """A new owner name for this process: ``host:pid:token``; a torchelastic worker's token ends with
    ``@<job>#<attempt>``."""
    token = uuid.uuid4().hex[:12]
    attempt = _elastic_attempt()
    if attempt is not None:
        token += f"@{attempt[0]}#{attempt[1]}"
    return f"{socket.gethostname()}:{os.getpid()}:{token}"


def _elastic_attempt() -> tuple[str, int] | None:
    """(``TORCHELASTIC_RUN_ID``, ``TORCHELASTIC_RESTART_COUNT``) of a torchelastic worker, else None."""
    job = "".join(c for c in os.environ.get("TORCHELASTIC_RUN_ID", "") if c not in ":@#").strip()
    count = os.environ.get("TORCHELASTIC_RESTART_COUNT", "").strip()
    if not job or not count.isdigit():
        return None
    return job, int(count)


def _earlier_attempt(owner: str) -> bool:
    """Whether ``owner`` is a worker of an earlier attempt of this process's torchelastic job (stopped by
    torchelastic before this attempt started)."""
    attempt = _elastic_attempt()
    token = owner.rsplit(":", 1)[-1]
    if attempt is None or "@" not in token or "#" not in token:
        return False
    job, _, count = token.split("@", 1)[1].rpartition("#")
    return job == attempt[0] and count.isdigit() and int(count) < attempt[1]


class ResumeLease:
    """A held resume lease, kept alive by a daemon thread until released (a worker of the background service:
    closing it releases it).

    Attributes:
        run_id: the leased run.
        owner: this holder's name, ``host:pid:token``.
        ttl_seconds: how long the lease outlives its last renewal.
        lost: set when a renewal found the lease gone (this process stalled past the ttl and another
            took the run over); a warning says so at that moment.
    """

    name = "resume lease"
    phase = background.Phase.LEASES

    def __init__(self, store: TrackingStore, run_id: str, owner: str, ttl_seconds: float) -> None:
        self.run_id = run_id
        self.owner = owner
        self.ttl_seconds = ttl_seconds
        self.lost = False
        self._store = store
        self.pid = os.getpid()
        self._released = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_released, name="cairn-resume-lease", daemon=True)
        self._renewer.start()
        background.register(self, run_id=run_id)  # released after the run's drain (end_run, exit, SIGTERM)

    def __repr__(self) -> str:
        state = "released" if self.released else "lost" if self.lost else "held"
        return f"ResumeLease(run_id={self.run_id!r}, owner={self.owner!r}, {state})"

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def __enter__(self) -> ResumeLease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Give the lease up at once (idempotent). A forked child never releases its parent's lease."""
        if self._released.is_set() or os.getpid() != self.pid:
            return
        self._released.set()
        background.unregister(self)
        try:
            self._store.release_run_lease(self.run_id, self.owner)
        except CairnError as error:  # the lease then goes stale after its ttl, as after a crash
            _log.warning(
                "could not release the resume lease of run %s (it goes stale within %g s): %s",
                self.run_id,
                self.ttl_seconds,
                error,
            )

    # -- as a worker of the background service ------------------------------------------------------------

    def drain(self, timeout: float | None) -> bool:
        """Nothing to finish: the lease is released when the service closes it, after the run's drain."""
        return True

    def close(self) -> None:
        self.release()

    def raise_errors(self) -> None:
        """A failed release is logged (the lease then goes stale): nothing to raise."""

    def _renew_until_released(self) -> None:
        while not self._released.wait(self.ttl_seconds / 3):
            try:
                renewed = self._store.renew_run_lease(self.run_id, self.owner, self.ttl_seconds)
            except CairnError as error:  # the store is unreachable for now: the next period tries again
                _log.warning("could not renew the resume lease of run %s: %s", self.run_id, error)
                continue
            if not renewed:
                if not self._released.is_set():
                    self.lost = True
                    warnings.warn(
                        f"cairn lost the resume lease of run {self.run_id}: it was not renewed within "
                        f"{self.ttl_seconds:g} s and another process may now be resuming the run",
                        RuntimeWarning,
                        stacklevel=1,
                    )
                return


def acquire_resume_lease(client: Client, run_id: str, *, ttl_seconds: float | None = None) -> ResumeLease:
    """Take the run's resume lease for this process, or refuse because another process resumes the run.

    Args:
        client: the client of the run's store.
        run_id: the run about to be resumed.
        ttl_seconds: how long the lease survives its holder's silence (default: ``CAIRN_RESUME_LEASE_TTL``,
            else 60 s).

    Raises:
        RunLeased: another process holds a live lease on the run (the message names its host and pid
            and when the lease goes stale).
        RunNotFound / RunNotActive: unknown or deleted run.
    """
    ttl = lease_ttl_seconds(ttl_seconds)
    store = client.store
    owner = lease_owner()
    for _ in range(_ACQUIRE_ATTEMPTS):
        if store.acquire_run_lease(run_id, owner, ttl):
            return ResumeLease(store, run_id, owner, ttl)
        held = store.get_run_lease(run_id)
        if held is None:
            continue
        if _holder_is_dead(held.owner) or _earlier_attempt(held.owner):  # a crash: no need to wait for the ttl
            _log.info("taking over the resume lease of run %s from dead process %s", run_id, held.owner)
            store.release_run_lease(run_id, held.owner)
            continue
        raise _leased(held)
    raise CairnError(f"could not take the resume lease of run {run_id}: it changed hands {_ACQUIRE_ATTEMPTS} times")


_held: dict[str, ResumeLease] = {}
_held_lock = threading.Lock()


def hold_resume_lease(client: Client, run_id: str) -> ResumeLease:
    """This process's lease on ``run_id``: the one it already holds (a second resume of the same run in
    one process), else a new one (see :func:`acquire_resume_lease`)."""
    with _held_lock:
        lease = _held.get(run_id)
        if lease is None or lease.released or lease.lost or lease.pid != os.getpid():
            lease = acquire_resume_lease(client, run_id)
            _held[run_id] = lease
        return lease


def _holder_is_dead(owner: str) -> bool:
    """Whether ``owner`` names a process of this host that no longer exists (a pid reused by another process
    counts as alive: the lease then goes stale after its ttl)."""
    host, pid = _holder(owner)
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _leased(lease: RunLease) -> RunLeased:
    host, pid = _holder(lease.owner)
    stale_at = datetime.fromtimestamp(lease.expires_time / 1000, tz=timezone.utc).isoformat(timespec="seconds")
    same_process = " (this process: release its lease first)" if pid == str(os.getpid()) else ""
    return RunLeased(
        f"run {lease.run_id} is being resumed by another process: host {host}, pid {pid}{same_process}. "
        f"Two processes resuming one run would both write into it. Its lease goes stale at {stale_at} "
        f"unless renewed (a crashed holder stops renewing); stop that process, or resume again after then",
        run_id=lease.run_id,
        holder=lease.owner,
        expires_time=lease.expires_time,
    )


def _holder(owner: str) -> tuple[str, str]:
    """(host, pid) from ``host:pid:token``; an owner of another shape is shown whole as the host."""
    parts = owner.split(":")
    if len(parts) >= 3:
        return ":".join(parts[:-2]), parts[-2]
    return owner, "?"
