"""The model a run trained, logged when the run ends (with the first forward's input slice as example)."""

from __future__ import annotations

from typing import Any

from torch import nn

from cairn.autolog.torch.config import Report
from cairn.tracking.client import Client

__all__ = ["log_final_model"]

MODEL_NAME = "model"


def log_final_model(run_id: str, model: nn.Module, example: Any, *, client: Client | None, report: Report) -> None:
    """Log ``model`` as ``model`` into the run; an example the model cannot be traced with must not
    cost the model itself (logged again without it). ``client``: the run's store (``None``: the fluent API's)."""
    try:
        from cairn.flavors import pytorch as flavor
    except ImportError as exc:
        report("logging the model (cairn.flavors.pytorch is unavailable)", exc)
        return

    def log(input_example: Any) -> None:
        flavor.log_model(model, MODEL_NAME, input_example=input_example, run_id=run_id, client=client)

    try:
        log(example)
    except Exception as exc:
        if example is None:
            report("logging the model", exc)
            return
        try:
            log(None)
        except Exception as second:
            report("logging the model", second)
