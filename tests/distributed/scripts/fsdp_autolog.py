"""FSDP2 under ``torchrun`` (gloo, CPU) with ``cairn.pytorch.autolog(checkpoint_every_n_steps=4)``: its step
checkpoints are sharded, written by every rank. Rank 0 writes ``OUT_DIR/report.json`` (the run's checkpoints
and the autolog warnings).

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 fsdp_autolog.py train OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    import cairn

    cairn.pytorch.autolog(log_models=False, checkpoint_every_n_steps=4)
    dataset = TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    sampler = DistributedSampler(dataset, shuffle=True)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(2):
            sampler.set_epoch(epoch)
            for x, y in loader:
                loss = nn.functional.mse_loss(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        if dist.get_rank() == 0:
            cairn.pytorch.flush_checkpoints()
            run_id = cairn.active_run().info.run_id
            cairn.end_run()
    if dist.get_rank() == 0:
        found = cairn.pytorch.list_run_checkpoints(run_id)
        report = {
            "checkpoints": [[c.step, c.metadata.get("sharded")] for c in found],
            "warnings": [str(w.message) for w in caught if "cairn" in str(w.message)],
        }
        Path(out, "report.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
    main(sys.argv[2])
