"""A deterministic CPU training script for the kill-and-resume harness (tests/checkpoint/kill_resume_harness.py).

Usage: python train_resume.py MODE ROLE OUT_DIR (ROLE: reference, crash or resume; see the harness)

MODE ``explicit``: Adam + per-epoch StepLR, a ResumableLoader, ``log_checkpoint`` every 5 steps and
``cairn.pytorch.resume`` on restart (``CAIRN_RUN_ID`` set). MODE ``autolog``: SGD with momentum +
per-step StepLR, a plain DataLoader, and nothing but ``autolog(checkpoint_every_n_steps=5, resume=True)``
(the loop starts at the returned epoch). Both shuffle with the global RNG, augment with random noise in
the dataset and use dropout, so every random state matters. MODE ``restarting`` is a broken ``explicit``:
its resume continues the run by id but trains it from scratch (the harness's own test must catch it).

The ``crash`` role prints ``CHECKPOINTED`` once the checkpoint of step KILL_AFTER is uploaded, logs two
more steps, prints ``KILL_ME <run id>`` and waits to be killed (the parent sends SIGKILL). The ``resume``
role reads the run id from stdin and resumes it through ``CAIRN_RUN_ID``. Finished roles write the final
weights to ``OUT_DIR/final.safetensors`` and the run id to ``OUT_DIR/run_id.txt``.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

EPOCHS = 3
SAMPLES = 60
BATCH = 8  # 8 batches per epoch, the last one of 4 samples: 24 steps
CHECKPOINT_EVERY = 5
KILL_AFTER = 10  # epoch 1 runs steps 9..16: the checkpoint of step 10 is two batches into it


class Noisy(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Fixed data plus fresh noise from the global RNG on every access (a random augmentation)."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.x = torch.randn(SAMPLES, 6, generator=gen)
        self.y = torch.randint(0, 3, (SAMPLES,), generator=gen)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index] + 0.05 * torch.randn(6), self.y[index]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


class _Stopper:
    """Prints the markers around the kill point; waits forever once KILL_ME is printed."""

    def __init__(self, kill_after: int | None) -> None:
        self.kill_after = kill_after

    def after_step(self, step: int, checkpoint_taken_at: int) -> None:
        import cairn
        from cairn.checkpoint import runs

        if self.kill_after is None:
            return
        if step == checkpoint_taken_at:
            runs.flush_checkpoints()
            print("CHECKPOINTED", flush=True)
        if step == self.kill_after + 2:
            autolog = sys.modules.get("cairn.autolog.pytorch")
            if autolog is not None:
                autolog.drain_metrics()
            cairn.flush()  # points after the checkpoint are in the store: the resume must supersede them
            active = cairn.active_run()
            print(f"KILL_ME {active.info.run_id if active else None}", flush=True)
            time.sleep(600)


def train_explicit(out: Path, kill_after: int | None = None) -> str:
    import cairn
    from cairn.checkpoint import ResumableLoader, runs

    _seed()
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    loader = ResumableLoader(torch.utils.data.DataLoader(Noisy(), batch_size=BATCH, shuffle=True))
    start_epoch, step = 0, 0
    if os.environ.get("CAIRN_RUN_ID"):
        state = runs.resume(model=model, optimizer=optimizer, scheduler=scheduler, loader=loader)
        start_epoch, step = state.epoch or 0, state.step
    elif cairn.active_run() is None:
        cairn.start_run()
    stopper = _Stopper(kill_after)
    for epoch in range(start_epoch, EPOCHS):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            step += 1
            cairn.log_metric("loss", loss.item(), step=step)
            if step % CHECKPOINT_EVERY == 0:
                runs.log_checkpoint(
                    model=model, optimizer=optimizer, scheduler=scheduler, step=step, epoch=epoch, loader=loader
                )
            stopper.after_step(step, kill_after or -1)
        scheduler.step()
    return _finish(model, out)


def train_autolog(out: Path, kill_after: int | None = None) -> str:
    from cairn.autolog import pytorch as autolog_pytorch

    _seed()
    state: Any = autolog_pytorch.autolog(checkpoint_every_n_steps=CHECKPOINT_EVERY, resume=True, log_models=False)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.8)
    loader = torch.utils.data.DataLoader(Noisy(), batch_size=BATCH, shuffle=True)
    stopper = _Stopper(kill_after)
    step = state.step
    for _epoch in range(state.epoch, EPOCHS):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            scheduler.step()
            step += 1
            # autolog checkpoints at the batch boundary after step `kill_after`: seen from step + 1
            stopper.after_step(step, (kill_after or -2) + 1)
    run_id = _finish(model, out)
    autolog_pytorch.autolog(disable=True)
    return run_id


def train_restarting(out: Path, kill_after: int | None = None) -> str:
    """A broken resume, for the harness's own test: continues the run by id but trains it from scratch."""
    import cairn

    run_id = os.environ.pop("CAIRN_RUN_ID", None)
    if run_id:
        cairn.start_run(run_id=run_id)
    return train_explicit(out, kill_after)


def _finish(model: nn.Module, out: Path) -> str:
    import cairn

    active = cairn.active_run()
    assert active is not None
    run_id = active.info.run_id
    cairn.end_run()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))
    (out / "run_id.txt").write_text(run_id)
    return run_id


if __name__ == "__main__":
    mode, role, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    train = {"explicit": train_explicit, "autolog": train_autolog, "restarting": train_restarting}[mode]
    if role == "resume":
        os.environ["CAIRN_RUN_ID"] = sys.stdin.readline().strip()
    train(out_dir, KILL_AFTER if role == "crash" else None)
