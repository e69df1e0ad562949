"""Tests for the MLflow run-search grammar parser."""

from __future__ import annotations

import pytest

from cairn.errors import FilterSyntaxError, InvalidArgument
from cairn.tracking.search_filter import ATTRIBUTES, Comparison, OrderBy, parse_filter, parse_order_by


def one(text: str) -> Comparison:
    result = parse_filter(text)
    assert len(result) == 1, result
    return result[0]


@pytest.mark.parametrize("text", [None, "", "   ", "\n\t "])
def test_empty_filter_is_no_filter(text: str | None) -> None:
    assert parse_filter(text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metrics.acc > 0.9", Comparison("metric", "acc", ">", 0.9)),
        ("metric.acc >= 1", Comparison("metric", "acc", ">=", 1.0)),
        ("metrics.loss < -2", Comparison("metric", "loss", "<", -2.0)),
        ("metrics.loss <= 1e-3", Comparison("metric", "loss", "<=", 0.001)),
        ("metrics.loss = -1.5E+2", Comparison("metric", "loss", "=", -150.0)),
        ("metrics.loss != .5", Comparison("metric", "loss", "!=", 0.5)),
        ("metrics.loss = +3.", Comparison("metric", "loss", "=", 3.0)),
        ("metrics.acc>0.9", Comparison("metric", "acc", ">", 0.9)),
        ("metrics.a<-1", Comparison("metric", "a", "<", -1.0)),
        ("metrics.train/loss < 0.5", Comparison("metric", "train/loss", "<", 0.5)),
        ("metrics.val-loss < 0.5", Comparison("metric", "val-loss", "<", 0.5)),
        ("metrics.1st_epoch_acc > 0", Comparison("metric", "1st_epoch_acc", ">", 0.0)),
        ("metrics.`my metric` > 0", Comparison("metric", "my metric", ">", 0.0)),
        ('metrics."my metric" > 0', Comparison("metric", "my metric", ">", 0.0)),
        ("params.lr = '0.01'", Comparison("param", "lr", "=", "0.01")),
        ('param.lr = "0.01"', Comparison("param", "lr", "=", "0.01")),
        ("parameters.optimizer != 'adam'", Comparison("param", "optimizer", "!=", "adam")),
        ("params.model LIKE 'res%'", Comparison("param", "model", "LIKE", "res%")),
        ("params.model ilike '%NET'", Comparison("param", "model", "ILIKE", "%NET")),
        ("tags.mlflow.runName = 'a'", Comparison("tag", "mlflow.runName", "=", "a")),
        ("tags.\"mlflow.runName\" = 'a'", Comparison("tag", "mlflow.runName", "=", "a")),
        ("tag.`team name` = 'ml'", Comparison("tag", "team name", "=", "ml")),
        ("tags.`a``b` = 'x'", Comparison("tag", "a`b", "=", "x")),
        ("tags.env:stage = 'prod'", Comparison("tag", "env:stage", "=", "prod")),
        ("tags.x = ''", Comparison("tag", "x", "=", "")),
        ("attributes.status = 'FINISHED'", Comparison("attribute", "status", "=", "FINISHED")),
        ("attribute.status = 'finished'", Comparison("attribute", "status", "=", "FINISHED")),
        ("status != 'Running'", Comparison("attribute", "status", "!=", "RUNNING")),
        ("status LIKE 'FIN%'", Comparison("attribute", "status", "LIKE", "FIN%")),
        ("run_name = 'baseline'", Comparison("attribute", "run_name", "=", "baseline")),
        ("attributes.run_name = 'baseline'", Comparison("attribute", "run_name", "=", "baseline")),
        ("Run Name ILIKE '%base%'", Comparison("attribute", "run_name", "ILIKE", "%base%")),
        ("attributes.`Run name` = 'b'", Comparison("attribute", "run_name", "=", "b")),
        ("run_id = 'abc'", Comparison("attribute", "run_id", "=", "abc")),
        ("run id = 'abc'", Comparison("attribute", "run_id", "=", "abc")),
        ("`run id` = 'abc'", Comparison("attribute", "run_id", "=", "abc")),
        ("attr.run_id = 'abc'", Comparison("attribute", "run_id", "=", "abc")),
        ("run.id = 'abc'", Comparison("attribute", "run_id", "=", "abc")),
        ("start_time > 1700000000000", Comparison("attribute", "start_time", ">", 1.7e12)),
        ("end_time <= 5", Comparison("attribute", "end_time", "<=", 5.0)),
        ("created >= 5", Comparison("attribute", "start_time", ">=", 5.0)),
        ("Created < 5", Comparison("attribute", "start_time", "<", 5.0)),
        ("attributes.created < 5", Comparison("attribute", "start_time", "<", 5.0)),
        ("user_id = 'alice'", Comparison("attribute", "user_id", "=", "alice")),
        ("artifact_uri LIKE 's3://bucket/%'", Comparison("attribute", "artifact_uri", "LIKE", "s3://bucket/%")),
        ("lifecycle_stage = 'Active'", Comparison("attribute", "lifecycle_stage", "=", "active")),
        ("attributes.lifecycle_stage != 'deleted'", Comparison("attribute", "lifecycle_stage", "!=", "deleted")),
    ],
)
def test_single_comparison(text: str, expected: Comparison) -> None:
    assert one(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tags.x = 'it''s'", "it's"),
        ("tags.x = 'it\\'s'", "it's"),
        ('tags.x = "say ""hi"""', 'say "hi"'),
        ('tags.x = "say \\"hi\\""', 'say "hi"'),
        ('tags.x = "it\'s"', "it's"),
        ("tags.x = 'back\\\\slash'", "back\\slash"),
        ("tags.x LIKE 'a\\_b%'", "a\\_b%"),  # other backslashes reach the store unchanged
        ("tags.x = 'C:\\data'", "C:\\data"),
        ("tags.x = 'a AND b'", "a AND b"),
        ("tags.x = 'x OR y'", "x OR y"),
        ("tags.x = ' spaced  '", " spaced  "),
        ("tags.x = 'multi\nline'", "multi\nline"),
        ("tags.x = 'ünïcödé'", "ünïcödé"),
    ],
)
def test_string_values_and_escapes(text: str, expected: str) -> None:
    assert one(text).value == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tags.x IN ('a')", Comparison("tag", "x", "IN", ("a",))),
        ("tags.x IN ('a', 'b','c' )", Comparison("tag", "x", "IN", ("a", "b", "c"))),
        ("tags.x in(\"a\",'b')", Comparison("tag", "x", "IN", ("a", "b"))),
        ("tags.x NOT IN ('a', 'b')", Comparison("tag", "x", "NOT IN", ("a", "b"))),
        ("tags.x not   in ('a')", Comparison("tag", "x", "NOT IN", ("a",))),
        ("params.opt IN ('adam', 'it''s')", Comparison("param", "opt", "IN", ("adam", "it's"))),
        ("run_id IN ('r1', 'r2')", Comparison("attribute", "run_id", "IN", ("r1", "r2"))),
        ("status IN ('running', 'Failed')", Comparison("attribute", "status", "IN", ("RUNNING", "FAILED"))),
        ("status NOT IN ('KILLED')", Comparison("attribute", "status", "NOT IN", ("KILLED",))),
        ("tags.x IN ('a, b', ')')", Comparison("tag", "x", "IN", ("a, b", ")"))),
    ],
)
def test_in_lists(text: str, expected: Comparison) -> None:
    assert one(text) == expected


