"""Values no database can store are refused at the call, alike on SQLite and PostgreSQL (issue 13, items 6, 10).

Every entry point raises a clear InvalidArgument naming the key before anything is queued or written:
steps and timestamps outside a signed 64-bit integer, values that are not real numbers, text with a NUL
character or a lone surrogate. Nothing of the refused call reaches the store, and nothing else is lost.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cairn
from cairn.errors import InvalidArgument
from cairn.tracking import Client
from cairn.tracking.entities import Metric, Param, RunTag

BAD_STEPS = [2**63, -(2**63) - 1, 2**70]
UNSTORABLE_TEXT = ["a\x00b", "a\ud800b", "\udfff"]


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[Client]:
    """The fluent API and a Client on one store of each backend."""
    cairn.set_tracking_uri(db_url)
    yield Client(db_url, str(tmp_path / "artifacts"))
    cairn.set_tracking_uri(None)


def _history(client: Client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


# -- metrics: step, timestamp, value ------------------------------------------------------------------


@pytest.mark.parametrize("step", BAD_STEPS)
@pytest.mark.parametrize("synchronous", [False, True])
def test_log_metric_refuses_a_step_outside_int64(client: Client, step: int, synchronous: bool) -> None:
    with cairn.start_run() as run:
        cairn.log_metric("loss", 0.5, step=1)
        with pytest.raises(InvalidArgument, match=r"'loss'.*step.*64-bit") as info:
            cairn.log_metric("loss", 1.0, step=step, synchronous=synchronous)
        assert str(step) in str(info.value)
        assert str(2**63 - 1) in str(info.value)  # the range is named
        cairn.log_metric("loss", 0.25, step=2)
    assert _history(client, run.info.run_id, "loss") == [(1, 0.5), (2, 0.25)]


@pytest.mark.parametrize("synchronous", [False, True])
def test_log_metric_refuses_a_timestamp_outside_int64(client: Client, synchronous: bool) -> None:
    with cairn.start_run() as run:
        with pytest.raises(InvalidArgument, match=r"'loss'.*timestamp.*64-bit"):
            cairn.log_metric("loss", 1.0, step=0, timestamp=2**63, synchronous=synchronous)
        with pytest.raises(InvalidArgument, match=r"'loss'.*timestamp.*integer"):
            cairn.log_metric("loss", 1.0, step=0, timestamp="yesterday", synchronous=synchronous)  # type: ignore[arg-type]
    assert _history(client, run.info.run_id, "loss") == []


@pytest.mark.parametrize("synchronous", [False, True])
def test_log_metrics_refuses_a_bad_step_or_timestamp(client: Client, synchronous: bool) -> None:
    with cairn.start_run() as run:
        with pytest.raises(InvalidArgument, match=r"'a'.*step.*64-bit"):
            cairn.log_metrics({"a": 1.0, "b": 2.0}, step=2**63, synchronous=synchronous)
        with pytest.raises(InvalidArgument, match=r"'a'.*timestamp.*64-bit"):
            cairn.log_metrics({"a": 1.0, "b": 2.0}, step=1, timestamp=-(2**64), synchronous=synchronous)
    assert _history(client, run.info.run_id, "a") == []


@pytest.mark.parametrize(
    "value", [10**400, "1.0", b"1", 1 + 2j, object()], ids=["10**400", "str", "bytes", "complex", "object"]
)
def test_a_value_that_is_not_a_real_number_fitting_a_float_is_refused(client: Client, value: Any) -> None:
    with cairn.start_run(), pytest.raises(InvalidArgument, match=r"metric 'x'"):
        cairn.log_metric("x", value)


def test_nan_and_infinities_are_still_stored(client: Client) -> None:
    with cairn.start_run() as run:
        cairn.log_metric("x", math.nan, step=0)
        cairn.log_metric("x", math.inf, step=1)
        cairn.log_metric("x", -math.inf, step=2)
        cairn.log_metric("x", 1.0, step=2**63 - 1)  # the edges of the range are fine
        cairn.log_metric("x", 2.0, step=-(2**63))
    values = _history(client, run.info.run_id, "x")
    assert [step for step, _ in values] == [-(2**63), 0, 1, 2, 2**63 - 1]
    assert math.isnan(values[1][1]) and values[2][1] == math.inf and values[3][1] == -math.inf


@pytest.mark.parametrize("synchronous", [False, True])
def test_client_log_batch_refuses_a_bad_point_and_writes_nothing_of_the_batch(
    client: Client, synchronous: bool
) -> None:
    run_id = client.create_run("0").info.run_id
    good = [Metric("loss", 0.5, 1000, step) for step in range(3)]
    for bad in (Metric("loss", 1.0, 1000, 2**63), Metric("loss", 1.0, 2**63, 1), Metric("loss", "x", 1000, 1)):  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match=r"'loss'"):
            client.log_batch(run_id, metrics=[*good, bad], params=[Param("p", "1")], synchronous=synchronous)
    client.log_batch(run_id, metrics=good, synchronous=synchronous)
    assert _history(client, run_id, "loss") == [(0, 0.5), (1, 0.5), (2, 0.5)]
    assert client.get_run(run_id).data.params == {}


def test_client_log_metric_refuses_what_the_fluent_api_refuses(client: Client) -> None:
    run_id = client.create_run("0").info.run_id
    for synchronous in (False, True):
        with pytest.raises(InvalidArgument, match=r"'x'.*step.*64-bit"):
            client.log_metric(run_id, "x", 1.0, step=2**63, synchronous=synchronous)
        with pytest.raises(InvalidArgument, match=r"'x'.*timestamp.*64-bit"):
            client.log_metric(run_id, "x", 1.0, timestamp=2**63, synchronous=synchronous)


# -- text: NUL characters and lone surrogates ---------------------------------------------------------


@pytest.mark.parametrize("text", UNSTORABLE_TEXT)
def test_params_and_tags_with_unstorable_text_are_refused_naming_the_key(client: Client, text: str) -> None:
    with cairn.start_run() as run:
        with pytest.raises(InvalidArgument, match=r"param 'lr' value"):
            cairn.log_param("lr", text)
        with pytest.raises(InvalidArgument, match=r"param 'lr' value"):
            cairn.log_params({"ok": 1, "lr": text})
        with pytest.raises(InvalidArgument, match=r"tag 'note' value"):
            cairn.set_tag("note", text)
        with pytest.raises(InvalidArgument, match=r"tag 'note' value"):
            cairn.set_tags({"ok": 1, "note": text})
        for kind in ("param", "tag"):
            with pytest.raises(InvalidArgument, match=rf"{kind} key"):
                client.log_batch(
                    run.info.run_id,
                    params=[Param(text, "v")] if kind == "param" else [],
                    tags=[RunTag(text, "v")] if kind == "tag" else [],
                )
        with pytest.raises(InvalidArgument, match=r"metric key"):
            cairn.log_metric(text, 1.0)
        cairn.log_param("fine", "value")
    data = client.get_run(run.info.run_id).data
    assert data.params == {"fine": "value"}
    assert "note" not in data.tags and "ok" not in data.tags


def test_the_error_names_the_character_and_its_position(client: Client) -> None:
    with cairn.start_run():
        with pytest.raises(InvalidArgument, match=r"NUL character.*position 1"):
            cairn.set_tag("t", "a\x00b")
        with pytest.raises(InvalidArgument, match=r"lone surrogate.*position 0"):
            cairn.log_param("p", "\ud800")


@pytest.mark.parametrize("text", UNSTORABLE_TEXT)
def test_experiment_and_run_names_with_unstorable_text_are_refused(client: Client, text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"experiment name"):
        client.create_experiment(f"exp{text}")
    with pytest.raises(InvalidArgument, match=r"experiment name"):
        cairn.set_experiment(f"exp{text}")  # the lookup finds nothing on both backends, the creation refuses
    assert client.get_experiment_by_name(f"exp{text}") is None
    experiment_id = client.create_experiment("exp")
    with pytest.raises(InvalidArgument, match=r"experiment name"):
        client.rename_experiment(experiment_id, f"exp{text}")
    with pytest.raises(InvalidArgument, match=r"artifact location"):
        client.create_experiment("other", artifact_location=f"/tmp/x{text}")
    with pytest.raises(InvalidArgument, match=r"tag 'k' value"):
        client.set_experiment_tag(experiment_id, "k", text)
    with pytest.raises(InvalidArgument, match=r"run name"):
        client.create_run(experiment_id, run_name=f"run{text}")
    with pytest.raises(InvalidArgument, match=r"run name"):
        cairn.start_run(experiment_id=experiment_id, run_name=f"run{text}")
    run_id = client.create_run(experiment_id, run_name="run").info.run_id
    with pytest.raises(InvalidArgument, match=r"run name"):
        client.update_run(run_id, name=f"run{text}")
    with pytest.raises(InvalidArgument, match=r"tag key"):
        client.delete_tag(run_id, f"k{text}")
    assert client.get_run(run_id).info.run_name == "run"


@pytest.mark.parametrize("text", UNSTORABLE_TEXT)
def test_registry_names_tags_and_descriptions_with_unstorable_text_are_refused(client: Client, text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"registered model name"):
        client.create_registered_model(f"model{text}")
    with pytest.raises(InvalidArgument, match=r"tag 'k' value"):
        client.create_registered_model("model", tags={"k": text})
    with pytest.raises(InvalidArgument, match=r"description"):
        client.create_registered_model("model", description=f"about{text}")
    client.create_registered_model("model")
    with pytest.raises(InvalidArgument, match=r"description"):
        client.update_registered_model("model", description=f"about{text}")
    with pytest.raises(InvalidArgument, match=r"tag 'k' value"):
        client.set_registered_model_tag("model", "k", text)
    with pytest.raises(InvalidArgument, match=r"registered model name"):
        client.get_registered_model(f"model{text}")
    assert client.get_registered_model("model").description is None
