"""Every rank of a ``torch.distributed`` job takes part in a checkpoint: its own RNG and data position.

In a data-parallel job (DDP) the model, optimizer and scheduler are replicated: rank 0's copy is the
job's. What differs per rank is the random state (dropout masks, augmentation, the draw a DataLoader's
``iter()`` makes) and the data position (a ``DistributedSampler`` gives each rank its own shard). So a
checkpoint holds rank 0's full state as in a single process, plus one component per other rank,
``rank-<RRRRR>`` (``rank-00001.json`` + ``rank-00001.safetensors``), with that rank's RNG states (python,
numpy, torch CPU, CUDA) and its loader position (epoch start RNG, batches consumed).

How a checkpoint is made (:func:`exchange`, inside ``log_checkpoint``): every rank calls it at the same
step; each rank > 0 serialises its component (safetensors + JSON bytes: no pickle) and the bytes are
gathered to rank 0 over the job's process group (``all_gather`` of the sizes, ``gather`` of the
bytes; on NCCL through the current CUDA device). Rank 0 adds them to its snapshot, which the
background writer commits with one manifest listing every rank's files. So the manifest is written
after every rank's state is in, by construction, and works without a shared filesystem: a checkpoint
without all ranks' files does not exist. A rank that cannot capture its state still joins the gather
(with an error marker) so no rank hangs; rank 0 then writes no checkpoint and raises, naming the rank.

Restoring (``resume`` / ``autolog(resume=True)`` on every rank): rank 0 reads ``rng``/``dataloader`` as
before; rank r reads ``rank-<r>``. World size (recorded as ``world_size`` in the manifest metadata):

* same world size: exact (each rank its own RNG stream and data position);
* another world size (or a checkpoint without rank r's component, e.g. the final one autolog writes from
  rank 0 alone at run end): model, optimizer, scheduler and scaler are restored (replicated state);
  rank r < saved world size restores the RNG its namesake saved, other ranks keep the RNG the script
  seeded; the data position cannot be exact because the sampler shards differently, so the interrupted
  epoch restarts from its beginning; a :class:`~cairn.checkpoint.resume.ResumeWarning` says so.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch

from cairn.checkpoint.state_tree import FlatTree, flatten_state_tree, unflatten_state_tree
from cairn.errors import CheckpointError, InvalidArgument

__all__ = [
    "RANK_PREFIX",
    "Group",
    "exchange",
    "group",
    "peer_payload",
    "rank_component",
    "run_id_from_rank0",
    "world_size_warning",
]

RANK_PREFIX = "rank-"
_MAX_RANK = 99999


@dataclass(frozen=True)
class Group:
    """This process's place in an initialised ``torch.distributed`` job of more than one rank."""

    rank: int
    world_size: int


def group() -> Group | None:
    """The job this process is a rank of, or ``None`` (no ``torch.distributed`` group, or a single rank)."""
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return None
    world = int(dist.get_world_size())
    return Group(int(dist.get_rank()), world) if world > 1 else None


def rank_component(rank: int) -> str:
    """The checkpoint component holding rank ``rank``'s own state (``rank-00001``)."""
    if not 0 < rank <= _MAX_RANK:
        raise CheckpointError(f"rank {rank} is out of range (1..{_MAX_RANK}) for a per-rank checkpoint component")
    return f"{RANK_PREFIX}{rank:05d}"


def rank_tree(loader_state: dict[str, Any] | None) -> dict[str, Any]:
    """This rank's own state: its RNG now and (if given) its loader position."""
    from cairn.checkpoint.rng import capture_rng_state

    tree: dict[str, Any] = {"rng": capture_rng_state()}
    if loader_state is not None:
        tree["dataloader"] = loader_state
    return tree


# -- the wire format: a JSON header line, then the safetensors bytes ---------------------------------------


def peer_payload(tree: dict[str, Any] | None, error: BaseException | None = None) -> bytes:
    """The bytes a rank > 0 sends: its flattened state (or the error that kept it from capturing it)."""
    if error is not None or tree is None:
        text = f"{type(error).__name__}: {error}" if error is not None else "no state"
        return json.dumps({"ok": False, "error": text[:2000]}).encode() + b"\n"
    flat = flatten_state_tree(tree, root="rank", copy=False)
    tensors = safetensors.torch.save(flat.tensors, metadata={"format": "pt"}) if flat.tensors else b""
    header = {"ok": True, "structure": flat.structure, "tensors": len(tensors)}
    return json.dumps(header, allow_nan=False, separators=(",", ":")).encode() + b"\n" + tensors


