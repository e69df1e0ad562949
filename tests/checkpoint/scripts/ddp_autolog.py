"""One of two CPU processes (gloo) training a DDP model with plain-PyTorch autolog; writes the run id it knows.

Usage: python ddp_autolog.py OUT_DIR RANK PORT   (start ranks 0 and 1; CAIRN_TRACKING_URI names the shared store)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def main(out: str, rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    import cairn
    from cairn.autolog import pytorch as autolog_pytorch

    autolog_pytorch.autolog(log_models=False)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(rank)
    for _ in range(6):
        loss = model(torch.randn(8, 4, generator=gen)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    Path(out, f"rank{rank}.txt").write_text(autolog_pytorch.current_run_id() or "")
    assert rank == 0 or cairn.active_run() is None
    dist.barrier()
    dist.destroy_process_group()
    # rank 0 leaves the run open: interpreter exit ends it (and flushes its points)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
