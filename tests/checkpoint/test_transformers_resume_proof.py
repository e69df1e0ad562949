"""The proof: a Trainer run SIGKILLed after a committed checkpoint and resumed from the logged run ends
with the same weights and the same loss curve as an uninterrupted run, in one run of the store.

The killed run is a subprocess (this file run as a script): it trains a tiny BERT classifier built
from a config, prints ``COMMITTED 8`` once cairn's background upload of ``checkpoint-8`` is
committed, keeps training, flushes its metric points through step 12 (points the resume must
supersede) and waits to be killed. The test then downloads the checkpoint with
``cairn.transformers.checkpoint_path`` and resumes a fresh Trainer from it. The checkpoint falls
mid-epoch (6 steps per epoch), so data skipping and the restored RNG state (dropout) both matter.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers", reason="transformers is not installed (pip install 'cairn[transformers]')")

import torch

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the weather is nice today",
    "i love this movie",
    "this film was terrible",
    "what a great day",
    "bad awful boring film",
    "good nice fun movie",
]
MAX_STEPS = 24
SAVE_STEPS = 8
KILL_AFTER_STEP = 12
SEED = 0


def build(seed: int = SEED) -> tuple[Any, Any, Any]:
    """A tiny BERT sequence classifier, its word-level tokenizer and a 24-row training set."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, set_seed

    # An explicit vocabulary: a trained one can number tied tokens differently in another process.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({word for sentence in SENTENCES for word in sentence.split()})
    vocab = {token: index for index, token in enumerate(specials + words)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    set_seed(seed)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=len(tokenizer),
        num_labels=2,
        max_position_embeddings=32,
    )
    model = BertForSequenceClassification(config)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(24)]
    encoded = tokenizer(texts, padding="max_length", max_length=12, truncation=True)
    rows = [
        {
            "input_ids": torch.tensor(encoded["input_ids"][i]),
            "attention_mask": torch.tensor(encoded["attention_mask"][i]),
            "labels": torch.tensor(int("good" in texts[i] or "love" in texts[i] or "great" in texts[i])),
        }
        for i in range(len(texts))
    ]
    return model, tokenizer, rows


def make_trainer(model: Any, tokenizer: Any, rows: Any, output_dir: Path, callbacks: list[Any]) -> Any:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        logging_steps=2,
        save_steps=SAVE_STEPS,
        save_total_limit=2,
        seed=SEED,
        full_determinism=True,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=callbacks)


