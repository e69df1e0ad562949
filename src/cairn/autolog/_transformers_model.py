"""The final model of the Transformers integration: its components and input example
(see :mod:`cairn.autolog.transformers`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_EXAMPLE_ROWS = 2


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
