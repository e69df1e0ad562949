"""Reading back ``cairn_run.json``, the run id a checkpoint carries, on resume
(see :mod:`cairn.autolog.transformers`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RUN_FILE = "cairn_run.json"
RUN_FILE_FORMAT = "cairn.transformers.run"


# ----------------------------------------------------------------------------------------- resume


def _read_run_file(directory: Path) -> dict[str, Any] | None:
    try:
        content = json.loads((directory / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("format") != RUN_FILE_FORMAT:
        return None
    return content if isinstance(content.get("run_id"), str) else None


def _is_resumed_checkpoint(directory: Path, content: Mapping[str, Any], state: Any) -> bool:
    """Whether ``cairn_run.json`` in ``directory`` describes the checkpoint Trainer just resumed from.

    Its step must match, the ``trainer_state.json`` next to it must be the one it was written with
    (a reused output directory can hold a stale ``cairn_run.json``), and that state's log history must
    be the one Trainer loaded.
    """
    from cairn.checkpoint._fs import digest_file

    if content.get("global_step") != int(state.global_step):
        return False
    trainer_state = directory / "trainer_state.json"
    try:
        if digest_file(trainer_state).sha256 != content.get("trainer_state_sha256"):
            return False
        saved = json.loads(trainer_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and saved.get("log_history") == getattr(state, "log_history", None)
