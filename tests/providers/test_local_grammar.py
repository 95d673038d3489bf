"""The embedded model's output plans and shaper, without the model.

The grammars are checked by a small GBNF recognizer written here (the subset that
patchbay.providers.local.grammar writes): values that validate against a schema must match its
grammar, values that do not must not. llama.cpp's own parser is exercised by the model tier
(tests/providers/test_local_grammar_model.py), which runs every kind of plan.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest

from patchbay.errors import InvalidRequest, ProtocolError
from patchbay.events import Finish, Logprobs, StreamEvent, TextDelta, ToolCallDelta, Usage
from patchbay.providers.local.grammar import (
    MAX_STRING,
    OutputPlan,
    OutputShaper,
    call_id,
    output_plan,
    render_tool_calls,
    schema_grammar,
    shape_stream,
    with_instructions,
)

WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"},
                                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                  "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": WEATHER_PARAMS}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone",
                                         "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                                                        "required": ["tz"]}}}
NO_PARAMS = {"type": "function", "function": {"name": "ping"}}


# -- a GBNF recognizer for the grammars under test -------------------------------------------------

_TOKEN = re.compile(r'\s*(?:(?P<lit>"(?:[^"\\]|\\.)*")|(?P<cls>\[(?:[^\]\\]|\\.)*\])|(?P<name>[a-zA-Z][a-zA-Z0-9-]*)'
                    r'|(?P<rep>\{\d+(?:,\d*)?\})|(?P<op>[()|?*+]))')


def _unescape(body: str) -> list[str]:
    """The characters of a literal's or class's body, escapes resolved (``\\]`` and ``\\-`` kept as marks)."""
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]
            if nxt == "x":
                out.append(chr(int(body[i + 2:i + 4], 16)))
                i += 4
                continue
            if nxt == "u":
                out.append(chr(int(body[i + 2:i + 6], 16)))
                i += 6
                continue
            if nxt == "U":
                out.append(chr(int(body[i + 2:i + 10], 16)))
                i += 10
                continue
            out.append({"n": "\n", "r": "\r", "t": "\t"}.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return out


def _parse_class(text: str) -> tuple[bool, list[tuple[str, str]]]:
    body = text[1:-1]
    negate = body.startswith("^")
    chars = _unescape(body[1:] if negate else body)
    ranges, i = [], 0
    while i < len(chars):
        if i + 2 < len(chars) and chars[i + 1] == "-":
            ranges.append((chars[i], chars[i + 2]))
            i += 3
        else:
            ranges.append((chars[i], chars[i]))
            i += 1
    return negate, ranges


@functools.lru_cache(maxsize=256)
def parse_gbnf(text: str) -> dict[str, Any]:
    rules: dict[str, Any] = {}
    for line in text.strip().splitlines():
        name, body = line.split(" ::= ", 1)
        tokens = [m for m in _TOKEN.finditer(body)]
        assert "".join(m.group(0) for m in tokens).strip() == body.strip(), f"unparsed text in {line!r}"
        node, rest = _alternatives(tokens)
        assert not rest, line
        assert name not in rules, f"rule {name} defined twice"
        rules[name] = node
    for node in rules.values():
        _check_refs(node, rules)
    return rules


def _alternatives(tokens: list[re.Match[str]]) -> tuple[Any, list[re.Match[str]]]:
    options = []
    while True:
        seq, tokens = _sequence(tokens)
        options.append(seq)
        if tokens and tokens[0].group("op") == "|":
            tokens = tokens[1:]
            continue
        return ("alt", options), tokens


def _sequence(tokens: list[re.Match[str]]) -> tuple[Any, list[re.Match[str]]]:
    items: list[Any] = []
    while tokens and tokens[0].group("op") not in ("|", ")"):
        token, tokens = tokens[0], tokens[1:]
        if token.group("lit"):
            item: Any = ("lit", "".join(_unescape(token.group("lit")[1:-1])))
        elif token.group("cls"):
            item = ("cls", *_parse_class(token.group("cls")))
        elif token.group("name"):
            item = ("ref", token.group("name"))
        elif token.group("op") == "(":
            item, tokens = _alternatives(tokens)
            assert tokens[0].group("op") == ")"
            tokens = tokens[1:]
        else:
            raise AssertionError(f"unexpected {token.group(0)!r}")
        while tokens and (tokens[0].group("op") in ("?", "*", "+") or tokens[0].group("rep")):
            op, tokens = tokens[0], tokens[1:]
            if op.group("rep"):
                low, _, high = op.group("rep")[1:-1].partition(",")
                bounds = (int(low), int(low) if "," not in op.group("rep") else (int(high) if high else None))
            else:
                bounds = {"?": (0, 1), "*": (0, None), "+": (1, None)}[op.group("op")]
            item = ("rep", item, *bounds)
        items.append(item)
    return ("seq", items), tokens


def matches(grammar: str, text: str) -> bool:
    """Whether ``text`` is in the language of ``grammar`` (from its root)."""
    rules = parse_gbnf(grammar)

    @functools.cache
    def rule_ends(name: str, pos: int) -> frozenset[int]:
        return ends(rules[name], pos)

    def ends(node: Any, pos: int) -> frozenset[int]:
        kind = node[0]
        if kind == "lit":
            return frozenset([pos + len(node[1])]) if text.startswith(node[1], pos) else frozenset()
        if kind == "cls":
            if pos >= len(text):
                return frozenset()
            inside = any(lo <= text[pos] <= hi for lo, hi in node[2])
            return frozenset([pos + 1]) if inside != node[1] else frozenset()
        if kind == "ref":
            return rule_ends(node[1], pos)
        if kind == "alt":
            return frozenset().union(*(ends(option, pos) for option in node[1]))
        if kind == "seq":
            current = frozenset([pos])
            for item in node[1]:
                current = frozenset().union(*(ends(item, p) for p in current)) if current else current
            return current
        _, item, low, high = node
        result: set[int] = set()
        current, count, seen = frozenset([pos]), 0, set[int]()
        while current:
            if count >= low:
                result |= current
                current = frozenset(current - seen)
                seen |= current
            if high is not None and count == high:
                break
            current = frozenset().union(*(ends(item, p) for p in current)) if current else current
            count += 1
        return frozenset(result)

    return len(text) in ends(("ref", "root"), 0)


def _check_refs(node: Any, rules: dict[str, Any]) -> None:
    if node[0] == "ref":
        assert node[1] in rules, f"rule {node[1]} is used but not defined"
    elif node[0] in ("alt", "seq"):
        for child in node[1]:
            _check_refs(child, rules)
    elif node[0] == "rep":
        _check_refs(node[1], rules)


def test_the_recognizer_itself() -> None:
    grammar = 'root ::= "a" b{1,2} c?\nb ::= [0-9] | "x"\nc ::= [^a-c]*\n'
    assert matches(grammar, "a1") and matches(grammar, "ax9zz") and not matches(grammar, "a")
    assert matches(grammar, "a123") and not matches(grammar, "a1a") and not matches(grammar, "a1b")


# -- plans -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tools", "choice", "fmt"), [
    (None, None, None), ([], None, None), ([WEATHER], "none", None), (None, None, {"type": "text"}),
    ([WEATHER], "none", {"type": "text"}),
])
def test_plain_text_needs_no_plan(tools: Any, choice: Any, fmt: Any) -> None:
    assert output_plan(tools, choice, fmt, None) is None


def test_required_allows_several_calls_unless_parallel_is_off() -> None:
    plan = output_plan([WEATHER, TIME], "required", None, None)
    assert plan is not None and plan.kind == "calls" and plan.parallel
    assert plan.tools == ("get_weather", "get_time")
    one = output_plan([WEATHER, TIME], "required", None, False)
    assert one is not None and not one.parallel
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    call2 = '{"name": "get_time", "arguments": {"tz": "UTC"}}'
    assert matches(plan.grammar, f"<tool_call>[{call}]</tool_call>")
    assert matches(plan.grammar, f"<tool_call>[{call}, {call2}]</tool_call>")
    assert matches(one.grammar, f"<tool_call>[{call}]</tool_call>")
    assert not matches(one.grammar, f"<tool_call>[{call}, {call2}]</tool_call>")
    assert not matches(plan.grammar, "Paris is sunny.")  # required: no text answer
    assert not matches(plan.grammar, '<tool_call>[{"name": "get_weather", "arguments": {"town": "Paris"}}]</tool_call>')
    assert not matches(plan.grammar, '<tool_call>[{"name": "other", "arguments": {}}]</tool_call>')


def test_a_named_tool_is_the_only_one_allowed() -> None:
    plan = output_plan([WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}}, None, None)
    assert plan is not None and plan.kind == "calls" and plan.tools == ("get_time",) and not plan.parallel
    assert matches(plan.grammar, '<tool_call>[{"name": "get_time", "arguments": {"tz": "UTC"}}]</tool_call>')
    assert not matches(plan.grammar, '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>')
    assert "get_time" in plan.instructions


@pytest.mark.parametrize("choice", [None, "auto"])
def test_auto_is_a_call_or_text_that_cannot_start_like_one(choice: Any) -> None:
    plan = output_plan([WEATHER], choice, None, None)
    assert plan is not None and plan.kind == "auto" and not plan.json
    call = '{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}'
    assert matches(plan.grammar, f"<tool_call>[{call}]</tool_call>")
    assert matches(plan.grammar, "It is sunny in Paris.\nNice <b>day</b>!")
    for text in ("<b>hi</b>", " leading space", "\nnewline", ""):
        assert not matches(plan.grammar, text)
    assert "plain text" in plan.instructions


def test_auto_with_a_json_format_is_a_call_or_json() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "properties": {
        "a": {"type": "integer"}}, "required": ["a"]}}}
    plan = output_plan([WEATHER], "auto", fmt, None)
    assert plan is not None and plan.kind == "auto" and plan.json
    assert matches(plan.grammar, '{"a": 3}') and not matches(plan.grammar, "text")
    assert matches(plan.grammar, '<tool_call>[{"name": "get_weather", "arguments": {"city": "x"}}]</tool_call>')


def test_instructions_list_the_tools_and_the_reply_shape() -> None:
    plan = output_plan([WEATHER, NO_PARAMS], "auto", None, None)
    assert plan is not None
    for needle in ("get_weather", "Current weather in a city", json.dumps(WEATHER_PARAMS), "ping", "<tool_call>[",
                   "]</tool_call>"):
        assert needle in plan.instructions
    assert matches(plan.grammar, '<tool_call>[{"name": "ping", "arguments": {}}]</tool_call>')


def test_json_formats() -> None:
    plan = output_plan(None, None, {"type": "json_object"}, None)
    assert plan is not None and plan.kind == "json" and plan.json
    assert matches(plan.grammar, '{"a": [1, 2.5, {"b": null}], "c": true}')
    assert not matches(plan.grammar, "[1]") and not matches(plan.grammar, "hello")
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    plan = output_plan(None, "none", {"type": "json_schema", "json_schema": {"name": "person", "schema": schema,
                                                                            "strict": True}}, None)
    assert plan is not None and plan.kind == "json"
    assert json.dumps(schema) in plan.instructions and "person" in plan.instructions
    assert matches(plan.grammar, '{"name": "Ada"}') and not matches(plan.grammar, "{}")


def test_plans_are_cached_and_keep_the_property_order() -> None:
    first = output_plan([WEATHER], "required", None, None)
    assert output_plan([json.loads(json.dumps(WEATHER))], "required", None, None) is first
    plan = output_plan(None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"zeta": {"type": "integer"}, "alpha": {"type": "integer"}},
        "required": ["zeta", "alpha"]}}}, None)
    assert plan is not None
    assert matches(plan.grammar, '{"zeta": 1, "alpha": 2}') and not matches(plan.grammar, '{"alpha": 2, "zeta": 1}')


@pytest.mark.parametrize(("args", "param"), [
    (([WEATHER, TIME, {"type": "function", "function": {"name": "a", "parameters": {
        "type": "object", "properties": {"s": {"type": "string", "pattern": "^a+$"}}}}}],),
     "tools[2].function.parameters"),
    (([{"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {
        "x": {"$ref": "https://example.invalid/s.json"}}}}}],), "tools[0].function.parameters"),
    (([{"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {
        "x": {"$ref": "#/$defs/missing"}}}}}],), "tools[0].function.parameters"),
    ((None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}),
     "response_format.json_schema.schema"),
    ((None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}), "response_format.json_schema.schema"),
    ((None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "minLength": 5, "maxLength": 2}}}), "response_format.json_schema.schema"),
    ((None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "integer", "minimum": 5, "maximum": 2}}}), "response_format.json_schema.schema"),
    ((None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "enum": [1, 2]}}}), "response_format.json_schema.schema"),
])
def test_what_a_grammar_cannot_enforce_names_its_parameter(args: tuple[Any, ...], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        output_plan(*args)
    assert info.value.param == param
    assert "grammar" in info.value.message


def test_the_request_checks_apply() -> None:
    """The shared checks (tests/chat/test_chat_output.py) come first: a bad field is refused as there."""
    with pytest.raises(InvalidRequest) as info:
        output_plan([WEATHER, WEATHER])
    assert info.value.param == "tools[1].function.name"


def test_a_json_schema_without_a_schema_is_any_json_value() -> None:
    plan = output_plan(None, None, {"type": "json_schema", "json_schema": {"name": "x"}}, None)
    assert plan is not None and plan.kind == "json"
    for text in ("[1, 2]", '"x"', '{"a": null}', "3.5"):
        assert matches(plan.grammar, text)
    assert not matches(plan.grammar, "hello")


# -- schemas: what matches is what validates --------------------------------------------------------

SCHEMAS: list[tuple[dict[str, Any], list[Any], list[str]]] = [
    # (schema, valid values, texts that must not match)
    ({"type": "string", "maxLength": 3}, ["", "abc", "a\"b", "é\n"], ['"abcd"', '"a\nb"', "'a'"]),
    ({"type": "string", "minLength": 2}, ["ab", "x" * MAX_STRING], ['"a"', '"' + "x" * (MAX_STRING + 1) + '"']),
    ({"type": "integer"}, [0, -7, 123456789], ["01", "1.5", "-", "1e3", "+1"]),
    ({"type": "number"}, [0, -2.25, 3.0, 10], ["1.", ".5", "1e5", "NaN"]),
    ({"type": "boolean"}, [True, False], ["True", "1"]),
    ({"type": ["string", "null"]}, ["x", None], ["1"]),
    ({"enum": ["a", 1, None, [1, 2]]}, ["a", 1, None, [1, 2]], ['"b"', "2"]),
    ({"const": {"k": "v"}}, [{"k": "v"}], ['{"k": "w"}']),
    ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}}},
     [{}, {"a": 1}, {"b": "x"}, {"a": 1, "c": True}, {"a": 1, "b": "", "c": False}],
     ['{"b": "x", "a": 1}', '{"d": 1}', '{,"a": 1}', '{"a": 1,}']),
    ({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["b"]},
     [{"b": "x"}, {"a": 2, "b": "x"}], ["{}", '{"a": 2}']),
    ({"type": "object", "additionalProperties": {"type": "integer"}}, [{}, {"x": 1, "y": 2}], ['{"x": "1"}']),
    ({"type": "object", "properties": {}, "additionalProperties": False}, [{}], ['{"a": 1}']),
    ({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3}, [[1], [1, 2, 3]],
     ["[]", "[1, 2, 3, 4]", '["a"]']),
    ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False}, [["a", 1]],
     ['[1, "a"]', '["a"]']),
    ({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]}, [1, "x"], ['"xy"', "true"]),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]},
     [{"a": 1, "b": 2}], ['{"a": 1}', '{"b": 2}']),
    ({"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {
        "type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"]}}, "$ref": "#/$defs/node"},
     [{"v": 1}, {"v": 1, "kids": [{"v": 2, "kids": []}, {"v": 3}]}], ['{"v": 1, "kids": [{}]}']),
    ({"type": "object", "properties": {"when": {"type": "string", "format": "date", "description": "a day"}}},
     [{"when": "2024-01-01"}], []),
    ({}, [1, "x", None, {"a": [True]}], ["nope"]),
]


@pytest.mark.parametrize(("schema", "valid", "invalid"), SCHEMAS, ids=[json.dumps(s)[:40] for s, _, _ in SCHEMAS])
def test_schema_grammars_match_valid_values_only(schema: dict[str, Any], valid: list[Any], invalid: list[str]) -> None:
    grammar = schema_grammar(schema)
    validator = jsonschema.Draft202012Validator(schema)
    literal = "enum" in schema or "const" in schema  # written compactly, as in the schema
    for value in valid:
        assert validator.is_valid(value)
        texts = {json.dumps(value, ensure_ascii=False, separators=(",", ":"))}
        if not literal:
            texts.add(json.dumps(value, ensure_ascii=False))  # a space after ":" and "," is allowed
        for text in texts:
            assert matches(grammar, text), f"{text!r} should match"
    for text in invalid:
        assert not matches(grammar, text), f"{text!r} should not match"


@pytest.mark.parametrize("kind", ["integer", "number"])
def test_numeric_bounds_are_exact_for_integers(kind: str) -> None:
    rng = random.Random(3)
    cases = [(0, 0), (-5, 120), (1, None), (None, -3), (-1000, -990), (7, 7), (99, 101), (0, 9999), (-15, 15)]
    cases += [tuple(sorted(rng.sample(range(-3000, 3000), 2))) for _ in range(6)]  # type: ignore[misc]
    for low, high in cases:
        schema: dict[str, Any] = {"type": kind}
        if low is not None:
            schema["minimum"] = low
        if high is not None:
            schema["maximum"] = high
        grammar = schema_grammar(schema)
        first = low if low is not None else (high or 0) - 40
        last = high if high is not None else (low or 0) + 40
        span = range(first - 30, last + 30)
        for value in span:
            inside = (low is None or value >= low) and (high is None or value <= high)
            assert matches(grammar, str(value)) == inside, (schema, value)
        if kind == "number" and high is not None and high > 0 and (low is None or low < high):
            assert matches(grammar, f"{high - 1}.5") == (low is None or high - 1 >= low)
            assert not matches(grammar, f"{high}.5")
            assert matches(grammar, f"{high}.0")


@pytest.mark.parametrize("kind", ["integer", "number"])
def test_exclusive_bounds_are_exact_at_whole_numbers(kind: str) -> None:
    rng = random.Random(5)
    for _ in range(40):
        low, high = sorted(rng.sample(range(-25, 26), 2))
        schema: dict[str, Any] = {"type": kind}
        if rng.random() < 0.8:
            schema["exclusiveMinimum" if rng.random() < 0.5 else "minimum"] = low
        if rng.random() < 0.8:
            schema["exclusiveMaximum" if rng.random() < 0.5 else "maximum"] = high
        validator = jsonschema.Draft202012Validator(schema)
        try:
            grammar = schema_grammar(schema)
        except InvalidRequest:
            assert kind == "integer" and high - low <= 1  # (n, n + 1) holds no integer
            continue
        values = [v / 4 for v in range(-30 * 4, 30 * 4)] if kind == "number" else list(range(-30, 31))
        for value in values:
            text = str(value)
            assert matches(grammar, text) == validator.is_valid(json.loads(text)), (schema, text)


def test_exclusive_and_fractional_bounds_are_rounded_inwards() -> None:
    grammar = schema_grammar({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10})
    assert [v for v in range(-3, 14) if matches(grammar, str(v))] == list(range(1, 10))
    grammar = schema_grammar({"type": "number", "exclusiveMinimum": -1, "exclusiveMaximum": 1})
    assert matches(grammar, "0") and matches(grammar, "0.5") and matches(grammar, "-0.25")
    assert not matches(grammar, "1") and not matches(grammar, "-1") and not matches(grammar, "1.5")
    grammar = schema_grammar({"type": "number", "minimum": 0.5, "maximum": 2.5})
    assert matches(grammar, "1") and matches(grammar, "1.75") and matches(grammar, "2")
    assert not matches(grammar, "0") and not matches(grammar, "2.5") and not matches(grammar, "3")


def test_strings_are_json_strings() -> None:
    grammar = schema_grammar({"type": "string"})
    for text in ['"tab\\tquote\\"slash\\\\"', '"naïve ☃"']:
        assert matches(grammar, text) and isinstance(json.loads(text), str)
    for text in ['"raw\ttab"', '"raw\x7f"', '"bad \\x escape"', '"open', '"a"b"']:
        assert not matches(grammar, text)


# -- the shaper ----------------------------------------------------------------------------------------

CALLS_TEXT = ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Pa\\"ris}", "unit": "celsius"}}, '
              '{"name": "get_time", "arguments": {"tz": "[UTC]"}}]</tool_call>')


def counter_ids() -> Any:
    numbers = itertools.count()
    return lambda: f"call_{next(numbers):024x}"


def merged(events: list[StreamEvent]) -> list[dict[str, Any]]:
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            call = calls.setdefault(event.index, {"id": None, "name": None, "arguments": "", "fragments": 0})
            if call["fragments"] == 0:
                assert event.id is not None and event.name is not None  # the first fragment names the call
            else:
                assert event.id is None and event.name is None
            call["id"] = call["id"] or event.id
            call["name"] = call["name"] or event.name
            call["arguments"] += event.arguments
            call["fragments"] += 1
    return [{k: v for k, v in calls[i].items() if k != "fragments"} for i in sorted(calls)]


def shaped(plan: OutputPlan | None, pieces: list[str], reason: str = "stop") -> tuple[list[StreamEvent], str]:
    shaper = OutputShaper(plan, ids=counter_ids())
    events: list[StreamEvent] = []
    for piece in pieces:
        events += shaper.feed(piece)
    events += shaper.finish()
    return events, shaper.finish_reason(reason)


def test_tool_calls_become_deltas_whatever_the_split() -> None:
    plan = output_plan([WEATHER, TIME], "required", None, None)
    whole, reason = shaped(plan, [CALLS_TEXT])
    assert reason == "tool_calls"
    expected = [{"id": f"call_{0:024x}", "name": "get_weather",
                 "arguments": '{"city": "Pa\\"ris}", "unit": "celsius"}'},
                {"id": f"call_{1:024x}", "name": "get_time", "arguments": '{"tz": "[UTC]"}'}]
    assert merged(whole) == expected
    assert [json.loads(c["arguments"]) for c in expected] == [{"city": 'Pa"ris}', "unit": "celsius"}, {"tz": "[UTC]"}]
    assert not any(isinstance(e, TextDelta) for e in whole)
    for cut in range(len(CALLS_TEXT) + 1):
        events, reason = shaped(plan, [CALLS_TEXT[:cut], CALLS_TEXT[cut:]])
        assert merged(events) == expected and reason == "tool_calls", cut
    events, _ = shaped(plan, list(CALLS_TEXT))
    assert merged(events) == expected
    assert sum(isinstance(e, ToolCallDelta) for e in events) > 2  # arguments streamed as they come


def test_auto_text_and_json_pass_through() -> None:
    auto = output_plan([WEATHER], "auto", None, None)
    text = "It is {sunny} in <b>Paris</b>."
    for cut in range(len(text) + 1):
        events, reason = shaped(auto, [text[:cut], text[cut:]])
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == text and reason == "stop"
        assert not merged(events)
    events, reason = shaped(auto, [CALLS_TEXT[:30], CALLS_TEXT[30:]])
    assert reason == "tool_calls" and len(merged(events)) == 2
    json_plan = output_plan(None, None, {"type": "json_object"}, None)
    events, reason = shaped(json_plan, ['{"a":', " 1}"])
    assert events == [TextDelta('{"a":'), TextDelta(" 1}")] and reason == "stop"


def test_a_call_cut_short_keeps_length_and_its_arguments_so_far() -> None:
    plan = output_plan([WEATHER], "required", None, None)
    cut = CALLS_TEXT.index("unit")
    events, reason = shaped(plan, [CALLS_TEXT[:cut]], "length")
    assert reason == "length"
    assert merged(events) == [{"id": f"call_{0:024x}", "name": "get_weather", "arguments": '{"city": "Pa\\"ris}", "'}]
    events, reason = shaped(plan, ["<tool_call>[{"], "length")
    assert events == [] and reason == "length"
    events, reason = shaped(plan, [CALLS_TEXT[:cut]], "stop")  # a stop string inside a call: not "tool_calls"
    assert reason == "stop"


@pytest.mark.parametrize("text", ["<tool_call>{", '<tool_call>[{"name": "x", "args', CALLS_TEXT + "more",
                                  CALLS_TEXT.replace("}, {", "}; {")])
def test_text_that_breaks_the_shape_is_a_protocol_error(text: str) -> None:
    plan = output_plan([WEATHER, TIME], "required", None, None)
    with pytest.raises(ProtocolError):
        shaped(plan, [text])


def test_rendered_history_calls_read_back_the_same() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
             {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz":"CET"}'}}]
    text = render_tool_calls(calls)
    events, reason = shaped(output_plan([WEATHER, TIME], "required", None, None), [text])
    assert reason == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in merged(events)] == [
        ("get_weather", {"city": "Oslo"}), ("get_time", {"tz": "CET"})]
    assert matches(output_plan([WEATHER, TIME], "required", None, None).grammar, text)  # type: ignore[union-attr]


def test_logprobs_go_with_text_only() -> None:
    auto = output_plan([WEATHER], "auto", None, None)
    item = Logprobs([{"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}])
    text_shaper = OutputShaper(auto)
    assert text_shaper.logprobs(item) == []  # held until the first character decides
    assert text_shaper.feed("Hi") == [TextDelta("Hi"), item]
    assert text_shaper.logprobs(item) == [item]
    call_shaper = OutputShaper(auto)
    assert call_shaper.logprobs(item) == []
    call_shaper.feed("<tool")
    assert call_shaper.logprobs(item) == [] and call_shaper.called


def test_call_ids_are_unique_and_openai_shaped() -> None:
    ids = {call_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)
    plan = output_plan([WEATHER, TIME], "required", None, None)
    events = OutputShaper(plan).feed(CALLS_TEXT)
    first, second = (e for e in events if isinstance(e, ToolCallDelta) and e.id)
    assert first.id != second.id


def test_shape_stream_keeps_each_choice_apart() -> None:
    plan = output_plan([WEATHER], "auto", None, None)
    call = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Rome"}}]</tool_call>'

    async def source() -> AsyncIterator[StreamEvent]:
        for a, b in itertools.zip_longest(call[:40], "Sunny."):
            yield TextDelta(a, 0)
            if b:
                yield TextDelta(b, 1)
        yield TextDelta(call[40:], 0)
        yield Finish("stop", 1)
        yield Usage(10, 20)
        yield Finish("stop", 0)

    async def collect() -> list[StreamEvent]:
        return [e async for e in shape_stream(plan, source(), ids=counter_ids())]

    events = asyncio.run(collect())
    assert [e for e in events if isinstance(e, Finish)] == [Finish("stop", 1), Finish("tool_calls", 0)]
    assert "".join(e.text for e in events if isinstance(e, TextDelta) and e.choice == 1) == "Sunny."
    assert not any(isinstance(e, TextDelta) and e.choice == 0 for e in events)
    assert merged([e for e in events if isinstance(e, ToolCallDelta)]) == [
        {"id": f"call_{0:024x}", "name": "get_weather", "arguments": '{"city": "Rome"}'}]
    assert Usage(10, 20) in events

    async def passthrough() -> list[StreamEvent]:
        async def plain() -> AsyncIterator[StreamEvent]:
            yield TextDelta("<b>")
            yield Finish("stop")
        return [e async for e in shape_stream(None, plain())]

    assert asyncio.run(passthrough()) == [TextDelta("<b>"), Finish("stop")]


def test_instructions_join_the_system_message() -> None:
    plan = output_plan([WEATHER], "required", None, None)
    assert plan is not None
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Rome?"}]
    out = with_instructions(messages, plan)
    assert out[0] == {"role": "system", "content": f"Be brief.\n\n{plan.instructions}"} and out[1] is messages[1]
    assert messages[0]["content"] == "Be brief."  # not changed in place
    alone = with_instructions(messages[1:], plan)
    assert alone == [{"role": "system", "content": plan.instructions}, messages[1]]
    assert with_instructions(messages, None) == messages
