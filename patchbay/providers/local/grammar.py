"""Tools and JSON output for the embedded model: grammars that constrain what it may write.

A 135M model does not reliably write a valid tool call or JSON document when asked, so the
embedded model is *made* to: :func:`output_plan` turns a request's ``tools``, ``tool_choice``,
``response_format`` and ``parallel_tool_calls`` (read and checked by
:func:`patchbay.chat.output.output_spec`) into an :class:`OutputPlan`, whose GBNF
``grammar`` llama.cpp enforces token by token (``Sampling.grammar``), and whose ``instructions``
go into the system prompt so the model knows what the grammar expects. An
:class:`OutputShaper` turns the constrained text back into events: tool-call fragments
(``ToolCallDelta``) or text.

A tool call is written the way SmolLM2 was trained to write one::

    <tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>

With ``tool_choice`` "auto" the grammar allows that or an answer in text (or JSON, with a JSON
``response_format``); such an answer cannot start with ``<`` or white space, so the first
character tells which one the model chose.

JSON Schema support: the grammar is built here (not by llama.cpp's converter, whose strings let
raw control characters through, which is not JSON) for the part of JSON Schema that a grammar
can enforce: types, ``enum``, ``const``, ``properties`` / ``required`` /
``additionalProperties``, ``items`` / ``prefixItems`` / ``minItems`` / ``maxItems``,
``minLength`` / ``maxLength``, ``minimum`` / ``maximum`` (and the exclusive forms), ``anyOf`` /
``oneOf`` / ``allOf``, and local ``$ref``. Output is compact (at most one space after ``:`` and
``,``), strings are at most :data:`MAX_STRING` characters and arrays at most :data:`MAX_ITEMS`
items unless the schema says less, numbers have no exponent, optional properties come in the
schema's order. Keywords that a grammar cannot enforce (``pattern``, ``uniqueItems``,
``multipleOf``, ``not``, ...) are refused with :class:`InvalidRequest` naming the parameter;
annotations (``description``, ``title``, ``format``, ...) are ignored, as a validator does
by default.
"""

from __future__ import annotations

import functools
import json
import math
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema

from patchbay.chat.messages import Messages, content_text
from patchbay.chat.output import AnswerFormat, OutputSpec, answer_description, output_spec, tool_listing
from patchbay.errors import InvalidRequest, ProtocolError
from patchbay.events import Finish, Logprobs, StreamEvent, TextDelta, ToolCallDelta

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
    "MAX_ITEMS",
    "MAX_STRING",
    "OutputPlan",
    "OutputShaper",
    "call_id",
    "output_plan",
    "render_tool_calls",
    "schema_grammar",
    "shape_stream",
    "with_instructions",
]

#: Longest string the grammar lets the model write where the schema sets no ``maxLength``.
MAX_STRING = 200
#: Most items in an array where the schema sets no ``maxItems``.
MAX_ITEMS = 32
#: Most calls in one answer when parallel tool calls are allowed.
MAX_CALLS = 8
#: Most digits of an integer (and of a fraction).
MAX_DIGITS = 15
CALL_OPEN = "<tool_call>["
CALL_CLOSE = "]</tool_call>"
CALL_SEPARATOR = ", "
_BIG = 10**MAX_DIGITS - 1

Kind = Literal["auto", "calls", "json"]
_Bound = tuple[int, bool]  # a whole number, and whether the bound includes it


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """How one request's answer is constrained.

    ``kind``: ``"calls"`` (only tool calls), ``"auto"`` (tool calls or an answer, which is JSON
    when ``json`` is set), ``"json"`` (only a JSON answer). ``grammar`` is GBNF for llama.cpp
    (``Sampling.grammar``); ``instructions`` belong in the system prompt
    (:func:`with_instructions`); ``tools`` are the names the grammar allows; ``parallel`` tells
    whether several calls may come in one answer.
    """

    kind: Kind
    grammar: str
    instructions: str
    tools: tuple[str, ...] = ()
    parallel: bool = False
    json: bool = False


# -- the request fields -> a plan -----------------------------------------------------------------


def output_plan(tools: Sequence[Any] | None = None, tool_choice: Any = None, response_format: Any = None,
                parallel_tool_calls: bool | None = None) -> OutputPlan | None:
    """The plan for these Chat Completions fields (plain JSON values), or None when the answer is
    plain text. Bad or unsupported input raises :class:`InvalidRequest` naming its parameter."""
    return _plan(output_spec(tools, tool_choice, response_format, parallel_tool_calls))


