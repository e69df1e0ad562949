"""A DDP job under ``torchrun --max-restarts=1`` with ``cairn.pytorch.autolog(resume=True)``: rank 1 dies once.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 --max-restarts=1 elastic_train.py
ROLE OUT_DIR`` with ``CAIRN_TRACKING_URI`` set (``CAIRN_RUN_ID`` optional). ROLE:

* ``reference``: train uninterrupted (no restart);
* ``elastic``: in the first attempt, after step ``KILL_AT`` (the checkpoint of step 12 committed), rank
  ``$VICTIM`` (default 1) writes ``OUT_DIR/died`` and ends mid-epoch 1, with ``os._exit(1)`` or, with
  ``VICTIM_SIGNAL=1``, a SIGKILL of itself (rank 0 then leaves its resume lease held); the other rank fails
  in its next collective (or is stopped by torchelastic). Torchelastic restarts both workers
  (``TORCHELASTIC_RESTART_COUNT=1``), which resume from the newest checkpoint through ``autolog(resume=True)``
  alone. The marker file keeps the restarted attempt from dying again.

``FSDP=1``: the model is sharded with FSDP2 ``fully_shard`` (sharded checkpoints) instead of wrapped in DDP.
``EXPLICIT=1``: ``cairn.pytorch.resume(model=, optimizer=, loader=)`` on every rank instead of autolog's
``resume=True`` (autolog still on).

Dropout draws from each rank's own RNG (seeded per rank). Rank 0 writes ``OUT_DIR/final.safetensors`` and
``OUT_DIR/run_id.txt``; every rank writes ``OUT_DIR/rank<R>.json`` (its attempt and what its resume returned).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

EPOCHS = 3
SAMPLES = 64
BATCH = 4  # 64 samples / 2 ranks / 4 = 8 batches per epoch and rank: 24 steps
KILL_AT = 14
FSDP = os.environ.get("FSDP") == "1"
EXPLICIT = os.environ.get("EXPLICIT") == "1"


def full_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights (FSDP2: gathered on every rank)."""
    if not FSDP:
        return dict(net.state_dict())
    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    return get_model_state_dict(net, options=options)


def main(role: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    import cairn

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    died = out_dir / "died"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resume = role == "elastic" and not EXPLICIT
        state = cairn.pytorch.autolog(log_models=False, checkpoint_every_n_steps=4, resume=resume)
    data = torch.Generator().manual_seed(7)
    dataset = TensorDataset(torch.randn(SAMPLES, 8, generator=data), torch.randn(SAMPLES, 1, generator=data))
    sampler = DistributedSampler(dataset, shuffle=True, seed=3)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
    if FSDP:  # FSDP2: DTensor parameters, sharded checkpoints (every rank writes its shards through DCP)
        fully_shard(net)
        model: nn.Module = net
    else:
        model = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1000 + rank)  # per-rank dropout masks
    if EXPLICIT:  # autolog on without resume=: the explicit API restores, on every rank
        state = cairn.pytorch.resume(model=model, optimizer=optimizer, loader=loader)
    resumed = state is not None and state.resumed
    start = state.epoch if resumed and state.epoch is not None else 0
    step = state.step if resumed else 0
    for epoch in range(start, EPOCHS):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if role == "elastic" and step == KILL_AT and not died.exists():
                if rank == 0:
                    cairn.pytorch.flush_checkpoints()  # the checkpoint of step 12 is committed
                dist.barrier()
                if rank == int(os.environ.get("VICTIM", "1")):
                    died.write_text(os.environ.get("TORCHELASTIC_RESTART_COUNT", "?"))
                    if os.environ.get("VICTIM_SIGNAL") == "1":
                        os.kill(os.getpid(), signal.SIGKILL)
                    os._exit(1)
    report = {
        "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "resumed": bool(resumed),
        "step": None if state is None else state.step,
        "epoch": None if state is None else state.epoch,
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    weights = full_weights(net)  # (FSDP2: a collective, on every rank)
    if rank == 0:
        weights = {k: v.contiguous() for k, v in weights.items()}
        save_file(weights, str(out_dir / "final.safetensors"))
        Path(out_dir, "run_id.txt").write_text(cairn.active_run().info.run_id)
        cairn.end_run()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1], sys.argv[2])
