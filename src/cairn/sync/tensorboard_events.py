"""Reading one TensorBoard run directory's event files with the ``tensorboard`` package's reader.

The records are read by ``tensorboard``'s own record reader (CRC-checked) and passed through its
compat layers (``data_compat``), so TF1 histograms, images and audio are recognized like their TF2 plugin
tensors; TF1 ``simple_value`` scalars are taken as they are (the compat layer would build a tensor
per point, most of the reading time). Scalars become metric points, the ``hparams`` plugin's
session start info becomes params, and everything else is counted by kind, never dropped silently.

TensorBoard's reader stops quietly at a truncated or corrupt record; here the bytes of the records
it returned are added up, so a file that was not read to its end is reported with the byte offset
where reading stopped.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn.errors import InvalidArgument
from cairn.store.base import StoredMetricPoint
from cairn.tracking import validation
from cairn.tracking.entities import RunStatus

__all__ = ["EventDir", "read_event_dir", "sanitize_key"]

#: What non-summary events are, for the report.
_EVENT_KINDS = {
    "graph_def": "graph",
    "meta_graph_def": "graph",
    "tagged_run_metadata": "run metadata",
    "session_log": "session log",
    "log_message": "log message",
    "source_metadata": "source metadata",
}
_KEY_CHARS = re.compile(r"[^\w\-. /:]")
#: TF record framing around each record's bytes: length (8), its CRC (4), the data's CRC (4).
_FRAMING = 16


@dataclass(slots=True)
class EventDir:
    """What one directory's event files hold.

    Attributes:
        path: the directory (resolved, absolute).
        points: scalar points in wall-time order (ties in file order).
        params: hyperparameters from the ``hparams`` plugin's session start info.
        status: from the ``hparams`` session end info when present, else FINISHED.
        first_ms / last_ms: wall times of the first and last event (ms).
        skipped: events not imported, by kind (``histograms``, ``images``, ``graph``, ...).
        renamed: TensorBoard tag (or hparam name) -> the cairn key it was imported as.
        problems: files not read to their end, and unreadable records, each said in a sentence.
        has_hparams: a session start info was found.
    """

    path: Path
    points: list[StoredMetricPoint] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    status: RunStatus = RunStatus.FINISHED
    first_ms: int | None = None
    last_ms: int | None = None
    skipped: Counter[str] = field(default_factory=Counter)
    renamed: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    has_hparams: bool = False

    def absorb(self, other: EventDir) -> None:
        """Merge ``other`` (an ``add_hparams`` sub-directory) into this run."""
        self.points = sorted([*self.points, *other.points], key=lambda point: point.timestamp)
        for key, value in other.params.items():
            self.params.setdefault(key, value)
        if other.status is not RunStatus.FINISHED:
            self.status = other.status
        for moment in (other.first_ms, other.last_ms):
            if moment is not None:
                self.first_ms = moment if self.first_ms is None else min(self.first_ms, moment)
                self.last_ms = moment if self.last_ms is None else max(self.last_ms, moment)
        self.skipped.update(other.skipped)
        self.renamed.update(other.renamed)
        self.problems.extend(other.problems)
        self.has_hparams = self.has_hparams or other.has_hparams


def sanitize_key(name: str) -> str:
    """``name`` if it is a valid cairn metric/param key, else a valid key made from it.

    Characters outside letters, digits, ``_ - . space : /`` become ``_``; empty, ``.`` and ``..``
    path parts are dropped; the result is cut to the key length limit.
    """
    try:
        return validation.validate_key(name, "metric")
    except InvalidArgument:
        pass
    parts = [part for part in _KEY_CHARS.sub("_", name).split("/") if part not in ("", ".", "..")]
    key = "/".join(parts)[: validation.MAX_KEY_LENGTH].rstrip("/")
    return key if key.strip() else "_"


def read_event_dir(path: Path, files: list[Path], *, root: Path) -> EventDir:
    """Read ``files`` (event files of the directory ``path``) into one :class:`EventDir`.

    Args:
        path: the directory.
        files: its event files, read in name order.
        root: the log directory, to name files in problems.
    """
    reader = _Reader(EventDir(path), root)
    for file in sorted(files):
        reader.read_file(file)
    result = reader.result
    result.points.sort(key=lambda point: point.timestamp)
    return result


class _Reader:
    def __init__(self, result: EventDir, root: Path) -> None:
        self.result = result
        self.root = root
        #: Plugin of each tag: TF2 writers put a tag's metadata only on its first summary.
        self.plugin_of: dict[str, str] = {}
        #: Tag -> cairn key, checked once per tag.
        self.keys: dict[str, str] = {}

    def read_file(self, file: Path) -> None:
        from google.protobuf.message import DecodeError
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
        from tensorboard.compat import tf
        from tensorboard.compat.proto import event_pb2

        shown = file.relative_to(self.root).as_posix() if file.is_relative_to(self.root) else str(file)
        shown = shown.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        consumed = records = bad = 0
        try:
            for record in RawEventFileLoader(str(file)).Load():
                consumed += len(record) + _FRAMING
                records += 1
                try:
                    event = event_pb2.Event.FromString(record)
                except DecodeError:  # a record with a valid checksum that is no Event: counted
                    bad += 1
                    continue
                self._event(event)
            size = file.stat().st_size
        except (OSError, tf.errors.OpError) as exc:  # e.g. removed since it was listed
            self.result.problems.append(f"event file {shown} could not be read: {exc}")
            return
        except UnicodeError:
            self.result.problems.append(
                f"event file {shown} not read: its path is not UTF-8, which tensorboard's reader cannot open "
                "(rename it)"
            )
            return
        if bad:
            self.result.problems.append(f"event file {shown}: {bad} record(s) with a valid checksum are not events")
        if consumed < size:
            self.result.problems.append(
                f"event file {shown} could not be read past byte {consumed:,} of {size:,} (a truncated or corrupt "
                f"record: the file was cut short, is still being written, or is damaged); its {records:,} "
                f"complete record(s) before that point were imported, the last {size - consumed:,} bytes were not"
            )

    def _event(self, event: Any) -> None:
        from tensorboard import data_compat

        moment = round(event.wall_time * 1000)
        result = self.result
        result.first_ms = moment if result.first_ms is None else min(result.first_ms, moment)
        result.last_ms = moment if result.last_ms is None else max(result.last_ms, moment)
        what = event.WhichOneof("what")
        if what != "summary":
            if what not in (None, "file_version"):
                result.skipped[_EVENT_KINDS.get(what, what)] += 1
            return
        step = int(event.step)
        for value in event.summary.value:
            if value.WhichOneof("value") == "simple_value":  # TF1 scalars, torch's add_scalar: the common case
                self.plugin_of.setdefault(value.tag, "scalars")
                number = float(str(_float32(value.simple_value)))  # float32 0.1 is 0.1, not 0.10000000149011612
                self.result.points.append(StoredMetricPoint(self._key(value.tag), number, moment, step))
            else:  # old-style histograms, images and audio become plugin tensors, as TensorBoard reads them
                self._value(data_compat.migrate_value(value), moment, step)

    def _value(self, value: Any, moment: int, step: int) -> None:
        plugin = value.metadata.plugin_data.plugin_name
        if plugin:
            self.plugin_of.setdefault(value.tag, plugin)
        else:  # TF2 writers put a tag's metadata only on its first summary
            plugin = self.plugin_of.get(value.tag, "")
        if plugin == "scalars":
            number = _scalar(value)
            if number is None:
                self.result.skipped["scalar that is not one real number"] += 1
                return
            self.result.points.append(StoredMetricPoint(self._key(value.tag), number, moment, step))
        elif plugin == "hparams":
            self._hparams(value)
        else:
            self.result.skipped[plugin or "untyped summary"] += 1

    def _key(self, tag: str) -> str:
        key = self.keys.get(tag)
        if key is None:
            key = self.keys[tag] = sanitize_key(tag)
            if key != tag:
                self.result.renamed[tag] = key
        return key

    def _hparams(self, value: Any) -> None:
        from google.protobuf.message import DecodeError
        from tensorboard.plugins.hparams import metadata
        from tensorboard.plugins.hparams.error import HParamsError

        content = value.metadata.plugin_data.content
        try:
            if value.tag == metadata.SESSION_START_INFO_TAG:
                info = metadata.parse_session_start_info_plugin_data(content)
                self.result.has_hparams = True
                for name, item in info.hparams.items():
                    self.result.params.setdefault(self._key(name), _hparam_text(item))
            elif value.tag == metadata.SESSION_END_INFO_TAG:
                status = metadata.parse_session_end_info_plugin_data(content).status
                self.result.status = {2: RunStatus.FAILED}.get(int(status), RunStatus.FINISHED)
            elif value.tag != metadata.EXPERIMENT_TAG:  # the experiment config declares names, holds no data
                self.result.skipped["hparams"] += 1
        except (HParamsError, DecodeError) as exc:  # said in the report, not raised
            self.result.problems.append(f"hparams summary {value.tag!r} could not be read: {exc}")


def _float32(number: float) -> Any:
    import numpy as np

    return np.float32(number)


def _scalar(value: Any) -> float | None:
    """The one real number of a scalar summary (float32 values as the shortest decimal that reads back)."""
    from tensorboard.util import tensor_util

    try:
        array = tensor_util.make_ndarray(value.tensor)
    except (TypeError, ValueError, KeyError):  # a malformed tensor: counted by the caller
        return None
    if array.ndim != 0 or array.dtype.kind not in "fiub":
        return None
    item = array[()]
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        return float(str(item))  # float32 0.1 is stored as 0.1, not 0.10000000149011612
    return float(item)


def _hparam_text(item: Any) -> str:
    """A ``google.protobuf.Value`` as a param string: 32 (not 32.0), 0.001, True, text, or JSON."""
    kind = item.WhichOneof("kind")
    if kind == "number_value":
        number = item.number_value
        return str(int(number)) if number.is_integer() and abs(number) < 1e16 else repr(number)
    if kind == "string_value":
        return str(item.string_value)
    if kind == "bool_value":
        return str(bool(item.bool_value))
    from google.protobuf import json_format

    return json_format.MessageToJson(item, indent=None)
