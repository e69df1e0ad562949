"""A shard write that fails in the background (FSDP2, ``torchrun``, gloo, CPU) is raised, and its checkpoint
does not exist.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 fsdp_write_fails.py ROLE OUT_DIR``
(ROLE unused) with ``CAIRN_TRACKING_URI`` set. Rank 1 lowers its file size limit (``RLIMIT_FSIZE``, 64 KiB;
``SIGXFSZ`` ignored, so a write past it fails with ``EFBIG``, as on a full disk) below its shard's size, then
every rank logs an asynchronous checkpoint at step 2: rank 1's shard write fails on DCP's background thread.
Every rank's ``log_checkpoint`` at step 4 must raise it; the limit is lifted, step 6 is checkpointed
synchronously (rank 0's writer reports the failed step 2 there too, having queued step 6 nonetheless), and
``flush_checkpoints`` then passes. Every rank writes ``rank<R>.json``: the errors each call raised; rank 0
also the run id.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    import cairn
    from cairn.errors import CheckpointWriteError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8))  # ~0.8 MB of state per rank
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    report: dict[str, object] = {}
    if rank == 0:
        cairn.start_run()
        report["run_id"] = cairn.active_run().info.run_id
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    for step in range(1, 7):
        model(torch.randn(8, 256)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 2 and rank == 1:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        if step in (2, 4, 6):
            try:
                cairn.pytorch.log_checkpoint(model=model, optimizer=optimizer, step=step, synchronous=step == 6)
                report[str(step)] = None
            except CheckpointWriteError as exc:
                report[str(step)] = str(exc)
            if step == 4 and rank == 1:
                resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    try:
        cairn.pytorch.flush_checkpoints()
        report["flush"] = None
    except CheckpointWriteError as exc:
        report["flush"] = str(exc)
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    if rank == 0:
        cairn.end_run()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[2])
