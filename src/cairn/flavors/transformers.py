"""The transformers flavor: save, log and load Hugging Face models with their tokenizers, offline and safely.

What can be saved:

- a ``transformers.Pipeline`` (its model, tokenizer, feature extractor, image processor, processor and task);
- a ``PreTrainedModel`` with its components, given as keywords (``tokenizer=...``) or as MLflow's
  dict ``{"model": ..., "tokenizer": ...}``;
- a local checkpoint directory (``save_pretrained`` output or a Trainer's ``checkpoint-N``), copied
  file by file without loading the weights: only the model files (``config.json``,
  ``generation_config.json``, ``*.safetensors`` and their index) are kept, never ``optimizer.pt``,
  ``training_args.bin`` or other pickles;
- :class:`~cairn.flavors._transformers_tasks.ExtractiveQuestionAnswering` (question answering, whose
  pipeline transformers 5.3 removed).

Layout (MLflow's): ``model/`` holds ``save_pretrained`` output in safetensors, ``components/<name>/``
each component's ``save_pretrained`` output, and the ``transformers`` flavor entry records the task,
the classes and ``model_binary: model``.

Loading never contacts the Hugging Face hub (``local_files_only=True`` everywhere, weights read with
``use_safetensors=True``) and never runs code shipped with a model unless the caller passes
``trust_remote_code=True`` to :func:`load_model`; the pyfunc loader never does. ``load_model``
returns a pipeline, or with ``return_type="components"`` a dict of the model, its components and
``task``.

Pyfunc: see :class:`~cairn.flavors._transformers_tasks.TransformersPyfunc`. Every signature cairn
writes declares the task's usual inference params (``max_new_tokens``, ``do_sample``, ... for text
generation; ``top_k`` for fill-mask; ``pooling`` for feature extraction), so ``predict(data,
params={"max_new_tokens": 8})`` reaches the pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

from cairn.errors import CairnError, InvalidArgument, UnsafeModel
from cairn.flavors._transformers_tasks import (
    PYFUNC_TASKS,
    QUESTION_ANSWERING,
    ExtractiveQuestionAnswering,
    TransformersPyfunc,
    default_param_specs,
    infer_task,
    missing_components,
    normalize_task,
    pipeline_class_name,
)
from cairn.models.flavor import CommonLogOptions, log_flavor_model
from cairn.models.model import Model, ModelInfo
from cairn.models.schema import ModelSignature, ParamSchema

__all__ = [
    "COMPONENTS_DIR",
    "FLAVOR_NAME",
    "MODEL_BINARY",
    "PYFUNC_TASKS",
    "ExtractiveQuestionAnswering",
    "TransformersLogOptions",
    "TransformersOptions",
    "TransformersPyfunc",
    "load_model",
    "log_model",
    "save_model",
]

FLAVOR_NAME = "transformers"
LOADER_MODULE = "cairn.flavors.transformers"
MODEL_BINARY = "model"
COMPONENTS_DIR = "components"
#: Components listed in the flavor's ``components`` entry (MLflow's names); the processor is recorded apart.
COMPONENT_KEYS = ("tokenizer", "feature_extractor", "image_processor")
PROCESSOR_KEY = "processor"
_ALL_COMPONENTS = (*COMPONENT_KEYS, PROCESSOR_KEY)
_CHECKPOINT_MODEL_FILES = ("config.json", "generation_config.json")
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
_AUTO_LOADERS = {
    "tokenizer": "AutoTokenizer",
    "feature_extractor": "AutoFeatureExtractor",
    "image_processor": "AutoImageProcessor",
    PROCESSOR_KEY: "AutoProcessor",
}
_AUTO_MODELS = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "fill-mask": "AutoModelForMaskedLM",
    "text-generation": "AutoModelForCausalLM",
    "question-answering": "AutoModelForQuestionAnswering",
    "feature-extraction": "AutoModel",
}


@dataclass
class _Source:
    """What is being saved, whatever form it was given in."""

    model: Any = None  # an in-memory PreTrainedModel, or None for a checkpoint directory
    checkpoint_dir: Path | None = None
    components: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    model_class: str = ""
    source_name: str | None = None
    pipeline: Any = None  # the pipeline given by the caller, used for the signature's output
    dtype: str | None = None


# ----------------------------------------------------------------------------------------- sources


def _is_pipeline(obj: Any) -> bool:
    try:
        from transformers import Pipeline
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Pipeline)


def _is_pretrained_model(obj: Any) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, PreTrainedModel)


def _resolve_source(transformers_model: Any, task: str | None, components: Mapping[str, Any]) -> _Source:
    given = {k: v for k, v in components.items() if v is not None}
    if _is_pipeline(transformers_model) or isinstance(transformers_model, ExtractiveQuestionAnswering):
        source = _Source(model=transformers_model.model, pipeline=transformers_model)
        for key in _ALL_COMPONENTS:
            value = getattr(transformers_model, key, None)
            if value is not None:
                source.components[key] = value
        task = task or getattr(transformers_model, "task", None) or None
    elif isinstance(transformers_model, Mapping):
        unknown = sorted(str(k) for k in transformers_model if k not in ("model", *_ALL_COMPONENTS))
        if unknown or "model" not in transformers_model:
            raise InvalidArgument(
                f"a dict of components needs a 'model' key and may have {list(_ALL_COMPONENTS)}; "
                f"got keys {sorted(map(str, transformers_model))}"
            )
        source = _Source(model=transformers_model["model"])
        source.components.update({k: v for k, v in transformers_model.items() if k != "model" and v is not None})
    elif isinstance(transformers_model, (str, os.PathLike)):
        source = _checkpoint_source(Path(transformers_model), load_tokenizer="tokenizer" not in given)
    elif _is_pretrained_model(transformers_model):
        source = _Source(model=transformers_model)
    else:
        raise InvalidArgument(
            "transformers_model must be a transformers Pipeline, a PreTrainedModel, a dict of components with a "
            f"'model' key, or the path of a local checkpoint directory; got {type(transformers_model).__name__}"
        )
    source.components.update(given)
    explicit_task = task is not None
    if source.model is not None:
        if not _is_pretrained_model(source.model):
            raise InvalidArgument(
                f"the model must be a transformers PreTrainedModel, got {type(source.model).__name__}"
            )
        source.model_class = type(source.model).__name__
        source.source_name = getattr(source.model, "name_or_path", None) or None
        dtype = getattr(source.model, "dtype", None)
        source.dtype = str(dtype) if dtype is not None else None
    source.task = _resolve_task(task, source.model_class)
    _require_pipeline_components(source, explicit_task=explicit_task)
    return source


def _require_pipeline_components(source: _Source, *, explicit_task: bool) -> None:
    """Refuse a model whose task's pipeline could not be built at load for want of a component.

    A task inferred from the model class is dropped instead, with a warning: the model is saved as
    components only (it loads with ``return_type="components"``), as when no task can be told.

    Raises:
        InvalidArgument: the task was passed and needs a tokenizer (or image processor, ...) that was not given.
    """
    if source.task is None:
        return
    missing = missing_components(source.task, source.components)
    if not missing:
        return
    if not explicit_task:
        warnings.warn(
            f"cairn: saving {source.model_class} without a task: its inferred task {source.task!r} needs "
            f"{' and '.join(missing)}, which was not given, so the model loads as components only "
            f"(pass {', '.join(f'{key}=...' for key in missing)} to save it as a {source.task} pipeline)",
            stacklevel=4,
        )
        source.task = None
        return
    needs = " and ".join(f"{'an' if key[0] in 'aeiou' else 'a'} {key.replace('_', ' ')}" for key in missing)
    if source.task == QUESTION_ANSWERING:
        needs = "a fast tokenizer (answers come from its offset mappings)"
    given = ", ".join(sorted(source.components)) or "no component"
    raise InvalidArgument(
        f"task {source.task!r} needs {needs}, and save_model got {given}: the saved model could not "
        f"be loaded as a {source.task} pipeline. Pass {', '.join(f'{key}=...' for key in missing)} (or a "
        "Pipeline that has it)"
    )


def _checkpoint_source(directory: Path, *, load_tokenizer: bool) -> _Source:
    if not directory.is_dir():
        raise InvalidArgument(f"{directory} is not a directory; a checkpoint is a directory written by save_pretrained")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise InvalidArgument(f"{directory} has no config.json, so it is not a transformers checkpoint")
    if not _weight_files(directory):
        raise InvalidArgument(
            f"{directory} has no *.safetensors weights; cairn stores transformers weights as safetensors only "
            "(load the model and save it with save_pretrained to convert pytorch_model.bin)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{config_path} is not readable JSON: {exc}") from exc
    architectures = config.get("architectures") or []
    if not architectures or not isinstance(architectures[0], str):
        raise InvalidArgument(f"{config_path} names no model class ('architectures' is empty)")
    source = _Source(checkpoint_dir=directory, model_class=architectures[0])
    source.source_name = config.get("_name_or_path") or directory.name
    source.dtype = config.get("dtype") or config.get("torch_dtype")
    if load_tokenizer and any((directory / name).is_file() for name in _TOKENIZER_FILES):
        # A tokenizer is small; loading it (locally, without remote code) writes a clean copy.
        from transformers import AutoTokenizer

        source.components["tokenizer"] = AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    return source


def _resolve_task(task: str | None, model_class: str) -> str | None:
    if task is not None:
        task = normalize_task(task)
        if task not in PYFUNC_TASKS and pipeline_class_name(task) is None:
            raise InvalidArgument(
                f"unknown task {task!r}; cairn's pyfunc serves {list(PYFUNC_TASKS)} and any other task of "
                "transformers.pipeline() can be saved too"
            )
        return task
    return infer_task(model_class) if model_class else None


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(".safetensors"))


def _make_pipeline(task: str | None, model: Any, components: Mapping[str, Any], device: Any = None) -> Any:
    """A pipeline for ``task`` over already loaded objects (no download: nothing is named by string)."""
    if task is None:
        raise InvalidArgument(
            "this model records no task, so no pipeline can be built; load it with return_type='components'"
        )
    if task == QUESTION_ANSWERING:
        if device is not None:
            model = model.to(device)
        return ExtractiveQuestionAnswering(model, components.get("tokenizer"))
    import transformers

    kwargs = {key: components[key] for key in _ALL_COMPONENTS if components.get(key) is not None}
    if device is not None:
        kwargs["device"] = device
    build: Any = transformers.pipeline
    return build(task=task, model=model, **kwargs)


# ----------------------------------------------------------------------------------------- save / log


def _flavor_conf(source: _Source) -> dict[str, Any]:
    import transformers

    conf: dict[str, Any] = {
        "transformers_version": transformers.__version__,
        "code": None,
        "task": source.task,
        "instance_type": pipeline_class_name(source.task) if source.task else None,
        "pipeline_model_type": source.model_class,
        "source_model_name": source.source_name,
        "model_binary": MODEL_BINARY,
        "framework": "pt",
        "components": [key for key in COMPONENT_KEYS if key in source.components],
    }
    if source.pipeline is not None and _is_pipeline(source.pipeline):
        conf["instance_type"] = type(source.pipeline).__name__
    if source.dtype:
        conf["torch_dtype"] = source.dtype
    for key, value in source.components.items():
        conf["processor_type" if key == PROCESSOR_KEY else f"{key}_type"] = type(value).__name__
    return conf


def _write_model_files(source: _Source, target: Path) -> None:
    target.mkdir(parents=True)
    if source.checkpoint_dir is not None:
        for path in sorted(source.checkpoint_dir.iterdir()):
            if path.is_file() and (
                path.name in _CHECKPOINT_MODEL_FILES
                or path.name.endswith(".safetensors")
                or path.name.endswith(".safetensors.index.json")
            ):
                shutil.copy2(path, target / path.name)
    else:
        source.model.save_pretrained(str(target))
    if not _weight_files(target):
        raise InvalidArgument(
            f"save_pretrained of {source.model_class} wrote no *.safetensors file; cairn stores weights as safetensors"
        )


def _with_task_params(signature: ModelSignature | None, task: str | None) -> ModelSignature | None:
    """``signature`` with the task's inference params added (those it does not declare already)."""
    specs = default_param_specs(task) if task else []
    if not specs:
        return signature
    if signature is None:
        return ModelSignature(params=ParamSchema(specs))
    declared = list(signature.params.params) if signature.params is not None else []
    names = {p.name for p in declared}
    merged = declared + [s for s in specs if s.name not in names]
    return ModelSignature(signature.inputs, signature.outputs, ParamSchema(merged))


