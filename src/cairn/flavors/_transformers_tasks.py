"""What the transformers flavor knows about tasks: naming, inputs, outputs, and extractive QA.

- :func:`infer_task` names the task a model class does (``BertForSequenceClassification`` ->
  ``text-classification``) from transformers' own auto-class tables, falling back to the class name.
- :class:`TransformersPyfunc` is the pyfunc implementation: it turns strings, lists, Series,
  DataFrames or dicts into the pipeline's inputs, forwards ``params`` to the pipeline and returns a
  DataFrame (one row per input) or, for ``feature-extraction``, a numpy array.
- :class:`ExtractiveQuestionAnswering` answers a question from a context with a
  ``*ForQuestionAnswering`` model: transformers 5.3 removed its ``question-answering`` pipeline
  (huggingface/transformers#43325), so cairn does the span selection itself, on any version.

transformers, torch, numpy and pandas are imported inside the functions that need them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cairn.errors import InvalidArgument
from cairn.models.schema import ParamSpec

__all__ = [
    "PYFUNC_TASKS",
    "ExtractiveQuestionAnswering",
    "TransformersPyfunc",
    "default_param_specs",
    "infer_task",
    "missing_components",
    "normalize_task",
    "pipeline_class_name",
]

TEXT_CLASSIFICATION = "text-classification"
TOKEN_CLASSIFICATION = "token-classification"
FILL_MASK = "fill-mask"
FEATURE_EXTRACTION = "feature-extraction"
TEXT_GENERATION = "text-generation"
QUESTION_ANSWERING = "question-answering"
#: Tasks whose pyfunc turns DataFrames and strings into the pipeline's inputs and its outputs into DataFrames.
PYFUNC_TASKS = (
    TEXT_CLASSIFICATION,
    TOKEN_CLASSIFICATION,
    FILL_MASK,
    FEATURE_EXTRACTION,
    TEXT_GENERATION,
    QUESTION_ANSWERING,
)
_ALIASES = {"sentiment-analysis": TEXT_CLASSIFICATION, "ner": TOKEN_CLASSIFICATION}
# transformers' auto-class tables (model_type -> class name), most specific first.
_TASK_TABLES = (
    (QUESTION_ANSWERING, "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
    (TOKEN_CLASSIFICATION, "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    (TEXT_CLASSIFICATION, "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    (FILL_MASK, "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    (TEXT_GENERATION, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    (FEATURE_EXTRACTION, "MODEL_MAPPING_NAMES"),
)
_TASK_SUFFIXES = (
    ("ForQuestionAnswering", QUESTION_ANSWERING),
    ("ForTokenClassification", TOKEN_CLASSIFICATION),
    ("ForSequenceClassification", TEXT_CLASSIFICATION),
    ("ForMaskedLM", FILL_MASK),
    ("ForCausalLM", TEXT_GENERATION),
    ("LMHeadModel", TEXT_GENERATION),
)
# Components of a pipeline, and the flag of transformers' pipeline classes that says whether it is mandatory.
_PIPELINE_COMPONENT_FLAGS = (
    ("tokenizer", "_load_tokenizer"),
    ("feature_extractor", "_load_feature_extractor"),
    ("image_processor", "_load_image_processor"),
    ("processor", "_load_processor"),
    ("video_processor", "_load_video_processor"),
)
_TEXT_COLUMNS = ("text", "inputs", "prompt", "sequence")
_POOLING = ("mean", "cls", "none")


def normalize_task(task: Any) -> str:
    """``task`` with transformers' aliases resolved (``sentiment-analysis`` -> ``text-classification``).

    Raises:
        InvalidArgument: ``task`` is not a non-empty string.
    """
    if not isinstance(task, str) or not task.strip():
        raise InvalidArgument(f"task must be a non-empty string such as 'text-classification', got {task!r}")
    task = task.strip()
    return _ALIASES.get(task, task)


def infer_task(model_class_name: str) -> str | None:
    """The task of a model class (by name), or ``None`` when neither transformers' tables nor the name tell."""
    from transformers.models.auto import modeling_auto

    for task, table_name in _TASK_TABLES:
        table = getattr(modeling_auto, table_name, None) or {}
        for names in table.values():
            if model_class_name in ((names,) if isinstance(names, str) else tuple(names)):
                return task
    for suffix, task in _TASK_SUFFIXES:
        if model_class_name.endswith(suffix):
            return task
    return None


