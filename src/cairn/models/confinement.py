"""A model directory may only hold its own files: no symbolic link may lead outside it.

Loaders open files by name inside the model directory. A link inside it (``model.skops`` ->
``/home/you/.ssh/id_rsa``, ``data`` -> ``/``) would make a loader read, or a library write, outside
the directory the caller handed over, with hashes that match (the attacker recomputes them over
the target's bytes). So before anything in a model directory is read, every link in it is resolved
and must land inside the directory's own resolved path. Links that stay inside are accepted (a
Hugging Face snapshot links to blobs next to it).
"""

from __future__ import annotations

import os
from pathlib import Path

from cairn.errors import UnsafePath

__all__ = ["check_confined"]


def check_confined(model_dir: str | os.PathLike[str]) -> None:
    """Refuse a model directory that contains a symbolic link resolving outside of it.

    Raises:
        UnsafePath: names the link and where it leads.
    """
    root = Path(model_dir).resolve()
    for current, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(current, name)
            if not path.is_symlink():
                continue
            target = path.resolve()
            if target != root and not target.is_relative_to(root):
                rel = path.relative_to(root).as_posix()
                raise UnsafePath(
                    f"model at {root}: {rel!r} is a symbolic link to {target}, outside the model directory; "
                    "cairn reads a model only from its own directory"
                )
