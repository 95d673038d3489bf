"""What a request asks the answer to be: tool calls, a JSON answer, or plain text.

One reading of the Chat Completions fields ``tools``, ``tool_choice``, ``response_format`` and
``parallel_tool_calls``, shared by every provider that has to make a model answer in a shape
(the embedded model's grammars, the text-only services' emulation). :func:`output_spec` checks
the four fields (each mistake an :class:`InvalidRequest` naming its parameter) and says, typed,
what they ask for: an :class:`OutputSpec`.

The rules, where the API leaves room:

- ``null`` is the same as leaving a field out, for the four fields and for a tool's
  ``description`` and ``parameters`` and a ``json_schema``'s ``name``, ``description`` and
  ``schema``;
- a tool's ``parameters`` is a JSON Schema (Draft 2020-12) whose ``type`` is ``"object"`` (or
  absent); absent, it is an object without properties;
- ``tool_choice`` absent is ``"auto"`` when there are tools and ``"none"`` when there are not;
  ``"required"`` without tools, or a named tool that is not among them, is refused;
- a named tool is the only one that may be called, once; ``parallel_tool_calls`` absent is
  true (several calls in one answer);
- ``json_schema`` without a ``schema`` asks for any JSON value (the empty schema).

Results are cached: the same fields (as JSON) give the same :class:`OutputSpec` object, and an
:class:`OutputSpec` hashes by them, so providers can cache what they build from it. Its dicts
are shared: read them, never change them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
from jsonschema.exceptions import SchemaError

from patchbay.errors import InvalidRequest

__all__ = [
    "JSON_SCHEMA",
    "AnswerFormat",
    "FunctionTool",
    "OutputSpec",
    "answer_description",
    "output_spec",
    "tool_listing",
]

#: The JSON Schema draft the request's schemas are read in (checked with, validated against).
JSON_SCHEMA = jsonschema.Draft202012Validator
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
_CHOICES = ("none", "auto", "required")


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """One function tool: its name, description, the JSON Schema of its arguments, and where that
    schema was in the request (``tools[2].function.parameters``), for errors found later."""

    name: str
    description: str
    parameters: dict[str, Any]
    param: str


@dataclass(frozen=True, slots=True)
class AnswerFormat:
    """A JSON answer: any JSON object (``json_object``, ``schema`` None) or a value that follows
    ``schema`` (``json_schema``). ``param`` is where the schema was in the request."""

    kind: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None
    name: str = ""
    description: str = ""
    param: str = "response_format"


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """What the four fields ask for. Equal and hashed by ``key`` (the fields as canonical JSON),
    from which the rest follows."""

    #: Every tool given, in the request's order.
    tools: tuple[FunctionTool, ...] = field(compare=False)
    #: The names the model may call, in the request's order (empty: no calls).
    allowed: tuple[str, ...] = field(compare=False)
    #: The answer must be tool calls ("required", or a named tool).
    must_call: bool = field(compare=False)
    #: More than one call may come in one answer.
    parallel: bool = field(compare=False)
    #: The JSON answer asked for (None: text), where the model answers instead of calling.
    answer: AnswerFormat | None = field(compare=False)
    key: str = ""

    @property
    def plain(self) -> bool:
        """Nothing is asked: the answer is plain text, as without these fields."""
        return not self.allowed and self.answer is None

    @property
    def allowed_tools(self) -> tuple[FunctionTool, ...]:
        """The tools the model may call, in the request's order."""
        return tuple(tool for tool in self.tools if tool.name in self.allowed)

    def tool(self, name: str) -> FunctionTool | None:
        """The tool given with this name, allowed or not."""
        return next((tool for tool in self.tools if tool.name == name), None)


def output_spec(tools: Any, tool_choice: Any, response_format: Any, parallel_tool_calls: Any) -> OutputSpec:
    """Check the four Chat Completions fields (plain JSON values) and say what they ask for.

    Each mistake is an :class:`InvalidRequest` with a one-line message and the precise
    ``param`` (``tools[1].function.name``, ``response_format.json_schema.schema``, ...).
    """
    fields = {"tools": tools, "tool_choice": tool_choice, "parallel_tool_calls": parallel_tool_calls,
              "response_format": response_format}
    return _spec(json.dumps([_canonical(value, param) for param, value in fields.items()]))


