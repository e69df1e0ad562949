"""The address options shared by ``cairn server``, ``cairn ui`` and ``cairn models serve``."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import click

_NO_SHORT_HOST = "No short form: -h is help (MLflow's -h is --host)."


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_option(help_text: str = "Address to bind; keep loopback unless you mean it.") -> Callable[[Any], Any]:
    """``--host`` (default 127.0.0.1), without MLflow's ``-h``, which stays help."""
    return click.option("--host", default="127.0.0.1", show_default=True, help=f"{help_text} {_NO_SHORT_HOST}")


def port_option(*, lowest: int = 0) -> Callable[[Any], Any]:
    """``-p/--port`` (default 5000); ``lowest=0`` lets the system pick a free port."""
    return click.option(
        "--port", "-p", default=5000, show_default=True, type=click.IntRange(lowest, 65535), help="Port to listen on."
    )
