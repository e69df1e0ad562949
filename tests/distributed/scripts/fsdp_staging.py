"""A sharded checkpoint holds the values of its own step while training goes on (FSDP2, ``torchrun``, gloo, CPU).

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 fsdp_staging.py ROLE OUT_DIR``
(ROLE unused) with ``CAIRN_TRACKING_URI`` set. Every rank's shard file writes are delayed by 0.5 s (the
real writes, later), so the optimizer steps taken right after each asynchronous ``log_checkpoint`` returned
mutate the parameters and Adam's state in place while the shards are still being written. Checkpoints at
steps 2 and 5 (the second reuses the first's staging buffers). Then the shards of each are loaded and
compared, unsharded, with the state taken at that step. Rank 0 writes ``report.json``: per checkpoint, the
keys that differ from the state at its step, and the keys that differ from the final state (training must
have changed them).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint import filesystem
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.distributed.fsdp import fully_shard

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    flat = {f"model.{k}": v.clone() for k, v in get_model_state_dict(model, options=FULL).items()}
    for fqn, values in get_optimizer_state_dict(model, optimizer, options=FULL).get("state", {}).items():
        flat.update({f"optimizer.{fqn}.{k}": torch.as_tensor(v).clone() for k, v in values.items()})
    return flat


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in a if k not in b or not torch.equal(a[k], b[k]))


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    import cairn
    from cairn.checkpoint.sharded import load_sharded

    write_data = filesystem._FileSystemWriter.write_data

    def slow_write(self: object, *args: object, **kwargs: object) -> object:
        time.sleep(0.5)  # the shards are still being written while the training thread steps on
        return write_data(self, *args, **kwargs)  # type: ignore[arg-type]

    filesystem._FileSystemWriter.write_data = slow_write  # type: ignore[method-assign]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    torch.manual_seed(100 + rank)
    if rank == 0:
        cairn.start_run()
    at: dict[int, dict[str, torch.Tensor]] = {}
    for step in range(1, 9):
        loss = model(torch.randn(16, 32)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in (2, 5):
            at[step] = full_state(model, optimizer)
            cairn.pytorch.log_checkpoint(model=model, optimizer=optimizer, step=step)  # asynchronous
    final = full_state(model, optimizer)
    cairn.pytorch.flush_checkpoints()
    report: dict[str, object] = {}
    run_id = [cairn.active_run().info.run_id if rank == 0 else None]
    dist.broadcast_object_list(run_id, src=0)
    for step in (2, 5):  # the shards of each checkpoint, its manifest verified, loaded on every rank
        load_sharded(cairn.pytorch.checkpoint_path(run_id[0], step=step), model, optimizer)
        restored = full_state(model, optimizer)
        report[str(step)] = {
            "differ_from_step": differing(at[step], restored),
            "differ_from_final": differing(final, restored),
        }
    if rank == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "report.json").write_text(json.dumps(report))
        cairn.end_run()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[2])