def test_conjunction_keeps_order_and_accepts_any_case_of_and() -> None:
    text = "metrics.acc > 0.9 and params.lr = '0.01' AND tags.mlflow.runName = 'a' And status = 'FINISHED'"
    assert parse_filter(text) == [
        Comparison("metric", "acc", ">", 0.9),
        Comparison("param", "lr", "=", "0.01"),
        Comparison("tag", "mlflow.runName", "=", "a"),
        Comparison("attribute", "status", "=", "FINISHED"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "metrics.acc>0.9 AND params.lr='0.01'",
        "  metrics.acc   >   0.9   AND   params.lr   =   '0.01'  ",
        "\tmetrics.acc\n>\n0.9\nand\tparams.lr='0.01'\n",
        'metrics.acc > 0.9 AND params.lr = "0.01"',
        "metrics.acc > 9e-1 and params.lr='0.01'",
    ],
)
def test_whitespace_variations(text: str) -> None:
    assert parse_filter(text) == [Comparison("metric", "acc", ">", 0.9), Comparison("param", "lr", "=", "0.01")]


def test_keywords_are_case_insensitive() -> None:
    assert parse_filter("tags.a like 'x%' and tags.b IlIkE 'y%' AND tags.c Not In ('z')") == [
        Comparison("tag", "a", "LIKE", "x%"),
        Comparison("tag", "b", "ILIKE", "y%"),
        Comparison("tag", "c", "NOT IN", ("z",)),
    ]


