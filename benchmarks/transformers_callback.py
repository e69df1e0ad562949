"""Trainer benchmark: what logging costs a training loop, cairn's CairnCallback vs transformers' MLflowCallback.

The workload: a tiny BERT sequence classifier built from a config (hidden 32, 2 layers, 2 heads,
intermediate 37), a word-level tokenizer from an explicit vocabulary, 64 rows of 16 tokens, batch 8,
``max_steps=200``, ``logging_steps=5`` (40 ``on_log`` calls), ``save_steps=50`` (4 checkpoints of
about 0.5 MB each: weights, optimizer, scheduler, RNG state, trainer state, tokenizer), CPU, one
torch thread. Configurations:

- ``none``: ``report_to="none"``;
- ``cairn``: ``callbacks=[CairnCallback(log_models=False)]``: params, metrics, and every checkpoint
  uploaded into the run by the background thread (commit manifest last); train() waits for the
  uploads before returning;
- ``cairn+model``: cairn's default, which also logs the final model (transformers flavor, tokenizer,
  signature inferred by running the model on two decoded training inputs) at the end of ``train()``;
- ``mlflow``: ``report_to="mlflow"`` (transformers' ``MLflowCallback``, MLflow installed in this
  interpreter): params and metrics into ``sqlite:///``;
- ``mlflow+artifacts``: the same with ``HF_MLFLOW_LOG_ARTIFACTS=1``, MLflow's way to upload
  checkpoints (synchronously, inside ``on_save``, as a pyfunc model wrapping the directory).

Both trackers use SQLite stores created before the timing starts. Each configuration runs in a
fresh interpreter that builds the Trainer, does one untimed 10-step warm-up training, then
``--reps-per-process`` timed trainings, each in a fresh output directory and a fresh run; the
configurations take turns in rounds so load from other work on the machine falls on all of them
alike. Measured in the training process:

- ``train()``: wall time of the call (setup, the 200 steps, checkpoint saves, end of training);
- ``loop``: from the end of ``on_train_begin`` to the last ``on_step_end`` (the 200 steps, their
  logging and the checkpoint saves, without run setup and end of training);
- ``step``: median time between consecutive ``on_step_end`` calls that do not straddle a save;
- ``save``: from ``on_step_end`` of a saving step to the end of the last ``on_save`` hook (Trainer's
  own save plus every callback's ``on_save``: MLflow's upload, cairn's hand-off to its thread);
- ``step after save``: from the end of the last ``on_save`` hook to the next ``on_step_end``: a
  background upload that slowed the training thread would show here.

The target is checked on wall time within one interpreter: next to each timed training of a tracker,
the same interpreter runs one ``none`` training (before it every other time), and the verdict is the
median of the ratios ``train()`` / that ``none`` ``train()``, so drift of the machine between
interpreters falls on both sides of each ratio.

    /work/main/.venv/bin/python benchmarks/transformers_callback.py [--quick] [--reps 3]

Appends (or replaces) its section in ``benchmarks/RESULTS.md``; ``--quick`` only prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import RESULT_MARKER, emit, write_section  # noqa: E402 - needs the path above

RESULTS = HERE / "RESULTS.md"
SECTION = "transformers_callback"
CONFIGS = ("none", "cairn", "cairn+model", "mlflow", "mlflow+artifacts")
SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "i love this movie",
    "this film was terrible",
    "what a great day",
    "bad awful boring film",
    "good nice fun movie",
    "the weather is nice today",
]


# -- the training process ------------------------------------------------------------------------------


def _workload() -> tuple[Any, Any, Any]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = {token: i for i, token in enumerate(specials + words)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=len(tokenizer),
        num_labels=2,
        max_position_embeddings=32,
    )
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(64)]
    encoded = tokenizer(texts, padding="max_length", max_length=16, truncation=True)
    rows = [
        {
            "input_ids": torch.tensor(encoded["input_ids"][i]),
            "attention_mask": torch.tensor(encoded["attention_mask"][i]),
            "labels": torch.tensor(i % 2),
        }
        for i in range(len(texts))
    ]
    return tokenizer, config, rows


def _timer_class() -> Any:
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        """Placed last in the callback list: its hooks run after every other callback's."""

        def __init__(self) -> None:
            self.begin = 0.0
            self.step_ends: dict[int, float] = {}
            self.saves: dict[int, float] = {}
            self.hook_times: list[float] = []  # the tracker's on_save calls
            self.hook_total = {"begin": 0.0, "during": 0.0, "end": 0.0}  # wall time inside the tracker's hooks

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.begin = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step_ends[state.global_step] = time.perf_counter()

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.saves[state.global_step] = time.perf_counter()

    return Timer


