"""``cairn.pytorch``: PyTorch models, state dicts, checkpoints that resume exactly, and autolog.

>>> cairn.pytorch.autolog()                          # plain loops and Lightning, no other change
>>> cairn.pytorch.log_model(net, "model", input_example=x[:4])
>>> cairn.pytorch.log_checkpoint(model=net, optimizer=opt, scheduler=sched, step=step, epoch=epoch)
>>> restored = cairn.pytorch.track_state(lambda: {"best": best})  # a loop's own state in autolog's checkpoints
>>> state = cairn.pytorch.resume(run_id, model=net, optimizer=opt, scheduler=sched, loader=loader)

Importing this module imports torch. See :mod:`cairn.flavors.pytorch` for the model format,
:mod:`cairn.checkpoint.runs` for checkpoints and resume, :mod:`cairn.autolog.pytorch` for autolog.
"""

from __future__ import annotations

from cairn.autolog.pytorch import PyTorchAutologConfig, autolog, track_state
from cairn.checkpoint.runs import (
    ResumeState,
    ResumeWarning,
    checkpoint_path,
    flush_checkpoints,
    list_run_checkpoints,
    log_checkpoint,
    resume,
)
from cairn.flavors.pytorch import (
    FLAVOR_NAME,
    load_model,
    load_state_dict,
    log_model,
    log_state_dict,
    save_model,
    save_state_dict,
)

__all__ = [
    "FLAVOR_NAME",
    "PyTorchAutologConfig",
    "ResumeState",
    "ResumeWarning",
    "autolog",
    "checkpoint_path",
    "flush_checkpoints",
    "list_run_checkpoints",
    "load_model",
    "load_state_dict",
    "log_checkpoint",
    "log_model",
    "log_state_dict",
    "resume",
    "save_model",
    "save_state_dict",
    "track_state",
]
