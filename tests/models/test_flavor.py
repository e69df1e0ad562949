"""The flavor contract's shared machinery (:mod:`cairn.models.flavor`), on a framework-free flavor.

The contract itself is tested on every real flavor in tests/flavors/test_flavor_contract.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import cairn
from cairn.errors import InvalidArgument
from cairn.models import Model
from cairn.models.flavor import CommonLogOptions, log_flavor_model, refuse_unknown_options
from cairn.models.packaging import save_model_dir

ACCEPTED = CommonLogOptions.__optional_keys__ | {"shout"}


def save_plain(
    path: Path, *, shout: bool = False, run_id: str | None = None, artifact_path: str | None = None, **common: Any
) -> Model:
    """A flavor's save_model with one option of its own and the common ones."""
    return save_model_dir(
        path,
        flavor_name="plain",
        flavor_conf={"shout": shout},
        loader_module="cairn.flavors.pyfunc",
        run_id=run_id,
        artifact_path=artifact_path,
        signature=False,
        **common,
    )


def test_options_reach_save_model_and_log_options_do_not() -> None:
    with cairn.start_run() as run:
        info = log_flavor_model(
            save_plain,
            None,
            {"artifact_path": "m", "shout": True, "metadata": {"team": "a"}, "registered_model_name": "plain"},
            accepted=ACCEPTED,
        )
    assert info.model_uri == f"runs:/{run.info.run_id}/m"
    assert info.registered_model_version == 1
    assert info.flavors["plain"]["shout"] is True
    assert info.metadata is not None and info.metadata["team"] == "a"
    assert info.run_id == run.info.run_id and info.artifact_path == "m"


def test_default_name_and_explicit_run() -> None:
    run = cairn.Client().create_run("0")
    info = log_flavor_model(save_plain, None, {"run_id": run.info.run_id}, accepted=ACCEPTED)
    assert info.model_uri == f"runs:/{run.info.run_id}/model"
    assert cairn.active_run() is None


def test_unknown_option_is_refused_before_a_run_starts() -> None:
    with pytest.raises(TypeError, match="log_model\\(\\) got an unexpected keyword argument 'shuot'"):
        log_flavor_model(save_plain, "m", {"shuot": True}, accepted=ACCEPTED)
    assert cairn.active_run() is None


def test_name_and_artifact_path_must_agree() -> None:
    with pytest.raises(InvalidArgument, match="disagree"):
        log_flavor_model(save_plain, "a", {"artifact_path": "b"}, accepted=ACCEPTED)


def test_refuse_unknown_options_names_the_first_unknown_one() -> None:
    refuse_unknown_options("save_model", {"signature": None}, CommonLogOptions.__optional_keys__)
    with pytest.raises(TypeError, match="save_model\\(\\) got an unexpected keyword argument 'a'"):
        refuse_unknown_options("save_model", {"b": 1, "a": 2}, CommonLogOptions.__optional_keys__)
