"""The HTTP client store: ``CAIRN_TRACKING_URI=http(s)://host:port`` talks MLflow's REST API to a tracking
server (``cairn server`` or ``mlflow server``). Importing this package imports httpx."""

from cairn.store.rest.errors import AccessDenied, ServerUnavailable, UnsupportedByServer
from cairn.store.rest.http import HttpSession
from cairn.store.rest.registry import RestRegistryStore
from cairn.store.rest.store import RestTrackingStore

__all__ = [
    "AccessDenied",
    "HttpSession",
    "RestRegistryStore",
    "RestTrackingStore",
    "ServerUnavailable",
    "UnsupportedByServer",
]