@functools.lru_cache(maxsize=64)
def _plan(spec: OutputSpec) -> OutputPlan | None:
    """Built once per distinct request fields: converting schemas is slow next to a cache look-up."""
    converter = _Converter()
    answer = None  # the grammar expression of a JSON answer
    if spec.answer is not None:
        schema = {"type": "object"} if spec.answer.schema is None else spec.answer.schema
        answer = converter.schema(schema, spec.answer.param)
    if not spec.allowed:
        if spec.answer is None or answer is None:
            return None
        converter.rules["root"] = answer
        return OutputPlan("json", converter.gbnf(), _answer_instructions(spec.answer), json=True)
    chosen = spec.allowed_tools
    alternatives = []
    for tool in chosen:
        args = converter.schema(tool.parameters, tool.param)
        head = json.dumps({"name": tool.name, "arguments": 0})[:-2]  # '{"name": "x", "arguments": '
        alternatives.append(converter.rule(f"call-{tool.name}", f'{_lit(head)} {args} "}}"'))
    call = converter.rule("call", " | ".join(alternatives))
    repeat = f' ({_lit(CALL_SEPARATOR)} {call}){{0,{MAX_CALLS - 1}}}' if spec.parallel else ""
    converter.rules["calls"] = f"{_lit(CALL_OPEN)} {call}{repeat} {_lit(CALL_CLOSE)}"
    if spec.must_call:
        converter.rules["root"] = "calls"
    elif answer is not None:
        converter.rules["root"] = f"calls | {answer}"
    else:
        # An answer in text: anything that does not start with "<" (a call) or white space.
        converter.rules["root"] = "calls | text"
        converter.rules["text"] = r"[^<\x00-\x20] [^\x00]*"
    auto = not spec.must_call
    return OutputPlan("auto" if auto else "calls", converter.gbnf(), _tool_instructions(spec),
                      tools=spec.allowed, parallel=spec.parallel, json=auto and answer is not None)


def _answer_instructions(answer: AnswerFormat) -> str:
    return f"Reply with only {answer_description(answer)}, and no other text."


def _tool_instructions(spec: OutputSpec) -> str:
    example = f'{CALL_OPEN}{{"name": "<function name>", "arguments": {{<arguments as a JSON object>}}}}{CALL_CLOSE}'
    text = (f"You are a helpful assistant with access to these functions:\n<tools>\n"
            f"{tool_listing(spec.allowed_tools)}\n</tools>\nTo call a function, reply with only {example}")
    if spec.parallel:
        text += ", with one object per call in that list"
    text += ". The arguments must follow the function's parameters schema."
    if not spec.must_call:
        text += " If no function fits, answer the user directly instead"
        if spec.answer is not None:
            answer = _answer_instructions(spec.answer)
            text += f": {answer[0].lower()}{answer[1:]}"
        else:
            text += " in plain text."
    elif len(spec.allowed) == 1:
        text += f" You must call {spec.allowed[0]}."
    else:
        text += " You must call a function."
    return text


# -- JSON Schema -> GBNF ------------------------------------------------------------------------

_BASE_RULES = {
    "ws": '" "?',
    "char": r'[^"\\\x00-\x1F\x7F] | "\\" ["\\/bfnrt]',
    "string": rf'"\"" char{{0,{MAX_STRING}}} "\""',
    "integer": rf'"-"? ("0" | [1-9] [0-9]{{0,{MAX_DIGITS - 1}}})',
    "fraction": rf'"." [0-9]{{1,{MAX_DIGITS}}}',
    "number": "integer fraction?",
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": "object | array | string | number | boolean | null",
    "member": 'string ":" ws value',
    "object": rf'"{{" (member ("," ws member){{0,{MAX_ITEMS - 1}}})? "}}"',
    "array": rf'"[" (value ("," ws value){{0,{MAX_ITEMS - 1}}})? "]"',
}
#: Keywords that describe and do not constrain (a validator ignores them too).
_ANNOTATIONS = frozenset({
    "$schema", "$id", "$comment", "$anchor", "title", "description", "default", "examples", "example",
    "deprecated", "readOnly", "writeOnly", "format", "contentMediaType", "contentEncoding", "nullable",
    "strict", "$defs", "definitions",
})
_HANDLED = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "anyOf", "oneOf", "allOf", "$ref",
})
_REFUSED = frozenset({
    "pattern", "patternProperties", "uniqueItems", "multipleOf", "not", "if", "then", "else",
    "dependentRequired", "dependentSchemas", "dependencies", "minProperties", "maxProperties", "contains",
    "minContains", "maxContains", "propertyNames", "unevaluatedProperties", "unevaluatedItems",
    "$dynamicRef", "$recursiveRef",
})
_TYPES = ("string", "integer", "number", "boolean", "null", "object", "array")


