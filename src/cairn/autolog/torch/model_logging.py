"""The model a run trained, logged when the run ends (with the first forward's input slice as example)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from cairn.autolog._pickled_model import log_announcing_pickle
from cairn.autolog.torch.config import INTEGRATION, Report
from cairn.tracking.client import Client

if TYPE_CHECKING:
    from cairn.models.model import ModelInfo

__all__ = ["log_final_model"]

MODEL_NAME = "model"

_ADVICE = (
    "define the model's class in an importable module (not in the script run as __main__) with an __init__ "
    "that needs no arguments, so that it is rebuilt from its class; or log it yourself with "
    "cairn.pytorch.log_model(model, 'model', input_example=...) and module_class=/init_kwargs= or an input "
    "its forward can be torch.export-ed with"
)


def log_final_model(run_id: str, model: nn.Module, example: Any, *, client: Client | None, report: Report) -> None:
    """Log ``model`` as ``model`` into the run; an example the model cannot be traced with must not
    cost the model itself (logged again without it). ``client``: the run's store (``None``: the fluent API's).
    A model that loads only with the pickle opt-in is announced (see :mod:`cairn.autolog._pickled_model`)."""
    try:
        from cairn.flavors import pytorch as flavor
    except ImportError as exc:
        report("logging the model (cairn.flavors.pytorch is unavailable)", exc)
        return

    def log(input_example: Any) -> ModelInfo:
        return flavor.log_model(model, MODEL_NAME, input_example=input_example, run_id=run_id, client=client)

    def log_with_fallback() -> ModelInfo | None:
        try:
            return log(example)
        except Exception as exc:
            if example is None:
                report("logging the model", exc)
                return None
            try:
                return log(None)
            except Exception as second:
                report("logging the model", second)
                return None

    silent = bool(getattr(report, "silent", False))  # the integration's FailureReporter knows autolog(silent=)
    log_announcing_pickle(log_with_fallback, integration=INTEGRATION, model=model, advice=_ADVICE, silent=silent)
