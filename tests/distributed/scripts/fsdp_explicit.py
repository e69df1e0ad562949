"""FSDP2 (``fully_shard``, DTensor parameters) under ``torchrun`` (gloo, CPU) with the explicit API.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 fsdp_explicit.py ROLE OUT_DIR`` with
``CAIRN_TRACKING_URI`` set. ROLE ``reference``: train uninterrupted. ``crash``: after the sharded checkpoint
of step 6 (mid-epoch 0) and two more steps, print ``KILL_ME <run id>`` and wait to be killed. ``resume``:
rank 0 makes the run in ``$RESUME_RUN`` active, every rank calls ``cairn.pytorch.resume`` and trains to the
end. ``restore``: the same from the checkpoint of step ``$RESUME_STEP`` (any number of ranks), then writes
``restored.safetensors`` (model and optimizer, unsharded) and stops. Checkpoints at steps 6 and 12 on every
rank; the reference writes ``at12.safetensors`` (unsharded state at step 12). ``killsave``: rank 1 is
SIGKILLed while it writes its shards of step 6. Rank 0 writes
``final.safetensors`` (the full state dict) and ``run_id.txt``; every rank writes ``rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

EPOCHS = 2
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Model and optimizer state, unsharded (a collective), as one flat dict of tensors."""
    flat = {f"model.{k}": v.contiguous() for k, v in get_model_state_dict(model, options=FULL).items()}
    for fqn, values in get_optimizer_state_dict(model, optimizer, options=FULL).get("state", {}).items():  # rank 0 only
        flat.update({f"optimizer.{fqn}.{k}": torch.as_tensor(v).contiguous() for k, v in values.items()})
    return flat


def main(role: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    import cairn
    from cairn.checkpoint import ResumableLoader

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = torch.Generator().manual_seed(7)
    dataset = TensorDataset(torch.randn(64, 8, generator=data), torch.randn(64, 1, generator=data))
    sampler = DistributedSampler(dataset, shuffle=True, seed=3)
    loader = ResumableLoader(DataLoader(dataset, batch_size=4, sampler=sampler))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
    for layer in (model[0], model[3]):
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    torch.manual_seed(1000 + rank)  # per-rank dropout masks
    report: dict[str, object] = {}
    start, step = 0, 0
    if role == "killsave" and rank == 1:  # rank 1 dies in the middle of writing its shards of step 6
        from torch.distributed.checkpoint import filesystem

        def die(*args: object, **kwargs: object) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        filesystem._FileSystemWriter.write_data = die  # type: ignore[method-assign]
    if role in ("resume", "restore"):
        if rank == 0:
            cairn.start_run(run_id=os.environ["RESUME_RUN"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = (
                cairn.pytorch.resume(
                    model=model, optimizer=optimizer, loader=loader, step=int(os.environ.get("RESUME_STEP", "-1"))
                )
                if role == "restore"
                else cairn.pytorch.resume(model=model, optimizer=optimizer, loader=loader)
            )
        report = {"step": state.step, "epoch": state.epoch}
        report["warnings"] = [str(w.message) for w in caught if w.category.__name__ == "ResumeWarning"]
        start, step = state.epoch or 0, state.step
        if role == "restore":  # on another world size: what was restored, then stop
            restored = full_state(model, optimizer)
            if rank == 0:
                save_file(restored, str(out_dir / "restored.safetensors"))
                cairn.end_run()
            Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
            dist.destroy_process_group()
            return
    elif rank == 0:
        cairn.start_run()
        print("RUN", cairn.active_run().info.run_id, flush=True)
    for epoch in range(start, EPOCHS):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if rank == 0:
                cairn.log_metric("loss", loss.item(), step=step)
            if step in (6, 12):
                cairn.pytorch.log_checkpoint(
                    model=model, optimizer=optimizer, step=step, epoch=epoch, loader=loader, synchronous=True
                )
                if role == "reference" and step == 12:
                    at = full_state(model, optimizer)
                    if rank == 0:
                        save_file(at, str(out_dir / "at12.safetensors"))
            if role == "crash" and step == 8:
                if rank == 0:
                    cairn.flush()
                    print("KILL_ME", cairn.active_run().info.run_id, flush=True)
                dist.barrier()
                time.sleep(600)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    if rank == 0:
        save_file({k: v.contiguous() for k, v in full.items()}, str(out_dir / "final.safetensors"))
        Path(out_dir, "run_id.txt").write_text(cairn.active_run().info.run_id)
        cairn.end_run()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
