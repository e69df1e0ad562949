"""Answers the auth middleware gives by itself, in MLflow's error shape (``error_code`` and ``message``)."""

from __future__ import annotations

__all__ = ["HOW_TO_AUTHENTICATE", "Refusal", "denied", "invalid", "unauthenticated"]

HOW_TO_AUTHENTICATE = (
    "send a token (CAIRN_TRACKING_TOKEN or MLFLOW_TRACKING_TOKEN) or a user name and password "
    "(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD); an admin creates users with `cairn users add`"
)


class Refusal(Exception):
    """A request answered by the middleware itself, in MLflow's error shape."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def unauthenticated(reason: str) -> Refusal:
    """401 UNAUTHENTICATED, saying what to send."""
    return Refusal(401, "UNAUTHENTICATED", f"cairn server: {reason}; {HOW_TO_AUTHENTICATE}")


def denied(message: str) -> Refusal:
    """403 PERMISSION_DENIED."""
    return Refusal(403, "PERMISSION_DENIED", message)


def invalid(message: str) -> Refusal:
    """400 INVALID_PARAMETER_VALUE."""
    return Refusal(400, "INVALID_PARAMETER_VALUE", message)
