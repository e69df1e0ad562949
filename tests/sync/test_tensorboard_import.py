"""`cairn import-tensorboard` on real event files written by torch's SummaryWriter and tensorboard's writer.

Every import is checked against the destination store's content (runs, params, metric points with
steps and wall times); the log directory is checked to stay byte-for-byte unchanged.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from cairn.cli import main
from cairn.store._sql.store import SqlTrackingStore
from cairn.sync.tensorboard_import import SOURCE_TAG, import_tensorboard
from cairn.tracking.entities import RunStatus, ViewType

pytest.importorskip("tensorboard")
torch_tb = pytest.importorskip("torch.utils.tensorboard")
SummaryWriter = torch_tb.SummaryWriter

T0 = 1_700_000_000.0  # wall times in seconds, as TensorBoard stores them


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path below ``root`` with its size, mtime (ns) and content (files)."""
    found: dict[str, tuple[int, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            stat = path.lstat()
            data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns, data)
    return found


def _import(logdir: Path, dest: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["import-tensorboard", str(logdir), "--to", str(dest), *extra])


def _flat(result: Result) -> str:
    return "".join(result.output.split())  # the console wraps long lines anywhere


def _ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return _flat(result)


def _runs(dest: Path, experiment: str) -> dict[str, tuple[Any, dict[str, list[tuple[int, int, float]]]]]:
    """Run name -> (run, key -> [(step, timestamp ms, value)]) of one destination experiment."""
    store = SqlTrackingStore(f"sqlite:///{dest / 'cairn.db'}", str(dest / "artifacts"))
    try:
        found = store.get_experiment_by_name(experiment)
        assert found is not None, experiment
        runs: dict[str, tuple[Any, dict[str, list[tuple[int, int, float]]]]] = {}
        for run in store.search_runs([found.experiment_id], run_view_type=ViewType.ALL).items:
            points: dict[str, list[tuple[int, int, float]]] = {}
            for point in store.get_metric_points(run.info.run_id, sorted(run.data.metrics)):
                points.setdefault(point.key, []).append((point.step, point.timestamp, point.value))
            runs[run.info.run_name] = (run, {key: sorted(values) for key, values in points.items()})
        return runs
    finally:
        store.close()


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _write_sweep(logdir: Path) -> None:
    """Two runs of a sweep: TF1-style and TF2-style scalars, add_scalars, hparams, NaN/inf, a histogram,
    text and an odd tag name."""
    with SummaryWriter(str(logdir / "lr=0.1" / "train")) as writer:
        for step in range(5):
            writer.add_scalar("loss/train", 1.0 / (step + 1), step, walltime=T0 + step)
            writer.add_scalar("acc", 0.1 * step, step, walltime=T0 + step, new_style=True)
            writer.add_histogram("weights", np.arange(4.0) * step, step, walltime=T0 + step)
        writer.add_scalar("edge", math.nan, 5, walltime=T0 + 5)
        writer.add_scalar("edge", math.inf, 6, walltime=T0 + 6)
        writer.add_scalar("top-1 acc (%)", 42.5, 6, walltime=T0 + 6)
        writer.add_text("notes", "first try", 0, walltime=T0)
        writer.add_scalars("split", {"a": 1.0, "b": 2.0}, 0, walltime=T0)
        writer.add_hparams({"lr": 0.1, "batch": 32, "optimizer": "adam"}, {"hparam/best_acc": 0.4})
    with SummaryWriter(str(logdir / "lr=0.01" / "train")) as writer:
        for step in range(3):
            writer.add_scalar("loss/train", 2.0 / (step + 1), step, walltime=T0 + 100 + step)


def test_sweep_is_imported_as_runs_with_metrics_and_params(tmp_path: Path) -> None:
    logdir = tmp_path / "sweep"
    _write_sweep(logdir)
    flat = _ok(_import(logdir, tmp_path / "dest"))
    assert "skipped5histograms,1textevent(s)" in flat
    assert "'top-1acc(%)'isnotavalidcairnkey;importedas'top-1acc___'" in flat

    runs = _runs(tmp_path / "dest", "sweep")  # default experiment: the logdir's base name
    # add_scalars writes one sub-directory per key; the add_hparams sub-directory merged into its run
    assert sorted(runs) == ["lr=0.01/train", "lr=0.1/train", "lr=0.1/train/split_a", "lr=0.1/train/split_b"]
    run, points = runs["lr=0.1/train"]
    assert run.data.params == {"lr": "0.1", "batch": "32", "optimizer": "adam"}
    assert run.data.tags[SOURCE_TAG] == str((logdir / "lr=0.1" / "train").resolve())
    assert run.info.status is RunStatus.FINISHED and run.info.start_time == _ms(T0)
    assert points["loss/train"] == [(s, _ms(T0 + s), [1.0, 0.5, 0.33333334, 0.25, 0.2][s]) for s in range(5)]
    assert points["acc"] == [(s, _ms(T0 + s), [0.0, 0.1, 0.2, 0.3, 0.4][s]) for s in range(5)]
    assert points["edge"][0][:2] == (5, _ms(T0 + 5)) and math.isnan(points["edge"][0][2])
    assert points["edge"][1] == (6, _ms(T0 + 6), math.inf)
    assert points["top-1 acc ___"] == [(6, _ms(T0 + 6), 42.5)]
    assert [value for _, _, value in points["hparam/best_acc"]] == [0.4]
    assert "weights" not in points and "notes" not in points
    assert runs["lr=0.1/train/split_b"][1] == {"split": [(0, _ms(T0), 2.0)]}
    assert [p[2] for p in runs["lr=0.01/train"][1]["loss/train"]] == [2.0, 1.0, 0.6666667]


def test_reimport_adds_nothing_and_appended_points_only(tmp_path: Path) -> None:
    logdir, dest = tmp_path / "logs", tmp_path / "dest"
    writer = SummaryWriter(str(logdir / "run"))
    for step in range(4):
        writer.add_scalar("loss", float(step), step, walltime=T0 + step)
    writer.flush()  # the file is still open, as during training
    assert "metricpoints│4" in _ok(_import(logdir, dest))
    second = _import(logdir, dest)
    assert "destinationalreadyuptodate" in _ok(second), second.output

    for step in range(4, 7):
        writer.add_scalar("loss", float(step), step, walltime=T0 + step)
    writer.close()
    dry = _ok(_import(logdir, dest, "--dry-run"))
    assert "metricpoints│3" in dry and "dryrun:nothingwaswritten" in dry
    assert len(_runs(dest, "logs")["run"][1]["loss"]) == 4
    assert "metricpoints│3" in _ok(_import(logdir, dest))
    with SummaryWriter(str(logdir / "run")) as again:  # a restarted job: a second event file, same run
        again.add_scalar("loss", 9.0, 9, walltime=T0 + 9)
    assert "metricpoints│1" in _ok(_import(logdir, dest))
    runs = _runs(dest, "logs")
    assert list(runs) == ["run"]
    run, points = runs["run"]
    assert points["loss"] == [(s, _ms(T0 + s), float(s)) for s in [*range(7), 9]]
    assert run.info.end_time >= _ms(T0 + 9)  # the last event: points, or the writer's own file_version event
    assert "destinationalreadyuptodate" in _ok(_import(logdir, dest))


def test_cut_and_corrupt_event_files_import_what_is_readable(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    for name in ("cut", "flipped"):
        with SummaryWriter(str(logdir / name)) as writer:
            for step in range(10):
                writer.add_scalar("loss", float(step), step, walltime=T0 + step)
    cut = next((logdir / "cut").iterdir())
    data = cut.read_bytes()
    cut.write_bytes(data[:-7])  # the last record loses its end
    flipped = next((logdir / "flipped").iterdir())
    data = bytearray(flipped.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0xFF  # one bad byte: that record fails its checksum
    flipped.write_bytes(bytes(data))
    (logdir / "garbage").mkdir()
    (logdir / "garbage" / "events.out.tfevents.1.host").write_bytes(b"not an event file at all" * 10)

    result = _import(logdir, tmp_path / "dest")
    flat = _ok(result)
    size = cut.stat().st_size
    assert f"cut/{cut.name}couldnotbereadpastbyte" in flat and f"of{size:,}" in flat, result.output
    assert f"flipped/{flipped.name}couldnotbereadpastbyte" in flat
    assert "garbage/events.out.tfevents.1.hostcouldnotbereadpastbyte0of240" in flat
    runs = _runs(tmp_path / "dest", "logs")
    assert [p[2] for p in runs["cut"][1]["loss"]] == [float(s) for s in range(9)]
    flipped_points = runs["flipped"][1]["loss"]
    assert 0 < len(flipped_points) < 10
    assert [p[2] for p in flipped_points] == [float(s) for s in range(len(flipped_points))]
    assert runs["garbage"][1] == {}


def test_tensorboard_writer_tf2_summaries(tmp_path: Path) -> None:
    """Tensor summaries as TF2 writes them: plugin metadata on a tag's first summary only, int and
    vector tensors; written with tensorboard's own event writer (no TensorFlow needed)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp_summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    def summary(tag: str, value: Any, *, plugin: str | None) -> Any:
        item = summary_pb2.Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(value))
        if plugin:
            item.metadata.plugin_data.plugin_name = plugin
        return summary_pb2.Summary(value=[item])

    logdir = tmp_path / "tf2"
    writer = EventFileWriter(str(logdir))
    for step in range(3):
        first = step == 0
        writer.add_event(
            event_pb2.Event(
                wall_time=T0 + step,
                step=step,
                summary=summary("loss", np.float32(0.5 * step), plugin="scalars" * first),
            )
        )
        writer.add_event(
            event_pb2.Event(wall_time=T0 + step, step=step, summary=summary("count", np.int64(step), plugin="scalars"))
        )
    writer.add_event(
        event_pb2.Event(wall_time=T0, step=0, summary=summary("vec", np.zeros(3, np.float32), plugin="scalars"))
    )
    writer.add_event(
        event_pb2.Event(wall_time=T0 + 3, step=3, summary=hp_summary.hparams_pb({"units": 64, "act": "relu"}))
    )
    writer.close()

    flat = _ok(_import(logdir, tmp_path / "dest", "-e", "custom"))
    assert "skipped1scalarthatisnotonerealnumberevent(s)" in flat
    run, points = _runs(tmp_path / "dest", "custom")["tf2"]  # the logdir itself holds the events: its name
    assert points == {
        "loss": [(s, _ms(T0 + s), 0.5 * s) for s in range(3)],
        "count": [(s, _ms(T0 + s), float(s)) for s in range(3)],
    }
    assert run.data.params == {"units": "64", "act": "relu"}


def test_refusals_leave_the_source_alone(tmp_path: Path) -> None:
    missing = _import(tmp_path / "nowhere", tmp_path / "dest")
    assert missing.exit_code == 1 and "doesnotexist" in _flat(missing) and "Traceback" not in missing.output
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("hello")
    before = _snapshot(empty)
    result = _import(empty, tmp_path / "dest")
    assert result.exit_code == 1 and "holdsnoTensorBoardeventfiles" in _flat(result), result.output
    assert _snapshot(empty) == before
    mlruns = tmp_path / "mlruns"
    (mlruns / "0").mkdir(parents=True)
    (mlruns / ".trash").mkdir()
    (mlruns / "0" / "meta.yaml").write_text("name: Default\nexperiment_id: '0'\n")
    result = _import(mlruns, tmp_path / "dest")
    assert result.exit_code == 1 and f"cairnimport-mlflow--from{mlruns}" in _flat(result), result.output
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    result = _import(a_file, tmp_path / "dest")
    assert result.exit_code == 1 and "isnotadirectory" in _flat(result)
    assert not (tmp_path / "dest").exists()


def test_source_is_only_read_and_links_out_are_not_followed(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    outside = tmp_path / "outside"
    for where in (logdir / "run", outside / "secret"):
        with SummaryWriter(str(where)) as writer:
            writer.add_scalar("loss", 1.0, 0, walltime=T0)
    with SummaryWriter(str(logdir / "cafe")) as writer:
        writer.add_scalar("loss", 2.0, 0, walltime=T0)
    os.rename(logdir / "cafe", os.fsdecode(os.fsencode(logdir) + b"/caf\xe9"))  # a name that is not UTF-8
    (logdir / "linked-dir").symlink_to(outside / "secret", target_is_directory=True)
    (logdir / "run2").mkdir()
    (logdir / "run2" / "events.out.tfevents.9.link").symlink_to(next((outside / "secret").iterdir()))
    for dirpath, dirnames, filenames in os.walk(logdir):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(0o555 if name in dirnames else 0o444)
    os.chmod(logdir, 0o555)
    before = _snapshot(logdir)
    try:
        report = import_tensorboard(logdir, tmp_path / "dest", progress=True)  # bar forced on a non-terminal
        again = import_tensorboard(logdir, tmp_path / "dest", progress=False)
    finally:
        os.chmod(logdir, 0o755)
    assert _snapshot(logdir) == before
    assert report.runs_created == 2 and report.metric_points == 1 and again.total == 0
    notes = " ".join(str(note) for note in report.notes)
    assert "caf\ufffd/events.out.tfevents" in notes and "not UTF-8" in notes
    assert "linked-dir" in notes and "run2/events.out.tfevents.9.link" in notes and "not followed" in notes
    assert sorted(_runs(tmp_path / "dest", "logs")) == ["caf\ufffd", "run"]


def test_several_hparams_trials_stay_separate_runs(tmp_path: Path) -> None:
    logdir = tmp_path / "trials"
    with SummaryWriter(str(logdir)) as writer:
        for index, lr in enumerate((0.1, 0.01)):
            writer.add_hparams({"lr": lr}, {"hparam/loss": 1.0 + index}, run_name=f"trial{index}")
    report = import_tensorboard(logdir, tmp_path / "dest", experiment="hp")
    runs = _runs(tmp_path / "dest", "hp")
    assert sorted(runs) == ["trial0", "trial1", "trials"]
    assert runs["trial0"][0].data.params == {"lr": "0.1"} and runs["trial1"][0].data.params == {"lr": "0.01"}
    assert any("kept as runs of their own" in str(note) for note in report.notes)


def test_missing_tensorboard_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    for name in [name for name in sys.modules if name == "tensorboard" or name.startswith("tensorboard.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError
    result = _import(logdir, tmp_path / "dest")
    assert result.exit_code == 1 and "pipinstall'cairn[tensorboard]'" in _flat(result), result.output