def pipeline_class_name(task: str) -> str | None:
    """The name of transformers' pipeline class for ``task`` (None for tasks without one, such as QA on 5.x)."""
    if task == QUESTION_ANSWERING:
        return ExtractiveQuestionAnswering.__name__
    from transformers.pipelines import SUPPORTED_TASKS

    entry: Any = SUPPORTED_TASKS.get(task)
    if entry is None:
        return None
    impl = entry.get("impl")
    if isinstance(impl, str):
        return impl.rsplit(".", 1)[-1]
    return getattr(impl, "__name__", None)


def _pipeline_class(task: str) -> Any:
    """transformers' pipeline class for ``task``, or ``None`` (no such task, or cairn's own QA)."""
    name = pipeline_class_name(task)
    if name is None or task == QUESTION_ANSWERING:
        return None
    import transformers.pipelines

    return getattr(transformers.pipelines, name, None)


def _stands_in_for_image_processor(components: Mapping[str, Any]) -> bool:
    """transformers' pipelines take an image-processor feature extractor as the image processor."""
    from transformers.image_processing_utils import BaseImageProcessor

    return isinstance(components.get("feature_extractor"), BaseImageProcessor)


def missing_components(task: str, components: Mapping[str, Any]) -> list[str]:
    """The components a pipeline of ``task`` cannot run without that ``components`` lacks (``[]`` if none).

    What a task needs is what transformers' pipeline class marks as mandatory (its ``_load_tokenizer``,
    ``_load_image_processor``, ... flags set to ``True``): without it, building the pipeline from a
    saved model fails. Question answering (cairn's own) needs a fast tokenizer (``["tokenizer"]`` for a slow one).
    """
    if task == QUESTION_ANSWERING:
        tokenizer = components.get("tokenizer")
        return [] if tokenizer is not None and getattr(tokenizer, "is_fast", False) else ["tokenizer"]
    pipeline_class = _pipeline_class(task)
    if pipeline_class is None:
        return []
    missing = []
    for key, flag in _PIPELINE_COMPONENT_FLAGS:
        if getattr(pipeline_class, flag, None) is not True or components.get(key) is not None:
            continue
        if key == "image_processor" and _stands_in_for_image_processor(components):
            continue
        missing.append(key)
    return missing


def default_param_specs(task: str) -> list[ParamSpec]:
    """The inference params every model of ``task`` declares (default ``None``: the pipeline's own default)."""
    specs: dict[str, list[tuple[str, str]]] = {
        TEXT_GENERATION: [
            ("max_new_tokens", "long"),
            ("do_sample", "boolean"),
            ("temperature", "double"),
            ("top_p", "double"),
            ("top_k", "long"),
            ("repetition_penalty", "double"),
            ("num_return_sequences", "long"),
            ("return_full_text", "boolean"),
        ],
        TEXT_CLASSIFICATION: [("top_k", "long"), ("function_to_apply", "string")],
        TOKEN_CLASSIFICATION: [("aggregation_strategy", "string")],
        FILL_MASK: [("top_k", "long")],
        FEATURE_EXTRACTION: [("pooling", "string")],
        QUESTION_ANSWERING: [("max_answer_len", "long"), ("max_seq_len", "long")],
    }
    return [ParamSpec(name, kind, None) for name, kind in specs.get(task, [])]


# ----------------------------------------------------------------------------------------- inputs


