"""The transformers flavor: layout, pipelines and components, pyfunc per task, signatures, offline and safe loading.

Every model is built from a tiny config and every tokenizer from an explicit vocabulary: nothing
comes from the Hugging Face hub (``HF_HUB_OFFLINE=1`` is set in tests/conftest.py, and one test
forbids every network connection while loading).
"""

from __future__ import annotations

import gc
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'cairn[transformers]')")

import torch
import transformers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

import cairn
import cairn.pyfunc
import cairn.transformers
from cairn.errors import InvalidArgument, SchemaMismatch, UnsafeModel
from cairn.flavors import transformers as flavor

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "i love this movie",
    "this film was terrible",
    "who sat on the mat",
    "what a great day",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A fast word-level tokenizer with BERT's special tokens and a pair template, from an explicit vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = {token: i for i, token in enumerate(specials + words)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_bert_config(tokenizer: Any, **overrides: Any) -> BertConfig:
    settings = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 64,
        **overrides,
    }
    return BertConfig(**settings)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and the test machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.freeze()  # the import-time heap: transformers' gc.collect() calls then stay cheap
    yield
    gc.unfreeze()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="module")
def classifier(tokenizer: Any) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=2)).eval()


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory: pytest.TempPathFactory, classifier: Any, tokenizer: Any) -> Path:
    path = tmp_path_factory.mktemp("tc") / "model"
    pipe = transformers.pipeline("text-classification", model=classifier, tokenizer=tokenizer)
    cairn.transformers.save_model(pipe, path, input_example=["i love this movie", "this film was terrible"])
    return path


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every outgoing connection fails (and is recorded)."""
    attempts: list[Any] = []

    def refuse(self: Any, address: Any, *args: Any) -> None:
        attempts.append(address)
        raise OSError(f"network disabled in this test (connect to {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


# -- layout and loading ---------------------------------------------------------------------------------


def test_pipeline_saved_with_mlflow_layout_and_task(saved_classifier: Path) -> None:
    content = yaml.safe_load((saved_classifier / "MLmodel").read_text())
    conf = content["flavors"]["transformers"]
    assert conf["task"] == "text-classification"
    assert conf["instance_type"] == "TextClassificationPipeline"
    assert conf["pipeline_model_type"] == "BertForSequenceClassification"
    assert conf["model_binary"] == "model"
    assert conf["components"] == ["tokenizer"]
    assert conf["transformers_version"] == transformers.__version__
    assert content["flavors"]["python_function"]["loader_module"] == "cairn.flavors.transformers"
    assert (saved_classifier / "model" / "model.safetensors").is_file()
    assert (saved_classifier / "model" / "config.json").is_file()
    assert not list((saved_classifier / "model").glob("*.bin"))
    assert (saved_classifier / "components" / "tokenizer" / "tokenizer.json").is_file()
    requirements = (saved_classifier / "requirements.txt").read_text()
    for package in ("transformers==", "torch==", "safetensors==", "tokenizers=="):
        assert package in requirements
    signature = content["signature"]
    assert json.loads(signature["inputs"]) == [{"type": "string", "required": True}]
    assert [c["name"] for c in json.loads(signature["outputs"])] == ["label", "score"]
    assert {p["name"] for p in json.loads(signature["params"])} == {"top_k", "function_to_apply"}


def test_load_returns_a_pipeline_predicting_like_the_original(
    saved_classifier: Path, classifier: Any, tokenizer: Any
) -> None:
    loaded = cairn.transformers.load_model(saved_classifier)
    assert isinstance(loaded, transformers.TextClassificationPipeline)
    assert loaded.task == "text-classification"
    original = transformers.pipeline("text-classification", model=classifier, tokenizer=tokenizer)
    texts = ["i love this movie", "the cat sat"]
    assert [r["label"] for r in loaded(texts)] == [r["label"] for r in original(texts)]
    assert [r["score"] for r in loaded(texts)] == pytest.approx([r["score"] for r in original(texts)], abs=1e-6)


def test_components_return_type(saved_classifier: Path, classifier: Any) -> None:
    parts = cairn.transformers.load_model(saved_classifier, return_type="components")
    assert set(parts) == {"model", "tokenizer", "task"}
    assert parts["task"] == "text-classification"
    assert isinstance(parts["model"], BertForSequenceClassification)
    assert parts["tokenizer"]("the cat")["input_ids"][0] == parts["tokenizer"].cls_token_id
    for name, value in classifier.state_dict().items():
        assert torch.equal(value, parts["model"].state_dict()[name]), name
    with pytest.raises(InvalidArgument, match="return_type"):
        cairn.transformers.load_model(saved_classifier, return_type="model")  # type: ignore[arg-type]


def test_image_processor_and_feature_extractor_are_saved_and_loaded_beside_the_model(tmp_path: Path) -> None:
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    model = ViTForImageClassification(config).eval()
    image_processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.3] * 3, image_std=[0.2] * 3)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=8000, padding_value=0.5)
    cairn.transformers.save_model(
        model,
        tmp_path / "vit",
        image_processor=image_processor,
        feature_extractor=extractor,
        task="image-classification",
    )
    conf = yaml.safe_load((tmp_path / "vit" / "MLmodel").read_text())["flavors"]["transformers"]
    assert conf["task"] == "image-classification"
    assert conf["image_processor_type"] == type(image_processor).__name__  # transformers 5: ViTImageProcessorPil
    assert conf["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert {"image_processor", "feature_extractor"} <= set(conf["components"])

    parts = cairn.transformers.load_model(tmp_path / "vit", return_type="components")
    loaded_processor, loaded_extractor = parts["image_processor"], parts["feature_extractor"]
    assert type(loaded_processor) is type(image_processor) and list(loaded_processor.image_mean) == [0.3] * 3
    assert isinstance(loaded_extractor, Wav2Vec2FeatureExtractor)
    assert (loaded_extractor.sampling_rate, loaded_extractor.padding_value) == (8000, 0.5)

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    with torch.inference_mode():
        logits = model(**image_processor(image, return_tensors="pt")).logits[0]
    predicted = cairn.transformers.load_model(tmp_path / "vit")(image)  # a pipeline using the saved processor
    assert predicted[0]["label"] == config.id2label[int(logits.argmax())]
    assert predicted[0]["score"] == pytest.approx(float(logits.softmax(-1).max()), rel=1e-5)


def test_model_with_keyword_tokenizer_or_dict_infers_the_task(tmp_path: Path, tokenizer: Any) -> None:
    model = BertForMaskedLM(tiny_bert_config(tokenizer))
    cairn.transformers.save_model(model, tmp_path / "kw", tokenizer=tokenizer)
    cairn.transformers.save_model({"model": model, "tokenizer": tokenizer}, tmp_path / "dict")
    for name in ("kw", "dict"):
        conf = yaml.safe_load((tmp_path / name / "MLmodel").read_text())["flavors"]["transformers"]
        assert conf["task"] == "fill-mask" and conf["instance_type"] == "FillMaskPipeline"
    with pytest.raises(InvalidArgument, match="'model' key"):
        cairn.transformers.save_model({"tokenizer": tokenizer}, tmp_path / "bad")
    with pytest.raises(InvalidArgument, match="unknown task"):
        cairn.transformers.save_model(model, tmp_path / "bad2", tokenizer=tokenizer, task="summarize-everything")
    with pytest.raises(InvalidArgument, match="Pipeline, a PreTrainedModel"):
        cairn.transformers.save_model(torch.nn.Linear(2, 2), tmp_path / "bad3")


def test_a_task_without_the_component_its_pipeline_needs_is_refused_at_save(tmp_path: Path) -> None:
    """Before, such a model saved fine and failed at pyfunc load ("Impossible to guess which tokenizer")."""
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100
    )
    model = BertForSequenceClassification(config)
    with pytest.raises(InvalidArgument, match=r"task 'text-classification' needs a tokenizer.*Pass tokenizer="):
        cairn.transformers.save_model(model, tmp_path / "explicit", task="text-classification")
    with pytest.raises(InvalidArgument, match="needs an image processor"):
        cairn.transformers.save_model(model, tmp_path / "image", task="image-classification")
    qa = BertForQuestionAnswering(config)
    with pytest.raises(InvalidArgument, match="needs a fast tokenizer"):
        cairn.transformers.save_model(qa, tmp_path / "qa", task="question-answering")
    assert not any(tmp_path.iterdir())  # nothing written


def test_an_inferred_task_without_its_component_saves_as_components_with_a_warning(tmp_path: Path) -> None:
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab_size=100
    )
    model = BertForSequenceClassification(config)
    with pytest.warns(UserWarning, match=r"inferred task 'text-classification' needs tokenizer.*components only"):
        cairn.transformers.save_model(model, tmp_path / "inferred")
    conf = yaml.safe_load((tmp_path / "inferred" / "MLmodel").read_text())["flavors"]["transformers"]
    assert conf.get("task") is None
    components = cairn.transformers.load_model(tmp_path / "inferred", return_type="components")
    assert isinstance(components["model"], BertForSequenceClassification) and components["task"] is None
    with pytest.raises(InvalidArgument, match="task"):
        cairn.transformers.load_model(tmp_path / "inferred")


def test_a_task_whose_pipeline_needs_no_tokenizer_saves_and_loads_without_one(tmp_path: Path) -> None:
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8
    )
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    model = ViTForImageClassification(config).eval()
    cairn.transformers.save_model(model, tmp_path / "vit", task="image-classification", image_processor=processor)
    conf = yaml.safe_load((tmp_path / "vit" / "MLmodel").read_text())["flavors"]["transformers"]
    assert conf["task"] == "image-classification" and conf["components"] == ["image_processor"]
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    assert cairn.transformers.load_model(tmp_path / "vit")(image)[0]["label"].startswith("LABEL_")


def test_loading_never_touches_the_network(saved_classifier: Path, no_network: list[Any]) -> None:
    loaded = cairn.pyfunc.load_model(saved_classifier)
    frame = loaded.predict(pd.DataFrame({"text": ["i love this movie"]}))
    assert list(frame.columns) == ["label", "score"]
    assert cairn.transformers.load_model(saved_classifier)("the cat")[0]["label"].startswith("LABEL_")
    assert no_network == []


def test_code_shipped_with_a_model_needs_trust_remote_code(tmp_path: Path, tokenizer: Any) -> None:
    class CustomBert(BertForSequenceClassification):  # not a transformers class: "remote code"
        pass

    model = CustomBert(tiny_bert_config(tokenizer, num_labels=2))
    cairn.transformers.save_model(model, tmp_path / "custom", tokenizer=tokenizer, task="text-classification")
    with pytest.raises(UnsafeModel, match="trust_remote_code=True"):
        cairn.transformers.load_model(tmp_path / "custom")
    with pytest.raises(UnsafeModel, match="trust_remote_code"):
        cairn.pyfunc.load_model(tmp_path / "custom")  # the pyfunc loader never trusts it
    parts = cairn.transformers.load_model(tmp_path / "custom", return_type="components", trust_remote_code=True)
    assert type(parts["model"]).__name__ == "BertForSequenceClassification"  # through the Auto class


# -- pyfunc per task ------------------------------------------------------------------------------------


def test_pyfunc_text_classification_takes_strings_lists_and_frames(saved_classifier: Path) -> None:
    model = cairn.pyfunc.load_model(saved_classifier)
    one = model.predict("i love this movie")
    many = model.predict(["i love this movie", "the cat sat"])
    frame = model.predict(pd.DataFrame({"review": ["i love this movie", "the cat sat"]}))
    assert len(one) == 1 and len(many) == 2 and len(frame) == 2
    pd.testing.assert_frame_equal(many, frame)
    assert many.loc[0, "label"] == one.loc[0, "label"]
    ranked = model.predict(["the cat sat"], params={"top_k": 2})
    assert sorted(ranked.loc[0, "label"]) == ["LABEL_0", "LABEL_1"]  # top-k: columns of lists
    assert sum(ranked.loc[0, "score"]) == pytest.approx(1.0, abs=1e-5)


def test_signature_is_enforced(saved_classifier: Path) -> None:
    model = cairn.pyfunc.load_model(saved_classifier)
    with pytest.raises(SchemaMismatch, match="expected string"):
        model.predict([1, 2, 3])
    with pytest.raises(SchemaMismatch, match="top_k"):
        model.predict(["the cat"], params={"top_k": "two"})


def test_pyfunc_token_classification(tmp_path: Path, tokenizer: Any) -> None:
    model = BertForTokenClassification(tiny_bert_config(tokenizer, num_labels=3))
    cairn.transformers.save_model(model, tmp_path / "ner", tokenizer=tokenizer, input_example=["the cat sat"])
    loaded = cairn.pyfunc.load_model(tmp_path / "ner")
    out = loaded.predict(["the cat sat", "a dog"])
    assert list(out.columns) == ["entities"] and len(out) == 2
    assert [e["word"] for e in out.loc[0, "entities"]] == ["the", "cat", "sat"]
    assert all(isinstance(e["score"], float) for e in out.loc[1, "entities"])
    grouped = loaded.predict(["the cat sat"], params={"aggregation_strategy": "simple"})
    assert all("entity_group" in e for e in grouped.loc[0, "entities"])


def test_pyfunc_fill_mask_top_k(tmp_path: Path, tokenizer: Any) -> None:
    model = BertForMaskedLM(tiny_bert_config(tokenizer))
    cairn.transformers.save_model(model, tmp_path / "mlm", tokenizer=tokenizer, input_example=["the [MASK] sat"])
    loaded = cairn.pyfunc.load_model(tmp_path / "mlm")
    best = loaded.predict(["the [MASK] sat", "a [MASK] ran"])
    assert {"token_str", "score", "sequence"} <= set(best.columns) and len(best) == 2
    assert best.loc[0, "sequence"].startswith("the ")
    three = loaded.predict("the [MASK] sat", params={"top_k": 3})
    assert len(three.loc[0, "token_str"]) == 3


def test_pyfunc_feature_extraction_pools_to_a_matrix(tmp_path: Path, tokenizer: Any) -> None:
    model = BertModel(tiny_bert_config(tokenizer))
    cairn.transformers.save_model(model, tmp_path / "fe", tokenizer=tokenizer, input_example=["the cat sat"])
    meta = yaml.safe_load((tmp_path / "fe" / "MLmodel").read_text())
    assert json.loads(meta["signature"]["outputs"])[0]["tensor-spec"] == {"dtype": "float32", "shape": [-1, 32]}
    loaded = cairn.pyfunc.load_model(tmp_path / "fe")
    mean = loaded.predict(["the cat sat", "a dog"])
    assert isinstance(mean, np.ndarray) and mean.shape == (2, 32)
    tokens = loaded.predict(["the cat sat", "a dog"], params={"pooling": "none"})
    assert [t.shape for t in tokens] == [(5, 32), (4, 32)]  # [CLS] words [SEP]
    np.testing.assert_allclose(mean[0], tokens[0].mean(axis=0), rtol=1e-5, atol=1e-6)
    cls = loaded.predict(["the cat sat"], params={"pooling": "cls"})
    np.testing.assert_allclose(cls[0], tokens[0][0], rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidArgument, match="pooling"):
        loaded.predict(["a dog"], params={"pooling": "max"})


def test_pyfunc_text_generation_forwards_params(
    tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    example = (["the cat"], {"max_new_tokens": 3})
    cairn.transformers.save_model(model, tmp_path / "gen", tokenizer=tokenizer, input_example=example)
    meta = yaml.safe_load((tmp_path / "gen" / "MLmodel").read_text())
    params = {p["name"]: p for p in json.loads(meta["signature"]["params"])}
    assert params["max_new_tokens"]["default"] == 3  # from the example
    assert {"do_sample", "temperature", "top_p", "return_full_text"} <= set(params)
    loaded = cairn.pyfunc.load_model(tmp_path / "gen")
    generate_calls: list[dict[str, Any]] = []
    inner = loaded.get_raw_model().model
    original = inner.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        generate_calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(inner, "generate", spy)
    out = loaded.predict(["the cat", "a dog"], params={"max_new_tokens": 5, "do_sample": False})
    assert list(out.columns) == ["generated_text"] and len(out) == 2
    assert out.loc[0, "generated_text"].startswith("the cat")
    assert generate_calls and all(call.get("max_new_tokens") == 5 for call in generate_calls)
    loaded.predict(["the cat"])
    assert generate_calls[-1].get("max_new_tokens") == 3  # the signature's default
    with pytest.raises(SchemaMismatch, match="max_new_tokens"):
        loaded.predict(["the cat"], params={"max_new_tokens": "many"})


def test_pyfunc_question_answering_without_a_transformers_pipeline(tmp_path: Path, tokenizer: Any) -> None:
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config(tokenizer))
    example = {"question": "who sat", "context": "the cat sat on the mat"}
    cairn.transformers.save_model(model, tmp_path / "qa", tokenizer=tokenizer, input_example=example)
    conf = yaml.safe_load((tmp_path / "qa" / "MLmodel").read_text())["flavors"]["transformers"]
    assert conf["task"] == "question-answering"
    loaded = cairn.pyfunc.load_model(tmp_path / "qa")
    frame = pd.DataFrame(
        {
            "question": ["who sat", "where did the dog run"],
            "context": ["the cat sat on the mat", "a dog ran in the park"],
        }
    )
    answers = loaded.predict(frame)
    assert list(answers.columns) == ["answer", "score", "start", "end"]
    for row, context in zip(answers.itertuples(), frame["context"], strict=True):
        assert row.answer == context[row.start : row.end] and row.answer.strip()
        assert 0.0 < row.score <= 1.0
    short = loaded.predict(example, params={"max_answer_len": 1})
    assert " " not in short.loc[0, "answer"]  # one token at most
    with pytest.raises(SchemaMismatch, match="context"):
        loaded.predict({"question": "who sat"})
    qa = cairn.transformers.load_model(tmp_path / "qa")
    assert isinstance(qa, cairn.transformers.ExtractiveQuestionAnswering)
    assert qa(question="who sat", context="the cat sat on the mat")["answer"] == answers.loc[0, "answer"]


# -- checkpoints, runs and registry ---------------------------------------------------------------------


def test_checkpoint_directory_logged_without_loading_the_weights(
    tmp_path: Path, classifier: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "checkpoint-40"
    classifier.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    (checkpoint / "optimizer.pt").write_bytes(b"not for a model")
    (checkpoint / "training_args.bin").write_bytes(b"a pickle")

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the checkpoint's weights were loaded")

    with monkeypatch.context() as patch, cairn.start_run() as run:
        patch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(forbidden))
        info = cairn.transformers.log_model(str(checkpoint), "ckpt", input_example=["the cat sat"])
    local = Path(cairn.download_artifacts("ckpt", run_id=run.info.run_id, dst_path=tmp_path / "dl"))
    assert sorted(p.name for p in (local / "model").iterdir()) == ["config.json", "model.safetensors"]
    meta = yaml.safe_load((local / "MLmodel").read_text())
    assert meta["flavors"]["transformers"]["task"] == "text-classification"
    assert "outputs" not in meta["signature"] or meta["signature"]["outputs"] is None  # the model was not run
    loaded = cairn.transformers.load_model(info.model_uri)
    reference = transformers.pipeline("text-classification", model=classifier, tokenizer=tokenizer)
    assert loaded("the cat sat")[0]["score"] == pytest.approx(reference("the cat sat")[0]["score"], abs=1e-6)

    bin_only = tmp_path / "old"
    bin_only.mkdir()
    (bin_only / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (bin_only / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(InvalidArgument, match="safetensors"):
        cairn.transformers.save_model(str(bin_only), tmp_path / "never")


def test_log_model_registers_and_loads_by_models_uri(classifier: Any, tokenizer: Any) -> None:
    with cairn.start_run():
        info = cairn.transformers.log_model(
            classifier, "model", tokenizer=tokenizer, registered_model_name="sentiment", input_example=["i love"]
        )
    assert info.registered_model_version == 1
    assert info.flavors["transformers"]["task"] == "text-classification"
    loaded = cairn.pyfunc.load_model("models:/sentiment/1")
    assert loaded.predict(["i love this movie"]).shape == (1, 2)
    native = cairn.models.load_model("models:/sentiment/1")  # the generic loader finds the flavor
    assert isinstance(native, transformers.Pipeline)


def test_mlflow_pyfunc_loads_a_cairn_transformers_model(saved_classifier: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    model = mlflow.pyfunc.load_model(str(saved_classifier))
    out = model.predict(["i love this movie", "the cat sat"])
    assert list(out.columns) == ["label", "score"] and len(out) == 2
    assert flavor.FLAVOR_NAME in yaml.safe_load((saved_classifier / "MLmodel").read_text())["flavors"]


def test_cairn_loads_a_transformers_model_mlflow_saved(tmp_path: Path, classifier: Any, tokenizer: Any) -> None:
    mlflow_transformers = pytest.importorskip("mlflow.transformers")
    pipe = transformers.pipeline("text-classification", model=classifier, tokenizer=tokenizer)
    mlflow_transformers.save_model(pipe, str(tmp_path / "mlflow-model"), pip_requirements=["transformers"])
    loaded = cairn.transformers.load_model(tmp_path / "mlflow-model")  # same layout: model/ + components/
    assert isinstance(loaded, transformers.TextClassificationPipeline)
    assert loaded("i love this movie")[0]["score"] == pytest.approx(pipe("i love this movie")[0]["score"], abs=1e-6)