def test_keyword_like_keys_are_keys() -> None:
    assert parse_filter("tags.and = 'x' and params.or = 'y' and metrics.in > 1") == [
        Comparison("tag", "and", "=", "x"),
        Comparison("param", "or", "=", "y"),
        Comparison("metric", "in", ">", 1.0),
    ]


def test_every_canonical_attribute_parses() -> None:
    for name in ATTRIBUTES:
        value = "1" if name in ("start_time", "end_time") else "'RUNNING'" if name == "status" else "'active'"
        assert one(f"attributes.{name} = {value}").key == name
        assert one(f"{name} = {value}").key == name


def assert_error(text: str, message: str, position: int) -> FilterSyntaxError:
    with pytest.raises(FilterSyntaxError) as info:
        parse_filter(text)
    error = info.value
    assert message in str(error), str(error)
    assert error.position == position, (error.position, str(error))
    assert error.text == text
    caret_line = str(error).splitlines()[-1]
    assert caret_line == "  " + " " * position + "^"
    return error


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("metrics.acc x", "expected a comparison operator after 'metrics.acc', got 'x'", 12),
        ("metrics.acc", "expected a comparison operator after 'metrics.acc', got end of filter", 11),
        ("metrics.acc == 1", "expected a quoted string or a number after the operator, got '='", 13),
        ("metrics.acc => 1", "expected a quoted string or a number after the operator, got '>'", 13),
        ("metricz.acc > 1", "unknown entity 'metricz'; expected metrics, params, tags or attributes", 0),
        ("metrics.a > 1 and foo.bar = 'x'", "unknown entity 'foo'", 18),
        ("metrics > 1", "expected '.<key>' after 'metrics'", 7),
        ("metrics. > 1", "expected a key after 'metrics.', got '>'", 8),
        ("metrics.acc = 'abc'", "metric 'acc' needs a numeric value, got string 'abc'", 14),
        ("start_time > '2024'", "attribute 'start_time' needs a numeric value, got string '2024'", 13),
        ("params.lr = 0.01", "param 'lr' needs a quoted string value, got number 0.01", 12),
        ("tags.x = 5", "tag 'x' needs a quoted string value, got number 5", 9),
        ("status = FINISHED", "expected a quoted string or a number after the operator, got 'FINISHED'", 9),
        ("metrics.a > 1abc", "expected a quoted string or a number after the operator, got '1abc'", 12),
        ("metrics.a > 1.2.3", "expected a quoted string or a number", 12),
        ("metrics.a >", "expected a quoted string or a number after the operator, got end of filter", 11),
        ("tags.x = 'abc", "unterminated string", 9),
        ('tags.x = "abc', "unterminated string", 9),
        ("tags.x = 'it\\'s", "unterminated string", 9),
        ("tags.`abc = 'x'", "unterminated quoted key", 5),
        ("tags.x IN ('a', 'b", "unterminated string", 16),
        ("metrics.a > 1 OR metrics.b > 2", "OR is not supported; combine comparisons with AND", 14),
        ("metrics.a > 1 or metrics.b > 2", "OR is not supported; combine comparisons with AND", 14),
        ("metrics.a > 1 metrics.b > 2", "expected AND between comparisons, got 'metrics.b'", 14),
        ("metrics.a > 1 AND", "expected a comparison after AND, got end of filter", 17),
        ("metrics.a > 1 AND  ", "expected a comparison after AND, got end of filter", 19),
        (
            "metrics.acc LIKE '0.9%'",
            "operator 'LIKE' is not supported for metric 'acc'; use one of =, !=, >, >=, <, <=",
            12,
        ),
        ("metrics.acc IN (1)", "operator 'IN' is not supported for metric 'acc'", 12),
        (
            "params.lr > '1'",
            "operator '>' is not supported for param 'lr'; use one of =, !=, LIKE, ILIKE, IN, NOT IN",
            10,
        ),
        ("tags.x <= 'b'", "operator '<=' is not supported for tag 'x'", 7),
        ("end_time LIKE '1%'", "operator 'LIKE' is not supported for attribute 'end_time'", 9),
        (
            "status = 'done'",
            "unknown run status 'done'; expected one of RUNNING, SCHEDULED, FINISHED, FAILED, KILLED",
            9,
        ),
        ("status IN ('RUNNING', 'nope')", "unknown run status 'nope'", 22),
        ("lifecycle_stage = 'gone'", "unknown lifecycle stage 'gone'; expected one of active, deleted", 18),
        ("foo = 'x'", "unknown attribute 'foo'; expected one of run_id, run_name, status", 0),
        ("attributes.foo = 'x'", "unknown attribute 'foo'", 11),
        ("tags.x IN 'a'", "expected '(' to open the IN list, got \"'a'\"", 10),
        ("tags.x IN ()", "the IN list is empty", 11),
        ("tags.x IN ('a' 'b')", "expected ',' or ')' in the IN list, got \"'b'\"", 15),
        ("tags.x IN ('a',)", "expected a quoted string or a number after the operator, got ')'", 15),
        ("tags.x IN ('a', 1)", "tag 'x' needs a quoted string value, got number 1", 16),
        ("tags.x NOT LIKE 'a'", "expected a comparison operator after 'tags.x', got 'NOT'", 7),
        ("(metrics.a > 1)", "expected an identifier such as metrics.<key>", 0),
        ("metrics.a > 1 AND (tags.b = 'x')", "expected an identifier such as metrics.<key>", 18),
        ("= 1", "expected an identifier such as metrics.<key>", 0),
        ("  metrics.a ~ 1", "expected a comparison operator after 'metrics.a', got '~'", 12),
    ],
)
def test_errors_name_problem_and_point_at_token(text: str, message: str, position: int) -> None:
    assert_error(text, message, position)


