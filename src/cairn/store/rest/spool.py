"""The local spool of a tracking server that stays unreachable: what could not be sent waits here, in order.

Layout: ``<root>/<host_port>/server.json`` names the server (its URL); ``<root>/<host_port>/<run_id>/`` holds
one run's ``records.log`` (append-only) and ``sent`` (the byte offset of the first record not delivered yet,
replaced atomically). ``<root>`` is ``CAIRN_SPOOL_DIR``, else ``spool`` in cairn's cache directory
(``CAIRN_CACHE_DIR``, else ``~/.cache/cairn``: ``~/.cache/cairn/spool/<host_port>/<run_id>/``).
Everything under the root is bounded by ``CAIRN_SPOOL_MAX_BYTES`` (default 1 GiB): an append that would pass
the bound raises :class:`SpoolFull` and writes nothing.

A record is one line ``CAIRN-SPOOL <length> <crc32>`` followed by ``length`` bytes of JSON and a newline,
written with one ``write`` on a file opened for appending: a kill mid-write leaves at most that record torn,
which the reader detects (short, or a checksum that does not match) and reports; the records before it are
replayed. The next process to append to a run's spool cuts a torn tail off first (with a warning).

Records: ``points`` (the idempotency key of one log-batch request and its points: a replay sends the same
request with the same key, so the cairn server stores it once), ``checkpoint`` (files hard-linked or copied
into the spool, uploaded manifest last) and ``status`` (the run's terminal status, applied after every
other record of the run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cairn.errors import InvalidArgument, StoreError

try:
    import fcntl
except ImportError:  # Windows: one process per spool directory
    fcntl = None  # type: ignore[assignment]
from cairn.store.base import MetricPoint

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SPOOL_DIR_ENV",
    "SPOOL_MAX_BYTES_ENV",
    "RunSpool",
    "Spool",
    "SpoolFull",
    "SpoolRecord",
    "SpoolSummary",
    "default_root",
    "max_bytes",
    "server_dirs",
]

logger = logging.getLogger(__name__)

SPOOL_DIR_ENV = "CAIRN_SPOOL_DIR"
SPOOL_MAX_BYTES_ENV = "CAIRN_SPOOL_MAX_BYTES"
DEFAULT_MAX_BYTES = 1 << 30
SERVER_FILE = "server.json"
RECORDS_FILE = "records.log"
SENT_FILE = "sent"
LOCK_FILE = ".lock"
_MAGIC = b"CAIRN-SPOOL"
_HEADER = re.compile(rb"^CAIRN-SPOOL (\d+) (\d+)\n")
_MAX_HEADER = 64


class SpoolFull(StoreError):
    """The spool reached ``CAIRN_SPOOL_MAX_BYTES``: what did not fit stays in memory, not on disk."""


def default_root() -> Path:
    """``CAIRN_SPOOL_DIR``, else ``spool`` in cairn's cache directory (``CAIRN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/cairn`` or ``~/.cache/cairn``)."""
    configured = os.environ.get(SPOOL_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    cairn_cache = os.environ.get("CAIRN_CACHE_DIR", "").strip()
    if cairn_cache:
        return Path(cairn_cache).expanduser() / "spool"
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache) if cache else Path.home() / ".cache") / "cairn" / "spool"


def max_bytes() -> int:
    """``CAIRN_SPOOL_MAX_BYTES`` (warned about and ignored when it is not a positive integer)."""
    text = os.environ.get(SPOOL_MAX_BYTES_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        logger.warning(
            "cairn: %s=%r is not a positive number of bytes; using %d", SPOOL_MAX_BYTES_ENV, text, DEFAULT_MAX_BYTES
        )
        return DEFAULT_MAX_BYTES
    return value


def server_dir_name(url: str) -> str:
    """``host_port`` (plus the path prefix, if any) as one safe directory name."""
    parts = urlsplit(url)
    name = f"{parts.hostname or 'server'}_{parts.port or (443 if parts.scheme == 'https' else 80)}"
    if parts.path.strip("/"):
        name += "_" + parts.path.strip("/")
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _tree_bytes(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _encode(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":")).encode("utf-8")
    return b"%s %d %d\n%s\n" % (_MAGIC, len(payload), zlib.crc32(payload), payload)


@dataclass(frozen=True)
class SpoolRecord:
    """One record read back: its JSON and where it ends in ``records.log``."""

    data: dict[str, Any]
    end: int

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", ""))


@dataclass
class SpoolSummary:
    """What a run's spool holds (records not delivered yet)."""

    points: int = 0
    checkpoints: int = 0
    status: str | None = None
    torn: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.points or self.checkpoints or self.status)

    def describe(self) -> str:
        """``12,345 points, 1 checkpoint and the run's status FINISHED``."""
        parts = []
        if self.points:
            parts.append(f"{self.points:,} point{'s' if self.points != 1 else ''}")
        if self.checkpoints:
            parts.append(f"{self.checkpoints} checkpoint{'s' if self.checkpoints != 1 else ''}")
        if self.status:
            parts.append(f"the run's status {self.status}")
        if not parts:
            return "nothing"
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@dataclass
class _Reading:
    records: list[SpoolRecord] = field(default_factory=list)
    torn: str | None = None
    torn_at: int | None = None