def _predict_fn(source: _Source) -> Any:
    """The pyfunc ``predict`` on the in-memory model, used to infer the output schema (None for checkpoints)."""
    if source.model is None or source.task is None:
        return None
    pipe = source.pipeline
    if pipe is None:
        try:
            pipe = _make_pipeline(source.task, source.model, source.components)
        except Exception as exc:  # the model is still worth saving; the signature then has inputs only
            import warnings

            warnings.warn(
                f"could not build a {source.task} pipeline to infer the output schema ({type(exc).__name__}: {exc})",
                UserWarning,
                stacklevel=4,
            )
            return None
    return TransformersPyfunc(pipe, source.task).predict


def save_model(
    transformers_model: Any,
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    tokenizer: Any = None,
    feature_extractor: Any = None,
    image_processor: Any = None,
    processor: Any = None,
    signature: ModelSignature | Literal[False] | None = None,
    input_example: Any = None,
    metadata: dict[str, Any] | None = None,
    pip_requirements: Sequence[str] | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    code_paths: Sequence[str | os.PathLike[str]] | None = None,
    run_id: str | None = None,
    artifact_path: str | None = None,
) -> Model:
    """Save a transformers model with its components as a model directory at ``path``.

    Args:
        transformers_model: a Pipeline, a PreTrainedModel, a dict ``{"model": ..., "tokenizer": ...}``,
            an :class:`ExtractiveQuestionAnswering`, or the path of a local checkpoint directory (copied
            without loading its weights).
        path: the new model directory; must not exist or be empty.
        task: the pipeline task (``"text-classification"``, ...); default: the pipeline's, else inferred
            from the model class. ``None`` when it cannot be told: the model then loads as components only.
            A task passed here whose pipeline needs a component (a tokenizer for text tasks, an image
            processor for image tasks, ...) is refused when that component is not given; an inferred one
            is dropped with a warning (the model is saved as components only).
        tokenizer, feature_extractor, image_processor, processor: components saved next to the model
            (they replace a pipeline's own).
        signature: ``None`` infers it from ``input_example`` by running the model once (not for a
            checkpoint directory, whose signature records the inputs only); ``False`` records none.
            The task's inference params are added to whatever signature is recorded.
        input_example: a few inputs (strings, a DataFrame, or for question answering a dict with
            ``question`` and ``context``); ``(data, params)`` also declares params.
        metadata: free-form metadata for the MLmodel file.
        pip_requirements: the packages the model needs, replacing the defaults
            (``transformers``, ``torch``, ``safetensors``, ``tokenizers``).
        extra_pip_requirements: packages added to the defaults.
        code_paths: local files or directories stored with the model and importable at load time.
        run_id: recorded in the MLmodel file (set by :func:`log_model`).
        artifact_path: recorded in the MLmodel file (set by :func:`log_model`).

    Returns:
        The :class:`~cairn.models.Model` written.

    Raises:
        InvalidArgument: an unsupported object, an unknown task, a task whose pipeline needs a component
            that was not given (the message names both), or weights that are not safetensors.
        ResourceAlreadyExists: ``path`` exists and is not empty.
    """
    from cairn.models.packaging import infer_signature_from_example, save_model_dir

    source = _resolve_source(
        transformers_model,
        task,
        {
            "tokenizer": tokenizer,
            "feature_extractor": feature_extractor,
            "image_processor": image_processor,
            PROCESSOR_KEY: processor,
        },
    )
    if signature is None and input_example is not None:
        signature = infer_signature_from_example(input_example, _predict_fn(source))
    if signature is not False:
        signature = _with_task_params(signature, source.task)
    packages = (
        list(pip_requirements)
        if pip_requirements is not None
        else ["transformers", "torch", "safetensors", "tokenizers"]
    )
    packages += list(extra_pip_requirements or ())
    flavor_conf = _flavor_conf(source)

    def write_data(directory: Path) -> None:
        _write_model_files(source, directory / MODEL_BINARY)
        for key, component in source.components.items():
            component.save_pretrained(str(directory / COMPONENTS_DIR / key))

    return save_model_dir(
        path,
        flavor_name=FLAVOR_NAME,
        flavor_conf=flavor_conf,
        loader_module=LOADER_MODULE,
        write_data=write_data,
        predict_fn=None,  # the signature was inferred above
        signature=signature if signature is not None else False,
        input_example=input_example,
        metadata=metadata,
        pip_packages=packages,
        code_paths=code_paths,
        run_id=run_id,
        artifact_path=artifact_path,
    )


