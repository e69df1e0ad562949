"""Trainer integration: CairnCallback, report_to="cairn", autolog(), background checkpoint uploads, resume.

Real Trainer runs on a tiny BERT classifier (CPU, one thread, a few steps) into a real SQLite store.
The SIGKILL-and-resume proof lives in tests/checkpoint/test_kill_and_resume.py (the transformers case).
"""

from __future__ import annotations

import gc
import json
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'cairn[transformers]')")

import torch
import transformers
from transformers import BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

import cairn
import cairn.pyfunc
import cairn.transformers
from cairn.autolog import AutologWarning
from cairn.autolog import transformers as integration
from cairn.checkpoint.resume import ResumeWarning
from cairn.errors import ArtifactNotFound, CheckpointCorrupt
from tests.flavors.test_transformers import SENTENCES, make_tokenizer, tiny_bert_config


@pytest.fixture(scope="module", autouse=True)
def _fast_tiny_training() -> Iterator[None]:
    """One torch thread (tiny models, shared machine) and the import-time heap frozen, so the
    ``gc.collect()`` accelerate runs at every ``train()`` does not walk it each time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.freeze()
    yield
    gc.unfreeze()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return make_tokenizer()


@pytest.fixture(scope="module")
def rows(tokenizer: Any) -> list[dict[str, torch.Tensor]]:
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(16)]
    encoded = tokenizer(texts, padding="max_length", max_length=10, truncation=True)
    return [
        {
            "input_ids": torch.tensor(encoded["input_ids"][i]),
            "attention_mask": torch.tensor(encoded["attention_mask"][i]),
            "labels": torch.tensor(i % 2),
        }
        for i in range(len(texts))
    ]


def make_trainer(
    tokenizer: Any,
    rows: Any,
    output_dir: Path,
    *,
    callbacks: list[Any] | None = None,
    trainer_class: type = Trainer,
    **overrides: Any,
) -> Any:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=2))
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "logging_steps": 1,
        "save_steps": 2,
        "seed": 0,
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        **overrides,
    }
    return trainer_class(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=rows,
        eval_dataset=rows[:4],
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def cairn_callbacks(trainer: Any) -> list[Any]:
    return [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, cairn.transformers.CairnCallback)]


def steps(run_id: str, key: str) -> list[int]:
    return [m.step for m in cairn.Client().get_metric_history(run_id, key)]


# -- what one training run logs -------------------------------------------------------------------------


def test_callback_logs_params_metrics_checkpoints_and_the_model(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    callback = cairn.transformers.CairnCallback()
    trainer = make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback], eval_strategy="steps", eval_steps=2)
    trainer.train()
    run_id = callback.run_id
    assert run_id is not None
    run = cairn.get_run(run_id)
    assert run.info.status.value == "FINISHED"  # the callback started the run, so it ended it
    params = run.data.params
    assert params["learning_rate"] == "5e-05" and params["max_steps"] == "4"  # TrainingArguments
    assert params["hidden_size"] == "32" and params["id2label.0"] == "LABEL_0"  # model config, flattened
    assert steps(run_id, "loss") == [1, 2, 3, 4]
    assert steps(run_id, "eval_loss") == [2, 4]
    assert "train_runtime" in run.data.metrics and "learning_rate" in run.data.metrics
    # Checkpoints: uploaded with a manifest; cairn_run.json in the local checkpoint.
    assert callback.committed_checkpoints == [2, 4]
    client = cairn.Client()
    names = [f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run_id, "checkpoints/checkpoint-4")]
    for expected in ("manifest.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        assert expected in names
    assert {"trainer_state.json", "cairn_run.json", "tokenizer.json"} <= set(names)
    run_file = json.loads((tmp_path / "out" / "checkpoint-4" / "cairn_run.json").read_text())
    assert run_file["run_id"] == run_id and run_file["global_step"] == 4
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["CairnCallback"]["attributes"]["_checkpoint_run_id"] == run_id
    assert not (tmp_path / "out" / integration.STAGING_DIR).exists()  # staging cleaned up
    # The final model: transformers flavor with tokenizer, decoded training inputs as example, signature.
    model = cairn.pyfunc.load_model(f"runs:/{run_id}/model")
    conf = model.metadata.flavors["transformers"]
    assert conf["task"] == "text-classification" and conf["components"] == ["tokenizer"]
    example = json.loads((model.model_dir / "input_example.json").read_text())
    assert SENTENCES[0] in json.dumps(example)
    assert model.metadata.signature.outputs is not None
    assert model.predict(["i love this movie"]).shape == (1, 2)


def test_save_total_limit_prunes_the_run_too(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    callback = cairn.transformers.CairnCallback(log_models="checkpoint")
    trainer = make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback], max_steps=6, save_total_limit=2)
    trainer.train()
    client = cairn.Client()
    run_id = callback.run_id
    assert run_id is not None
    local = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    remote = sorted(f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run_id, "checkpoints"))
    assert local == remote == ["checkpoint-4", "checkpoint-6"]
    models = sorted(f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run_id, "checkpoint_models"))
    assert models == ["checkpoint-4", "checkpoint-6"]  # log_models="checkpoint": each checkpoint as a model
    loaded = cairn.transformers.load_model(f"runs:/{run_id}/checkpoint_models/checkpoint-6")
    assert loaded.task == "text-classification"


def test_upload_runs_in_the_background(
    tmp_path: Path, tokenizer: Any, rows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cairn.artifacts.local import LocalArtifactStore

    original = LocalArtifactStore.put_dir
    step_three_ended = threading.Event()
    first_upload: dict[str, bool] = {}

    def held_put_dir(self: Any, *args: Any, **kwargs: Any) -> None:
        if not first_upload:  # checkpoint-2's upload cannot finish before step 3 has ended
            first_upload["released_by_step_3"] = step_three_ended.wait(timeout=30)
        original(self, *args, **kwargs)

    monkeypatch.setattr(LocalArtifactStore, "put_dir", held_put_dir)

    class StepWatcher(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                step_three_ended.set()

    callback = cairn.transformers.CairnCallback(log_models=False)
    trainer = make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback, StepWatcher()])
    trainer.train()
    assert first_upload == {"released_by_step_3": True}  # training went on while checkpoint-2 was uploading
    assert callback.committed_checkpoints == [2, 4]  # both were committed before train() returned


def test_upload_failure_warns_and_training_completes(
    tmp_path: Path, tokenizer: Any, rows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cairn.artifacts.local import LocalArtifactStore

    def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(LocalArtifactStore, "put_dir", broken)
    callback = cairn.transformers.CairnCallback(log_models=False)
    trainer = make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback])
    with pytest.warns(AutologWarning, match="disk full"):
        output = trainer.train()
    assert output.global_step == 4
    assert callback.committed_checkpoints == []
    assert callback.run_id is not None
    with pytest.raises(ArtifactNotFound, match="no complete checkpoint"):
        cairn.transformers.checkpoint_path(callback.run_id)


def test_checkpoints_upload_when_hard_links_are_refused(
    tmp_path: Path, tokenizer: Any, rows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError("links not supported here")

    monkeypatch.setattr(integration.os, "link", no_links)
    callback = cairn.transformers.CairnCallback(log_models=False)
    make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback]).train()
    assert callback.committed_checkpoints == [2, 4]  # copied by the upload thread instead
    assert callback.run_id is not None
    local = Path(cairn.transformers.checkpoint_path(callback.run_id, 2))
    assert (local / "model.safetensors").read_bytes() == (
        tmp_path / "out" / "checkpoint-2" / "model.safetensors"
    ).read_bytes()
    assert not (tmp_path / "out" / "checkpoint-2" / "manifest.json").exists()  # the user's checkpoint is untouched


def test_params_survive_odd_values_and_more_than_a_hundred_keys() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

        def __repr__(self) -> str:
            raise RuntimeError("no")

    config = transformers.PretrainedConfig(**{f"extra_{i}": i for i in range(150)}, nested={"a": {"b": 1}})
    args = SimpleNamespace(
        to_dict=lambda: {"learning_rate": 0.1, "weird": Unprintable(), "long": "x" * 10_000, "bad key (1)": 2}
    )
    params = integration.training_params(args, SimpleNamespace(config=config))
    assert params["extra_149"] == "149" and params["nested.a.b"] == "1"
    assert params["weird"] == "<unprintable Unprintable>"
    assert len(params["long"]) <= 6000 and params["long"].endswith("[truncated]")
    assert params["bad key _1_"] == "2"
    # Through the callback, without a Trainer: more than 100 params land in one run.
    callback = cairn.transformers.CairnCallback(log_checkpoints=False)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, stateful_callbacks={})
    callback.on_train_begin(args, state, None, model=SimpleNamespace(config=config))
    assert callback.run_id is not None
    assert len(cairn.get_run(callback.run_id).data.params) > 150


def test_only_the_main_process_logs() -> None:
    callback = cairn.transformers.CairnCallback()
    state = SimpleNamespace(is_world_process_zero=False, global_step=3, stateful_callbacks={})
    args = SimpleNamespace(to_dict=dict, output_dir="nowhere")
    callback.on_train_begin(args, state, None)
    callback.on_log(args, state, None, logs={"loss": 1.0})
    callback.on_save(args, state, None)
    callback.on_train_end(args, state, None)
    assert callback.run_id is None
    assert cairn.search_runs(output_format="list") == []


# -- which run ------------------------------------------------------------------------------------------


def test_active_run_is_used_and_left_open(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    with cairn.start_run() as run:
        callback = cairn.transformers.CairnCallback(log_models=False, log_checkpoints=False)
        make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback], save_strategy="no").train()
        assert callback.run_id == run.info.run_id
        assert cairn.get_run(run.info.run_id).info.status.value == "RUNNING"
    assert steps(run.info.run_id, "loss") == [1, 2, 3, 4]


def test_explicit_run_and_cairn_run_id(
    tmp_path: Path, tokenizer: Any, rows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = cairn.Client()
    target = client.create_run("0").info.run_id
    callback = cairn.transformers.CairnCallback(run=target, log_models=False, log_checkpoints=False)
    make_trainer(tokenizer, rows, tmp_path / "a", callbacks=[callback], save_strategy="no").train()
    assert callback.run_id == target and steps(target, "loss") == [1, 2, 3, 4]

    reattach = client.create_run("0").info.run_id
    client.set_terminated(reattach)
    monkeypatch.setenv("CAIRN_RUN_ID", reattach)
    callback = cairn.transformers.CairnCallback(log_models=False, log_checkpoints=False)
    make_trainer(tokenizer, rows, tmp_path / "b", callbacks=[callback], save_strategy="no").train()
    assert callback.run_id == reattach
    assert cairn.get_run(reattach).info.status.value == "FINISHED"
    assert len(cairn.search_runs(output_format="list")) == 2  # no third run


def test_evaluate_after_training_logs_into_the_same_run(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    callback = cairn.transformers.CairnCallback(log_models=False, log_checkpoints=False)
    trainer = make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback], save_strategy="no")
    trainer.train()
    trainer.evaluate()
    cairn.flush()
    assert steps(str(callback.run_id), "eval_loss") == [4]
    assert len(cairn.search_runs(output_format="list")) == 1


# -- resume ---------------------------------------------------------------------------------------------


def test_resume_from_the_output_dir_continues_the_same_run(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    first = cairn.transformers.CairnCallback(log_models=False)
    make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[first]).train()
    run_id = first.run_id
    assert run_id is not None
    second = cairn.transformers.CairnCallback(log_models=False)
    make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[second], max_steps=6).train(resume_from_checkpoint=True)
    assert second.run_id == run_id
    assert steps(run_id, "loss") == [1, 2, 3, 4, 5, 6]
    assert cairn.get_run(run_id).data.tags[integration.RESUMED_FROM_TAG] == "4"
    assert len(cairn.search_runs(output_format="list")) == 1
    path = cairn.transformers.checkpoint_path(run_id)
    assert Path(path).name == "checkpoint-6"
    assert json.loads((Path(path) / "trainer_state.json").read_text())["global_step"] == 6
    # The same checkpoint resumed against another tracking store: a warning and a new run there.
    cairn.set_tracking_uri(str(tmp_path / "other-store"))
    third = cairn.transformers.CairnCallback(log_models=False, log_checkpoints=False)
    with pytest.warns(AutologWarning, match="this tracking store does not have"):
        make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[third], max_steps=8).train(path)
    assert third.run_id not in (None, run_id) and steps(str(third.run_id), "loss") == [7, 8]


def test_resume_with_cairn_run_id_set(
    tmp_path: Path, tokenizer: Any, rows: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = cairn.transformers.CairnCallback(log_models=False)
    make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[first]).train()
    run_id = str(first.run_id)
    monkeypatch.setenv("CAIRN_RUN_ID", run_id)  # a restarted script under `cairn run`: the same run
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutologWarning)
        second = cairn.transformers.CairnCallback(log_models=False)
        make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[second], max_steps=6).train(True)
    assert second.run_id == run_id and steps(run_id, "loss") == [1, 2, 3, 4, 5, 6]

    other = cairn.Client().create_run("0").info.run_id
    monkeypatch.setenv("CAIRN_RUN_ID", other)  # names another run than the checkpoint: said, and obeyed
    third = cairn.transformers.CairnCallback(log_models=False, log_checkpoints=False)
    with pytest.warns(AutologWarning, match=f"CAIRN_RUN_ID names {other}"):
        make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[third], max_steps=8).train(True)
    assert third.run_id == other and steps(other, "loss") == [7, 8]
    assert steps(run_id, "loss") == [1, 2, 3, 4, 5, 6]  # the checkpoint's run is left as it was
    assert len(cairn.search_runs(output_format="list")) == 2


def test_resume_from_a_checkpoint_made_without_cairn(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    make_trainer(tokenizer, rows, tmp_path / "out", max_steps=2).train()  # no callback: no cairn state entry
    callback = cairn.transformers.CairnCallback(log_models=False)
    trainer = make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback], max_steps=4)
    trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))  # saving must not KeyError
    assert callback.run_id is not None
    assert steps(callback.run_id, "loss") == [3, 4]
    assert callback.committed_checkpoints == [4]


def test_cairn_run_json_reattaches_only_to_the_checkpoint_it_was_written_for(
    tmp_path: Path, tokenizer: Any, rows: Any
) -> None:
    import hashlib

    first = cairn.transformers.CairnCallback(log_models=False, log_checkpoints=False)
    make_trainer(tokenizer, rows, tmp_path / "a", callbacks=[first], max_steps=2).train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    # A trainer state without cairn's entry: only cairn_run.json (updated to match it) names the run.
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["stateful_callbacks"]["CairnCallback"]
    state_file.write_text(json.dumps(state))
    run_file = json.loads((checkpoint / integration.RUN_FILE).read_text())
    stale_copy = dict(run_file)
    run_file["trainer_state_sha256"] = hashlib.sha256(state_file.read_bytes()).hexdigest()
    (checkpoint / integration.RUN_FILE).write_text(json.dumps(run_file))
    second = cairn.transformers.CairnCallback(log_models=False, log_checkpoints=False)
    make_trainer(tokenizer, rows, tmp_path / "a", callbacks=[second], max_steps=4).train(
        resume_from_checkpoint=str(checkpoint)
    )
    assert second.run_id == first.run_id and steps(str(first.run_id), "loss") == [1, 2, 3, 4]

    # A stale cairn_run.json in a reused output directory (another training's state) is ignored.
    make_trainer(tokenizer, rows, tmp_path / "b", max_steps=2).train()
    (tmp_path / "b" / "checkpoint-2" / integration.RUN_FILE).write_text(json.dumps(stale_copy))
    third = cairn.transformers.CairnCallback(log_models=False, log_checkpoints=False)
    make_trainer(tokenizer, rows, tmp_path / "b", callbacks=[third], max_steps=4).train(resume_from_checkpoint=True)
    assert third.run_id is not None and third.run_id != first.run_id


def test_checkpoint_path_ignores_partial_and_refuses_corrupt_uploads(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    callback = cairn.transformers.CairnCallback(log_models=False)
    make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback]).train()
    run_id = callback.run_id
    assert run_id is not None
    store = cairn.Client().artifact_store(run_id)
    store.put_dir(tmp_path / "out" / "checkpoint-4", "checkpoints/checkpoint-9")  # an upload cut before its manifest
    assert Path(cairn.transformers.checkpoint_path(run_id, "latest")).name == "checkpoint-4"
    with pytest.raises(ArtifactNotFound):
        cairn.transformers.checkpoint_path(run_id, 9)
    store.put_bytes(b"tampered", "checkpoints/checkpoint-4/trainer_state.json")
    with pytest.raises(CheckpointCorrupt, match=r"trainer_state\.json"):
        cairn.transformers.checkpoint_path(run_id, 4)
    with pytest.warns(ResumeWarning, match=r"checkpoint-4: .*trainer_state\.json.*resuming from checkpoint-2"):
        assert Path(cairn.transformers.checkpoint_path(run_id)).name == "checkpoint-2"
    with pytest.raises(cairn.errors.InvalidArgument):
        cairn.transformers.checkpoint_path(run_id, "newest")


# -- report_to and autolog ------------------------------------------------------------------------------


def test_report_to_cairn(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert INTEGRATION_TO_CALLBACK["cairn"] is cairn.transformers.CairnCallback
    trainer = make_trainer(tokenizer, rows, tmp_path / "out", report_to="cairn", max_steps=2, save_steps=10)
    assert len(cairn_callbacks(trainer)) == 1
    trainer.train()
    run_id = cairn_callbacks(trainer)[0].run_id
    assert run_id is not None and steps(run_id, "loss") == [1, 2]


def test_a_second_cairn_callback_stays_silent(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    extra = cairn.transformers.CairnCallback(log_models=False)
    trainer = make_trainer(
        tokenizer, rows, tmp_path / "out", callbacks=[extra], report_to="cairn", max_steps=2, save_strategy="no"
    )
    assert len(cairn_callbacks(trainer)) == 2
    with pytest.warns(AutologWarning, match="two CairnCallbacks"):
        trainer.train()
    runs = cairn.search_runs(output_format="list")
    assert len(runs) == 1 and steps(runs[0].info.run_id, "loss") == [1, 2]  # each step once


def test_autolog_attaches_to_every_trainer_and_subclass(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    original_init = Trainer.__init__

    class SFTLikeTrainer(Trainer):  # a TRL-style subclass
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.extra = True

    cairn.transformers.autolog(log_models=False, log_checkpoints=False)
    try:
        plain = make_trainer(tokenizer, rows, tmp_path / "a", max_steps=2)
        sub = make_trainer(tokenizer, rows, tmp_path / "b", max_steps=2, trainer_class=SFTLikeTrainer)
        both = make_trainer(tokenizer, rows, tmp_path / "c", report_to="cairn")
        assert len(cairn_callbacks(plain)) == len(cairn_callbacks(sub)) == len(cairn_callbacks(both)) == 1
        assert sub.extra is True
        assert cairn_callbacks(plain)[0].log_models is None
        sub.train()
        run_id = cairn_callbacks(sub)[0].run_id
        assert run_id is not None and steps(run_id, "loss") == [1, 2]
    finally:
        cairn.transformers.autolog(disable=True)
    assert Trainer.__init__ is original_init
    assert cairn_callbacks(make_trainer(tokenizer, rows, tmp_path / "d")) == []
    with pytest.raises(cairn.errors.InvalidArgument, match="log_models"):
        cairn.transformers.autolog(log_models="always")


def test_registered_model_name(tmp_path: Path, tokenizer: Any, rows: Any) -> None:
    callback = cairn.transformers.CairnCallback(log_checkpoints=False, registered_model_name="tiny-bert")
    make_trainer(tokenizer, rows, tmp_path / "out", callbacks=[callback], max_steps=2, save_strategy="no").train()
    version = cairn.Client().get_model_version("tiny-bert", "1")
    assert version.run_id == callback.run_id
    with warnings.catch_warnings():
        warnings.simplefilter("error", AutologWarning)
        assert cairn.pyfunc.load_model("models:/tiny-bert/1").predict("the cat sat").shape == (1, 2)