class RunSpool:
    """One run's spool directory (see the module docstring). Not thread-safe alone: :class:`Spool` locks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_id = path.name
        self._checked_tail = False

    @property
    def records_file(self) -> Path:
        return self.path / RECORDS_FILE

    def size(self) -> int:
        try:
            return self.records_file.stat().st_size
        except FileNotFoundError:
            return 0

    def sent_offset(self) -> int:
        try:
            return int((self.path / SENT_FILE).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def mark_sent(self, offset: int) -> None:
        temporary = self.path / f".{SENT_FILE}.tmp"
        temporary.write_text(str(offset))
        os.replace(temporary, self.path / SENT_FILE)

    def append(self, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not self._checked_tail:
            self._cut_torn_tail()
            self._checked_tail = True
        descriptor = os.open(self.records_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(descriptor, data)
            if written != len(data):
                raise OSError(f"short write to {self.records_file} ({written} of {len(data)} bytes)")
        finally:
            os.close(descriptor)

    def _cut_torn_tail(self) -> None:
        reading = self.read()
        if reading.torn is not None and reading.torn_at is not None:
            logger.warning("cairn: %s; it is cut off before new records are appended", reading.torn)
            with open(self.records_file, "r+b") as file:
                file.truncate(reading.torn_at)

    def read(self, start: int | None = None) -> _Reading:
        """The complete records from ``start`` (default: the first one not sent) up to a torn one, if any."""
        offset = self.sent_offset() if start is None else start
        reading = _Reading()
        try:
            with open(self.records_file, "rb") as file:
                file.seek(offset)
                content = file.read()
        except FileNotFoundError:
            return reading
        position = 0
        while position < len(content):
            where = offset + position
            match = _HEADER.match(content[position : position + _MAX_HEADER])
            problem = None
            if match is None:
                problem = "an unreadable record header"
            else:
                length, crc = int(match.group(1)), int(match.group(2))
                begin = position + match.end()
                payload = content[begin : begin + length]
                if len(payload) < length or content[begin + length : begin + length + 1] != b"\n":
                    problem = f"a record cut short ({len(content) - begin} of {length + 1} bytes)"
                elif zlib.crc32(payload) != crc:
                    problem = "a record whose checksum does not match"
                else:
                    data = _json_object(payload)
                    if data is not None:
                        position = begin + length + 1
                        reading.records.append(SpoolRecord(data, offset + position))
                        continue
                    problem = "a record that is not a JSON object"
            reading.torn = (
                f"the spool file {self.records_file} ends with {problem} at byte {where} "
                f"({len(content) - position} bytes; a process was killed while writing it): that record is lost"
            )
            reading.torn_at = where
            break
        return reading

    def summary(self) -> SpoolSummary:
        reading = self.read()
        summary = SpoolSummary(torn=reading.torn)
        for record in reading.records:
            if record.kind == "points":
                summary.points += len(record.data.get("points", []))
            elif record.kind == "checkpoint":
                summary.checkpoints += 1
            elif record.kind == "status":
                summary.status = str(record.data.get("status"))
        return summary

    def remove(self) -> int:
        """Delete the directory; the bytes it held."""
        freed = _tree_bytes(self.path)
        shutil.rmtree(self.path, ignore_errors=True)
        return freed


def _points_record(key: str, run_id: str, points: Sequence[MetricPoint]) -> dict[str, Any]:
    return {
        "kind": "points",
        "run_id": run_id,
        "key": key,
        "points": [[p.key, _json_float(p.value), int(p.timestamp), int(p.step)] for p in points],
    }


def _json_float(value: float) -> float | str:
    if math.isfinite(value):
        return float(value)
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def record_points(record: SpoolRecord) -> list[MetricPoint]:
    """The metric points of a ``points`` record."""
    run_id = str(record.data["run_id"])
    return [
        MetricPoint(run_id, str(key), _float(value), int(timestamp), int(step))
        for key, value, timestamp, step in record.data.get("points", [])
    ]


def _float(value: float | str) -> float:
    if isinstance(value, str):
        return float({"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}.get(value, value))
    return float(value)


class Spool:
    """The spool of one tracking server in this process: appends, summaries, in-order replay.

    Args:
        server_url: the server the records are for (written to ``server.json``).
        root: the spool root (default: :func:`default_root`).
        limit: bytes the whole root may hold (default: :func:`max_bytes`).
        directory: this server's directory, when it is known (``cairn sync --spool DIR``).
    """

    def __init__(
        self,
        server_url: str,
        *,
        root: Path | None = None,
        limit: int | None = None,
        directory: Path | None = None,
    ) -> None:
        self.server_url = server_url
        self.root = root if root is not None else default_root()
        self.directory = directory if directory is not None else self.root / server_dir_name(server_url)
        self.limit = limit if limit is not None else max_bytes()
        self.lock = threading.RLock()
        self._used: int | None = None
        self._runs: dict[str, RunSpool] = {}
        self.announced: dict[str, str] = {}
        self.touched: set[str] = set()  # the runs this process appended records for
        self._exclusive_depth = 0

    @classmethod
    def open_dir(cls, directory: Path, server_url: str | None = None) -> Spool:
        """The spool of a server directory written earlier (its URL from ``server.json`` unless given)."""
        if server_url is None:
            try:
                server_url = str(json.loads((directory / SERVER_FILE).read_text())["url"])
            except (OSError, ValueError, KeyError) as exc:
                raise StoreError(
                    f"{directory} is not a cairn spool directory (no readable {SERVER_FILE}: {exc}); pass --to URI"
                ) from exc
        return cls(server_url, root=directory.parent, directory=directory)

    def run(self, run_id: str) -> RunSpool:
        with self.lock:
            found = self._runs.get(run_id)
            if found is None:
                if not re.fullmatch(r"[A-Za-z0-9_-]+", run_id):
                    raise StoreError(f"cannot spool records of run {run_id!r}: not a run id")
                found = self._runs[run_id] = RunSpool(self.directory / run_id)
            return found

    def run_ids(self) -> list[str]:
        """The runs with a spool directory, oldest first."""
        try:
            entries = [entry for entry in os.scandir(self.directory) if entry.is_dir()]
        except FileNotFoundError:
            return []
        entries.sort(key=lambda entry: entry.stat().st_mtime)
        return [entry.name for entry in entries]

    def pending_touched(self) -> list[str]:
        """The runs this process spooled records for that still wait."""
        with self.lock:
            return [run_id for run_id in sorted(self.touched) if self.pending(run_id)]

    def pending(self, run_id: str | None = None) -> bool:
        """Whether records wait (for ``run_id``, or for any run)."""
        with self.lock:
            ids = [run_id] if run_id is not None else self.run_ids()
            return any(self.run(found).size() > self.run(found).sent_offset() for found in ids)

    # -- appending ----------------------------------------------------------------------------------

    def append_points(self, run_id: str, key: str, points: Sequence[MetricPoint]) -> None:
        """Spool one log-batch request's points under its idempotency key.

        Raises:
            SpoolFull: the spool would pass its bound; nothing was written.
        """
        self._append(run_id, _points_record(key, run_id, points))

    def append_status(self, run_id: str, status: str, end_time: int | None) -> None:
        self._append(run_id, {"kind": "status", "run_id": run_id, "status": status, "end_time": end_time})

    def append_checkpoint(self, run_id: str, base: str, local: Path, manifest: bytes) -> None:
        """Spool a checkpoint directory's upload: its files are linked (or copied) into the spool now.

        Args:
            base: the checkpoint's path under the run's artifact root (``checkpoints/step-100``).
            local: the checkpoint directory (its own manifest, if any, is not copied: ``manifest`` is used).
            manifest: the manifest's bytes, uploaded last.
        """
        from cairn.checkpoint.manifest import MANIFEST_NAME

        with self._exclusive():
            run = self.run(run_id)
            number = len(list(run.path.glob("checkpoint-*"))) if run.path.exists() else 0
            target = run.path / f"checkpoint-{number}"
            files = [
                p for p in sorted(local.rglob("*")) if p.is_file() and p.relative_to(local).as_posix() != MANIFEST_NAME
            ]
            size = sum(p.stat().st_size for p in files) + len(manifest)
            self._reserve(size)
            for source in files:
                destination = target / source.relative_to(local)
                destination.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, destination)
                except OSError:
                    shutil.copy2(source, destination)
            (target / MANIFEST_NAME).write_bytes(manifest)
            relative = [p.relative_to(local).as_posix() for p in files]
            record = {
                "kind": "checkpoint",
                "run_id": run_id,
                "base": base,
                "dir": target.name,
                "files": relative,
            }
            self._append(run_id, record, reserved=size)

    def _reserve(self, size: int) -> None:
        used = self.used()
        if used + size > self.limit:
            raise SpoolFull(
                f"the spool at {self.root} is full: {used:,} of {self.limit:,} bytes ({SPOOL_MAX_BYTES_ENV}) used, "
                f"{size:,} more needed; raise {SPOOL_MAX_BYTES_ENV}, free space there, or bring the tracking server "
                f"at {self.server_url} back"
            )

    def used(self) -> int:
        with self.lock:
            if self._used is None:
                self._used = _tree_bytes(self.root) if self.root.exists() else 0
            return self._used

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This process's lock, and an advisory lock on the server directory that other processes (a second
        training process, ``cairn sync --spool``) take too: no append is lost to a removal."""
        with self.lock:
            if self._exclusive_depth:
                self._exclusive_depth += 1
                try:
                    yield
                finally:
                    self._exclusive_depth -= 1
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if fcntl is not None:
                    fcntl.flock(descriptor, fcntl.LOCK_EX)
                self._exclusive_depth = 1
                yield
            finally:
                self._exclusive_depth = 0
                os.close(descriptor)  # releases the advisory lock

    def _append(self, run_id: str, record: dict[str, Any], *, reserved: int = 0) -> None:
        data = _encode(record)
        with self._exclusive():
            self._reserve(len(data) + reserved)
            self._write_server_file()
            self.run(run_id).append(data)
            self.touched.add(run_id)
            self._used = self.used() + len(data) + reserved

    def _write_server_file(self) -> None:
        path = self.directory / SERVER_FILE
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"url": self.server_url}) + "\n")

    # -- reading and replaying ----------------------------------------------------------------------

    def summary(self, run_id: str) -> SpoolSummary:
        with self.lock:
            return self.run(run_id).summary()

    def replay(
        self,
        run_id: str,
        send: Callable[[SpoolRecord], None],
        *,
        after_each: Callable[[SpoolRecord], None] | None = None,
    ) -> SpoolSummary:
        """Send ``run_id``'s records in order (its status last) through ``send``; what was sent.

        Each delivered record is marked sent at once, so an interrupted replay resumes after it. When
        everything was delivered, the run's directory is deleted. ``send`` raising stops the replay (the
        record stays, to be sent again with the same key).
        """
        sent = SpoolSummary()
        with self.lock:
            run = self.run(run_id)
            reading = run.read()
        sent.torn = reading.torn
        statuses = [record for record in reading.records if record.kind == "status"]
        marking = True  # past a status record, nothing is marked sent before that status is
        for record in reading.records:
            if record.data.get("run_id") != run_id:
                raise InvalidArgument(f"a record in {run.records_file} names run {record.data.get('run_id')!r}")
            if record.kind == "status":
                marking = False
                continue
            send(record)
            self._count(sent, record)
            if marking:
                with self._exclusive():
                    run.mark_sent(record.end)
            if after_each is not None:
                after_each(record)
        if statuses:
            send(statuses[-1])
            self._count(sent, statuses[-1])
            if after_each is not None:
                after_each(statuses[-1])
        with self._exclusive():
            end = reading.records[-1].end if reading.records else run.sent_offset()
            if reading.torn_at is not None:
                end = max(end, run.size())
            if run.size() <= end:  # nothing appended meanwhile
                freed = run.remove()
                self._runs.pop(run_id, None)
                self.announced.pop(run_id, None)
                if self._used is not None:
                    self._used = max(0, self._used - freed)
            else:
                run.mark_sent(end)
        return sent

    @staticmethod
    def _count(summary: SpoolSummary, record: SpoolRecord) -> None:
        if record.kind == "points":
            summary.points += len(record.data.get("points", []))
        elif record.kind == "checkpoint":
            summary.checkpoints += 1
        elif record.kind == "status":
            summary.status = str(record.data.get("status"))

    def checkpoint_files(self, record: SpoolRecord) -> tuple[Path, list[str]]:
        """The spooled copy of a ``checkpoint`` record's directory and its files (manifest not included).

        A spool file is input like any other: the directory must be one of the run's ``checkpoint-<n>`` and each
        file a plain relative path inside it, regular and not a link, or nothing is uploaded.

        Raises:
            UnsafePath: a name that would leave the record's directory.
            InvalidArgument: a malformed record.
        """
        from cairn.artifacts.paths import safe_relpath

        name = record.data.get("dir")
        files = record.data.get("files")
        if not isinstance(name, str) or not re.fullmatch(r"checkpoint-\d+", name) or not isinstance(files, list):
            raise InvalidArgument(f"malformed checkpoint record in the spool of run {record.data.get('run_id')}")
        directory = self.run(str(record.data["run_id"])).path / name
        relpaths = [safe_relpath(str(file)) for file in files]
        for relpath in relpaths:
            path = directory / relpath
            if not relpath or path.is_symlink() or not path.is_file():
                raise InvalidArgument(f"{path} is not a regular file of the spooled checkpoint")
        return directory, relpaths


def server_dirs(root: Path) -> Iterator[Path]:
    """The server directories under a spool root (or ``root`` itself when it is one)."""
    if (root / SERVER_FILE).exists():
        yield root
        return
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and (entry / SERVER_FILE).exists():
            yield entry