class TransformersOptions(TypedDict, total=False):
    """The transformers flavor's own options of :func:`save_model` and :func:`log_model`."""

    task: str | None
    tokenizer: Any
    feature_extractor: Any
    image_processor: Any
    processor: Any


class TransformersLogOptions(TransformersOptions, CommonLogOptions, total=False):
    """Every option of :func:`log_model`."""


def log_model(transformers_model: Any, name: str | None = None, **options: Unpack[TransformersLogOptions]) -> ModelInfo:
    """Save ``transformers_model`` (see :func:`save_model`) into a run's artifacts at ``name`` (default ``"model"``).

    Args:
        transformers_model: as in :func:`save_model`; a checkpoint directory is uploaded without loading it.
        name: the model's artifact path in the run.
        **options: :func:`save_model`'s options, and ``artifact_path`` (MLflow 2's name for ``name``),
            ``registered_model_name`` (also register the model under this name), ``run_id`` (log into
            this run instead of the active one; a run is started if none is active), ``client`` (log into
            and register in this client's store, with ``run_id``).

    Returns:
        The :class:`~cairn.models.ModelInfo` (``model_uri`` is ``runs:/<run_id>/<name>``).
    """
    return log_flavor_model(
        partial(save_model, transformers_model), name, options, accepted=TransformersLogOptions.__optional_keys__
    )


