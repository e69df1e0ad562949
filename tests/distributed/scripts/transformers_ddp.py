"""An HF ``Trainer`` DDP job under ``torchrun`` (CPU, gloo) with ``cairn.transformers.CairnCallback``: a tiny
BERT classifier built from a ``BertConfig``, a word-level tokenizer from the ``tokenizers`` library, no Hub.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 transformers_ddp.py ROLE OUT_DIR``
with ``CAIRN_TRACKING_URI`` and ``HF_HUB_OFFLINE=1`` set (and ``CAIRN_RUN_ID`` for ``resume``). ROLE:

* ``reference``: train uninterrupted (3 epochs of 4 steps, a checkpoint every 3 steps);
* ``crash``: train; after step ``KILL_AT`` (``checkpoint-6``, two batches into epoch 1, is committed in the
  run) print ``KILL_ME`` and wait for the test's SIGKILL;
* ``resume``: ``trainer.train(resume_from_checkpoint=cairn.transformers.checkpoint_path(run_id))`` on every rank;
* ``unshared``: each rank its own ``output_dir`` (as nodes without a shared filesystem), 3 steps, one checkpoint.

Rank 1 writes its RNG file late (:class:`SlowRankTrainer`). Dropout draws from each rank's own RNG (seeded
per rank at the start), so a rank whose RNG is not restored changes the averaged gradients. Rank 0 writes
``OUT_DIR/final.safetensors`` and ``OUT_DIR/run_id.txt``; every rank writes ``OUT_DIR/rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

KILL_AT = 8
SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "i love this movie", "this film was terrible"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = {token: i for i, token in enumerate(specials + words)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


class SlowRankTrainer(Trainer):
    """Rank 1 writes its ``rng_state_1.pth`` half a second late (a slow disk, a busy node): the checkpoint is
    complete only once every rank has written its part, which the main process's upload must wait for."""

    def _save_rng_state(self, output_dir: str) -> None:
        if self.args.process_index != 0:
            time.sleep(0.5)
        super()._save_rng_state(output_dir)


class PerRankSeed(TrainerCallback):
    """A fresh job gives each rank its own random stream (the Trainer seeds every rank alike)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0:
            torch.manual_seed(1000 + args.process_index)


class Crash(TrainerCallback):
    def __init__(self, cairn_callback: Any, out_dir: Path) -> None:
        self.cairn_callback, self.out_dir = cairn_callback, out_dir

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == KILL_AT:
            import cairn

            if state.is_world_process_zero:
                assert self.cairn_callback.wait_for_uploads(60)
                cairn.flush()
                Path(self.out_dir, "run_id.txt").write_text(self.cairn_callback.run_id)
            torch.distributed.barrier()
            print("KILL_ME", flush=True)
            time.sleep(600)


def main(role: str, out: str) -> None:
    torch.set_num_threads(1)
    import cairn.transformers

    rank = int(os.environ["RANK"])
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(32)]
    encoded = tokenizer(texts, padding="max_length", max_length=10, truncation=True)
    rows = [
        {
            "input_ids": torch.tensor(encoded["input_ids"][i]),
            "attention_mask": torch.tensor(encoded["attention_mask"][i]),
            "labels": torch.tensor(i % 2),
        }
        for i in range(len(texts))
    ]
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.3,
    )
    model = BertForSequenceClassification(config)
    callback = cairn.transformers.CairnCallback(log_models=False)
    callbacks: list[Any] = [callback, PerRankSeed()]
    if role == "crash":
        callbacks.append(Crash(callback, out_dir))
    unshared = role == "unshared"
    args = TrainingArguments(
        output_dir=str(out_dir / (f"trainer-{rank}" if unshared else "trainer")),
        num_train_epochs=3,
        max_steps=3 if unshared else -1,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=3,
        seed=0,
        use_cpu=True,
        ddp_backend="gloo",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = SlowRankTrainer(
        model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=callbacks
    )
    resume_from = None
    if role == "resume":
        resume_from = cairn.transformers.checkpoint_path(os.environ["CAIRN_RUN_ID"], dst=out_dir / f"download{rank}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=resume_from)
    files = sorted(p.name for p in Path(resume_from).iterdir()) if resume_from else []
    report = {
        "step": trainer.state.global_step,
        "resumed_from": Path(resume_from or ".").name,
        "files": files,
        "warnings": [str(w.message) for w in caught if "cairn" in str(w.message)],
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    if trainer.is_world_process_zero():
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(out_dir / "final.safetensors"))
        Path(out_dir, "run_id.txt").write_text(callback.run_id)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1], sys.argv[2])