def test_filter_syntax_error_is_an_invalid_argument_and_value_error() -> None:
    error = assert_error("metrics.a ? 1", "expected a comparison operator", 10)
    assert isinstance(error, InvalidArgument)
    assert isinstance(error, ValueError)


def test_order_by_clauses() -> None:
    clauses = [
        "metrics.acc DESC",
        "params.lr",
        "attributes.start_time ASC",
        "start_time",
        "tags.`x y` desc",
        'tags."mlflow.runName" asc',
        "tags.mlflow.runName",
        "metric.`my metric`   Desc  ",
        "  run_name",
        "Created DESC",
        "attributes.`Run name`",
        "status desc",
    ]
    assert parse_order_by(clauses) == [
        OrderBy("metric", "acc", ascending=False),
        OrderBy("param", "lr", ascending=True),
        OrderBy("attribute", "start_time", ascending=True),
        OrderBy("attribute", "start_time", ascending=True),
        OrderBy("tag", "x y", ascending=False),
        OrderBy("tag", "mlflow.runName", ascending=True),
        OrderBy("tag", "mlflow.runName", ascending=True),
        OrderBy("metric", "my metric", ascending=False),
        OrderBy("attribute", "run_name", ascending=True),
        OrderBy("attribute", "start_time", ascending=False),
        OrderBy("attribute", "run_name", ascending=True),
        OrderBy("attribute", "status", ascending=False),
    ]


@pytest.mark.parametrize("clauses", [None, [], ()])
def test_order_by_empty(clauses: list[str] | None) -> None:
    assert parse_order_by(clauses) == []


def test_order_by_single_string_is_one_clause() -> None:
    assert parse_order_by("metrics.acc DESC") == [OrderBy("metric", "acc", ascending=False)]


@pytest.mark.parametrize(
    ("clause", "message", "position"),
    [
        ("metrics.acc down", "expected ASC or DESC after 'metrics.acc', got 'down'", 12),
        ("metrics.acc DESC ASC", "expected ASC or DESC after 'metrics.acc', got 'ASC'", 17),
        ("metrics.acc DESC, params.lr", "expected ASC or DESC after 'metrics.acc', got ','", 16),
        ("metricz.acc", "unknown entity 'metricz'", 0),
        ("foo DESC", "unknown attribute 'foo'", 0),
        ("tags.`x y desc", "unterminated quoted key", 5),
        ("params", "expected '.<key>' after 'params'", 6),
    ],
)
def test_order_by_errors(clause: str, message: str, position: int) -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse_order_by(["params.lr", clause])
    assert message in str(info.value)
    assert info.value.position == position
    assert info.value.text == clause


@pytest.mark.parametrize("clause", ["", "   "])
def test_order_by_empty_clause_is_an_error(clause: str) -> None:
    with pytest.raises(FilterSyntaxError, match="empty order_by clause"):
        parse_order_by([clause])