def _lit(text: str) -> str:
    """A GBNF string literal for ``text``."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'




def schema_grammar(schema: Any, param: str = "schema") -> str:
    """GBNF for JSON values that validate against ``schema`` (InvalidRequest naming ``param``
    when a grammar cannot enforce it)."""
    converter = _Converter()
    converter.rules["root"] = converter.schema(schema, param)
    return converter.gbnf()


class _Converter:
    """Rules for one grammar; each schema becomes a rule, named after where it sits."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = dict(_BASE_RULES)
        self._bodies: dict[str, str] = {body: name for name, body in _BASE_RULES.items()}
        self._refs: dict[str, str] = {}
        self._root: Any = None
        self._param = ""

    def gbnf(self) -> str:
        """The grammar text: ``root`` first, then the rules it uses (directly or not)."""
        used, todo = [], ["root"]
        while todo:
            name = todo.pop()
            if name in used:
                continue
            used.append(name)
            todo += [n for n in re.findall(r"(?<![\w-])[a-z][a-z0-9-]*", _strip_literals(self.rules[name]))
                     if n in self.rules and n not in used]
        return "".join(f"{name} ::= {self.rules[name]}\n" for name in used)

    def rule(self, hint: str, body: str) -> str:
        """A rule with this body (an existing one when the body is the same)."""
        if body in self._bodies:
            return self._bodies[body]
        name = self._fresh(hint)
        self.rules[name] = body
        self._bodies[body] = name
        return name

    def _fresh(self, hint: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9-]+", "-", hint).strip("-").lower()
        if not base[:1].isalpha():  # a rule name starts with a letter
            base = f"r-{base}".rstrip("-")
        name, i = base, 1
        while name in self.rules or name == "root":
            i += 1
            name = f"{base}-{i}"
        return name

    def schema(self, schema: Any, param: str) -> str:
        """The rule name for the top of a schema (its own ``$ref``\\ s resolve against it)."""
        self._root, self._param = schema, param
        self._refs = {}
        return self.visit(schema, "")

    def fail(self, why: str) -> InvalidRequest:
        return InvalidRequest(f"{self._param}: {why} (the embedded model's grammar cannot enforce it)",
                              param=self._param)

    # each visit returns a GBNF expression (a rule name, mostly)
    def visit(self, schema: Any, path: str) -> str:
        if schema is True or schema == {}:
            return "value"
        if not isinstance(schema, dict):
            raise self.fail(f"the schema at {path or '/'} must be an object, got {schema!r:.40}")
        refused = sorted(k for k in schema if k in _REFUSED)
        if refused:
            raise self.fail(f"{path or '/'} uses {refused[0]!r}")
        if "$ref" in schema:
            return self._ref(schema, path)
        for key in ("allOf", "anyOf", "oneOf"):
            if key in schema:
                return self._combination(schema, key, path)
        if "const" in schema:
            return self._choices(schema, [schema["const"]], path)
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise self.fail(f"{path or '/'}: enum must be a non-empty list")
            return self._choices(schema, schema["enum"], path)
        types = schema.get("type")
        if types is None:
            types = self._implied_type(schema)
        if isinstance(types, list):
            if not types or any(t not in _TYPES for t in types):
                raise self.fail(f"{path or '/'}: type must be among {', '.join(_TYPES)}")
            alternatives = [self.visit({**schema, "type": t}, path) for t in dict.fromkeys(types)]
            return self.rule(path + "-any", " | ".join(alternatives))
        if types not in _TYPES and types != "any":
            raise self.fail(f"{path or '/'}: unknown type {types!r:.40}")
        return getattr(self, f"_{types}")(schema, path)

    def _implied_type(self, schema: dict[str, Any]) -> str:
        keys = set(schema)
        if keys & {"properties", "required", "additionalProperties"}:
            return "object"
        if keys & {"items", "prefixItems", "minItems", "maxItems"}:
            return "array"
        if keys & {"minLength", "maxLength"}:
            return "string"
        if keys & {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
            return "number"
        return "any"

    def _any(self, schema: dict[str, Any], path: str) -> str:
        return "value"

    def _ref(self, schema: dict[str, Any], path: str) -> str:
        ref = schema["$ref"]
        extra = sorted(k for k in schema if k != "$ref" and k not in _ANNOTATIONS)
        if extra:
            raise self.fail(f"{path or '/'}: $ref beside {extra[0]!r}")
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise self.fail(f"{path or '/'}: only local references (#/...) are supported, got {ref!r:.60}")
        if ref in self._refs:
            return self._refs[ref]
        target = self._root
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise self.fail(f"{path or '/'}: $ref {ref!r:.60} points nowhere")
        name = self._fresh("ref-" + ref[2:])
        self._refs[ref] = name
        self.rules[name] = '"null"'  # a placeholder while a recursive schema refers to itself
        self.rules[name] = self.visit(target, "ref-" + ref[2:])
        return name

    def _deref(self, schema: Any) -> Any:
        """A schema that is only a local reference, replaced by what it points to."""
        seen = 0
        while isinstance(schema, dict) and set(schema) - _ANNOTATIONS == {"$ref"} and seen < 32:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/"):
                return schema
            target = self._root
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    return schema
                target = target[part]
            schema, seen = target, seen + 1
        return schema

    def _combination(self, schema: dict[str, Any], key: str, path: str) -> str:
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise self.fail(f"{path or '/'}: {key} must be a non-empty list")
        rest = {k: v for k, v in schema.items() if k != key}
        if key == "allOf":
            merged = rest
            for branch in branches:
                merged = self._merge(merged, self._deref(branch), path)
            return self.visit(merged, path)
        alternatives = [self.visit(self._merge(rest, self._deref(branch), path), f"{path}-{i}")
                        for i, branch in enumerate(branches)]
        return self.rule(f"{path}-{key}", " | ".join(dict.fromkeys(alternatives)))

    def _merge(self, a: dict[str, Any], b: Any, path: str) -> dict[str, Any]:
        """Both schemas at once, where they do not contradict each other."""
        if b is True:
            return a
        if not isinstance(b, dict):
            raise self.fail(f"{path or '/'}: a combined schema must be an object")
        merged = dict(a)
        for key, value in b.items():
            if key in _ANNOTATIONS or key not in merged or merged[key] == value:
                merged.setdefault(key, value)
            elif key == "properties" and isinstance(value, dict) and isinstance(merged[key], dict):
                for name, sub in value.items():
                    if name in merged[key] and merged[key][name] != sub:
                        raise self.fail(f"{path or '/'}: combined schemas disagree on property {name!r:.40}")
                merged[key] = {**merged[key], **value}
            elif key == "required" and isinstance(value, list) and isinstance(merged[key], list):
                merged[key] = list(dict.fromkeys([*merged[key], *value]))
            else:
                raise self.fail(f"{path or '/'}: combined schemas disagree on {key!r}")
        return merged

    def _choices(self, schema: dict[str, Any], values: list[Any], path: str) -> str:
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const") and k not in _ANNOTATIONS}
        if rest:
            try:
                validator = jsonschema.validators.validator_for(rest)(rest)
                values = [v for v in values if validator.is_valid(v)]
            except (jsonschema.exceptions.SchemaError, jsonschema.exceptions.RefResolutionError,
                    jsonschema.exceptions.UnknownType):
                raise self.fail(f"{path or '/'}: enum beside an invalid schema") from None
        if not values:
            raise self.fail(f"{path or '/'}: no value of the enum fits the rest of the schema")
        literals = [_lit(json.dumps(v, ensure_ascii=False, separators=(",", ":"))) for v in values]
        return self.rule(f"{path}-enum", " | ".join(dict.fromkeys(literals)))

    def _string(self, schema: dict[str, Any], path: str) -> str:
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if not _count(low) or (high is not None and not _count(high)):
            raise self.fail(f"{path or '/'}: minLength and maxLength must be non-negative integers")
        high = MAX_STRING if high is None else min(high, max(MAX_STRING, low))
        if low > high:
            raise self.fail(f"{path or '/'}: minLength {low} is over maxLength {high}")
        if (low, high) == (0, MAX_STRING):
            return "string"
        return self.rule(f"{path}-string", rf'"\"" char{{{low},{high}}} "\""')

    def _bounds(self, schema: dict[str, Any], path: str) -> tuple[_Bound | None, _Bound | None]:
        """The lower and upper bounds as (whole number, inclusive); a bound that is not a whole
        number is rounded inwards and made inclusive (a subset of the values is valid)."""
        low: _Bound | None = None
        high: _Bound | None = None
        for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            value = schema.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise self.fail(f"{path or '/'}: {key} must be a number")
            if abs(value) > _BIG:
                raise self.fail(f"{path or '/'}: {key} over {MAX_DIGITS} digits")
            exclusive = key.startswith("exclusive") and value == int(value)
            if key in ("minimum", "exclusiveMinimum"):
                bound = (math.ceil(value), not exclusive)
                low = bound if low is None or (bound[0], not bound[1]) > (low[0], not low[1]) else low
            else:
                bound = (math.floor(value), not exclusive)
                high = bound if high is None or (bound[0], bound[1]) < (high[0], high[1]) else high
        if low is not None and high is not None and (low[0] > high[0] or (
                low[0] == high[0] and not (low[1] and high[1]))):
            raise self.fail(f"{path or '/'}: no value lies between its bounds")
        return low, high

    def _integer(self, schema: dict[str, Any], path: str) -> str:
        low, high = self._bounds(schema, path)
        if low is None and high is None:
            return "integer"
        first = None if low is None else low[0] + (0 if low[1] else 1)
        last = None if high is None else high[0] - (0 if high[1] else 1)
        if first is not None and last is not None and first > last:
            raise self.fail(f"{path or '/'}: no whole number lies between its bounds")
        return self.rule(f"{path}-integer", _int_range(first, last))

    def _number(self, schema: dict[str, Any], path: str) -> str:
        low, high = self._bounds(schema, path)
        if low is None and high is None:
            return "number"
        self.rules.setdefault("nonzero-fraction", rf'"." [0-9]{{0,{MAX_DIGITS - 1}}} [1-9]')
        return self.rule(f"{path}-number", _number_range(low, high))

    def _boolean(self, schema: dict[str, Any], path: str) -> str:
        return "boolean"

    def _null(self, schema: dict[str, Any], path: str) -> str:
        return "null"

    def _object(self, schema: dict[str, Any], path: str) -> str:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(properties, dict) or not isinstance(required, list) or \
                not all(isinstance(r, str) for r in required):
            raise self.fail(f"{path or '/'}: properties must be an object and required a list of names")
        names = list(properties) + [r for r in dict.fromkeys(required) if r not in properties]
        if not names:
            if extra is False:
                return self.rule(f"{path}-empty", '"{}"')
            if extra is True or extra == {}:
                return "object"
            value = self.visit(extra, f"{path}-value")
            member = self.rule(f"{path}-member", f'string ":" ws {value}')
            return self.rule(f"{path}-map", rf'"{{" ({member} ("," ws {member}){{0,{MAX_ITEMS - 1}}})? "}}"')
        pairs = []
        for name in names:
            value = self.visit(properties.get(name, True), f"{path}-{name}")
            pairs.append(self.rule(f"{path}-{name}-kv", f'{_lit(json.dumps(name, ensure_ascii=False))} ":" ws {value}'))
        # tail(i, first): the members from i on; "first" when none came before (no comma yet).
        tails: dict[tuple[int, bool], str] = {}

        def tail(i: int, first: bool) -> str:
            if i == len(names):
                return ""
            if (i, first) in tails:
                return tails[(i, first)]
            member = pairs[i] if first else f'"," ws {pairs[i]}'
            after = tail(i + 1, False)
            present = f"{member} {after}".strip()
            if names[i] in required:
                body = present
            else:
                skipped = tail(i + 1, first)
                body = f"({present}) | {skipped}" if skipped else f"({present})?"
            tails[(i, first)] = self.rule(f"{path}-tail-{i}{'-first' if first else ''}", body)
            return tails[(i, first)]

        return self.rule(f"{path}-object", f'"{{" {tail(0, True)} "}}"')  # empty when all are optional

    def _array(self, schema: dict[str, Any], path: str) -> str:
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        if not _count(low) or (high is not None and not _count(high)):
            raise self.fail(f"{path or '/'}: minItems and maxItems must be non-negative integers")
        prefix = schema.get("prefixItems")
        if prefix is not None:
            if not isinstance(prefix, list) or schema.get("items", False) is not False:
                raise self.fail(f"{path or '/'}: prefixItems with more items after them")
            if not low <= len(prefix) <= (len(prefix) if high is None else high):
                raise self.fail(f"{path or '/'}: prefixItems of another length than minItems/maxItems allow")
            items = [self.visit(s, f"{path}-{i}") for i, s in enumerate(prefix)]
            return self.rule(f"{path}-tuple", '"[" ' + ' "," ws '.join(items) + ' "]"' if items else '"[]"')
        items_schema = schema.get("items", True)
        if items_schema is False:
            if low:
                raise self.fail(f"{path or '/'}: items false with minItems")
            return self.rule(f"{path}-empty", '"[]"')
        high = MAX_ITEMS if high is None else min(high, max(MAX_ITEMS, low))
        if low > high:
            raise self.fail(f"{path or '/'}: minItems {low} is over maxItems {high}")
        item = self.visit(items_schema, f"{path}-item")
        if high == 0:
            return self.rule(f"{path}-empty", '"[]"')
        if low == 0:
            more = f' ("," ws {item}){{0,{high - 1}}}' if high > 1 else ""
            return self.rule(f"{path}-array", f'"[" ({item}{more})? "]"')
        more = f' ("," ws {item}){{{low - 1},{high - 1}}}' if high > 1 else ""
        return self.rule(f"{path}-array", f'"[" {item}{more} "]"')


def _strip_literals(body: str) -> str:
    """A rule's body without its string literals and character classes (to find rule names)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]', " ", body)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _int_range(low: int | None, high: int | None) -> str:
    """GBNF for the decimal integers in [low, high] (None: unbounded, up to MAX_DIGITS digits)."""
    pieces = []
    if low is None or low < 0:  # negatives: "-" and a magnitude
        top = _BIG if low is None else -low
        bottom = 1 if high is None or high >= 0 else -high
        if bottom <= top:
            pieces.append(f'"-" ({_natural_range(bottom, top)})')
    if high is None or high >= 0:
        pieces.append(_natural_range(max(low or 0, 0), _BIG if high is None else high))
    return " | ".join(f"({p})" for p in pieces)


def _number_range(low: _Bound | None, high: _Bound | None) -> str:
    """GBNF for decimal numbers (no exponent) between ``low`` and ``high``: (whole number,
    inclusive) or None for no bound."""
    pieces = []
    if low is None or low[0] < 0:  # negatives: "-" and a magnitude above -high, below -low
        if high is not None and high[0] < 0:
            bottom: _Bound = (-high[0], high[1])
        else:
            bottom = (0, True)  # "-0" is 0, inside the range
        magnitude = _magnitudes(bottom, None if low is None else (-low[0], low[1]))
        if magnitude:
            pieces.append(f'"-" ({magnitude})')
    if high is None or high[0] > 0 or (high[0] == 0 and high[1]):
        magnitude = _magnitudes(low if low is not None and low[0] >= 0 else (0, True), high)
        if magnitude:
            pieces.append(magnitude)
    return " | ".join(f"({p})" for p in pieces)


def _magnitudes(bottom: _Bound, top: _Bound | None) -> str:
    """GBNF for decimal numbers m >= 0 above ``bottom`` and below ``top`` (None: no limit);
    an empty string when there is none."""
    low, low_in = bottom
    zero = f'("." "0"{{1,{MAX_DIGITS}}})?'
    if top is not None and top[0] == low:
        return f"{_lit(str(low))} {zero}" if low_in and top[1] else ""
    alternatives = [f"{_lit(str(low))} " + ("fraction?" if low_in else "nonzero-fraction")]
    last = _BIG if top is None else top[0] - 1
    if low + 1 <= last:
        alternatives.append(f"({_natural_range(low + 1, last)}) fraction?")
    if top is not None and top[1]:
        alternatives.append(f"{_lit(str(top[0]))} {zero}")
    return " | ".join(alternatives)


def _natural_range(low: int, high: int) -> str:
    """GBNF for the decimal numbers low..high (0 <= low <= high), without leading zeros."""
    sequences: list[list[str]] = []
    for length in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (length - 1) if length > 1 else 0)
        end = min(high, 10**length - 1)
        if start <= end:
            sequences += _same_length(str(start), str(end))
    return " | ".join(_render_digits(seq) for seq in sequences)


def _same_length(low: str, high: str) -> list[list[str]]:
    """Digit classes, one list per alternative, for the digit strings low..high of one length."""
    if not low:
        return [[]]
    if low[0] == high[0]:
        return [[low[0], *rest] for rest in _same_length(low[1:], high[1:])]
    k = len(low) - 1
    out: list[list[str]] = []
    first, last = int(low[0]), int(high[0])
    if low[1:] != "0" * k:
        out += [[low[0], *rest] for rest in _same_length(low[1:], "9" * k)]
        first += 1
    tail: list[list[str]] = []
    if high[1:] != "9" * k:
        tail = [[high[0], *rest] for rest in _same_length("0" * k, high[1:])]
        last -= 1
    if first <= last:
        out.append([str(first) if first == last else f"[{first}-{last}]", *(["[0-9]"] * k)])
    return out + tail


def _render_digits(seq: list[str]) -> str:
    parts: list[str] = []
    i = 0
    while i < len(seq):
        if seq[i] == "[0-9]":
            j = i
            while j < len(seq) and seq[j] == "[0-9]":
                j += 1
            parts.append("[0-9]" if j - i == 1 else f"[0-9]{{{j - i}}}")
            i = j
        else:
            parts.append(f'"{seq[i]}"' if len(seq[i]) == 1 else seq[i])
            i += 1
    return " ".join(parts)


# -- the prompt -----------------------------------------------------------------------------------


def with_instructions(messages: Messages, plan: OutputPlan | None) -> Messages:
    """``messages`` with the plan's instructions at the end of the system message (a new first
    system message when there is none); the list is copied, the messages are not changed."""
    if plan is None:
        return list(messages)
    out = list(messages)
    for index, message in enumerate(out):
        if message.get("role") in ("system", "developer"):
            text = content_text(message)
            out[index] = {"role": "system", "content": f"{text}\n\n{plan.instructions}" if text else plan.instructions}
            return out
    return [{"role": "system", "content": plan.instructions}, *out]


def render_tool_calls(calls: Sequence[Any]) -> str:
    """An assistant message's ``tool_calls`` written the way the grammar has the model write them,
    so that a conversation's earlier calls read like its own."""
    rendered = []
    for call in calls:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        arguments = function.get("arguments", "{}") if isinstance(function, dict) else "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = arguments
        name = function.get("name", "") if isinstance(function, dict) else ""
        rendered.append(json.dumps({"name": name, "arguments": parsed}, ensure_ascii=False))
    return CALL_OPEN + CALL_SEPARATOR.join(rendered) + CALL_CLOSE


