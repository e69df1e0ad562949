"""The final model of the Transformers integration: its components, input example, and its logging into
the callback's client (see :mod:`cairn.autolog.transformers`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cairn.autolog.config import safe_autolog
from cairn.tracking.client import Client

__all__ = ["log_final_model"]

_EXAMPLE_ROWS = 2
INTEGRATION = "transformers"
MODEL_NAME = "model"


def log_final_model(
    client: Client,
    run_id: str,
    model: Any,
    *,
    processing_class: Any,
    train_dataloader: Any,
    task: str | None,
    input_example: Any,
    registered_model_name: str | None,
    silent: bool,
) -> None:
    """Log the trained ``model`` with its processing class as ``model`` into ``run_id`` of ``client``'s store
    (registered there under ``registered_model_name``). Without ``input_example`` the first training texts
    are the example (a failure to build one is reported, not raised)."""
    from cairn.flavors import transformers as flavor
    from cairn.flavors._transformers_tasks import QUESTION_ANSWERING, infer_task

    task = task or infer_task(type(model).__name__)
    components = _components_of(processing_class)
    example = input_example
    if example is None and task not in (None, QUESTION_ANSWERING):
        with safe_autolog(INTEGRATION, "building an input example", silent=True):
            example = _example_texts(train_dataloader, components.get("tokenizer"))
    flavor.log_model(
        model,
        MODEL_NAME,
        task=task,
        input_example=example,
        registered_model_name=registered_model_name,
        run_id=run_id,
        client=client,
        **components,
    )


def _components_of(processing_class: Any) -> dict[str, Any]:
    """``processing_class`` under the flavor's component name (tokenizer, processor, ...)."""
    if processing_class is None:
        return {}
    import transformers

    if isinstance(processing_class, transformers.PreTrainedTokenizerBase):
        return {"tokenizer": processing_class}
    if isinstance(processing_class, transformers.ProcessorMixin):
        return {"processor": processing_class}
    image_base = getattr(transformers, "BaseImageProcessor", None)
    if image_base is not None and isinstance(processing_class, image_base):
        return {"image_processor": processing_class}
    return {"feature_extractor": processing_class}


def _example_texts(train_dataloader: Any, tokenizer: Any) -> list[str] | None:
    """The first training inputs, decoded back to text (None when the data is not tokenized text)."""
    dataset = getattr(train_dataloader, "dataset", None)
    if dataset is None or tokenizer is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return None
    texts = []
    for index in range(min(_EXAMPLE_ROWS, len(dataset))):
        item = dataset[index]
        ids = item.get("input_ids") if isinstance(item, Mapping) else None
        if ids is None:
            return None
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        if text:
            texts.append(text)
    return texts or None