def _module(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def _as_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if _module(value) == "numpy" and getattr(value, "ndim", None) == 0 and isinstance(value.item(), str):
        return str(value.item())
    raise InvalidArgument(f"{where}: expected a string, got {type(value).__name__} ({value!r})")


def texts_from(data: Any) -> list[str]:
    """The input texts: a string, a list of strings, a Series, a one-column DataFrame (or one with a
    ``text``/``inputs``/``prompt`` column), a 1-D string array, or a dict with one of those keys.

    Raises:
        InvalidArgument: the data holds something other than text, or a DataFrame has no text column.
    """
    if isinstance(data, str):
        return [data]
    module = _module(data)
    if module == "pandas":
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            column = _text_column(list(data.columns))
            return [_as_text(v, f"column {column!r} row {i}") for i, v in enumerate(data[column].tolist())]
        if isinstance(data, pd.Series):
            return [_as_text(v, f"row {i}") for i, v in enumerate(data.tolist())]
    if module == "numpy" and hasattr(data, "ravel"):
        if data.ndim > 2 or (data.ndim == 2 and data.shape[1] != 1):
            raise InvalidArgument(f"expected a 1-D array of strings, got shape {data.shape}")
        return [_as_text(v, f"row {i}") for i, v in enumerate(data.ravel().tolist())]
    if isinstance(data, Mapping):
        key = next((k for k in _TEXT_COLUMNS if k in data), None)
        if key is None and len(data) == 1:
            key = next(iter(data))
        if key is None:
            raise InvalidArgument(f"expected a dict with one of the keys {list(_TEXT_COLUMNS)}, got keys {list(data)}")
        return texts_from(data[key])
    if isinstance(data, Sequence):
        return [_as_text(v, f"item {i}") for i, v in enumerate(data)]
    raise InvalidArgument(
        f"expected text input (a string, a list of strings, a Series or a DataFrame), got {type(data).__name__}"
    )


def _text_column(columns: list[Any]) -> Any:
    if len(columns) == 1:
        return columns[0]
    for name in _TEXT_COLUMNS:
        if name in columns:
            return name
    raise InvalidArgument(
        f"the input DataFrame has columns {[str(c) for c in columns]}; give one column of text, or name it "
        f"one of {list(_TEXT_COLUMNS)}"
    )


def qa_pairs_from(data: Any) -> list[tuple[str, str]]:
    """``(question, context)`` pairs from a DataFrame with ``question`` and ``context`` columns, a dict
    of strings or lists, or a list of such dicts.

    Raises:
        InvalidArgument: the data has no ``question`` or ``context``.
    """
    if _module(data) == "pandas" and hasattr(data, "columns"):
        data = data.to_dict(orient="list")
    if isinstance(data, Mapping):
        missing = [k for k in ("question", "context") if k not in data]
        if missing:
            raise InvalidArgument(f"question answering needs 'question' and 'context'; missing {missing}")
        questions, contexts = data["question"], data["context"]
        if isinstance(questions, str) and isinstance(contexts, str):
            return [(questions, contexts)]
        q_list, c_list = texts_from(list(questions)), texts_from(list(contexts))
        if len(q_list) != len(c_list):
            raise InvalidArgument(f"got {len(q_list)} questions but {len(c_list)} contexts")
        return list(zip(q_list, c_list, strict=True))
    if isinstance(data, Sequence) and not isinstance(data, str) and all(isinstance(d, Mapping) for d in data):
        return [pair for item in data for pair in qa_pairs_from(item)]
    raise InvalidArgument(
        "question answering takes a DataFrame with 'question' and 'context' columns, a dict or a list of dicts; "
        f"got {type(data).__name__}"
    )


# ----------------------------------------------------------------------------------------- outputs


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays, and torch tensors, turned into Python values (recursively)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if _module(value) in ("numpy", "torch") and hasattr(value, "tolist"):
        return value.tolist()
    return value


def _rows(results: list[Any]) -> Any:
    """One DataFrame row per input: a dict gives its columns; a list of dicts (top-k candidates) gives
    columns of lists; a one-element list counts as its element."""
    import pandas as pd

    rows = []
    for result in results:
        result = plain(result)
        if isinstance(result, list) and len(result) == 1 and isinstance(result[0], dict):
            result = result[0]
        if isinstance(result, list):
            keys = list(dict.fromkeys(k for item in result if isinstance(item, dict) for k in item))
            result = {k: [item.get(k) for item in result if isinstance(item, dict)] for k in keys}
        if not isinstance(result, dict):
            result = {"output": result}
        rows.append(result)
    return pd.DataFrame(rows)


def _per_input(output: Any, count: int) -> list[Any]:
    """A pipeline's output as one entry per input (pipelines unwrap a batch of one)."""
    if count == 1 and not (isinstance(output, list) and len(output) == 1):
        return [output]
    if not isinstance(output, list) or len(output) != count:
        raise InvalidArgument(f"the pipeline returned {type(output).__name__} for {count} inputs")
    return output


# ----------------------------------------------------------------------------------------- pyfunc


class TransformersPyfunc:
    """The pyfunc implementation of a transformers model: ``predict(data, params=None)``.

    ``params`` (already checked against the signature) are forwarded to the pipeline, except those
    that are ``None`` and cairn's own ``pooling`` (feature extraction: ``"mean"`` (default), ``"cls"``
    or ``"none"`` for per-token vectors).
    """

    def __init__(self, pipeline: Any, task: str | None) -> None:
        self.pipeline = pipeline
        self.task = task

    def get_raw_model(self) -> Any:
        """The pipeline (or :class:`ExtractiveQuestionAnswering`)."""
        return self.pipeline

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Run the pipeline on ``data``; see the module docstring for the input and output shapes.

        Raises:
            InvalidArgument: the input is not what the task takes.
        """
        kwargs = {k: v for k, v in (params or {}).items() if v is not None}
        task = self.task
        if task == QUESTION_ANSWERING:
            pairs = qa_pairs_from(data)
            answers = [self.pipeline(question=q, context=c, **kwargs) for q, c in pairs]
            return _rows(answers)
        if task == FEATURE_EXTRACTION:
            return self._features(texts_from(data), kwargs)
        texts = texts_from(data)
        if not texts:
            import pandas as pd

            return pd.DataFrame()
        if task == FILL_MASK:
            kwargs.setdefault("top_k", 1)
        if task == TOKEN_CLASSIFICATION:
            raw = self.pipeline(texts, **kwargs)
            if len(texts) == 1 and isinstance(raw, list) and all(isinstance(e, dict) for e in raw):
                raw = [raw]  # one input's entities, unwrapped by the pipeline
            output = _per_input(raw, len(texts))
            import pandas as pd

            return pd.DataFrame({"entities": [plain(entities) for entities in output]})
        output = self.pipeline(texts, **kwargs)
        if task in (TEXT_CLASSIFICATION, FILL_MASK, TEXT_GENERATION):
            return _rows(_per_input(output, len(texts)))
        return plain(output)  # another task: the pipeline's own output

    def _features(self, texts: list[str], kwargs: dict[str, Any]) -> Any:
        import numpy as np

        pooling = str(kwargs.pop("pooling", None) or "mean")
        if pooling not in _POOLING:
            raise InvalidArgument(f"params['pooling'] must be one of {list(_POOLING)}, got {pooling!r}")
        vectors = []
        for text in texts:
            tensor = self.pipeline(text, return_tensors=True, **kwargs)
            array = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
            tokens = array[0] if array.ndim == 3 else array
            if pooling == "mean":
                vectors.append(tokens.mean(axis=0))
            elif pooling == "cls":
                vectors.append(tokens[0])
            else:
                vectors.append(tokens)
        if pooling == "none":
            return vectors
        width = vectors[0].shape[-1] if vectors else 0
        return np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, width), dtype=np.float32)


# ----------------------------------------------------------------------------------------- extractive QA


class ExtractiveQuestionAnswering:
    """Extractive question answering with a ``*ForQuestionAnswering`` model and a fast tokenizer.

    Called like transformers' former pipeline: ``qa(question=..., context=...)`` returns
    ``{"answer", "score", "start", "end"}`` (character offsets into the context); lists of questions
    and contexts return a list. The answer is the span (at most ``max_answer_len`` tokens, inside the
    context) maximising P(start) x P(end), the probabilities being softmaxes over the context tokens.
    Contexts longer than ``max_seq_len`` tokens are truncated (no sliding window).

    Attributes:
        model: the question-answering model.
        tokenizer: its tokenizer (must be a fast tokenizer: answers come from its offset mapping).
        task: always ``"question-answering"``.
    """

    task = QUESTION_ANSWERING

    def __init__(self, model: Any, tokenizer: Any, *, max_answer_len: int = 15, max_seq_len: int = 384) -> None:
        if tokenizer is None:
            raise InvalidArgument("question answering needs the model's tokenizer")
        if not getattr(tokenizer, "is_fast", False):
            raise InvalidArgument(
                f"question answering needs a fast tokenizer (with offset mappings); {type(tokenizer).__name__} is not"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_answer_len = int(max_answer_len)
        self.max_seq_len = int(max_seq_len)
        forward = getattr(model, "forward", model)
        try:
            self._accepted = set(inspect.signature(forward).parameters)
        except (TypeError, ValueError):
            self._accepted = {"input_ids", "attention_mask", "token_type_ids"}

    def __call__(
        self,
        question: str | Sequence[str],
        context: str | Sequence[str],
        *,
        max_answer_len: int | None = None,
        max_seq_len: int | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Answer one question (strings in, a dict out) or several (lists in, a list out).

        Raises:
            InvalidArgument: questions and contexts differ in number.
        """
        if isinstance(question, str) and isinstance(context, str):
            return self.answer(question, context, max_answer_len=max_answer_len, max_seq_len=max_seq_len)
        questions = [question] if isinstance(question, str) else list(question)
        contexts = [context] if isinstance(context, str) else list(context)
        if len(questions) != len(contexts):
            raise InvalidArgument(f"got {len(questions)} questions but {len(contexts)} contexts")
        return [
            self.answer(q, c, max_answer_len=max_answer_len, max_seq_len=max_seq_len)
            for q, c in zip(questions, contexts, strict=True)
        ]

    def answer(
        self, question: str, context: str, *, max_answer_len: int | None = None, max_seq_len: int | None = None
    ) -> dict[str, Any]:
        """The best answer span for one question."""
        import torch

        longest = int(max_answer_len or self.max_answer_len)
        encoded = self.tokenizer(
            question,
            context,
            truncation="only_second",
            max_length=int(max_seq_len or self.max_seq_len),
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = encoded.pop("offset_mapping")[0].tolist()
        sequence_ids = encoded.sequence_ids(0)
        device = getattr(self.model, "device", None)
        inputs = {k: (v.to(device) if device is not None else v) for k, v in encoded.items() if k in self._accepted}
        with torch.no_grad():
            output = self.model(**inputs)
        context_tokens = [i for i, sid in enumerate(sequence_ids) if sid == 1]
        if not context_tokens:
            return {"answer": "", "score": 0.0, "start": 0, "end": 0}
        start_logits = output.start_logits[0].float().cpu()
        end_logits = output.end_logits[0].float().cpu()
        mask = torch.full_like(start_logits, -math.inf)
        mask[context_tokens] = 0.0
        start_p = torch.softmax(start_logits + mask, dim=-1)
        end_p = torch.softmax(end_logits + mask, dim=-1)
        scores = start_p[:, None] * end_p[None, :]
        scores = torch.triu(scores) - torch.triu(scores, diagonal=max(longest, 1))  # end >= start, span < longest
        best = int(torch.argmax(scores))
        first, last = divmod(best, scores.shape[1])
        begin, finish = int(offsets[first][0]), int(offsets[last][1])
        return {"answer": context[begin:finish], "score": float(scores[first, last]), "start": begin, "end": finish}

    def save_pretrained(self, save_directory: str | Path) -> None:
        """Save the model and tokenizer side by side in ``save_directory`` (as a pipeline does)."""
        self.model.save_pretrained(save_directory)
        self.tokenizer.save_pretrained(save_directory)