def _parse_payload(data: bytes, rank: int) -> FlatTree:
    """Rank 0's side of :func:`peer_payload`: the component to write, checked the way a restore checks it."""
    head, _, body = data.partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise CheckpointError(f"rank {rank} sent an unreadable checkpoint state: {exc}") from exc
    if not isinstance(header, dict) or header.get("ok") is not True:
        problem = header.get("error") if isinstance(header, dict) else "malformed"
        raise CheckpointError(f"rank {rank} could not capture its state for the checkpoint: {problem}")
    if header.get("tensors") != len(body):
        raise CheckpointError(f"rank {rank} sent {len(body)} bytes of tensors, announced {header.get('tensors')}")
    try:
        tensors = safetensors.torch.load(body) if body else {}
        unflatten_state_tree(header["structure"], tensors, source=f"rank {rank}'s state")
    except Exception as exc:  # CheckpointCorrupt, safetensors' own errors
        raise CheckpointError(f"rank {rank} sent a checkpoint state that does not read back: {exc}") from exc
    return FlatTree(header["structure"], tensors)


# -- the collective ---------------------------------------------------------------------------------------


def exchange(payload: bytes, job: Group) -> list[bytes] | None:
    """Gather every rank's ``payload`` to rank 0 (a collective: every rank calls it, in the same order).

    Returns the payloads by rank on rank 0 (its own first), ``None`` elsewhere.
    """
    dist = torch.distributed
    device = _device()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(job.world_size)]
    dist.all_gather(sizes, size)
    lengths = [int(s.item()) for s in sizes]
    longest = max(1, *lengths)
    buffer = torch.zeros(longest, dtype=torch.uint8)
    if payload:
        buffer[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    buffer = buffer.to(device)
    if job.rank != 0:
        dist.gather(buffer, None, dst=0)
        return None
    received = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(job.world_size)]
    dist.gather(buffer, received, dst=0)
    return [bytes(t[:n].cpu().numpy().tobytes()) for t, n in zip(received, lengths, strict=True)]


def peer_components(payloads: list[bytes]) -> dict[str, FlatTree]:
    """Rank 0: the components of ranks 1.. from what :func:`exchange` gathered.

    Raises:
        CheckpointError: a rank could not capture its state, or sent something unreadable (named).
    """
    return {rank_component(rank): _parse_payload(data, rank) for rank, data in enumerate(payloads) if rank > 0}


def _device() -> torch.device:
    dist = torch.distributed
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_text(text: str | None, job: Group) -> str:
    """Rank 0's ``text`` on every rank (a collective; UTF-8 bytes in a tensor, no pickle)."""
    dist = torch.distributed
    device = _device()
    data = (text or "").encode() if job.rank == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    length = int(size.item())
    if length == 0:
        return ""
    buffer = torch.zeros(length, dtype=torch.uint8)
    if job.rank == 0:
        buffer[:] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    buffer = buffer.to(device)
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().numpy().tobytes()).decode()


def run_id_from_rank0(resolve: Callable[[], str], job: Group) -> str:
    """The run rank 0 resolves (``CAIRN_RUN_ID``, its active run), on every rank (a collective).

    Raises:
        InvalidArgument: rank 0 could not name a run (on every rank, with rank 0's reason).
    """
    message = ""
    if job.rank == 0:
        try:
            message = "ok:" + resolve()
        except InvalidArgument as exc:
            message = f"error:{exc}"
            broadcast_text(message, job)
            raise
    message = broadcast_text(message, job)
    kind, _, value = message.partition(":")
    if kind != "ok" or not value:
        raise InvalidArgument(f"rank 0 could not determine the run to resume: {value or 'no run'}")
    return value


# -- restoring ---------------------------------------------------------------------------------------------


def saved_world_size(metadata: dict[str, Any]) -> int:
    """The world size a checkpoint was written by (1 for one written before cairn recorded it)."""
    value = metadata.get("world_size", 1)
    return value if type(value) is int and value >= 1 else 1


def world_size_warning(where: str, *, saved: int, now: int, rank: int, has_own: bool, epoch: int | None) -> None:
    """Warn (on this rank) about what cannot be exact when resuming on ``now`` ranks what ``saved`` ranks wrote."""
    from cairn.checkpoint.resume import ResumeWarning

    if saved == now and has_own:
        return
    rng = (
        f"rank {rank} restores the RNG state rank {rank} saved"
        if has_own
        else f"rank {rank} keeps the RNG state this script seeded (the checkpoint holds none for it)"
    )
    restart = "the interrupted epoch" if epoch is None else f"epoch {epoch}"
    if saved != now:
        what = (
            f"cairn: checkpoint {where} was written by {saved} rank(s), this job has {now}: model, optimizer, "
            f"scheduler and scaler are restored (replicated state), but per-rank RNG streams and data order cannot "
            f"be exact: {rng}, and {restart} restarts from its beginning on every rank (its samples seen before the "
            "checkpoint are seen again)"
        )
    else:
        what = (
            f"cairn: checkpoint {where} holds no state of rank {rank} (written by rank 0 alone, e.g. at run end): "
            f"{rng}; its data position is rank 0's"
        )
    warnings.warn(what, ResumeWarning, stacklevel=3)
