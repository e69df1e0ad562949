"""``cairn ui``: a local web app to browse, chart and compare runs and models.

Needs the ``ui`` extra (starlette, uvicorn); importing this package does not import them.
:func:`create_app` builds the ASGI app; :mod:`cairn.ui.cli` has the ``ui`` click command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cairn.ui.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from cairn.ui.app import create_app

        return create_app
    raise AttributeError(f"module 'cairn.ui' has no attribute {name!r}")
