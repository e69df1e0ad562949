"""Transformers with cairn: a ``Trainer`` with ``cairn.transformers.CairnCallback()`` logs its arguments, the
model config, every logged metric, each ``checkpoint-N`` (uploaded in the background, for an exact resume)
and the final model with its tokenizer, which then classifies text through ``pyfunc``.

Nothing is downloaded: the model is a tiny BERT built from a ``BertConfig`` and the tokenizer a word-level
one built with the ``tokenizers`` library. Run it::

    HF_HUB_OFFLINE=1 python examples/transformers_trainer.py                  # into ./cairn-runs
    HF_HUB_OFFLINE=1 python examples/transformers_trainer.py --store /tmp/runs

``--small`` (or ``CAIRN_EXAMPLE_SMALL=1``) trains 6 steps instead of 30. After a crash, resume in the same
run with ``trainer.train(resume_from_checkpoint=cairn.transformers.checkpoint_path(run_id))``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the hub

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast, Trainer, TrainingArguments

import cairn

POSITIVE = ["a great movie", "what a lovely day", "great acting and a great story", "i love it", "lovely music"]
NEGATIVE = ["a terrible movie", "what an awful day", "bad acting and a boring story", "i hate it", "awful music"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with BERT's special tokens, from the words of the examples."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for text in POSITIVE + NEGATIVE for w in text.split()})
    vocab = {token: i for i, token in enumerate(specials + words)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


class Texts(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        texts, labels = POSITIVE + NEGATIVE, [1] * len(POSITIVE) + [0] * len(NEGATIVE)
        self.encoded = tokenizer(texts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.encoded["input_ids"][i],
            "attention_mask": self.encoded["attention_mask"][i],
            "labels": self.labels[i],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description="a transformers Trainer logged by cairn")
    parser.add_argument("--store", help="tracking store (default: $CAIRN_TRACKING_URI, else ./cairn-runs)")
    parser.add_argument("--small", action="store_true", help="6 steps (also CAIRN_EXAMPLE_SMALL=1)")
    args = parser.parse_args()
    small = args.small or os.environ.get("CAIRN_EXAMPLE_SMALL", "") not in ("", "0")
    if args.store:
        cairn.set_tracking_uri(args.store)

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=32, num_labels=2,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
    )  # fmt: skip
    model = BertForSequenceClassification(config)
    steps = 6 if small else 30

    cairn.set_experiment("transformers")
    with tempfile.TemporaryDirectory() as output_dir, cairn.start_run(run_name="tiny-bert") as run:
        training_args = TrainingArguments(
            output_dir, max_steps=steps, per_device_train_batch_size=4, learning_rate=5e-3, logging_steps=2,
            save_steps=steps // 2, save_total_limit=1, report_to="none", use_cpu=True, disable_tqdm=True,
        )  # fmt: skip
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=Texts(tokenizer),
            processing_class=tokenizer,
            callbacks=[cairn.transformers.CairnCallback()],
        )
        trainer.train()

    client = cairn.Client()
    stored = client.get_run(run.info.run_id)
    losses = client.get_metric_history(run.info.run_id, "loss")
    print(f"run {run.info.run_id} {stored.info.status.value}: {steps} steps")
    print(f"  {len(stored.data.params)} params (TrainingArguments and model config), e.g. "
          f"learning_rate={stored.data.params.get('learning_rate')}")  # fmt: skip
    print(f"  loss at steps {[m.step for m in losses]}: {[round(m.value, 3) for m in losses]}")
    print(f"  artifacts: {sorted(a.path for a in client.list_artifacts(run.info.run_id))}")
    if not losses:
        raise SystemExit("FAILED: no loss was logged")

    classifier = cairn.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    print("  pyfunc predict:")
    print(classifier.predict(["a great story", "an awful movie"]))


if __name__ == "__main__":
    main()
