"""A deterministic HF ``Trainer`` run for the kill-and-resume harness (tests/checkpoint/kill_resume_harness.py).

Usage: python train_transformers_resume.py ROLE OUT_DIR (ROLE: reference, crash or resume; see the harness).

It trains a tiny BERT classifier built from a config. The ``crash`` role waits until cairn's background
upload of ``checkpoint-8`` is committed, keeps training, flushes its metric points through step 12
(points the resume must supersede), prints ``KILL_ME <run id>`` and waits to be killed. The ``resume``
role downloads the run's latest checkpoint with ``cairn.transformers.checkpoint_path`` and resumes a
fresh Trainer from it, reporting the checkpoint's folder name in ``report.json``. The checkpoint falls
mid-epoch (6 steps per epoch), so data skipping and the restored RNG state (dropout) both matter.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

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


def _crash(out: Path) -> None:
    """Trains, waits for the committed checkpoint, logs a few more steps, asks to be killed."""
    from transformers import TrainerCallback

    import cairn
    import cairn.transformers

    cairn_callback = cairn.transformers.CairnCallback()

    class Marker(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == SAVE_STEPS:
                assert cairn_callback.wait_for_uploads(timeout=60)
                assert SAVE_STEPS in cairn_callback.committed_checkpoints
                print(f"COMMITTED {state.global_step}", flush=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if state.global_step >= KILL_AFTER_STEP and "loss" in (logs or {}):
                cairn.flush()  # the points after the checkpoint reach the store before the kill
                print(f"KILL_ME {cairn_callback.run_id}", flush=True)
                time.sleep(600)

    model, tokenizer, rows = build()
    make_trainer(model, tokenizer, rows, out / "crash-out", [cairn_callback, Marker()]).train()
    raise SystemExit("not killed")


def _train(out: Path, role: str) -> None:
    import cairn
    import cairn.transformers

    report: dict[str, Any] = {}
    model, tokenizer, rows = build()
    if role == "resume":
        run_to_resume = sys.stdin.readline().strip()
        path = cairn.transformers.checkpoint_path(run_to_resume, "latest", dst=out / "materialized")
        report["restored_from"] = Path(path).name
        callback = cairn.transformers.CairnCallback()
        make_trainer(model, tokenizer, rows, out / "resumed-out", [callback]).train(resume_from_checkpoint=path)
    else:
        callback = cairn.transformers.CairnCallback(log_models=False)
        make_trainer(model, tokenizer, rows, out / "reference-out", [callback]).train()
    assert callback.run_id is not None
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))
    (out / "run_id.txt").write_text(callback.run_id)
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    gc.freeze()  # keeps accelerate's gc.collect() at each train() cheap
    role, out_dir = sys.argv[1], Path(sys.argv[2])
    _crash(out_dir) if role == "crash" else _train(out_dir, role)
