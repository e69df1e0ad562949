"""The fluent API end to end on the embedded default (SQLite + local artifacts)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import cairn
from cairn.errors import ExperimentNotFound, FilterSyntaxError, InvalidArgument, ParamConflict, RunNotActive
from cairn.tracking import system_tags


def test_run_context_records_everything(tmp_path: Path) -> None:
    with cairn.start_run(run_name="baseline") as run:
        cairn.log_params({"lr": 1e-3, "layers": 4})
        cairn.log_param("optimizer", "adam")
        for step in range(5):
            cairn.log_metric("loss", 1.0 / (step + 1), step=step)
        cairn.log_metrics({"acc": 0.9, "f1": 0.8}, step=4)
        cairn.set_tags({"team": "vision", "stage": "dev"})
        cairn.set_tag("note", "first")
    stored = cairn.get_run(run.info.run_id)
    assert stored.info.status.value == "FINISHED"
    assert stored.info.end_time is not None and stored.info.end_time >= stored.info.start_time
    assert stored.info.run_name == "baseline"
    assert stored.data.params == {"lr": "0.001", "layers": "4", "optimizer": "adam"}
    assert stored.data.metrics == {"loss": pytest.approx(0.2), "acc": 0.9, "f1": 0.8}
    tags = stored.data.tags
    assert tags["team"] == "vision" and tags["note"] == "first"
    assert tags[system_tags.RUN_NAME] == "baseline"
    assert tags[system_tags.USER]
    assert tags[system_tags.SOURCE_NAME]
    history = cairn.Client().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2, 3, 4]
    assert (tmp_path / "cairn-runs" / "cairn.db").is_file()


def test_generated_run_name_is_readable() -> None:
    with cairn.start_run() as run:
        pass
    name = cairn.get_run(run.info.run_id).info.run_name
    adjective, noun, number = name.split("-")
    assert adjective.isalpha() and noun.isalpha() and number.isdigit()


def test_exception_marks_failed_and_interrupt_marks_killed() -> None:
    with pytest.raises(RuntimeError), cairn.start_run() as failed:
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), cairn.start_run() as killed:
        raise KeyboardInterrupt
    assert cairn.get_run(failed.info.run_id).info.status.value == "FAILED"
    assert cairn.get_run(killed.info.run_id).info.status.value == "KILLED"
    assert cairn.active_run() is None


def test_nested_runs_link_to_parent() -> None:
    with cairn.start_run() as parent:
        with pytest.raises(InvalidArgument, match="nested=True"):
            cairn.start_run()
        with cairn.start_run(nested=True) as child:
            assert cairn.active_run() is not None and cairn.active_run().info.run_id == child.info.run_id
        assert cairn.active_run().info.run_id == parent.info.run_id
    child_run = cairn.get_run(child.info.run_id)
    assert child_run.data.tags[system_tags.PARENT_RUN_ID] == parent.info.run_id
    found = cairn.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list")
    assert [r.info.run_id for r in found] == [child.info.run_id]


def test_resume_run_by_id_continues_logging() -> None:
    with cairn.start_run() as run:
        cairn.log_metric("loss", 1.0, step=0)
    assert cairn.last_active_run().info.status.value == "FINISHED"
    with cairn.start_run(run_id=run.info.run_id) as resumed:
        assert cairn.get_run(run.info.run_id).info.status.value == "RUNNING"
        assert cairn.get_run(run.info.run_id).info.end_time is None
        cairn.log_metric("loss", 0.5, step=1)
    assert resumed.info.run_id == run.info.run_id
    history = cairn.Client().get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]
    assert cairn.get_run(run.info.run_id).info.status.value == "FINISHED"


def test_logging_without_active_run_starts_one() -> None:
    cairn.log_metric("x", 1.0)
    active = cairn.active_run()
    assert active is not None
    cairn.end_run()
    assert cairn.get_run(active.info.run_id).data.metrics == {"x": 1.0}


def test_param_is_immutable_with_clear_error() -> None:
    with cairn.start_run():
        cairn.log_param("lr", 0.1)
        cairn.log_param("lr", 0.1)  # same value: fine
        with pytest.raises(ParamConflict) as info:
            cairn.log_param("lr", 0.2)
    message = str(info.value)
    assert "lr" in message and "0.1" in message and "0.2" in message


def test_nan_and_inf_are_stored_faithfully() -> None:
    with cairn.start_run() as run:
        cairn.log_metric("a", float("nan"), step=0)
        cairn.log_metric("a", float("inf"), step=1)
        cairn.log_metric("a", float("-inf"), step=2)
        cairn.log_metric("b", np.float32(0.25))
    history = cairn.Client().get_metric_history(run.info.run_id, "a")
    assert math.isnan(history[0].value)
    assert history[1].value == math.inf and history[2].value == -math.inf
    assert cairn.get_run(run.info.run_id).data.metrics["b"] == 0.25


@pytest.mark.parametrize("key", ["", "   ", "a" * 251, "../escape", "/abs", "a//b", "bad\nkey", "semi;colon", "a/./b"])
def test_invalid_keys_are_refused(key: str) -> None:
    with cairn.start_run():
        with pytest.raises(InvalidArgument):
            cairn.log_metric(key, 1.0)
        with pytest.raises(InvalidArgument):
            cairn.log_param(key, 1)


def test_unusable_values_are_refused() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    with cairn.start_run():
        with pytest.raises(InvalidArgument, match="number"):
            cairn.log_metric("m", "0.5")
        with pytest.raises(InvalidArgument, match="number"):
            cairn.log_metric("m", object())
        with pytest.raises(InvalidArgument, match="step"):
            cairn.log_metric("m", 1.0, step=1.5)
        with pytest.raises(InvalidArgument, match="cannot be turned into text"):
            cairn.log_param("p", Unprintable())
        with pytest.raises(InvalidArgument, match="limit"):
            cairn.log_param("p", "x" * 10_000)


def test_logging_to_deleted_run_is_refused_and_finished_run_accepts_late_metrics() -> None:
    client = cairn.Client()
    with cairn.start_run() as run:
        pass
    client.log_metric(run.info.run_id, "eval_acc", 0.7, synchronous=True)  # MLflow: evaluate later
    assert client.get_run(run.info.run_id).data.metrics["eval_acc"] == 0.7
    client.delete_run(run.info.run_id)
    with pytest.raises(RunNotActive, match=run.info.run_id):
        client.log_param(run.info.run_id, "p", 1)
    with pytest.raises(RunNotActive):
        client.log_metric(run.info.run_id, "m", 1.0, synchronous=True)
    client.log_metric(run.info.run_id, "m", 1.0)  # queued: the error surfaces at flush
    with pytest.raises(RunNotActive):
        client.flush()
    with pytest.raises(RunNotActive, match="deleted"):
        cairn.start_run(run_id=run.info.run_id)


def test_unknown_ids_raise_not_found() -> None:
    from cairn.errors import RunNotFound

    with pytest.raises(RunNotFound):
        cairn.get_run("0" * 32)
    with pytest.raises(KeyError):  # RunNotFound is also a KeyError
        cairn.Client().log_param("f" * 32, "a", 1)
    with pytest.raises(ExperimentNotFound):
        cairn.set_experiment(experiment_id="424242")
    with pytest.raises(ExperimentNotFound):
        cairn.start_run(experiment_id="424242")


def test_experiments_and_search() -> None:
    experiment = cairn.set_experiment("churn")
    assert cairn.set_experiment("churn").experiment_id == experiment.experiment_id
    assert cairn.get_experiment_by_name("churn").experiment_id == experiment.experiment_id
    for i, lr in enumerate(["0.1", "0.01", "0.001"]):
        with cairn.start_run(run_name=f"r{i}"):
            cairn.log_param("lr", lr)
            cairn.log_metric("acc", 0.5 + i / 10)
    frame = cairn.search_runs(filter_string="metrics.acc > 0.55", order_by=["metrics.acc DESC"])
    assert list(frame["run_name"]) == ["r2", "r1"]
    assert list(frame["params.lr"]) == ["0.001", "0.01"]
    runs = cairn.search_runs(experiment_names=["churn"], filter_string="params.lr = '0.1'", output_format="list")
    assert [r.info.run_name for r in runs] == ["r0"]
    by_name = cairn.search_runs(filter_string="tags.\"mlflow.runName\" = 'r1'", output_format="list")
    assert len(by_name) == 1
    with pytest.raises(FilterSyntaxError) as info:
        cairn.search_runs(filter_string="metrics.acc >> 1")
    assert info.value.position > 0
    assert cairn.search_experiments(filter_string="name LIKE 'chu%'")[0].name == "churn"


def test_experiment_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_EXPERIMENT_NAME", "from-env")
    with cairn.start_run() as run:
        pass
    assert cairn.get_experiment(run.info.experiment_id).name == "from-env"


def test_artifacts_round_trip(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("A")
    (source / "sub" / "b.txt").write_text("B")
    figure, axis = plt.subplots()
    axis.plot([1, 2, 3])
    with cairn.start_run() as run:
        cairn.log_artifact(source / "a.txt")
        cairn.log_artifact(source / "a.txt", artifact_path="copies")
        cairn.log_artifacts(source, artifact_path="tree")
        cairn.log_text("hello", "notes/hello.txt")
        cairn.log_dict({"a": 1, "b": [1, 2]}, "config.json")
        cairn.log_dict({"a": 1}, "config.yaml")
        cairn.log_figure(figure, "plots/curve.png")
        cairn.log_figure(go.Figure(data=[go.Scatter(y=[1, 3, 2])]), "plots/curve.html")
        cairn.log_image(np.zeros((8, 8, 3), dtype=np.uint8), "images/black.png")
        cairn.log_image(np.ones((4, 4), dtype=np.float32), key="mask", step=3)
        uri = cairn.get_artifact_uri()
        assert cairn.get_artifact_uri("a.txt").endswith("a.txt")
    assert Path(uri).is_dir()
    top = {f.path for f in cairn.list_artifacts(run_id=run.info.run_id)}
    assert {"a.txt", "copies", "tree", "notes", "config.json", "config.yaml", "plots", "images"} <= top
    local = Path(cairn.download_artifacts("tree", run_id=run.info.run_id, dst_path=tmp_path / "dl"))
    assert (local / "sub" / "b.txt").read_text() == "B"
    config_path = cairn.download_artifacts("config.json", run_id=run.info.run_id, dst_path=tmp_path / "dl2")
    assert json.loads(Path(config_path).read_text()) == {"a": 1, "b": [1, 2]}
    png = Path(uri) / "plots" / "curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (Path(uri) / "images" / "mask" / "step_00000003.png").is_file()
    assert "plotly" in (Path(uri) / "plots" / "curve.html").read_text()
    with pytest.raises(InvalidArgument, match="not a file"):
        cairn.log_artifact(tmp_path / "missing.txt", run_id=run.info.run_id)
    with pytest.raises(InvalidArgument, match=r"\[0, 1\]"):
        cairn.log_image(np.full((2, 2), 3.0), "bad.png", run_id=run.info.run_id)


def test_artifact_paths_cannot_escape_the_run() -> None:
    from cairn.errors import UnsafePath

    with cairn.start_run():
        for bad in ("../../outside.txt", "/etc/passwd", "a/%2e%2e/%2e%2e/x", "..\\x"):
            with pytest.raises(UnsafePath):
                cairn.log_text("x", bad)


def test_search_experiments_filters() -> None:
    for name in ("Vision-A", "vision-b", "audio"):
        cairn.create_experiment(name)
    names = lambda f: sorted(e.name for e in cairn.search_experiments(filter_string=f))  # noqa: E731
    assert names("name = 'audio'") == ["audio"]
    assert names("name LIKE 'vision%'") == ["vision-b"]
    assert names("name ILIKE 'vision%'") == ["Vision-A", "vision-b"]
    assert names("name = 'missing'") == []
    with pytest.raises(FilterSyntaxError, match="name LIKE"):
        cairn.search_experiments(filter_string="tags.x = 'y'")
