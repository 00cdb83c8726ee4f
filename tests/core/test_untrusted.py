"""Bounds on input from outside, and the command parser under any input: it raises
``InvalidCommand`` and nothing else, and its answers stay small."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.commands import MAX_COMMAND_CHARS, InvalidCommand, parse_command
from bridge.core.untrusted import (
    MAX_JSON_DEPTH,
    is_valid_text,
    json_depth,
    mask_tokens,
    printable_fields,
    quote,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def real_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((real_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((real_depth(v) for v in value.values()), default=0)
    return 0


@given(json_values)
def test_json_depth_is_the_nesting_of_any_json(value: object) -> None:
    assert json_depth(json.dumps(value)) == real_depth(value)


def test_json_depth_ignores_brackets_in_strings_and_survives_any_depth() -> None:
    assert json_depth('{"a": "[[[{{{"}') == 1
    assert json_depth(r'["\"[[[", []]') == 2
    assert json_depth("[" * 100_000) == 100_000
    assert json_depth("]]]") == 0
    assert json_depth('"unterminated [[[') == 0


@given(st.text(), st.integers(min_value=1, max_value=200))
def test_quote_is_bounded_and_ascii(text: str, limit: int) -> None:
    quoted = quote(text, limit)
    assert quoted.replace("…", "").isascii()
    assert len(quoted) <= limit + 20  # escapes included, then the length


def test_quote_shows_invalid_utf8_escaped_and_large_values_by_size() -> None:
    assert quote(b"\xffok".decode("utf-8", "surrogateescape")) == "\\udcffok"
    assert quote("x" * 1000, 10) == "xxxxxxxxxx…(1000 chars)"
    assert quote({"a": 1}) == "<JSON object of 1 items>"


def test_tokens_are_masked_in_any_text() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJl"
    assert mask_tokens(json.dumps({"events_token": "secret", "x": 1})) == (
        '{"events_token": "***", "x": 1}'
    )
    assert token not in mask_tokens(f'{{"event_token": "{token}", "other": "{token}"')
    assert "secret" not in mask_tokens('{"events_token": "sec\\"ret"}')


def test_printable_fields_are_encodable_bounded_and_masked() -> None:
    bad = b"\xff\xfe".decode("utf-8", "surrogateescape")
    fields = {bad: "v", "command": '{"events_token": "s3cr3t"}' + "x" * 9000}
    out = printable_fields(fields, 100)
    for name, value in out.items():
        name.encode("utf-8")
        value.encode("utf-8")
        assert len(value) <= 130
    assert "s3cr3t" not in json.dumps(out) and "\\udcff\\udcfe" in out


def _outcome(raw: str | bytes) -> InvalidCommand | None:
    try:
        parse_command(raw)
    except InvalidCommand as exc:
        assert len(exc.message) <= 400, exc.message
        assert is_valid_text(exc.message) and exc.message.replace("…", "").isascii()
        return exc
    return None


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_are_refused_or_parsed_never_raise_anything_else(raw: bytes) -> None:
    _outcome(raw)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(
            ["type", "terminal_id", "command_id", "order_id", "amount", "events_token", "x"]
        ),
        json_values,
    )
)
def test_any_json_shape_in_any_field_is_refused_with_a_small_answer(data: dict) -> None:
    data["terminal_id"] = "TILL-A"
    exc = _outcome(json.dumps(data))
    if exc is not None:
        assert exc.terminal_id == "TILL-A"  # answerable on its terminal


def test_the_inputs_that_stopped_the_daemon() -> None:
    cases = {
        "type as object": json.dumps({"type": {"a": 1}, "terminal_id": "T1"}),
        "type as array": json.dumps({"type": ["pay"], "terminal_id": "T1"}),
        "100,000 deep": "[" * 100_000,
        "deep in a field": '{"terminal_id": "T1", "type": "pay", "x": ' + "[" * 50 + "]" * 50 + "}",
        "1 MB type": json.dumps({"type": "p" * 1_000_000, "terminal_id": "T1"}),
        "invalid UTF-8": b'{"type": "pay", "terminal_id": "T1", "description": "\xff"}',
        "huge integer": '{"type": "pay", "terminal_id": "T1", "amount": ' + "9" * 5000 + "}",
    }
    for name, raw in cases.items():
        exc = _outcome(raw)
        assert exc is not None, name
    assert "deeper than" in (_outcome("[" * 60_000) or InvalidCommand("")).message
    big = _outcome(cases["1 MB type"])
    assert big is not None and big.terminal_id == "T1" and len(big.message) < 200
    assert len(cases["1 MB type"]) > MAX_COMMAND_CHARS
    utf = _outcome(cases["invalid UTF-8"])
    assert utf is not None and utf.terminal_id == "T1" and "UTF-8" in utf.message
    assert MAX_JSON_DEPTH < 50
