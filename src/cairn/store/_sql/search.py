"""Compile parsed run searches (:mod:`cairn.tracking.search_filter`) into SQLAlchemy expressions.

Every value reaches the database as a bound parameter. Metric, param and tag comparisons become
``EXISTS`` subqueries on ``latest_metrics``, ``params`` and ``tags``; order-by clauses on them
become outer joins, with runs that lack the key sorted last (and NaN metrics after every number).

LIKE patterns use ``%`` and ``_`` as wildcards and a backslash to escape the next character, the
same on both backends: PostgreSQL natively; SQLite compiles case-sensitive LIKE to ``GLOB`` (its
own LIKE ignores ASCII case) and ILIKE to ``lower(x) LIKE lower(pattern) ESCAPE '\\'``. ILIKE folds
ASCII letters only on SQLite; on PostgreSQL it follows the database's locale.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from cairn.errors import InvalidArgument
from cairn.store._sql.schema import INDEXED_VALUE_PREFIX, latest_metrics, params, runs, tags
from cairn.tracking.search_filter import Comparison, OrderBy

MAX_RESULTS_LIMIT = 50_000

ATTRIBUTE_COLUMNS: dict[str, sa.Column[Any]] = {
    "run_id": runs.c.run_uuid,
    "run_name": runs.c.name,
    "status": runs.c.status,
    "user_id": runs.c.user_id,
    "start_time": runs.c.start_time,
    "end_time": runs.c.end_time,
    "artifact_uri": runs.c.artifact_uri,
    "lifecycle_stage": runs.c.lifecycle_stage,
}
_KEY_VALUE_TABLES = {"param": params, "tag": tags}
_ESCAPE = "\\"


def _like_tokens(pattern: str) -> list[tuple[str, str]]:
    """Split a LIKE pattern into ``("any" | "one" | "lit", char)`` tokens (backslash escapes)."""
    tokens: list[tuple[str, str]] = []
    chars = iter(pattern)
    for char in chars:
        if char == _ESCAPE:
            tokens.append(("lit", next(chars, _ESCAPE)))  # a trailing backslash stands for itself
        elif char == "%":
            tokens.append(("any", char))
        elif char == "_":
            tokens.append(("one", char))
        else:
            tokens.append(("lit", char))
    return tokens


def _to_like(tokens: list[tuple[str, str]]) -> str:
    out = []
    for kind, char in tokens:
        if kind == "lit":
            out.append(_ESCAPE + char if char in "%_\\" else char)
        else:
            out.append(char)
    return "".join(out)


def _to_glob(tokens: list[tuple[str, str]]) -> str:
    out = []
    for kind, char in tokens:
        if kind == "any":
            out.append("*")
        elif kind == "one":
            out.append("?")
        else:
            out.append(f"[{char}]" if char in "*?[" else char)
    return "".join(out)


def like(column: ColumnElement[Any], pattern: str, *, case_sensitive: bool, dialect: str) -> ColumnElement[bool]:
    """``column LIKE pattern`` (or ILIKE) with the same meaning on SQLite and PostgreSQL."""
    tokens = _like_tokens(pattern)
    if dialect == "sqlite":
        if case_sensitive:
            return column.op("GLOB", is_comparison=True)(_to_glob(tokens))
        return column.ilike(_to_like(tokens), escape=_ESCAPE)
    if case_sensitive:
        return column.like(_to_like(tokens), escape=_ESCAPE)
    return column.ilike(_to_like(tokens), escape=_ESCAPE)


def _compare(column: ColumnElement[Any], op: str, value: Any, dialect: str) -> ColumnElement[bool]:
    if op == "=":
        return column == value
    if op == "!=":
        return column != value
    if op == ">":
        return column > value
    if op == ">=":
        return column >= value
    if op == "<":
        return column < value
    if op == "<=":
        return column <= value
    if op in ("LIKE", "ILIKE"):
        return like(column, str(value), case_sensitive=op == "LIKE", dialect=dialect)
    if op == "IN":
        return column.in_(list(value))
    if op == "NOT IN":
        return column.not_in(list(value))
    raise InvalidArgument(f"unsupported search operator {op!r}")


def _number(value: Any) -> Any:
    """Integral floats as int, so comparisons with BIGINT columns can use their indexes."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def filter_clause(comparison: Comparison, dialect: str) -> ColumnElement[bool]:
    """The WHERE condition (on ``runs``) of one parsed comparison."""
    entity, key, op, value = comparison.entity, comparison.key, comparison.op, comparison.value
    if entity == "attribute":
        column = ATTRIBUTE_COLUMNS.get(key)
        if column is None:
            raise InvalidArgument(f"cannot search on attribute {key!r}")
        return _compare(column, op, _number(value) if key in ("start_time", "end_time") else value, dialect)
    if entity == "metric":
        table = latest_metrics
        condition = _compare(table.c.value, op, value, dialect)
    elif entity in _KEY_VALUE_TABLES:
        table = _KEY_VALUE_TABLES[entity]
        condition = _compare(table.c.value, op, value, dialect)
        prefix = sa.func.substr(table.c.value, 1, INDEXED_VALUE_PREFIX)  # lets the (key, value) index serve
        if op == "=":
            condition = sa.and_(prefix == str(value)[:INDEXED_VALUE_PREFIX], condition)
        elif op == "IN":
            prefixes = [str(v)[:INDEXED_VALUE_PREFIX] for v in value]  # type: ignore[union-attr]
            condition = sa.and_(prefix.in_(prefixes), condition)
    else:
        raise InvalidArgument(f"cannot search on entity {entity!r}")
    return sa.exists().where(table.c.run_uuid == runs.c.run_uuid, table.c.key == key, condition)