def _child(output_dir: str) -> None:
    """The run that gets killed: trains, reports the committed checkpoint, logs a few more steps, waits."""
    from transformers import TrainerCallback

    import cairn
    import cairn.transformers

    torch.set_num_threads(1)
    cairn_callback = cairn.transformers.CairnCallback()

    class Marker(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == SAVE_STEPS:
                assert cairn_callback.wait_for_uploads(timeout=60)
                assert SAVE_STEPS in cairn_callback.committed_checkpoints
                print(f"COMMITTED {state.global_step} {cairn_callback.run_id}", flush=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if state.global_step >= KILL_AFTER_STEP and "loss" in (logs or {}):
                cairn.flush()  # the points after the checkpoint reach the store before the kill
                print(f"LOGGED {state.global_step}", flush=True)
                time.sleep(600)  # killed here

    model, tokenizer, rows = build()
    trainer = make_trainer(model, tokenizer, rows, Path(output_dir), [cairn_callback, Marker()])
    trainer.train()


# ----------------------------------------------------------------------------------------- the test


@pytest.fixture
def _deterministic_torch() -> Iterator[None]:
    """Full determinism and one thread for the in-process runs; global state restored afterwards."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    environ = dict(os.environ)
    torch.set_num_threads(1)
    gc.freeze()  # keeps accelerate's gc.collect() at each train() cheap
    yield
    gc.unfreeze()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    os.environ.clear()
    os.environ.update(environ)


def _run_killed_child(tmp_path: Path, tracking_uri: str) -> str:
    env = {**os.environ, "CAIRN_TRACKING_URI": tracking_uri, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CAIRN_RUN_ID", None)
    process = subprocess.Popen(
        [sys.executable, __file__, "child", str(tmp_path / "killed-out")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    killed = threading.Event()

    def watchdog() -> None:
        if not killed.wait(120):
            process.kill()

    threading.Thread(target=watchdog, daemon=True).start()
    run_id = None
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("COMMITTED"):
            run_id = line.split()[2]
        if line.startswith("LOGGED"):
            process.send_signal(signal.SIGKILL)
            killed.set()
            break
    process.wait(timeout=30)
    output = "".join(lines)
    assert killed.is_set(), f"the child never reached step {KILL_AFTER_STEP}:\n{output[-3000:]}"
    assert process.returncode == -signal.SIGKILL
    assert run_id is not None, output[-3000:]
    return run_id


def _curve(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


@pytest.mark.slow
@pytest.mark.usefixtures("_deterministic_torch")
def test_sigkill_then_resume_from_the_run_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    import cairn
    import cairn.transformers

    store_uri = str(tmp_path / "store")
    cairn.set_tracking_uri(store_uri)

    # The killed run, in its own process.
    run_id = _run_killed_child(tmp_path, store_uri)
    client = cairn.Client()
    dead_points = client.get_metric_history(run_id, "loss")
    assert [m.step for m in dead_points][-1] == KILL_AFTER_STEP  # logged past the checkpoint, then killed
    assert client.get_run(run_id).info.status.value == "RUNNING"

    # Resume a fresh Trainer from the checkpoint logged in the run (latest committed: step 8).
    path = cairn.transformers.checkpoint_path(run_id, "latest", dst=tmp_path / "materialized")
    assert Path(path).name == f"checkpoint-{SAVE_STEPS}"
    model, tokenizer, rows = build()
    resumed_callback = cairn.transformers.CairnCallback()
    resumed = make_trainer(model, tokenizer, rows, tmp_path / "resumed-out", [resumed_callback])
    resumed.train(resume_from_checkpoint=path)
    assert resumed_callback.run_id == run_id

    # The uninterrupted reference, same code and callback, in another store.
    cairn.set_tracking_uri(str(tmp_path / "reference-store"))
    model, tokenizer, rows = build()
    reference_callback = cairn.transformers.CairnCallback(log_models=False)
    reference = make_trainer(model, tokenizer, rows, tmp_path / "reference-out", [reference_callback])
    reference.train()
    reference_client = cairn.Client()
    reference_run = reference_callback.run_id
    assert reference_run is not None

    # Same final weights, bit for bit.
    resumed_state = resumed.model.state_dict()
    reference_state = reference.model.state_dict()
    assert resumed_state.keys() == reference_state.keys()
    different = [k for k in reference_state if not torch.equal(resumed_state[k], reference_state[k])]
    assert different == []

    # Same curves: every logged step once, in order, with the uninterrupted values.
    for key in ("loss", "grad_norm", "learning_rate"):
        resumed_curve = _curve(client, run_id, key)
        assert resumed_curve == _curve(reference_client, reference_run, key), key
        steps = [step for step, _ in resumed_curve]
        assert steps == list(range(2, MAX_STEPS + 1, 2))
    superseded = client.get_metric_history(run_id, "loss", include_superseded=True)
    assert len(superseded) == len(dead_points) + (MAX_STEPS - KILL_AFTER_STEP) // 2 + 2  # steps 10, 12 twice

    # One run in the store, finished, holding the final checkpoints and model.
    runs = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert [r.info.run_id for r in runs.items] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status.value == "FINISHED"
    assert run.data.tags["cairn.transformers.resumed_from_step"] == str(SAVE_STEPS)
    remote = sorted(f.path for f in client.list_artifacts(run_id, "checkpoints"))
    assert remote == ["checkpoints/checkpoint-16", "checkpoints/checkpoint-24"]  # save_total_limit=2
    cairn.set_tracking_uri(store_uri)
    final = cairn.transformers.load_model(f"runs:/{run_id}/model", return_type="components")
    assert all(torch.equal(v, final["model"].state_dict()[k]) for k, v in reference_state.items())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        _child(sys.argv[2])
    else:
        raise SystemExit(f"usage: {sys.argv[0]} child OUTPUT_DIR")
