"""Process entry points for the concurrency tests (importable by spawned children, few imports)."""

from __future__ import annotations

import os
from typing import Any


def register(tracking_uri: str, artifact_root: str, model_uri: str, name: str, barrier: Any, results: Any) -> None:
    """Wait for every sibling, then register ``model_uri`` as a version of ``name``; report it."""
    os.environ["CAIRN_TRACKING_URI"] = tracking_uri
    os.environ["CAIRN_ARTIFACT_ROOT"] = artifact_root
    try:
        from cairn.registry import register_model
        from cairn.registry.client import RegistryClient

        RegistryClient().registry_store  # noqa: B018 - open the store (and engine) before the race
        barrier.wait(timeout=120)
        version = register_model(model_uri, name, tags={"pid": str(os.getpid())})
        results.put(("ok", version.version))
    except BaseException as exc:  # report every failure to the parent instead of dying silently
        results.put(("error", f"{type(exc).__name__}: {exc}"))
