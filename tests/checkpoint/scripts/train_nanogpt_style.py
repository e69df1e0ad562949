"""A nanoGPT-style loop for the kill-and-resume proof without a DataLoader (tests/checkpoint/test_kill_and_resume.py,
through nanogpt_roles.py).

Usage: python train_nanogpt_style.py OUT_DIR [KILL_AFTER_STEP]

Like Karpathy's nanoGPT ``train.py``, tiny and on the CPU: batches drawn with ``torch.randint`` in
``get_batch`` (no DataLoader), gradient accumulation, the learning rate set by hand in each param group,
a batch prefetched before the optimizer step, and a periodic evaluation that draws random batches (in
eval mode) at the top of the loop. Plus the few lines that make autolog resume it: ``autolog(resume=True)``,
``track_state(...)`` for the loop's own state, and ``iter_num = state.step``.

With KILL_AFTER_STEP the script prints ``CHECKPOINTED`` once that step's checkpoint is uploaded, trains
two more steps, prints ``READY`` and waits to be killed. It writes the final weights to
``OUT_DIR/final.safetensors`` and the run id to ``OUT_DIR/run_id.txt``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

VOCAB, BLOCK, BATCH = 16, 8, 4
ACCUM = 3
MAX_ITERS = 20
EVAL_INTERVAL, EVAL_ITERS = 5, 2
CHECKPOINT_EVERY = 5


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.drop(self.emb(idx)))
        return logits, nn.functional.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))


def train(out: Path, kill_after: int | None = None) -> str:
    import cairn

    torch.set_num_threads(1)
    torch.manual_seed(1337)
    state = cairn.pytorch.autolog(checkpoint_every_n_steps=CHECKPOINT_EVERY, resume=True, log_models=False)
    data = torch.randint(0, VOCAB, (500,), generator=torch.Generator().manual_seed(7))

    def get_batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(data) - BLOCK - 1, (BATCH,))
        x = torch.stack([data[i : i + BLOCK] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + BLOCK] for i in ix])
        return x, y

    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)

    @torch.no_grad()
    def estimate_loss() -> float:
        model.eval()
        losses = [model(*get_batch())[1].item() for _ in range(EVAL_ITERS)]
        model.train()
        return sum(losses) / len(losses)

    def get_lr(it: int) -> float:
        return 1e-2 * (it + 1) / 5 if it < 5 else 1e-3 + 0.5 * 9e-3 * (1 + math.cos(math.pi * it / MAX_ITERS))

    iter_num, best_val_loss = 0, 1e9
    X, Y = get_batch()
    # -- the lines added for resuming ----------------------------------------------------------------
    restored = cairn.pytorch.track_state(lambda: {"best_val_loss": best_val_loss, "X": X, "Y": Y})
    if restored is not None:
        best_val_loss, X, Y = restored["best_val_loss"], restored["X"], restored["Y"]
    iter_num = state.step
    # ---------------------------------------------------------------------------------------------------
    while iter_num < MAX_ITERS:
        lr = get_lr(iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if iter_num % EVAL_INTERVAL == 0:
            best_val_loss = min(best_val_loss, estimate_loss())
        for _ in range(ACCUM):
            _, loss = model(X, Y)
            loss = loss / ACCUM
            X, Y = get_batch()
            loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        if kill_after is not None and iter_num == kill_after:
            cairn.pytorch.flush_checkpoints()
            print("CHECKPOINTED", flush=True)
        if kill_after is not None and iter_num == kill_after + 2:
            sys.modules["cairn.autolog.pytorch"].drain_metrics()
            cairn.flush()
            print("READY", flush=True)
            time.sleep(600)
    active = cairn.active_run()
    assert active is not None
    run_id = active.info.run_id
    cairn.end_run()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))
    (out / "run_id.txt").write_text(run_id)
    (out / "best_val_loss.txt").write_text(repr(best_val_loss))
    return run_id


if __name__ == "__main__":
    train(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None)
