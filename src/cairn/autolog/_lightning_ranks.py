"""Every rank's own RNG states and DataLoader position in a Lightning checkpoint (DDP and other multi-process
strategies).

Lightning writes the checkpoint dict of global rank 0 only, so a callback's ``on_save_checkpoint`` entries are
rank 0's: on resume every rank would restore rank 0's RNG (dropout masks, the DataLoader's base seed) and a
job with per-rank random streams would not continue as it would have. ``Trainer.save_checkpoint`` builds the
dict on every rank (it must be called on all of them), so at ``on_save_checkpoint`` the ranks' entries are
gathered over the process group into ``"cairn_ranks"`` (a list indexed by global rank of plain tensors, numbers
and tuples: it loads under ``torch.load(weights_only=True)``), and at ``on_load_checkpoint`` each rank takes
its own. A checkpoint written by another number of ranks: ranks below that number take their own entry, the
others rank 0's (what Lightning alone gives), with a :class:`~cairn.checkpoint.resume.ResumeWarning`; so does a
checkpoint of one process resumed on several.

Not gathered after an exception (``ModelCheckpoint(save_on_exception=True)`` saves on the failing rank alone,
and a collective there would hang): such a checkpoint holds rank 0's entries only, as without this module.
"""

from __future__ import annotations

import warnings
from typing import Any

from cairn.autolog._lightning_frameworks import RNG_KEY

RANKS_KEY = "cairn_ranks"


def gather(trainer: Any, entry: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every rank's ``entry`` (a collective: every rank calls it), or ``None`` for a single process."""
    import torch.distributed as dist

    world = int(getattr(trainer, "world_size", 1))
    if world <= 1 or not dist.is_available() or not dist.is_initialized():
        return None
    entries: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(entries, entry)  # between the job's own processes; the checkpoint holds no pickle
    return entries


def own(trainer: Any, checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's entry in ``checkpoint``, ``None`` when it has none (one process, or rank 0's is used)."""
    from cairn.checkpoint.resume import ResumeWarning

    entries = checkpoint.get(RANKS_KEY)
    rank, world = int(getattr(trainer, "global_rank", 0)), int(getattr(trainer, "world_size", 1))
    if not isinstance(entries, list) or not entries:
        if world > 1 and rank == 0 and RNG_KEY in checkpoint:
            warnings.warn(
                f"cairn: this checkpoint holds one process's RNG states and DataLoader position (written by one "
                f"process, or after an exception) and resumes on {world} ranks: every rank restores those, so "
                "random streams and data order are not exact",
                ResumeWarning,
                stacklevel=3,
            )
        return None
    if len(entries) != world and rank == 0:
        warnings.warn(
            f"cairn: this checkpoint was written by {len(entries)} ranks and resumes on {world}: weights, optimizer "
            "and Lightning's loop state are restored, but each rank's random streams and data order cannot be "
            f"exact; ranks below {len(entries)} restore their own RNG states, the others rank 0's",
            ResumeWarning,
            stacklevel=3,
        )
    entry = entries[rank] if rank < len(entries) else entries[0]
    return entry if isinstance(entry, dict) else None
