"""``cairn.register_model``: MLflow's fluent registration call."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cairn.registry.entities import ModelVersion


def register_model(
    model_uri: str | os.PathLike[str],
    name: str,
    await_registration_for: int | None = None,
    *,
    tags: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Register the model at ``model_uri`` as the next version of ``name``, creating the name on first use.

    Nothing is copied: the version records where the model is (for ``runs:/<run_id>/<path>``, the
    run's artifact location of ``<path>``) and the run id. Concurrent registrations from several
    processes get distinct, consecutive version numbers.

    Args:
        model_uri: ``runs:/<run_id>/<path>``, ``models:/<name>/<version>`` (or ``@alias``, ``latest``,
            a stage), a local path, or an artifact-store URL.
        name: registered model name.
        await_registration_for: accepted for MLflow compatibility; registration completes at once.
        tags: tags of the new version.

    Raises:
        RunNotFound: a ``runs:/`` URI names an unknown run.
        ArtifactNotFound: the run (or local path) has nothing at that path.
        InvalidArgument: malformed URI, or a name with ``/`` or ``@``.
    """
    from cairn.registry.client import RegistryClient

    del await_registration_for
    return RegistryClient().create_model_version(name, model_uri, tags=tags)
