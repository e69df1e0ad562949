"""cairn.sync: idempotence, completing RUNNING runs, filters, dry runs, conflicts and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import cairn.sync
from cairn.errors import ExperimentNotFound, InvalidArgument, NotFound, RunNotFound
from cairn.store._sql.registry import SqlRegistryStore
from cairn.sync.cli import sync_command
from cairn.tracking.entities import Metric, Param, RunStatus, RunTag
from tests.sync.conftest import T0, SourceStore, build_source, open_store, snapshot


@pytest.fixture
def source(tmp_path: Path) -> SourceStore:
    return build_source(tmp_path / "source", with_model=False)


def _dest(tmp_path: Path, name: str = "dest") -> str:
    return f"sqlite:///{tmp_path / name / 'cairn.db'}"


def test_module_is_callable_and_exposes_import_mlflow() -> None:
    assert callable(cairn.sync)
    assert cairn.sync.sync.__name__ == "sync"
    assert cairn.sync.import_mlflow.__name__ == "import_mlflow"


def test_second_sync_copies_nothing(source: SourceStore, tmp_path: Path) -> None:
    first = cairn.sync(source.uri, _dest(tmp_path), progress=False)
    assert first.runs_created == 4 and first.experiments == 2 and first.artifact_files == 4
    assert first.superseded_flags == 0  # flagged points are inserted flagged, not flagged afterwards
    second = cairn.sync(source.uri, _dest(tmp_path), progress=False)
    assert second.total == 0, second.counts
    assert second.runs_seen == 4 and second.skipped == []
    assert snapshot(_dest(tmp_path)) == snapshot(source.uri)


def test_running_run_is_completed_by_a_later_sync(source: SourceStore, tmp_path: Path) -> None:
    cairn.sync(source.uri, _dest(tmp_path), progress=False)
    store = open_store(source.uri, str(source.home / "artifacts"))
    try:
        run = source.running
        # more training, including a point logged twice on purpose, then a resume from step 60
        more = [Metric("loss", 1.0 - s / 100, T0 + s, s) for s in range(50, 70)]
        store.log_batch(run, metrics=[*more, more[15]], params=[Param("seed", "3")])  # step 65 twice
        assert store.supersede_metrics_after(run, 60) == 10  # steps 61..69 (65 twice)
        store.log_batch(run, metrics=[Metric("loss", 0.1, T0 + 1000 + s, s) for s in range(61, 64)])
        store.log_batch(run, tags=[RunTag("phase", "done")])
        store.update_run_info(run, status=RunStatus.FINISHED, end_time=T0 + 5000)
    finally:
        store.close()
    later = cairn.sync(source.uri, _dest(tmp_path), progress=False)
    assert later.runs_updated == 1 and later.runs_created == 0
    assert later.metric_points == 21 + 3  # only the new points
    assert later.params == 1 and later.tags == 1 and later.run_infos == 1
    dest = snapshot(_dest(tmp_path))
    assert dest == snapshot(source.uri)
    copied = dest["runs"][source.running]
    assert copied["status"] == "FINISHED" and copied["end"] == T0 + 5000
    assert sum(1 for p in copied["points"] if p[:4] == ("loss", repr(1.0 - 65 / 100), T0 + 65, 65)) == 2
    assert copied["latest"]["loss"] == "0.1"  # step 63 of the resumed process, not a superseded one
    assert cairn.sync(source.uri, _dest(tmp_path), progress=False).total == 0


def test_points_superseded_after_a_sync_are_flagged_not_copied_again(source: SourceStore, tmp_path: Path) -> None:
    cairn.sync(source.uri, _dest(tmp_path), progress=False)
    store = open_store(source.uri, str(source.home / "artifacts"))
    try:
        flagged = store.supersede_metrics_after(source.running, 39)
    finally:
        store.close()
    report = cairn.sync(source.uri, _dest(tmp_path), progress=False)
    assert report.superseded_flags == flagged == 10 and report.metric_points == 0
    assert snapshot(_dest(tmp_path)) == snapshot(source.uri)


def test_dry_run_writes_nothing_and_counts_what_a_sync_would(source: SourceStore, tmp_path: Path) -> None:
    dry = cairn.sync(source.uri, _dest(tmp_path), dry_run=True, progress=False)
    assert not (tmp_path / "dest").exists()
    real = cairn.sync(source.uri, _dest(tmp_path), progress=False)
    assert dry.dry_run and dry.counts == real.counts
    assert cairn.sync(source.uri, _dest(tmp_path), dry_run=True, progress=False).total == 0


def test_filters_select_experiments_runs_and_time(source: SourceStore, tmp_path: Path) -> None:
    by_name = cairn.sync(source.uri, _dest(tmp_path, "a"), experiments=["beta"], progress=False)
    assert by_name.runs_created == 2 and by_name.experiments == 1
    assert set(snapshot(_dest(tmp_path, "a"))["runs"]) == {source.running, source.deleted}

    by_id = cairn.sync(source.uri, _dest(tmp_path, "b"), run_ids=[source.child], progress=False)
    assert by_id.runs_created == 1 and by_id.runs_seen == 1
    assert set(snapshot(_dest(tmp_path, "b"))["runs"]) == {source.child}

    # since: runs started or ended at/after the time, or still running
    since = cairn.sync(source.uri, _dest(tmp_path, "c"), since=T0 + 30_000, progress=False)
    assert set(snapshot(_dest(tmp_path, "c"))["runs"]) == {source.parent, source.running}
    assert since.runs_seen == 2
    assert cairn.sync(source.uri, _dest(tmp_path, "d"), since="2999-01-01", progress=False).runs_seen == 1

    with pytest.raises(ExperimentNotFound, match="nope"):
        cairn.sync(source.uri, _dest(tmp_path, "e"), experiments=["nope"], progress=False)
    with pytest.raises(RunNotFound, match="0" * 32):
        cairn.sync(source.uri, _dest(tmp_path, "e"), run_ids=["0" * 32], progress=False)
    with pytest.raises(InvalidArgument, match="not a date"):
        cairn.sync(source.uri, _dest(tmp_path, "e"), since="last tuesday", progress=False)


def test_artifacts_can_follow_later(source: SourceStore, tmp_path: Path) -> None:
    without = cairn.sync(source.uri, _dest(tmp_path), artifacts=False, progress=False)
    assert without.artifact_files == 0 and without.runs_created == 4
    later = cairn.sync(source.uri, _dest(tmp_path), progress=False)
    assert later.artifact_files == 4 and later.artifact_bytes == 200_000 + 6 + 4 + 5
    assert later.runs_updated == 2 and later.metric_points == 0
    assert snapshot(_dest(tmp_path)) == snapshot(source.uri)


def test_conflicts_are_reported_not_overwritten(source: SourceStore, tmp_path: Path) -> None:
    cairn.sync(source.uri, _dest(tmp_path), progress=False)
    dest = open_store(_dest(tmp_path), str(tmp_path / "dest" / "artifacts"))
    try:
        dest.log_batch(source.parent, params=[Param("seed", "1")])  # written at the destination only
        dest.log_batch(source.child, metrics=[Metric("acc", 9.0, T0, 99)])
        dest.delete_experiment(dest.get_experiment_by_name("beta").experiment_id)  # type: ignore[union-attr]
    finally:
        dest.close()
    store = open_store(source.uri, str(source.home / "artifacts"))
    try:
        store.log_batch(source.parent, params=[Param("seed", "2")])
        store.log_batch(source.child, params=[Param("dropout", "0.5")])
        store.log_batch(source.running, params=[Param("late", "yes")])
    finally:
        store.close()
    report = cairn.sync(source.uri, _dest(tmp_path), progress=False)
    messages = [str(note) for note in report.skipped]
    assert any("param 'seed' is '1' at the destination, '2' at the source" in m for m in messages)
    assert any(source.child in m and "1 metric point(s) exist only at the destination" in m for m in messages)
    assert any("experiment 'beta'" in m and "deleted at the destination" in m for m in messages)
    assert report.params == 1  # the child's new param; the running run's experiment is deleted there
    after = snapshot(_dest(tmp_path))
    assert after["runs"][source.parent]["params"]["seed"] == "1"
    assert after["runs"][source.running]["params"] == {}


def test_registry_version_number_conflict_is_reported(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    source = build_source(tmp_path / "source")
    dest = open_store(_dest(tmp_path), str(tmp_path / "dest" / "artifacts"))
    registry = SqlRegistryStore.from_tracking_store(dest)
    try:
        registry.create_model_version("clf", "/somewhere/else")  # version 1 of another model
    finally:
        dest.close()
    report = cairn.sync(source.uri, _dest(tmp_path), progress=False)
    assert report.model_versions == 1  # version 3 only
    assert any("version 1" in str(n) and "another model" in str(n) for n in report.skipped)
    assert report.aliases == 1  # champion -> 3; 'old' -> 1 is not moved onto the other model


def test_missing_source_and_same_store_are_refused(source: SourceStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="import-mlflow"):
        cairn.sync(str(tmp_path / "nothing-here"), _dest(tmp_path), progress=False)
    assert not (tmp_path / "nothing-here").exists()
    with pytest.raises(InvalidArgument, match="same store"):
        cairn.sync(source.uri, str(source.home), progress=False)


def test_command_line(source: SourceStore, tmp_path: Path) -> None:
    runner = CliRunner()
    dest = str(tmp_path / "dest")
    dry = runner.invoke(sync_command, ["--from", str(source.home), "--to", dest, "--dry-run"], obj={})
    assert dry.exit_code == 0, dry.output
    assert "Would copy" in dry.output and "nothing was written" in dry.output
    assert not Path(dest).exists()
    first = runner.invoke(sync_command, ["--from", str(source.home), "--to", dest, "-e", "alpha"], obj={})
    assert first.exit_code == 0, first.output
    assert "runs created" in first.output and "│     2" in first.output.replace(" 2 │", "│     2")
    second = runner.invoke(sync_command, ["--from", str(source.home)], obj={"store": dest})
    assert second.exit_code == 0, second.output
    assert "already up to date" not in second.output  # beta was not copied before
    third = runner.invoke(sync_command, ["--from", str(source.home), "--to", dest], obj={})
    assert "already up to date" in third.output


def test_progress_bar_draws_on_stderr(source: SourceStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = cairn.sync(source.uri, _dest(tmp_path), progress=True)
    assert report.runs_created == 4
    captured = capsys.readouterr()
    assert captured.out == ""  # the bar never mixes into stdout
    assert "sync" in captured.err and "points" in captured.err
