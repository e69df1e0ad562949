"""MLflow's run-search grammar: filter strings and order-by clauses, parsed into plain objects.

The parser never builds SQL; stores compile :class:`Comparison` objects into parameterized
queries.

Grammar (keywords are case-insensitive)::

    filter     := comparison (AND comparison)*
    comparison := identifier op value | identifier (IN | NOT IN) "(" string ("," string)* ")"
    identifier := entity "." key | attribute
    entity     := metric(s) | param(s) | parameter(s) | tag(s) | attribute(s) | attr | run
    key        := [\\w][\\w./:-]* | `backtick quoted` | "double quoted"
    order_by   := identifier [ASC | DESC]

Strings take single or double quotes; the quote is escaped by doubling it (``'it''s'``) or with a
backslash (``'it\\'s'``), and ``\\\\`` is a backslash. Any other backslash is kept as written, so
LIKE patterns such as ``'a\\_b'`` reach the store unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NoReturn

from cairn.errors import FilterSyntaxError
from cairn.tracking.entities import LifecycleStage, RunStatus

__all__ = [
    "ATTRIBUTES",
    "NUMERIC_ATTRIBUTES",
    "Comparison",
    "Entity",
    "OrderBy",
    "parse_filter",
    "parse_order_by",
]

Entity = Literal["metric", "param", "tag", "attribute"]

# Attribute names after canonicalisation (aliases such as ``run_name``/``attributes.run_name``,
# ``attributes.run_id``/``run_id``, ``created``/``start_time`` map onto these).
ATTRIBUTES = (
    "run_id",
    "run_name",
    "status",
    "user_id",
    "start_time",
    "end_time",
    "artifact_uri",
    "lifecycle_stage",
)
NUMERIC_ATTRIBUTES = ("start_time", "end_time")


@dataclass(frozen=True, slots=True)
class Comparison:
    """``<entity>.<key> <op> <value>``.

    ``op`` is one of ``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=``, ``LIKE``, ``ILIKE``, ``IN``,
    ``NOT IN``. ``value`` is a float for metrics and numeric attributes, a str otherwise, and a
    tuple of str for ``IN``/``NOT IN``. Attribute keys are canonical names from :data:`ATTRIBUTES`;
    ``status`` values are upper-case and ``lifecycle_stage`` values lower-case (except in LIKE patterns).
    """

    entity: Entity
    key: str
    op: str
    value: float | str | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OrderBy:
    """One ``order_by`` clause; ``key`` is canonical for attributes, as in :class:`Comparison`."""

    entity: Entity
    key: str
    ascending: bool = True


_ENTITIES: dict[str, Entity] = {
    **dict.fromkeys(("metric", "metrics"), "metric"),
    **dict.fromkeys(("param", "params", "parameter", "parameters"), "param"),
    **dict.fromkeys(("tag", "tags"), "tag"),
    **dict.fromkeys(("attribute", "attributes", "attr", "run"), "attribute"),
}
_ATTRIBUTE_ALIASES = {"created": "start_time", "id": "run_id"}
_NUMERIC_OPS = ("=", "!=", ">", ">=", "<", "<=")
_STRING_OPS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN")

_WS = re.compile(r"\s*")
_WORD = re.compile(r"[A-Za-z_]\w*")
_KEY = re.compile(r"\w[\w./:-]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?![\w.])")
_OPERATOR = re.compile(r">=|<=|!=|=|>|<|(?:not\s+in|in|ilike|like)\b", re.IGNORECASE)
_RUN_ALIAS = re.compile(r"\s+(id|name)\b", re.IGNORECASE)
_DIRECTION = re.compile(r"(asc|desc)\b", re.IGNORECASE)
_AND = re.compile(r"and\b", re.IGNORECASE)
_OR = re.compile(r"or\b", re.IGNORECASE)
_TOKEN = re.compile(r"'[^']*'?|\"[^\"]*\"?|`[^`]*`?|[\w.]+|[<>=!]+|\S")
_LPAREN, _RPAREN, _COMMA = re.compile(r"\("), re.compile(r"\)"), re.compile(",")
_QUOTED = {q: re.compile(f"{q}((?:[^{q}\\\\]|\\\\.|{q}{q})*){q}", re.DOTALL) for q in "'\"`"}


def _canonical_attribute(key: str) -> str | None:
    name = key.strip().lower().replace(" ", "_")
    name = _ATTRIBUTE_ALIASES.get(name, name)
    return name if name in ATTRIBUTES else None


def _describe(entity: Entity, key: str) -> str:
    return f"{entity} {key!r}"


class _Scanner:
    """Cursor over one filter or order-by string; every method starts by skipping whitespace."""

    def __init__(self, text: str, what: str) -> None:
        self.text = text
        self.pos = 0
        self.what = what  # "filter" or "order_by clause", used in "got end of ..."

    def error(self, message: str, position: int | None = None) -> NoReturn:
        raise FilterSyntaxError(message, text=self.text, position=self.pos if position is None else position)

    def skip_ws(self) -> int:
        self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]  # \s* always matches
        return self.pos

    def at_end(self) -> bool:
        return self.skip_ws() >= len(self.text)

    def got(self) -> str:
        """Describe the token at the cursor for an error message."""
        if self.at_end():
            return f"end of {self.what}"
        match = _TOKEN.match(self.text, self.pos)
        return repr(match.group() if match else self.text[self.pos])

    def match(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        self.skip_ws()
        found = pattern.match(self.text, self.pos)
        if found:
            self.pos = found.end()
        return found

    def quoted(self) -> str:
        """Read a quoted string or key at the cursor (which must be on its opening quote)."""
        start, quote = self.pos, self.text[self.pos]
        found = _QUOTED[quote].match(self.text, start)
        if found is None:
            kind = "quoted key" if quote == "`" else "string"
            self.error(f"unterminated {kind}: no closing {quote} for the one opened here", start)
        self.pos = found.end()
        return re.sub(rf"\\([\\{quote}])|{quote}{quote}", lambda m: m.group(1) or quote, found.group(1))

    def identifier(self) -> tuple[Entity, str, str]:
        """Read ``entity.key`` or a bare attribute; return ``(entity, key, text as written)``."""
        start = self.skip_ws()
        if self.text.startswith("`", start):
            entity: Entity = "attribute"
            key, key_pos = self.quoted(), start
        else:
            word = self.match(_WORD)
            if word is None:
                self.error(
                    "expected an identifier such as metrics.<key>, params.<key>, tags.<key> or an attribute "
                    f"name, got {self.got()}"
                )
            if self.text.startswith(".", self.pos):
                if word.group().lower() not in _ENTITIES:
                    self.error(f"unknown entity {word.group()!r}; expected metrics, params, tags or attributes", start)
                entity, key_pos = _ENTITIES[word.group().lower()], self.pos + 1
                self.pos = key_pos
                if self.text.startswith(("`", '"'), key_pos):
                    key = self.quoted()
                elif key_match := _KEY.match(self.text, key_pos):
                    key, self.pos = key_match.group(), key_match.end()
                else:
                    self.error(f"expected a key after {self.text[start:key_pos]!r}, got {self.got()}", key_pos)
            else:
                entity, key, key_pos = "attribute", word.group(), start
                alias = _RUN_ALIAS.match(self.text, self.pos) if key.lower() == "run" else None
                if alias:  # MLflow UI spellings such as ``run id`` / ``Run name``
                    key, self.pos = f"run {alias.group(1)}", alias.end()
                elif key.lower() in _ENTITIES and _canonical_attribute(key) is None:
                    self.error(f"expected '.<key>' after {key!r}, e.g. {key}.my_key", self.pos)
        written = self.text[start : self.pos]
        if entity == "attribute":
            canonical = _canonical_attribute(key)
            if canonical is None:
                self.error(f"unknown attribute {key!r}; expected one of {', '.join(ATTRIBUTES)}", key_pos)
            key = canonical
        return entity, key, written

    def operator(self, entity: Entity, key: str, written: str) -> str:
        op_pos = self.skip_ws()
        found = self.match(_OPERATOR)
        if found is None:
            self.error(f"expected a comparison operator after {written!r}, got {self.got()}")
        op = " ".join(found.group().upper().split())
        numeric = entity == "metric" or (entity == "attribute" and key in NUMERIC_ATTRIBUTES)
        allowed = _NUMERIC_OPS if numeric else _STRING_OPS
        if op not in allowed:
            self.error(
                f"operator {op!r} is not supported for {_describe(entity, key)}; use one of {', '.join(allowed)}",
                op_pos,
            )
        return op

    def scalar(self, entity: Entity, key: str, numeric: bool) -> tuple[float | str, int]:
        """Read one quoted string or number; return it and its position."""
        value_pos = self.skip_ws()
        if self.text.startswith(("'", '"'), value_pos):
            text = self.quoted()
            if numeric:
                self.error(f"{_describe(entity, key)} needs a numeric value, got string {text!r}", value_pos)
            return text, value_pos
        number = self.match(_NUMBER)
        if number is None:
            self.error(f"expected a quoted string or a number after the operator, got {self.got()}", value_pos)
        if not numeric:
            self.error(
                f"{_describe(entity, key)} needs a quoted string value, got number {number.group()}; "
                f"write '{number.group()}'",
                value_pos,
            )
        return float(number.group()), value_pos

    def value(self, entity: Entity, key: str, op: str) -> float | str | tuple[str, ...]:
        numeric = entity == "metric" or (entity == "attribute" and key in NUMERIC_ATTRIBUTES)
        if op not in ("IN", "NOT IN"):
            value, value_pos = self.scalar(entity, key, numeric)
            return self.normalise(key, op, value, value_pos) if entity == "attribute" else value
        if self.match(_LPAREN) is None:
            self.error(f"expected '(' to open the {op} list, got {self.got()}")
        items: list[str] = []
        while True:
            if not items and self.match(_RPAREN):
                self.error(f"the {op} list is empty; give at least one quoted string", self.pos - 1)
            item, item_pos = self.scalar(entity, key, numeric)
            items.append(str(self.normalise(key, op, item, item_pos) if entity == "attribute" else item))
            if self.match(_RPAREN):
                return tuple(items)
            if self.match(_COMMA) is None:
                self.error(f"expected ',' or ')' in the {op} list, got {self.got()}")

    def normalise(self, key: str, op: str, value: float | str, position: int) -> float | str:
        """Canonicalise ``status`` / ``lifecycle_stage`` values (exact matches only, not LIKE patterns)."""
        if op in ("LIKE", "ILIKE") or not isinstance(value, str):
            return value
        if key == "status":
            if value.upper() not in RunStatus.__members__:
                choices = ", ".join(RunStatus.__members__)
                self.error(f"unknown run status {value!r}; expected one of {choices}", position)
            return value.upper()
        if key == "lifecycle_stage":
            stages = [stage.value for stage in LifecycleStage]
            if value.lower() not in stages:
                self.error(f"unknown lifecycle stage {value!r}; expected one of {', '.join(stages)}", position)
            return value.lower()
        return value


def parse_filter(text: str | None) -> list[Comparison]:
    """Parse an MLflow ``filter_string`` into a conjunction of comparisons.

    Args:
        text: e.g. ``"metrics.acc > 0.9 and params.lr = '0.01' and status = 'FINISHED'"``.
            ``None``, empty and whitespace-only strings mean "no filter".

    Returns:
        The comparisons, in the order written; a run matches when all of them hold.

    Raises:
        FilterSyntaxError: the string is malformed, uses ``OR``, names an unknown entity or
            attribute, or pairs an operator/value with an entity that does not accept it. The
            error's ``position`` is the offset of the offending token.
    """
    if text is None:
        return []
    scanner = _Scanner(text, "filter")
    comparisons: list[Comparison] = []
    if scanner.at_end():
        return comparisons
    while True:
        entity, key, written = scanner.identifier()
        op = scanner.operator(entity, key, written)
        comparisons.append(Comparison(entity, key, op, scanner.value(entity, key, op)))
        if scanner.at_end():
            return comparisons
        or_pos = scanner.pos
        if scanner.match(_OR):
            scanner.error("OR is not supported; combine comparisons with AND", or_pos)
        if scanner.match(_AND) is None:
            scanner.error(f"expected AND between comparisons, got {scanner.got()}")
        if scanner.at_end():
            scanner.error(f"expected a comparison after AND, got {scanner.got()}")


def parse_order_by(clauses: Sequence[str] | None) -> list[OrderBy]:
    """Parse MLflow ``order_by`` clauses such as ``["metrics.acc DESC", "start_time"]``.

    A single string is taken as one clause. Direction defaults to ascending.

    Raises:
        FilterSyntaxError: a clause is empty, names an unknown entity or attribute, or has
            anything other than ``ASC``/``DESC`` after the identifier; ``text`` is that clause.
    """
    if clauses is None:
        return []
    result: list[OrderBy] = []
    for clause in [clauses] if isinstance(clauses, str) else clauses:
        scanner = _Scanner(clause, "order_by clause")
        if scanner.at_end():
            scanner.error("empty order_by clause; expected e.g. 'metrics.acc DESC'")
        entity, key, written = scanner.identifier()
        direction = scanner.match(_DIRECTION)
        if not scanner.at_end():
            scanner.error(f"expected ASC or DESC after {written!r}, got {scanner.got()}")
        result.append(OrderBy(entity, key, ascending=direction is None or direction.group().lower() == "asc"))
    return result
