"""Kept for ``cairn.pytorch`` (``from cairn.autolog._pytorch_checkpoints import track_state``): the plain-PyTorch
autolog lives in :mod:`cairn.autolog.torch`, its entry points in :mod:`cairn.autolog.pytorch`."""

from cairn.autolog.pytorch import track_state

__all__ = ["track_state"]
