"""``cairn.transformers``: Hugging Face models and Trainer logging (MLflow's ``mlflow.transformers``, and more).

>>> trainer = Trainer(..., callbacks=[cairn.transformers.CairnCallback()])   # or report_to="cairn"
>>> cairn.transformers.autolog()                 # or: every Trainer gets the callback
>>> path = cairn.transformers.checkpoint_path(run_id, "latest")
>>> trainer.train(resume_from_checkpoint=path)   # continues the same run
>>> info = cairn.transformers.log_model(pipeline, "model", input_example=["great movie"])
>>> cairn.transformers.load_model(info.model_uri)("what a film")

Importing this module imports transformers and registers ``"cairn"`` as a ``report_to`` name in
transformers' integration table (``INTEGRATION_TO_CALLBACK``); ``import cairn`` alone does neither, and
``cairn.autolog()`` does it when the script imports ``transformers.trainer`` (or at once if it has).
See :mod:`cairn.flavors.transformers` for the model format and :mod:`cairn.autolog.transformers`
for what the callback records and how resume works.
"""

from __future__ import annotations

from cairn.autolog.transformers import (
    CHECKPOINT_MODELS_DIR,
    CHECKPOINTS_DIR,
    REPORT_TO_NAME,
    RUN_FILE,
    CairnCallback,
    autolog,
    checkpoint_path,
    register_report_to,
)
from cairn.flavors.transformers import (
    FLAVOR_NAME,
    PYFUNC_TASKS,
    ExtractiveQuestionAnswering,
    load_model,
    log_model,
    save_model,
)

register_report_to()

__all__ = [
    "CHECKPOINTS_DIR",
    "CHECKPOINT_MODELS_DIR",
    "FLAVOR_NAME",
    "PYFUNC_TASKS",
    "REPORT_TO_NAME",
    "RUN_FILE",
    "CairnCallback",
    "ExtractiveQuestionAnswering",
    "autolog",
    "checkpoint_path",
    "load_model",
    "log_model",
    "save_model",
]
