"""DDP under ``torchrun`` (gloo, CPU) with the explicit API: ``cairn.pytorch.log_checkpoint`` and
``cairn.pytorch.resume`` called on every rank, a ``ResumableLoader`` over a shuffled ``DistributedSampler``.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=N ddp_explicit.py ROLE OUT_DIR`` with
``CAIRN_TRACKING_URI`` set. ROLE ``train``: rank 0 starts a run; a checkpoint at step 6 (mid-epoch 0 with 2
ranks); train to the end. ROLE ``badpeer``: at step 6 rank 1 passes a loader whose position it cannot give
(each rank records the error it got), at step 8 a checkpoint on every rank. ROLE ``resume``: rank 0 makes
the run in ``$RESUME_RUN`` active (no ``CAIRN_RUN_ID``: the other ranks learn it from rank 0), every rank
calls ``resume``, writes ``restored.safetensors`` (rank 0) and trains to the end. Rank 0 writes
``final.safetensors``; every rank writes ``rank<R>.json`` (the resume's step, epoch and the warnings it
raised, or the error of ``badpeer``).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

EPOCHS = 2
CHECKPOINT_AT = 6


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


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
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))
    model = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1000 + rank)  # per-rank dropout masks
    report: dict[str, object] = {}
    start, step = 0, 0
    if role == "resume":
        if rank == 0:
            cairn.start_run(run_id=os.environ["RESUME_RUN"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = cairn.pytorch.resume(model=model, optimizer=optimizer, loader=loader)
        report = {"step": state.step, "epoch": state.epoch, "run_id": state.run_id}
        report["warnings"] = [str(w.message) for w in caught if w.category.__name__ == "ResumeWarning"]
        if rank == 0:
            save_file(weights(net), str(out_dir / "restored.safetensors"))
        start, step = state.epoch or 0, state.step
    elif rank == 0:
        cairn.start_run()
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
            if step == CHECKPOINT_AT and role == "badpeer":  # rank 1 cannot give its loader position
                try:
                    cairn.pytorch.log_checkpoint(
                        model=model, optimizer=optimizer, step=step, loader=loader if rank == 0 else object()
                    )
                    report["error"] = None
                except Exception as exc:
                    report["error"] = f"{type(exc).__name__}: {exc}"
            if step == CHECKPOINT_AT + 2 and role == "badpeer":  # the job goes on, in step: the next one works
                cairn.pytorch.log_checkpoint(
                    model=model, optimizer=optimizer, step=step, loader=loader, synchronous=True
                )
            if step == CHECKPOINT_AT and role == "train":
                logged = cairn.pytorch.log_checkpoint(
                    model=model, optimizer=optimizer, step=step, epoch=epoch, loader=loader, synchronous=True
                )
                assert (logged is None) == (rank != 0)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    if rank == 0:
        save_file(weights(net), str(out_dir / "final.safetensors"))
        Path(out_dir, "run_id.txt").write_text(cairn.active_run().info.run_id)
        cairn.end_run()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