def _canonical(value: Any, param: str) -> str:
    """``value`` as JSON text, keys in their order (a schema's properties come in it)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{param} must be plain JSON (objects, arrays, strings, finite numbers, "
                             "true, false, null)", param=param) from None
    except RecursionError:
        raise InvalidRequest(f"{param} is nested too deeply", param=param) from None


@functools.lru_cache(maxsize=128)
def _spec(key: str) -> OutputSpec:
    """Built once per distinct set of fields: checking schemas is slow next to a cache look-up."""
    tools_json, choice_json, parallel_json, format_json = json.loads(key)
    tools = _tools(json.loads(tools_json))
    names = tuple(tool.name for tool in tools)
    allowed, must_call, named = _choice(json.loads(choice_json), names)
    parallel = json.loads(parallel_json)
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest(f"parallel_tool_calls must be true or false, got {parallel!r:.40}",
                             param="parallel_tool_calls")
    answer = _answer(json.loads(format_json))
    return OutputSpec(tools, allowed, must_call, bool(allowed) and not named and parallel is not False, answer,
                      key)


def _tools(tools: Any) -> tuple[FunctionTool, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise InvalidRequest('tools must be a list of function tools ({"type": "function", "function": {...}})',
                             param="tools")
    checked: list[FunctionTool] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f'{where} must be an object ({{"type": "function", "function": {{...}}}})',
                                 param=where)
        if tool.get("type") != "function":
            raise InvalidRequest(f'{where}.type must be "function", got {tool.get("type")!r:.40}',
                                 param=f"{where}.type")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest(f"{where}.function must be an object with a name", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise InvalidRequest(f"{where}.function.name must be 1 to 64 letters, digits, _ or -, got {name!r:.70}",
                                 param=f"{where}.function.name")
        if any(earlier.name == name for earlier in checked):
            raise InvalidRequest(f"{where}.function.name {name!r} is the name of an earlier tool",
                                 param=f"{where}.function.name")
        description = _optional_string(function, "description", f"{where}.function.description")
        param = f"{where}.function.parameters"
        parameters = function.get("parameters")
        if parameters is None:
            parameters = dict(_NO_PARAMETERS)
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise InvalidRequest(f'{param} must be a JSON Schema of an object ("type": "object")', param=param)
        _check_schema(parameters, param)
        checked.append(FunctionTool(name, description, parameters, param))
    return tuple(checked)


def _optional_string(container: dict[str, Any], key: str, param: str) -> str:
    value = container.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a string", param=param)
    return value or ""


def _choice(tool_choice: Any, names: tuple[str, ...]) -> tuple[tuple[str, ...], bool, bool]:
    """The names the model may call, whether it must call, and whether one tool is named."""
    if tool_choice is None:
        return names, False, False  # "auto" with tools, "none" without: the API's default
    if tool_choice in _CHOICES:
        if tool_choice == "required" and not names:
            raise InvalidRequest('tool_choice is "required" but no tools were given', param="tool_choice")
        return ((), False, False) if tool_choice == "none" else (names, tool_choice == "required", False)
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest('tool_choice must be "none", "auto", "required" or {"type": "function", '
                             '"function": {"name": ...}}', param="tool_choice")
    if name not in names:
        raise InvalidRequest(f"tool_choice names the tool {name!r:.70}, which is not in tools", param="tool_choice")
    return (name,), True, True


def _answer(response_format: Any) -> AnswerFormat | None:
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequest("response_format must be an object with a type", param="response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return AnswerFormat("json_object", None)
    if kind != "json_schema":
        raise InvalidRequest(f'response_format.type must be "text", "json_object" or "json_schema", got {kind!r:.40}',
                             param="response_format.type")
    where = "response_format.json_schema"
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest(f"{where} must be an object with a schema", param=where)
    name = _optional_string(spec, "name", f"{where}.name")
    description = _optional_string(spec, "description", f"{where}.description")
    param = f"{where}.schema"
    schema = spec.get("schema")
    if schema is None:
        schema = {}  # no schema: any JSON value
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param} must be a JSON Schema object", param=param)
    _check_schema(schema, param)
    return AnswerFormat("json_schema", schema, name, description, param)


def _check_schema(schema: dict[str, Any], param: str) -> None:
    """InvalidRequest (at ``param``) unless ``schema`` is a valid JSON Schema of :data:`JSON_SCHEMA`'s draft."""
    try:
        JSON_SCHEMA.check_schema(schema)
    except SchemaError as error:
        at = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.path)
        where = f"at {at.lstrip('.')[:80]}" if at else "at its top"
        raise InvalidRequest(f"{param} is not a valid JSON Schema: {where} it breaks the rule {error.validator!r}",
                             param=param) from None
    except RecursionError:
        raise InvalidRequest(f"{param} is nested too deeply", param=param) from None


# -- for system prompts ---------------------------------------------------------------------------


def tool_listing(tools: Iterable[FunctionTool]) -> str:
    """The tools for a system prompt, one JSON object a line: ``{"name", "description",
    "parameters"}`` (the shape models are trained on, e.g. SmolLM2 between ``<tools>`` tags)."""
    return "\n".join(json.dumps({"name": tool.name, "description": tool.description,
                                 "parameters": tool.parameters}, ensure_ascii=False) for tool in tools)


def answer_description(answer: AnswerFormat) -> str:
    """The JSON answer in words, for a system prompt: ``a JSON object``, or ``a JSON value that
    follows this JSON Schema "name" (description): {...}``."""
    if answer.schema is None:
        return "a JSON object"
    label = f' "{answer.name}"' if answer.name else ""
    about = f" ({answer.description})" if answer.description else ""
    return f"a JSON value that follows this JSON Schema{label}{about}: {json.dumps(answer.schema, ensure_ascii=False)}"
