"""The filter strings of ``search_registered_models`` and ``search_model_versions`` (MLflow's subset).

Registered models: ``name = '...'``, ``name LIKE '...'``, ``name ILIKE '...'``.
Model versions: those, plus ``run_id = '...'`` and ``run_id IN ('...', '...')``, joined by ``AND``.
Values are quoted with ``'`` or ``"``; a backslash escapes the quote inside them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cairn.errors import FilterSyntaxError

_STRING = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_CLAUSE = re.compile(
    rf"\s*(?P<key>name|run_id)\s*(?P<op>=|(?<=\s)(?:I?LIKE|IN)(?=[\s(]))\s*"
    rf"(?P<value>{_STRING}|\((?:\s*(?:{_STRING})\s*,?)*\s*\))\s*",
    re.IGNORECASE,
)
_AND = re.compile(r"AND(?=\s)", re.IGNORECASE)
_STRINGS = re.compile(_STRING)


@dataclass
class RegistryFilter:
    """The conditions of one filter string; ``None`` means no condition on that field."""

    name: str | None = None
    name_like: str | None = None
    case_sensitive: bool = True
    run_ids: list[str] | None = field(default=None)
    matches_nothing: bool = False  # contradictory conditions, e.g. two different names


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(['\"])", r"\1", body)


def parse_registry_filter(filter_string: str | None, *, allow_run_id: bool) -> RegistryFilter:
    """Parse a registry search filter.

    Raises:
        FilterSyntaxError: unsupported attribute or operator, or malformed quoting, with the position.
    """
    result = RegistryFilter()
    text = filter_string or ""
    if not text.strip():
        return result
    supported = (
        "name = '...', name LIKE '...', name ILIKE '...', run_id = '...', run_id IN ('...'), joined by AND"
        if allow_run_id
        else "name = '...', name LIKE '...' and name ILIKE '...'"
    )
    position = 0
    while True:
        match = _CLAUSE.match(text, position)
        if match is None:
            raise FilterSyntaxError(
                f"unsupported filter; this search supports {supported}", text=text, position=position
            )
        key, op, value = match.group("key").lower(), match.group("op").upper(), match.group("value")
        problem = _clause_problem(key, op, value, allow_run_id)
        if problem:
            raise FilterSyntaxError(f"{problem}; supported: {supported}", text=text, position=position)
        _apply(result, key, op, value, text, position)
        position = match.end()
        if position == len(text):
            return result
        joiner = _AND.match(text, position)
        if joiner is None:
            raise FilterSyntaxError("expected AND between conditions", text=text, position=position)
        position = joiner.end()


def _clause_problem(key: str, op: str, value: str, allow_run_id: bool) -> str | None:
    if key == "run_id" and not allow_run_id:
        return "cannot filter on run_id here"
    if (key == "name" and op == "IN") or (key == "run_id" and op in ("LIKE", "ILIKE")):
        return f"{key} does not support {op}"
    if (op == "IN") != value.startswith("("):
        return f"{op} needs {'a parenthesised list' if op == 'IN' else 'one quoted value'}"
    return None


def _apply(result: RegistryFilter, key: str, op: str, value: str, text: str, position: int) -> None:
    if key == "run_id":
        ids = [_unquote(token) for token in _STRINGS.findall(value)] if op == "IN" else [_unquote(value)]
        result.run_ids = ids if result.run_ids is None else [i for i in result.run_ids if i in ids]
        return
    if op == "=":
        if result.name is not None and result.name != _unquote(value):
            result.matches_nothing = True
        result.name = _unquote(value)
        return
    if result.name_like is not None:
        raise FilterSyntaxError("only one name LIKE/ILIKE condition is supported", text=text, position=position)
    result.name_like = value[1:-1].replace("\\'", "'").replace('\\"', '"')
    result.case_sensitive = op == "LIKE"
