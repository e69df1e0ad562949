"""Small helpers shared by the store and the migrations."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the epoch."""
    return int(time.time() * 1000)


def artifact_location_for(root: str, experiment_id: int | str) -> str:
    """``<root>/<experiment id>``; ``root`` is a local path or a URL such as ``s3://bucket/prefix``."""
    return f"{root.rstrip('/')}/{experiment_id}"
