"""What the requesting user may see and do in the UI.

Without ``--auth`` (``cairn ui``, ``cairn server`` without it) everyone may do everything, so every
answer is ``MANAGE``. With it, the auth middleware of ``cairn server`` puts the authenticated
principal on the request; a UI app that has a user store but finds no principal on a request that
needs one answers 401 rather than showing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cairn.errors import CairnError
from cairn.server.auth.permissions import Permission

if TYPE_CHECKING:
    from starlette.requests import Request

    from cairn.server.auth.permissions import Principal

__all__ = ["Access", "AccessDenied", "NotLoggedIn", "access_of", "auth_on", "principal_or_none"]


class NotLoggedIn(CairnError):
    """The server has authentication on and the request names no (valid) user: answered with 401."""


class AccessDenied(CairnError, PermissionError):
    """The user lacks the permission the request needs: answered with 403."""


def auth_on(request: Request) -> bool:
    """Whether this request went through ``cairn server --auth``'s checks (the UI app got a user store,
    or the server's auth middleware marked the request)."""
    if request.app.state.users is not None:
        return True
    from cairn.server.auth.middleware import auth_enabled

    return auth_enabled(request)


def principal_or_none(request: Request) -> Principal | None:
    """The authenticated principal, or ``None`` (authentication off, or no valid credentials)."""
    from cairn.server.auth.middleware import principal_of

    return principal_of(request) if auth_on(request) else None


@dataclass(frozen=True)
class Access:
    """The permissions of one request's user; ``principal=None`` means authentication is off."""

    principal: Principal | None

    def experiment(self, experiment_id: str) -> Permission:
        if self.principal is None:
            return Permission.MANAGE
        return self.principal.experiment_permission(experiment_id)

    def model(self, name: str) -> Permission:
        if self.principal is None:
            return Permission.MANAGE
        return self.principal.model_permission(name)

    def require_experiment(self, experiment_id: str, needed: Permission, what: str) -> Permission:
        """The user's permission on the experiment; :class:`AccessDenied` when it is below ``needed``."""
        granted = self.experiment(experiment_id)
        if granted < needed:
            raise AccessDenied(self._denial(what, f"experiment {experiment_id}", needed, granted))
        return granted

    def require_model(self, name: str, needed: Permission, what: str) -> Permission:
        """The user's permission on the registered model; :class:`AccessDenied` when below ``needed``."""
        granted = self.model(name)
        if granted < needed:
            raise AccessDenied(self._denial(what, f"registered model {name!r}", needed, granted))
        return granted

    def _denial(self, what: str, resource: str, needed: Permission, granted: Permission) -> str:
        user = self.principal.name if self.principal is not None else "?"
        return (
            f"permission denied: {what} needs {needed.name} on {resource}; user {user!r} has "
            f"{granted.name} (an admin can grant it)"
        )


def access_of(request: Request) -> Access:
    """The request's :class:`Access`; :class:`NotLoggedIn` when authentication is on and no user is known."""
    if not auth_on(request):
        return Access(None)
    principal = principal_or_none(request)
    if principal is None:
        raise NotLoggedIn("not logged in: log in on the cairn page, or send an Authorization header")
    return Access(principal)