# ----------------------------------------------------------------------------------------- load


def _flavor_entry(meta: Model, where: object) -> dict[str, Any]:
    conf = meta.flavors.get(FLAVOR_NAME)
    if not isinstance(conf, dict):
        raise InvalidArgument(f"the model at {where} has no {FLAVOR_NAME!r} flavor; it has {sorted(meta.flavors)}")
    return conf


def _model_class(name: Any, task: str | None, trust_remote_code: bool) -> tuple[Any, bool]:
    """The class to load the weights with, and whether it is an Auto class allowed to run the model's code."""
    import transformers

    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        return cls, False
    if not trust_remote_code:
        raise UnsafeModel(
            f"the model class {name!r} is not part of transformers {transformers.__version__}: loading it would "
            "run Python code shipped with the model. If you trust its author, pass trust_remote_code=True."
        )
    auto = getattr(transformers, _AUTO_MODELS.get(task or "", "AutoModel"))
    return auto, True


def load_components(
    model_dir: str | os.PathLike[str],
    conf: Mapping[str, Any],
    *,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The model and its components from a verified model directory: ``{"model", "tokenizer", ..., "task"}``.

    Everything is read from local files (``local_files_only=True``); weights only from safetensors.

    Raises:
        UnsafeModel: the model or a component needs code shipped with it and ``trust_remote_code`` is False.
    """
    import transformers

    from cairn.models.loading import model_subpath

    root = Path(model_dir)
    task = conf.get("task")
    weights = model_subpath(root, conf.get("model_binary") or MODEL_BINARY, "transformers model directory")
    cls, remote = _model_class(conf.get("pipeline_model_type"), task, trust_remote_code)
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
    if remote:
        kwargs["trust_remote_code"] = True
    loaded: dict[str, Any] = {"model": _read_pretrained(cls, weights, "model", kwargs)}
    names = [n for n in conf.get("components") or [] if n in COMPONENT_KEYS]
    if conf.get("processor_type"):
        names.append(PROCESSOR_KEY)
    for key in names:
        where = model_subpath(root, f"{COMPONENTS_DIR}/{key}", f"{key} directory")
        auto = getattr(transformers, _AUTO_LOADERS[key])
        options = {"local_files_only": True, "trust_remote_code": trust_remote_code}
        loaded[key] = _read_pretrained(auto, where, key, options)
    loaded["task"] = task
    return loaded


def _read_pretrained(cls: Any, where: Path, what: str, kwargs: Mapping[str, Any]) -> Any:
    """``cls.from_pretrained(where, **kwargs)``, its failures on damaged or hostile files as cairn errors.

    Raises:
        UnsafeModel: the files need code shipped with the model and ``kwargs`` do not trust remote code.
        InvalidArgument: transformers cannot read the files (the message carries its error).
    """
    try:
        return cls.from_pretrained(str(where), **kwargs)
    except CairnError:
        raise
    except Exception as exc:  # OSError, ValueError, safetensors' errors, ... on files cairn did not write
        if "trust_remote_code" in str(exc) and not kwargs.get("trust_remote_code"):
            raise UnsafeModel(
                f"the model's {what} needs code shipped with it; pass trust_remote_code=True if you trust it"
            ) from exc
        raise InvalidArgument(
            f"transformers cannot read the model's {what} from {where}: {type(exc).__name__}: {exc}"
        ) from exc


def load_model(
    model_uri: str | os.PathLike[str],
    *,
    return_type: Literal["pipeline", "components"] = "pipeline",
    device: Any = None,
    trust_remote_code: bool = False,
    dst_path: str | os.PathLike[str] | None = None,
) -> Any:
    """Load a transformers model (cairn's, or MLflow's layout) as a pipeline or as its components.

    Args:
        model_uri: a local path, ``runs:/``, ``models:/`` or artifact-store URI.
        return_type: ``"pipeline"`` (default; for question answering an :class:`ExtractiveQuestionAnswering`)
            or ``"components"``: a dict with ``model``, ``tokenizer`` (and the other saved components) and ``task``.
        device: where the pipeline runs (``"cpu"``, ``0``, ``"cuda:1"``); default: transformers' choice.
        trust_remote_code: allow running Python code shipped with the model (custom architectures or
            tokenizers). Off by default; only for models whose source you trust.
        dst_path: where to download a remote model.

    Raises:
        UnsafeModel: the model needs its own code and ``trust_remote_code`` is False.
        ModelIntegrityError: a model file does not match its recorded sha256.
        InvalidArgument: not a transformers model, an unknown ``return_type``, or a pipeline was asked
            of a model that records no task.
    """
    from cairn.models.loading import open_model_dir

    if return_type not in ("pipeline", "components"):
        raise InvalidArgument(f"return_type must be 'pipeline' or 'components', got {return_type!r}")
    local = open_model_dir(model_uri, dst=dst_path)
    conf = _flavor_entry(local.model, model_uri)
    components = load_components(local.path, conf, trust_remote_code=trust_remote_code)
    if return_type == "components":
        return components
    return _make_pipeline(components["task"], components["model"], components, device)


def _load_pyfunc(data_path: str | os.PathLike[str], model_config: dict[str, Any] | None = None) -> TransformersPyfunc:
    """MLflow's pyfunc loader entry point: ``data_path`` is the model directory.

    ``model_config`` may set ``device``. Code shipped with a model is never run from here (the
    configuration comes partly from the model file, so it cannot grant that); use :func:`load_model`.
    """
    from cairn.models.hashes import verify_model_files

    path = Path(data_path)
    model_dir = path if path.is_dir() else path.parent
    meta = Model.load(model_dir)
    verify_model_files(model_dir, meta)
    conf = _flavor_entry(meta, model_dir)
    components = load_components(model_dir, conf, trust_remote_code=False)
    device = (model_config or {}).get("device")
    pipe = _make_pipeline(components["task"], components["model"], components, device)
    return TransformersPyfunc(pipe, components["task"])