_HOOKS = (
    "on_init_end",
    "on_train_begin",
    "on_epoch_begin",
    "on_step_begin",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_substep_end",
    "on_step_end",
    "on_log",
    "on_save",
    "on_evaluate",
    "on_epoch_end",
    "on_train_end",
)


def _instrument(tracker: Any, timer: Any) -> None:
    """Time every hook of the tracker's callback: how long it keeps the training thread, by phase."""
    for name in _HOOKS:
        original = getattr(tracker, name)
        phase = {"on_init_end": "begin", "on_train_begin": "begin", "on_train_end": "end"}.get(name, "during")

        def timed(*args: Any, _original: Any = original, _name: str = name, _phase: str = phase, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                timer.hook_total[_phase] += elapsed
                if _name == "on_save":
                    timer.hook_times.append(elapsed)

        setattr(tracker, name, timed)


def _train_once(config_name: str, work: Path, steps: int, save_steps: int, parts: tuple[Any, Any, Any]) -> Any:
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    tokenizer, config, rows = parts
    callbacks: list[Any] = []
    report_to = "none"
    if config_name.startswith("cairn"):
        import cairn.transformers

        log_models: Any = "end" if config_name == "cairn+model" else False
        callbacks.append(cairn.transformers.CairnCallback(log_models=log_models))
    elif config_name.startswith("mlflow"):
        report_to = "mlflow"
    timer = _timer_class()()
    callbacks.append(timer)
    args = TrainingArguments(
        output_dir=str(work / "out"),
        max_steps=steps,
        per_device_train_batch_size=8,
        logging_steps=5,
        save_steps=save_steps,
        seed=0,
        use_cpu=True,
        report_to=report_to,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    model = BertForSequenceClassification(config)
    trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=callbacks)
    for tracker in trainer.callback_handler.callbacks:
        if type(tracker).__name__ in ("CairnCallback", "MLflowCallback"):
            _instrument(tracker, timer)
    start, cpu_start, process_start = time.perf_counter(), time.thread_time(), time.process_time()
    trainer.train()
    total = time.perf_counter() - start
    cpu = {"thread": time.thread_time() - cpu_start, "process": time.process_time() - process_start}
    if config_name.startswith("mlflow"):
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run()
    return total, cpu, timer, callbacks[0] if config_name.startswith("cairn") else None


def side(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    name = args.config
    root = Path(tempfile.mkdtemp(prefix=f"bench-hf-{name.replace('+', '-')}-", dir=args.dir))
    os.chdir(root)
    if name.startswith("mlflow"):
        if name == "mlflow+artifacts":
            os.environ["HF_MLFLOW_LOG_ARTIFACTS"] = "1"
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        import mlflow

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.set_experiment("bench")  # database creation (migrations) stays out of the timing
        version = mlflow.__version__
    elif name.startswith("cairn"):
        import cairn

        cairn.set_tracking_uri(str(root / "cairn-runs"))
        cairn.get_experiment("0")  # store creation stays out of the timing
        version = cairn.__version__
    else:
        import transformers

        version = transformers.__version__
    parts = _workload()
    _train_once(name, root / "warmup", 10, 5, parts)  # untimed: first-train costs (lazy imports, caches)
    samples = []
    for rep in range(args.reps_per_process):
        paired = None
        if name != "none" and rep % 2 == 1:  # ABBA: the paired `none` training goes first every other time
            paired, *_ = _train_once("none", root / f"pair{rep}", args.steps, args.save_steps, parts)
        total, cpu, timer, callback = _train_once(name, root / f"rep{rep}", args.steps, args.save_steps, parts)
        if name != "none" and paired is None:
            paired, *_ = _train_once("none", root / f"pair{rep}", args.steps, args.save_steps, parts)
        ends = timer.step_ends
        last = max(ends)
        saved = sorted(timer.saves)
        straddling = {s + 1 for s in saved}
        step_times = [ends[s] - ends[s - 1] for s in sorted(ends) if s - 1 in ends and s not in straddling]
        sample = {
            "train": total,
            "thread_cpu": cpu["thread"],
            "process_cpu": cpu["process"],
            "loop": ends[last] - timer.begin,
            "step": statistics.median(step_times),
            "save": [timer.saves[s] - ends[s] for s in saved],
            "after_save": [ends[s + 1] - timer.saves[s] for s in saved if s + 1 in ends],
            "hook": timer.hook_times,
            "hooks": dict(timer.hook_total),
            "paired_none_train": paired,
        }
        if callback is not None:
            sample["committed"] = callback.committed_checkpoints
        samples.append(sample)
    return {"config": name, "version": version, "samples": samples}


# -- the parent ------------------------------------------------------------------------------------------


def _run_side(config: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--side",
        "--config",
        config,
        "--steps",
        str(args.steps),
        "--save-steps",
        str(args.save_steps),
        "--reps-per-process",
        str(args.reps_per_process),
        "--dir",
        args.dir,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    for name in ("CAIRN_RUN_ID", "CAIRN_TRACKING_URI", "MLFLOW_TRACKING_URI", "HF_MLFLOW_LOG_ARTIFACTS"):
        env.pop(name, None)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return dict(json.loads(line[len(RESULT_MARKER) :]))
    raise SystemExit(f"{config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _overhead(ours: float, base: float) -> str:
    return f"{(ours / base - 1) * 100:+.1f}%"


def _report(results: dict[str, list[dict[str, Any]]], versions: dict[str, str], args: argparse.Namespace) -> str:
    def med(config: str, key: str) -> float:
        return _median([s[key] for s in results[config]])

    def low(config: str, key: str) -> float:
        return min(s[key] for s in results[config])

    def med_list(config: str, key: str) -> float:
        return _median([v for s in results[config] for v in s[key]])

    base_cpu, base_wall, base_train = med("none", "thread_cpu"), low("none", "train"), med("none", "train")

    def hooks(config: str, phase: str | None = None) -> float:
        return _median([sum(s["hooks"].values()) if phase is None else s["hooks"][phase] for s in results[config]])

    lines = [
        "| configuration | train() wall s, median / best | training-thread CPU s (vs none) | tracker hooks ms: "
        "begin / steps / end | hooks vs none's train() | save ms | tracker on_save ms | step ms | "
        "step after save ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in results:
        cpu = med(config, "thread_cpu")
        on_save = [v for s in results[config] for v in s["hook"]]
        tracked = config != "none"
        phases = " / ".join(f"{hooks(config, p) * 1000:,.0f}" for p in ("begin", "during", "end")) if tracked else "—"
        share = f"{hooks(config) / base_train * 100:.1f}%" if tracked else "—"
        lines.append(
            f"| {config} | {med(config, 'train'):.2f} / {low(config, 'train'):.2f} | {cpu:.2f} "
            f"({_overhead(cpu, base_cpu)}) | {phases} | {share} | {med_list(config, 'save') * 1000:.0f} | "
            f"{_median(on_save) * 1000:.2f} | {med(config, 'step') * 1000:.1f} | "
            f"{med_list(config, 'after_save') * 1000:.1f} |"
            if tracked
            else f"| {config} | {med(config, 'train'):.2f} / {low(config, 'train'):.2f} | {cpu:.2f} | — | — | "
            f"{med_list(config, 'save') * 1000:.0f} | — | {med(config, 'step') * 1000:.1f} | "
            f"{med_list(config, 'after_save') * 1000:.1f} |"
        )

    def paired(config: str) -> float:
        """Median over the trainings of train() wall time / the `none` training beside it in that interpreter."""
        return _median([s["train"] / s["paired_none_train"] for s in results[config]])

    cairn_cpu, cairn_wall = med("cairn", "thread_cpu"), low("cairn", "train")
    cairn_share = hooks("cairn") / base_train
    ratios = {config: paired(config) for config in results if config != "none"}
    met = ratios["cairn"] <= 1.05
    model_met = ratios["cairn+model"] <= 1.05
    pair_lines = [
        "",
        "Wall time against a training without reporting in the same interpreter (each training next to a `none` "
        "training, the order alternating; median of the ratios):",
        "",
        "| configuration | train() wall / paired `none` | target | met? |",
        "|---|---:|---|---|",
        *(
            f"| {config} | {ratio:.3f}x | {'<= 1.05x' if config.startswith('cairn') else '—'} | "
            f"{('yes' if ratio <= 1.05 else 'no') if config.startswith('cairn') else '—'} |"
            for config, ratio in ratios.items()
        ),
    ]
    committed = {tuple(s.get("committed", [])) for s in results["cairn"]}
    samples = args.reps * args.reps_per_process
    load = os.getloadavg()
    header = [
        f"## Transformers Trainer: CairnCallback vs MLflowCallback vs no reporting ({args.steps} steps, "
        f"checkpoint every {args.save_steps})",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average at the end "
        f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; {os.cpu_count()} CPUs, one torch thread",
        f"- Python {platform.python_version()}, transformers {versions.get('none', '?')}, cairn "
        f"{versions.get('cairn', '?')}, MLflow {versions.get('mlflow', '?')}",
        f"- Command: `{Path(sys.executable)} benchmarks/transformers_callback.py{' --quick' if args.quick else ''}`; "
        f"{samples} trainings per configuration ({args.reps} rounds taking turns, "
        f"{args.reps_per_process} timed trainings per fresh interpreter after a 10-step warm-up); medians unless "
        "marked best",
        "- Workload and columns: see the docstring of `transformers_callback.py` (tiny BERT, 64 rows, batch 8, "
        "logging every 5 steps; `save` and `step after save` are medians over every save of every training). "
        "Training-thread CPU is `time.thread_time()` of the thread calling `train()`, the cost a callback puts "
        "on training whatever else the machine runs; all-threads CPU (`time.process_time()`) adds the "
        "background threads (cairn's metric writer and uploader, MLflow's async logger).",
        "",
    ]
    verdict = [
        "",
        f"Target: cairn (params, metrics, background checkpoint upload) costs at most 5% of the wall time of a "
        f"training without reporting: {_overhead(ratios['cairn'], 1.0)} against the paired trainings, "
        f"{'met' if met else 'not met'}; with the final model logged too (cairn's default), "
        f"{_overhead(ratios['cairn+model'], 1.0)}, {'met' if model_met else 'not met'}. Measured directly, the "
        f"time the training thread spends inside CairnCallback's hooks (run setup and params, 40 metric logs and "
        f"4 checkpoint hand-offs, then waiting for the last upload and ending the run) is "
        f"{cairn_share * 100:.1f}% of the median `train()` of `none`. Across interpreters the comparisons are "
        f"noisier: training-thread CPU {_overhead(cairn_cpu, base_cpu)}, best wall time "
        f"{_overhead(cairn_wall, base_wall)}. Every cairn training committed checkpoints "
        f"{sorted(committed)} before "
        "`train()` returned.",
        "",
        "`tracker on_save` is the time the tracker's own `on_save` keeps the training thread: MLflow uploads the "
        "checkpoint there when `HF_MLFLOW_LOG_ARTIFACTS=1`; cairn writes `cairn_run.json`, hard-links the files "
        "into a staging directory and queues the upload. `save` adds Trainer's own checkpoint write. `step after "
        "save` is the next step while the upload runs: on a 2-core machine the upload thread competes with it "
        "for CPU (and for the GIL while hashing and copying), which is what a slower figure there shows; it never "
        "waits for the upload. `cairn+model` adds the final model log at the end of `train()` (save_pretrained, "
        "signature inference, upload); MLflow's callback logs no model.",
    ]
    return "\n".join(header + lines + pair_lines + verdict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", action="store_true")
    parser.add_argument("--config", choices=CONFIGS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--save-steps", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3, help="rounds")
    parser.add_argument("--reps-per-process", type=int, default=2)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--quick", action="store_true", help="1 round of 1 training, print only")
    args = parser.parse_args()
    if args.side:
        emit(side(args))
        return
    if args.quick:
        args.reps, args.reps_per_process = 1, 1
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cairn-bench-hf-") as tmp:
        args.dir = tmp
        for round_index in range(args.reps):
            for config in CONFIGS:
                print(f"[transformers_callback] round {round_index + 1}/{args.reps}: {config}", file=sys.stderr)
                result = _run_side(config, args)
                results[config].extend(result["samples"])
                versions[config.split("+")[0]] = result["version"]
    text = _report(results, versions, args)
    print(text)
    if not args.quick:
        write_section(RESULTS, SECTION, text)
        print(f"[transformers_callback] section written to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
