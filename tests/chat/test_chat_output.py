"""The one reading of tools, tool_choice, response_format and parallel_tool_calls (patchbay.chat.output).

Both ways of making a model answer in a shape (the embedded model's grammars, the text-only
services' emulation) start from this reading, so its checks and its rules are tested here once.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from patchbay.chat.output import (
    AnswerFormat,
    FunctionTool,
    OutputSpec,
    answer_description,
    output_spec,
    tool_listing,
)
from patchbay.errors import InvalidRequest

WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": WEATHER_PARAMS}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, TIME]
GET_TIME = {"type": "function", "function": {"name": "get_time"}}
PERSON_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
PERSON = {"type": "json_schema", "json_schema": {"name": "person", "description": "someone", "schema": PERSON_SCHEMA}}


def spec(tools: Any = None, tool_choice: Any = None, response_format: Any = None,
         parallel_tool_calls: Any = None) -> OutputSpec:
    return output_spec(tools, tool_choice, response_format, parallel_tool_calls)


def function(**fields: Any) -> dict[str, Any]:
    return {"type": "function", "function": fields}


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


# -- what is asked --------------------------------------------------------------------------------


@pytest.mark.parametrize(("tools", "choice", "fmt"), [
    (None, None, None), ([], None, None), ([], "auto", None), (TOOLS, "none", None), (None, None, {"type": "text"}),
    (TOOLS, "none", {"type": "text"}),
])
def test_nothing_asked_is_plain(tools: Any, choice: Any, fmt: Any) -> None:
    plain = spec(tools, choice, fmt)
    assert plain.plain and plain.allowed == () and plain.answer is None and not plain.must_call
    assert not plain.parallel  # no call at all, so not several


@pytest.mark.parametrize("choice", [None, "auto"])
def test_auto_allows_every_tool_and_several_calls(choice: Any) -> None:
    auto = spec(TOOLS, choice)
    assert auto.allowed == ("get_weather", "get_time") and not auto.must_call and auto.parallel and not auto.plain
    assert auto.tools == (FunctionTool("get_weather", "Current weather in a city", WEATHER_PARAMS,
                                       "tools[0].function.parameters"),
                          FunctionTool("get_time", "", {"type": "object", "properties": {}},
                                       "tools[1].function.parameters"))
    assert auto.allowed_tools == auto.tools


def test_required_must_call_any_tool() -> None:
    required = spec(TOOLS, "required")
    assert required.allowed == ("get_weather", "get_time") and required.must_call and required.parallel
    assert not spec(TOOLS, "required", None, False).parallel


@pytest.mark.parametrize("parallel", [None, True, False])
def test_a_named_tool_is_the_only_one_and_called_once(parallel: Any) -> None:
    named = spec(TOOLS, GET_TIME, None, parallel)
    assert named.allowed == ("get_time",) and named.must_call and not named.parallel
    assert [t.name for t in named.tools] == ["get_weather", "get_time"]  # every tool is still given
    assert [t.name for t in named.allowed_tools] == ["get_time"]
    assert named.tool("get_weather") is named.tools[0] and named.tool("nope") is None


@pytest.mark.parametrize(("parallel", "several"), [(None, True), (True, True), (False, False)])
def test_parallel_tool_calls_absent_is_true(parallel: Any, several: bool) -> None:
    assert spec(TOOLS, None, None, parallel).parallel is several


def test_json_formats() -> None:
    assert spec(None, None, {"type": "json_object"}).answer == AnswerFormat("json_object", None)
    answer = spec(None, None, PERSON).answer
    assert answer == AnswerFormat("json_schema", PERSON_SCHEMA, "person", "someone",
                                  "response_format.json_schema.schema")
    with_tools = spec(TOOLS, "none", PERSON)
    assert not with_tools.plain and with_tools.allowed == () and with_tools.answer == answer


def test_a_json_schema_without_a_schema_is_any_json_value() -> None:
    for json_schema in ({"name": "x"}, {"name": "x", "schema": None}, {}):
        answer = spec(None, None, {"type": "json_schema", "json_schema": json_schema}).answer
        assert answer is not None and answer.kind == "json_schema" and answer.schema == {}


def test_null_is_the_same_as_absent() -> None:
    tools = [function(name="f", description=None, parameters=None)]
    got = spec(tools)
    assert got.tools == (FunctionTool("f", "", {"type": "object", "properties": {}}, "tools[0].function.parameters"),)
    answer = spec(None, None, {"type": "json_schema", "json_schema": {"name": None, "description": None,
                                                                     "schema": PERSON_SCHEMA}}).answer
    assert answer is not None and (answer.name, answer.description) == ("", "")


def test_parameters_may_leave_out_the_object_type() -> None:
    assert spec([function(name="f", parameters={"properties": {"x": {"type": "integer"}}})]).allowed == ("f",)


# -- caching ----------------------------------------------------------------------------------------


def test_the_same_fields_give_the_same_spec() -> None:
    first = spec(TOOLS, "required", PERSON, False)
    again = spec(copy.deepcopy(TOOLS), "required", copy.deepcopy(PERSON), False)
    assert again is first
    assert again == first and hash(again) == hash(first)
    assert spec(TOOLS, "auto", PERSON, False) != first


def test_the_key_keeps_property_order() -> None:
    forward = {"type": "object", "properties": {"zeta": {}, "alpha": {}}}
    backward = {"type": "object", "properties": {"alpha": {}, "zeta": {}}}
    one, other = spec([function(name="f", parameters=forward)]), spec([function(name="f", parameters=backward)])
    assert one != other
    assert list(one.tools[0].parameters["properties"]) == ["zeta", "alpha"]
    assert list(other.tools[0].parameters["properties"]) == ["alpha", "zeta"]


def test_changing_the_request_afterwards_does_not_change_the_spec() -> None:
    tools: list[dict[str, Any]] = copy.deepcopy(TOOLS)
    got = spec(tools)
    tools[0]["function"]["parameters"]["properties"]["town"] = {"type": "string"}
    assert "town" not in got.tools[0].parameters["properties"]


# -- bad requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("tools", "tool_choice", "response_format", "parallel", "param"), [
    ({"type": "function"}, None, None, None, "tools"),
    ("get_weather", None, None, None, "tools"),
    ([WEATHER, "x"], None, None, None, "tools[1]"),
    ([WEATHER, {"type": "retrieval"}], None, None, None, "tools[1].type"),
    ([{"function": {"name": "f"}}], None, None, None, "tools[0].type"),
    ([WEATHER, {"type": "function"}], None, None, None, "tools[1].function"),
    ([WEATHER, function(description="no name")], None, None, None, "tools[1].function.name"),
    ([function(name="has space")], None, None, None, "tools[0].function.name"),
    ([function(name="")], None, None, None, "tools[0].function.name"),
    ([function(name="x" * 65)], None, None, None, "tools[0].function.name"),
    ([WEATHER, TIME, WEATHER], None, None, None, "tools[2].function.name"),
    ([function(name="f", description=3)], None, None, None, "tools[0].function.description"),
    ([function(name="f", parameters={"type": "string"})], None, None, None, "tools[0].function.parameters"),
    ([function(name="f", parameters={"type": ["object", "null"]})], None, None, None,
     "tools[0].function.parameters"),
    ([function(name="f", parameters=[1])], None, None, None, "tools[0].function.parameters"),
    ([function(name="f", parameters=True)], None, None, None, "tools[0].function.parameters"),
    ([function(name="f", parameters={"type": "object", "properties": 5})], None, None, None,
     "tools[0].function.parameters"),
    ([function(name="f", parameters={"type": "object", "properties": {"a": {"pattern": "("}}})], None, None, None,
     "tools[0].function.parameters"),
    ([function(name="f", parameters={"type": "object", "required": "a"})], None, None, None,
     "tools[0].function.parameters"),
    ([function(name="f", parameters={"type": "object", "x": float("nan")})], None, None, None, "tools"),
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, None, None, "tool_choice"),
    (None, GET_TIME, None, None, "tool_choice"),
    (TOOLS, {"type": "function"}, None, None, "tool_choice"),
    (TOOLS, {"type": "function", "function": {"name": 5}}, None, None, "tool_choice"),
    (TOOLS, {"type": "tool", "function": {"name": "get_time"}}, None, None, "tool_choice"),
    (TOOLS, "always", None, None, "tool_choice"),
    (TOOLS, 1, None, None, "tool_choice"),
    (TOOLS, {"a", "b"}, None, None, "tool_choice"),
    (None, "required", None, None, "tool_choice"),
    ([], "required", None, None, "tool_choice"),
    (TOOLS, None, None, "yes", "parallel_tool_calls"),
    (TOOLS, None, None, 1, "parallel_tool_calls"),
    (None, None, "json", None, "response_format"),
    (None, None, {}, None, "response_format.type"),
    (None, None, {"type": "yaml"}, None, "response_format.type"),
    (None, None, {"type": "json_schema"}, None, "response_format.json_schema"),
    (None, None, {"type": "json_schema", "json_schema": "person"}, None, "response_format.json_schema"),
    (None, None, {"type": "json_schema", "json_schema": {"name": 5, "schema": {}}}, None,
     "response_format.json_schema.name"),
    (None, None, {"type": "json_schema", "json_schema": {"description": [], "schema": {}}}, None,
     "response_format.json_schema.description"),
    (None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}}, None,
     "response_format.json_schema.schema"),
    (None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}, None,
     "response_format.json_schema.schema"),
    (None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": True}}, None,
     "response_format.json_schema.schema"),
    (None, None, {"type": "json_schema", "json_schema": {"name": "x", "schema": {"minLength": -1}}}, None,
     "response_format.json_schema.schema"),
])
def test_each_mistake_names_its_parameter(tools: Any, tool_choice: Any, response_format: Any, parallel: Any,
                                          param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        spec(tools, tool_choice, response_format, parallel)
    assert info.value.param == param
    assert info.value.message and "\n" not in info.value.message


def test_a_schema_mistake_says_where_and_which_rule() -> None:
    bad = [function(name="f", parameters={"type": "object", "properties": {"a": {"type": "strin"}}})]
    with pytest.raises(InvalidRequest) as info:
        spec(bad)
    assert "properties.a.type" in info.value.message


def test_a_schema_nested_too_deeply_is_refused_not_a_crash() -> None:
    for depth in (400, 5000):
        with pytest.raises(InvalidRequest) as info:
            spec([function(name="f", parameters=nested(depth))])
        assert info.value.param in ("tools", "tools[0].function.parameters")
    assert spec([function(name="f", parameters=nested(20))]).allowed == ("f",)


# -- for system prompts ------------------------------------------------------------------------------


def test_the_tool_listing_is_one_json_object_a_line() -> None:
    listed = tool_listing(spec(TOOLS).tools).splitlines()
    assert [json.loads(line) for line in listed] == [
        {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER_PARAMS},
        {"name": "get_time", "description": "", "parameters": {"type": "object", "properties": {}}},
    ]
    assert tool_listing(()) == ""


def test_the_answer_description() -> None:
    assert answer_description(AnswerFormat("json_object", None)) == "a JSON object"
    answer = spec(None, None, PERSON).answer
    assert answer is not None
    described = answer_description(answer)
    assert '"person"' in described and "(someone)" in described
    assert described.endswith(json.dumps(PERSON_SCHEMA))
