"""Rules for registered model names, version numbers and aliases, checked before a store is touched."""

from __future__ import annotations

import re

from cairn.errors import InvalidArgument
from cairn.tracking.validation import storable_text

MAX_NAME_LENGTH = 256
MAX_ALIAS_LENGTH = 255
MAX_VERSION = 2**31 - 1

_ALIAS = re.compile(r"^[A-Za-z0-9_\-]+$")
_VERSION_LIKE = re.compile(r"^(v\d+|\d+)$", re.IGNORECASE)


def model_name(name: object) -> str:
    """Return ``name`` if it can name a registered model.

    ``/`` and ``@`` are refused because ``models:/<name>/<version>`` and ``models:/<name>@<alias>``
    could not be parsed back.
    """
    if not isinstance(name, str):
        raise InvalidArgument(f"registered model name must be a string, got {type(name).__name__}: {name!r}")
    if not name.strip():
        raise InvalidArgument("registered model name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"registered model name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}: {name[:40]!r}..."
        )
    for char in "/@":
        if char in name:
            raise InvalidArgument(
                f"registered model name {name!r} contains {char!r}, which models:/ URIs reserve "
                "(models:/<name>/<version>, models:/<name>@<alias>)"
            )
    if name != name.strip():
        raise InvalidArgument(f"registered model name {name!r} has leading or trailing whitespace")
    return storable_text(name, f"registered model name {name!r}")


def optional_text(text: str | None, what: str) -> str | None:
    """Return a description, source or run link if a database can store it (``None`` passes).

    Refused: anything but a string, NUL characters and lone surrogates (see
    :func:`cairn.tracking.validation.storable_text`), on SQLite and PostgreSQL alike.
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be a string, got {type(text).__name__}: {text!r}")
    return storable_text(text, what)


def version_number(version: object) -> int:
    """The integer of a version given as ``3`` or ``"3"``."""
    if isinstance(version, bool):
        raise InvalidArgument(f"model version must be a positive integer, got {version!r}")
    if isinstance(version, int):
        number = version
    elif isinstance(version, str) and version.strip().isdecimal():
        number = int(version.strip())
    else:
        raise InvalidArgument(f"model version must be a positive integer such as 3 or '3', got {version!r}")
    if not 1 <= number <= MAX_VERSION:
        raise InvalidArgument(f"model version must be from 1 to {MAX_VERSION}, got {version!r}")
    return number


def alias_name(alias: object) -> str:
    """Return ``alias`` if it can be set: letters, digits, ``_`` and ``-``; not ``latest``, ``v3`` or ``3``."""
    if not isinstance(alias, str) or not alias:
        raise InvalidArgument(f"alias must be a non-empty string, got {alias!r}")
    if len(alias) > MAX_ALIAS_LENGTH:
        raise InvalidArgument(f"alias is {len(alias)} characters long; the limit is {MAX_ALIAS_LENGTH}")
    if not _ALIAS.match(alias):
        raise InvalidArgument(f"alias {alias!r} may only contain letters, digits, '_' and '-'")
    if alias.lower() == "latest":
        raise InvalidArgument("alias 'latest' is reserved: models:/<name>/latest already means the newest version")
    if _VERSION_LIKE.match(alias):
        raise InvalidArgument(f"alias {alias!r} looks like a version number; pick a name such as 'champion'")
    return alias