def order_clauses(
    orders: Sequence[OrderBy],
) -> tuple[sa.FromClause, list[ColumnElement[Any]]]:
    """The FROM clause (runs plus outer joins) and ORDER BY expressions for ``orders``.

    Runs without the key (or with a NULL attribute) sort last in either direction; metric NaN
    sorts after numbers. Ties fall back to start time (newest first), then run id.
    """
    source: sa.FromClause = runs
    expressions: list[ColumnElement[Any]] = []
    for index, order in enumerate(orders):
        if order.entity == "attribute":
            column: ColumnElement[Any] | None = ATTRIBUTE_COLUMNS.get(order.key)
            if column is None:
                raise InvalidArgument(f"cannot order by attribute {order.key!r}")
            missing: ColumnElement[Any] = column.is_(None)
        else:
            table = latest_metrics if order.entity == "metric" else _KEY_VALUE_TABLES.get(order.entity)
            if table is None:
                raise InvalidArgument(f"cannot order by entity {order.entity!r}")
            alias = table.alias(f"order_{index}")
            source = source.outerjoin(alias, sa.and_(alias.c.run_uuid == runs.c.run_uuid, alias.c.key == order.key))
            column = alias.c.value
            missing = alias.c.run_uuid.is_(None)
            if order.entity == "metric":
                expressions.append(missing)
                missing = alias.c.is_nan
        expressions.append(missing)
        expressions.append(column.asc() if order.ascending else column.desc())
    expressions += [runs.c.start_time.desc(), runs.c.run_uuid.asc()]
    return source, expressions


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def decode_page_token(token: str | None) -> int:
    """The offset a page token stands for (0 without a token)."""
    if not token:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeError):
        raise InvalidArgument(f"invalid page_token {token!r}: pass the next_page_token of a previous search") from None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidArgument(f"invalid page_token {token!r}: pass the next_page_token of a previous search")
    return offset


def check_max_results(max_results: int) -> None:
    if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= MAX_RESULTS_LIMIT:
        raise InvalidArgument(f"max_results must be an integer from 1 to {MAX_RESULTS_LIMIT}, got {max_results!r}")