# -- constrained text -> events ---------------------------------------------------------------


def call_id() -> str:
    """A fresh tool-call id: ``call_`` and 24 random hex digits."""
    return "call_" + secrets.token_hex(12)


class OutputShaper:
    """Turns one answer's constrained text into events, as it arrives.

    JSON and text answers pass through as :class:`TextDelta`. Tool calls become
    :class:`ToolCallDelta` fragments: per call, a first one with its id and name (and the
    arguments so far), then the arguments as they are written, one fragment per :meth:`feed`.
    :meth:`logprobs` keeps token log probabilities for text only (tool calls have none, as in
    the API). Text that breaks the grammar's shape (which llama.cpp rules out) raises
    :class:`ProtocolError`.
    """

    def __init__(self, plan: OutputPlan | None, choice: int = 0, ids: Callable[[], str] = call_id) -> None:
        self.plan = plan
        self.choice = choice
        self._ids = ids
        #: "text" (text or JSON passes through), "calls", or None until the first character.
        self.mode: str | None = "text" if plan is None or plan.kind == "json" else \
            "calls" if plan.kind == "calls" else None
        #: Whole calls so far.
        self.calls = 0
        self._held: list[Logprobs] = []
        # The call parser: a literal to match, then the state that follows it.
        self._state = "literal"  # literal, name, args, after, done
        self._expect = CALL_OPEN + '{"name": "'
        self._then = "name"
        self._name: list[str] = []
        self._args: list[str] = []
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._index = -1
        self._id = ""
        self._sent_head = True  # no call open yet

    @property
    def called(self) -> bool:
        """True when the answer is tool calls."""
        return self.mode == "calls"

    @property
    def complete(self) -> bool:
        """True when the tool calls were written to their end."""
        return self.mode == "calls" and self._state == "done"

    def feed(self, text: str) -> list[StreamEvent]:
        """The events for the next piece of text."""
        if not text:
            return []
        if self.mode is None:
            self.mode = "calls" if text[0] == "<" else "text"
            held, self._held = self._held, []
            if self.mode == "text":
                return [TextDelta(text, self.choice), *held]
        if self.mode == "text":
            return [TextDelta(text, self.choice)]
        events: list[StreamEvent] = []
        for ch in text:
            self._step(ch, events)
        self._flush(events)
        return events

    def logprobs(self, event: Logprobs) -> list[StreamEvent]:
        """What to pass on of a token's log probabilities."""
        if self.mode == "text":
            return [event]
        if self.mode is None:
            self._held.append(event)
        return []

    def finish(self) -> list[StreamEvent]:
        """The events still owed at the end (the arguments of a call cut short go out as they are)."""
        events: list[StreamEvent] = []
        if self.mode == "calls":
            self._flush(events, final=True)
        return events

    def finish_reason(self, reason: str) -> str:
        """The finish reason for the engine's ``reason``: "tool_calls" for whole calls."""
        return "tool_calls" if reason == "stop" and self.complete else reason

    def _broken(self, ch: str) -> ProtocolError:
        return ProtocolError(f"the embedded model's tool call broke its grammar at {ch!r}")

    def _step(self, ch: str, events: list[StreamEvent]) -> None:
        state = self._state
        if state == "literal":
            if ch != self._expect[0]:
                raise self._broken(ch)
            self._expect = self._expect[1:]
            if not self._expect:
                self._state = self._then
                if self._state == "args":  # a call begins
                    self._index += 1
                    self._id = self._ids()
                    self._sent_head = False
                    self._depth, self._in_string, self._escape = 0, False, False
        elif state == "name":
            if ch == '"':
                self._state, self._expect, self._then = "literal", ', "arguments": ', "args"
            else:
                self._name.append(ch)
        elif state == "args":
            self._args.append(ch)
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._flush(events, final=True)
                    self._state, self._expect, self._then = "literal", "}", "after"
        elif state == "after":
            if ch == ",":
                self.calls += 1
                self._state, self._expect, self._then = "literal", CALL_SEPARATOR[1:] + '{"name": "', "name"
            elif ch == "]":
                self.calls += 1
                self._state, self._expect, self._then = "literal", CALL_CLOSE[1:], "done"
            else:
                raise self._broken(ch)
        else:  # done: nothing may follow
            raise self._broken(ch)

    def _flush(self, events: list[StreamEvent], final: bool = False) -> None:
        """Send the arguments written so far; a call's first fragment carries its id and name."""
        if self._sent_head and not self._args:
            return
        arguments = "".join(self._args)
        self._args = []
        if not self._sent_head:
            if not arguments and not final:
                return  # the head goes out with the first arguments
            events.append(ToolCallDelta(self._index, id=self._id, name="".join(self._name), arguments=arguments,
                                        choice=self.choice))
            self._sent_head = True
            self._name = []
        else:
            events.append(ToolCallDelta(self._index, arguments=arguments, choice=self.choice))


async def shape_stream(plan: OutputPlan | None, events: AsyncIterator[StreamEvent],
                       ids: Callable[[], str] = call_id) -> AsyncIterator[StreamEvent]:
    """``LocalModel.stream`` events with each choice's text shaped by an :class:`OutputShaper`
    (tool calls, finish reason "tool_calls"); with no plan they pass through unchanged."""
    shapers: dict[int, OutputShaper] = {}

    def shaper(choice: int) -> OutputShaper:
        if choice not in shapers:
            shapers[choice] = OutputShaper(plan, choice, ids)
        return shapers[choice]

    async with aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if plan is None:
                yield event
            elif isinstance(event, TextDelta):
                for out in shaper(event.choice).feed(event.text):
                    yield out
            elif isinstance(event, Logprobs):
                for out in shaper(event.choice).logprobs(event):
                    yield out
            elif isinstance(event, Finish):
                shaping = shaper(event.choice)
                for out in shaping.finish():
                    yield out
                yield Finish(shaping.finish_reason(event.reason), event.choice)
            else:
                yield event
