"""Tools and JSON output for services that only take plain text, by emulation.

Web chat services (Liaobots, AiChatOnline, ...) accept a conversation of ``{role, content}``
strings and answer with text. Clients send OpenAI Chat Completions requests with ``tools``,
``tool_choice``, ``response_format`` and tool-loop history. This module bridges the two:

- :func:`render_history` turns an OpenAI conversation into plain text messages (tool calls and
  tool results become text in the same shape the model is asked to reply with);
- :func:`instructions` is the system-prompt text that lists the tools and says how to reply;
- :func:`emulate` runs the service with those instructions, reads the whole reply (tolerantly:
  code fences, prose around the JSON), validates it with JSON Schema (Draft 2020-12), gives the
  service one repair turn when it is wrong, and yields ``ToolCallDelta``/``TextDelta`` events as
  a native tool-calling model would. A reply that is still wrong is a :class:`ProtocolError`
  raised before anything was yielded, so a router can try its next target.

Everything takes plain JSON values, so it does not depend on the request type.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError
from referencing.exceptions import Unresolvable

from patchbay.errors import InvalidRequest, ProtocolError
from patchbay.events import Finish, StreamEvent, TextDelta, ToolCallDelta, Usage

__all__ = ["Run", "emulate", "instructions", "render_history"]

Message = dict[str, Any]
#: Runs the underlying service on a rendered conversation and streams its events.
Run = Callable[[list[Message]], AsyncIterator[StreamEvent]]

_VALIDATOR = jsonschema.Draft202012Validator
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_MAX_SCAN = 200  # JSON start positions tried in a reply of prose (bounds the work on long replies)
_EXCERPT = 60  # characters of a bad reply quoted in an error
_TEXT_PARTS = {"text": "text", "refusal": "refusal"}  # part type -> the key holding its text


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _readable(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


_NOT_JSON = object()


def _loads(text: str, default: Any) -> Any:
    """``text`` parsed as JSON, or ``default`` when it is not JSON (or nested too deeply)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return default


# -- history --------------------------------------------------------------------------------


def render_history(messages: list[Message]) -> list[Message]:
    """The conversation as plain ``{"role": system|user|assistant, "content": str}`` messages.

    Text parts are joined; assistant ``tool_calls`` become the JSON reply the model is asked to
    write (``{"tool_calls": [{"name", "arguments"}]}``); each run of ``tool`` messages becomes
    one user message of "Result of tool call <id> (<name>): ...". A non-text part is an
    :class:`InvalidRequest` naming it: these services read text only. Plain text conversations
    come back equal.
    """
    names: dict[str, str] = {}  # tool call id -> tool name, from earlier assistant messages
    rendered: list[Message] = []
    previous_was_tool = False
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object with role and content", param=where)
        role = message.get("role")
        text = _text_of(message.get("content"), where)
        if role in ("system", "developer"):
            rendered.append({"role": "system", "content": text})
        elif role == "user":
            rendered.append({"role": "user", "content": text})
        elif role == "assistant":
            calls = message.get("tool_calls") or []
            if not isinstance(calls, list):
                raise InvalidRequest(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
            if calls:
                rendered_calls = [_history_call(call, f"{where}.tool_calls[{i}]", names) for i, call in
                                  enumerate(calls)]
                reply = _readable({"tool_calls": rendered_calls})
                text = f"{text}\n{reply}" if text else reply
            rendered.append({"role": "assistant", "content": text})
        elif role == "tool":
            call_id = str(message.get("tool_call_id") or "")
            name = names.get(call_id)
            label = f"{call_id} ({name})" if name else call_id
            result = f"Result of tool call {label}:\n{text}"
            if previous_was_tool:
                rendered[-1]["content"] += f"\n\n{result}"
            else:
                rendered.append({"role": "user", "content": result})
        else:
            raise InvalidRequest(f"{where}.role must be system, user, assistant or tool, got {role!r:.40}",
                                 param=f"{where}.role")
        previous_was_tool = role == "tool"
    return rendered


def _text_of(content: Any, where: str) -> str:
    """A message's text: the string, or its text parts joined; any other part is refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = _TEXT_PARTS.get(kind) if isinstance(kind, str) else None
        if key is None or not isinstance(part.get(key), str):
            raise InvalidRequest(f"{where}.content[{index}] (type {kind!s:.30}) is not text; this service reads "
                                 "text only", param=f"{where}.content[{index}]")
        texts.append(part[key])
    return "\n".join(texts)


def _history_call(call: Any, where: str, names: dict[str, str]) -> dict[str, Any]:
    """One assistant tool call (OpenAI shape) as ``{"name", "arguments"}``; remembers its id."""
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise InvalidRequest(f"{where}.function.name must be a string", param=f"{where}.function.name")
    if isinstance(call.get("id"), str):
        names[call["id"]] = name
    arguments: Any = function.get("arguments") if isinstance(function, dict) else None
    if isinstance(arguments, str):  # OpenAI sends them as JSON text; unreadable text is kept as it was
        arguments = _loads(arguments, arguments) if arguments.strip() else {}
    return {"name": name, "arguments": {} if arguments is None else arguments}


# -- what is asked ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    validator: Any  # a Draft202012Validator for the parameters
    param: str  # where the schema was in the request, for errors


@dataclass(frozen=True)
class _Output:
    """``response_format``: any JSON object (``schema`` None) or a value following ``schema``."""

    schema: dict[str, Any] | None = None
    name: str = ""
    description: str = ""
    validator: Any = None
    param: str = "response_format.json_schema.schema"


@dataclass(frozen=True)
class _Ask:
    """The checked request: which tools, how they must be used, and the output format."""

    tools: dict[str, _Tool] = field(default_factory=dict)
    mode: str = "none"  # none | auto | required | named
    named: str = ""
    parallel: bool = True
    output: _Output | None = None

    @property
    def nothing(self) -> bool:
        return self.mode == "none" and self.output is None


def _checked_schema(schema: Any, param: str, what: str) -> Any:
    """A validator for ``schema``, or InvalidRequest (at ``param``) when it is not a JSON Schema."""
    if not isinstance(schema, dict | bool):
        raise InvalidRequest(f"{what} must be a JSON Schema object", param=param)
    try:
        _VALIDATOR.check_schema(schema)
    except SchemaError as error:
        at = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.path) or " (top)"
        raise InvalidRequest(f"{what} is not a valid JSON Schema: at{at} it breaks the rule "
                             f"{error.validator!r}", param=param) from None
    return _VALIDATOR(schema)


def _tools(tools: Any) -> dict[str, _Tool]:
    if tools is None:
        return {}
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list of function tools", param="tools")
    checked: dict[str, _Tool] = {}
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequest(f'{where} must be a function tool ({{"type": "function", "function": {{...}}}})',
                                 param=f"{where}.type")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest(f"{where}.function must be an object with a name", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise InvalidRequest(f"{where}.function.name must be 1 to 64 letters, digits, _ or -",
                                 param=f"{where}.function.name")
        if name in checked:
            raise InvalidRequest(f"{where}.function.name {name!r} is given twice", param=f"{where}.function.name")
        description = function.get("description", "")
        if not isinstance(description, str):
            raise InvalidRequest(f"{where}.function.description must be a string",
                                 param=f"{where}.function.description")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        param = f"{where}.function.parameters"
        kind = parameters.get("type", "object") if isinstance(parameters, dict) else None
        if kind != "object" and not (isinstance(kind, list) and "object" in kind):
            raise InvalidRequest(f'{param} must be a JSON Schema of an object ("type": "object")', param=param)
        validator = _checked_schema(parameters, param, param)
        checked[name] = _Tool(name, description, parameters, validator, param)
    return checked


def _output(response_format: Any) -> _Output | None:
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequest("response_format must be an object with a type", param="response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _Output()
    if kind != "json_schema":
        raise InvalidRequest("response_format.type must be text, json_object or json_schema",
                             param="response_format.type")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest("response_format.json_schema must be an object with a schema",
                             param="response_format.json_schema")
    name, description = spec.get("name", ""), spec.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise InvalidRequest("response_format.json_schema name and description must be strings",
                             param="response_format.json_schema")
    if "schema" not in spec:
        return _Output(name=name, description=description)
    param = "response_format.json_schema.schema"
    validator = _checked_schema(spec["schema"], param, param)
    return _Output(spec["schema"], name, description, validator)


def _ask(tools: Any, tool_choice: Any, response_format: Any, parallel_tool_calls: Any) -> _Ask:
    """Check the four request fields and say what they ask for (InvalidRequest with ``param``)."""
    checked = _tools(tools)
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InvalidRequest("parallel_tool_calls must be true or false", param="parallel_tool_calls")
    parallel = parallel_tool_calls is not False
    output = _output(response_format)
    named = ""
    if tool_choice is None:
        mode = "auto" if checked else "none"
    elif tool_choice in ("none", "auto", "required"):
        mode = tool_choice
    elif isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        choice = function.get("name") if isinstance(function, dict) else None
        if tool_choice.get("type") != "function" or not isinstance(choice, str):
            raise InvalidRequest('tool_choice must be none, auto, required or {"type": "function", '
                                 '"function": {"name": ...}}', param="tool_choice")
        named = choice
        if named not in checked:
            raise InvalidRequest(f"tool_choice names the tool {named!r:.70}, which is not in tools",
                                 param="tool_choice")
        mode = "named"
    else:
        raise InvalidRequest("tool_choice must be none, auto, required or a named function", param="tool_choice")
    if mode in ("auto", "required") and not checked:
        if mode == "required":
            raise InvalidRequest("tool_choice is required but no tools were given", param="tool_choice")
        mode = "none"
    return _Ask(checked, mode, named, parallel, output)


# -- instructions ------------------------------------------------------------------------------


def _call_shape(ask: _Ask) -> str:
    name = ask.named or "<tool name>"
    return f'{{"tool_calls": [{{"name": "{name}", "arguments": {{<arguments following the tool\'s schema>}}}}]}}'


def _output_shape(output: _Output) -> str:
    if output.schema is None:
        return "a JSON object"
    label = f' "{output.name}"' if output.name else ""
    about = f" ({output.description})" if output.description else ""
    return f"a JSON value that validates against this JSON Schema{label}{about}: {_compact(output.schema)}"


def _reply_with(ask: _Ask) -> str:
    """How to reply, in one or two sentences (the end of the instructions and of a repair turn)."""
    alone = "nothing before or after it, no code fence"
    if ask.mode in ("required", "named"):
        target = f"call the tool {ask.named}" if ask.mode == "named" else "call at least one tool"
        count = " with exactly one call in the list" if not ask.parallel or ask.mode == "named" else ""
        return f"You must {target} now: reply with only this JSON object{count} ({alone}):\n{_call_shape(ask)}"
    parts = []
    if ask.mode == "auto":
        count = "exactly one call" if not ask.parallel else "one or more calls"
        parts.append(f"Call a tool when it helps. To call tools, reply with only this JSON object, with {count} in "
                     f"the list ({alone}):\n{_call_shape(ask)}")
    if ask.output is not None:
        answer = f"reply with only {_output_shape(ask.output)} ({alone})."
        parts.append(f"To answer without a tool, {answer}" if ask.mode == "auto" else answer[0].upper() + answer[1:])
    elif ask.mode == "auto":
        parts.append("To answer without a tool, reply in plain text.")
    return "\n".join(parts)


def _instructions(ask: _Ask) -> str | None:
    if ask.nothing:
        return None
    sections = []
    if ask.mode != "none":
        lines = ["# Tools", "You can call these tools; each has a name, what it does, and the JSON Schema of its "
                 "arguments."]
        for tool in ask.tools.values():
            lines.append(f"- {tool.name}: {tool.description or '(no description)'}")
            lines.append(f"  arguments schema: {_compact(tool.parameters)}")
        lines.append("Tool results come back to you in a later message, as text.")
        sections.append("\n".join(lines))
    sections.append("# How to reply\n" + _reply_with(ask))
    return "\n\n".join(sections)


def instructions(tools: Any, tool_choice: Any, response_format: Any, parallel_tool_calls: Any) -> str | None:
    """The text to add to the system prompt for what is asked, or None when nothing is.

    It lists the tools (names, descriptions, parameter schemas) and says exactly how to reply:
    the ``{"tool_calls": [...]}`` object, plain text where text is allowed, or the JSON object /
    schema to follow. Bad fields raise :class:`InvalidRequest` with ``param``.
    """
    return _instructions(_ask(tools, tool_choice, response_format, parallel_tool_calls))


# -- reading a reply ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Calls:
    calls: list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class _Json:
    text: str


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Problem:
    why: str


_Reading = _Calls | _Json | _Text | _Problem


def _candidates(text: str) -> Iterator[tuple[Any, str]]:
    """JSON values in a reply, with the text each was read from: the whole reply, each fenced
    block, then each object or array that starts inside prose."""
    for source in (text.strip(), *(block.strip() for block in _FENCE.findall(text))):
        value = _loads(source, _NOT_JSON)
        if value is not _NOT_JSON:
            yield value, source
    decoder = json.JSONDecoder()
    position, tries = 0, 0
    while tries < _MAX_SCAN:
        starts = [i for i in (text.find("{", position), text.find("[", position)) if i >= 0]
        if not starts:
            return
        start = min(starts)
        tries += 1
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            position = start + 1
            continue
        yield value, text[start:end]
        position = end


def _as_calls(value: Any) -> list[Any] | None:
    """The raw call objects when ``value`` looks like tool calls, else None. Takes
    ``{"tool_calls": [...]}``, a single ``{"name", "arguments"}`` object, a list of those, and
    calls in the OpenAI shape ``{"function": {...}}``."""
    if isinstance(value, dict) and "tool_calls" in value:
        calls = value["tool_calls"]
        return calls if isinstance(calls, list) else [calls]
    if _looks_like_call(value):
        return [value]
    if isinstance(value, list) and value and all(_looks_like_call(item) for item in value):
        return value
    return None


def _looks_like_call(value: Any) -> bool:
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        value = value["function"]
    return isinstance(value, dict) and isinstance(value.get("name"), str) and (
        "arguments" in value or "parameters" in value)


def _schema_problem(validator: Any, instance: Any, what: str, param: str) -> str | None:
    """Why ``instance`` fails the validator's schema, in our words (path and rule), or None.
    A ``$ref`` that does not resolve is the request's fault (InvalidRequest at ``param``): it is
    found only here, because references are resolved lazily while validating."""
    try:
        errors = list(itertools.islice(validator.iter_errors(instance), 3))  # a few, so one repair can fix all
    except Unresolvable:
        raise InvalidRequest(f"{param} has a $ref that does not resolve", param=param) from None
    except RecursionError:
        return f"{what} is nested too deeply"
    return f"{what}: {'; '.join(map(_describe, errors))}" if errors else None


def _describe(error: ValidationError) -> str:
    """Where the instance failed and which rule, e.g. ``at city, "type" must be "string"``."""
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    at = f"at {path[:80]}" if path else "at the top level"
    rule, value, instance = error.validator, error.validator_value, error.instance
    if rule == "required" and isinstance(instance, dict) and isinstance(value, list):
        missing = [key for key in value if key not in instance]
        return f"{at}, the required properties {_compact(missing)[:80]} are missing"
    if rule == "additionalProperties" and isinstance(instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = [key for key in instance if key not in known]
        return f"{at}, properties the schema does not allow: {_compact(extra)[:80]}"
    return f"{at}, the schema rule \"{rule}\" requires {_compact(value)[:80]}"


def _read_call(raw: Any, ask: _Ask) -> tuple[str, dict[str, Any]] | str:
    """One call as ``(name, arguments)``, or why it is wrong."""
    if isinstance(raw, dict) and isinstance(raw.get("function"), dict):
        raw = raw["function"]
    name = raw.get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str):
        return 'a call is not an object with a "name"'
    tool = ask.tools.get(name)
    if tool is None:
        return f"the tool {name[:64]!r} does not exist (tools: {', '.join(ask.tools)})"
    arguments = raw.get("arguments", raw.get("parameters"))
    if isinstance(arguments, str):
        arguments = _loads(arguments, _NOT_JSON) if arguments.strip() else {}
        if arguments is _NOT_JSON:
            return f"the arguments of {name} are not JSON"
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return f"the arguments of {name} are not a JSON object"
    problem = _schema_problem(tool.validator, arguments, f"the arguments of {name}", tool.param)
    return problem if problem else (name, arguments)


def _read_calls(raw_calls: list[Any], ask: _Ask) -> _Calls | _Problem:
    calls: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    for raw in raw_calls:
        read = _read_call(raw, ask)
        if isinstance(read, str):
            problems.append(read)
        else:
            calls.append(read)
    if problems:
        return _Problem("; ".join(problems[:3]))
    if not calls:
        return _Problem("the tool_calls list is empty")
    if ask.mode == "named" and any(name != ask.named for name, _ in calls):
        return _Problem(f"only the tool {ask.named} may be called now")
    if len(calls) > 1 and (not ask.parallel or ask.mode == "named"):
        return _Problem(f"it makes {len(calls)} calls where exactly one is allowed")
    return _Calls(calls)


def _read_output(reply: str, output: _Output) -> _Json | _Problem:
    first: str | None = None
    for value, source in _candidates(reply):
        if output.schema is None:
            if isinstance(value, dict):
                return _Json(source)
            continue
        problem = _schema_problem(output.validator, value, "the JSON", output.param)
        if problem is None:
            return _Json(source)
        first = first or problem
    if first:
        return _Problem(first)
    return _Problem("it contains no JSON object" if output.schema is None else "it contains no JSON")


def _read(reply: str, ask: _Ask, finish: str | None) -> _Reading:
    """What a whole reply says under ``ask``: tool calls, JSON output, text, or a problem."""
    cut = " (the reply was cut off at the length limit)" if finish == "length" else ""
    if not reply.strip():
        return _Problem("the reply was empty" + cut)
    if ask.mode != "none":
        for value, _ in _candidates(reply):
            raw_calls = _as_calls(value)
            if raw_calls is not None:
                return _read_calls(raw_calls, ask)
        if ask.mode in ("required", "named"):
            return _Problem('it contains no tool call (a JSON object {"tool_calls": [...]})' + cut)
    if ask.output is not None:
        read = _read_output(reply, ask.output)
        return _Problem(read.why + cut) if isinstance(read, _Problem) else read
    return _Text(reply)


# -- running -----------------------------------------------------------------------------------


@dataclass
class _Turn:
    """What one buffered run said."""

    text: str = ""
    finish: str | None = None
    usage: Usage | None = None


async def _buffer(source: AsyncIterator[StreamEvent]) -> _Turn:
    """Read a whole run: its text, its finish reason and its last usage report."""
    parts: list[str] = []
    turn = _Turn()
    try:
        async for event in source:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Usage):
                turn.usage = event
            elif isinstance(event, Finish):
                turn.finish = event.reason
    finally:
        await _close(source)
    turn.text = "".join(parts)
    return turn


async def _close(source: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


def _with_system(history: list[Message], text: str) -> list[Message]:
    """``history`` with ``text`` added to its first system message (or in a new one, first)."""
    result = [dict(message) for message in history]
    if result and result[0]["role"] == "system":
        head = result[0]["content"]
        result[0]["content"] = f"{head}\n\n{text}" if head else text
    else:
        result.insert(0, {"role": "system", "content": text})
    return result


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= _EXCERPT else flat[:_EXCERPT] + "...")


def _new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


async def emulate(
    messages: list[Message],
    *,
    tools: Any = None,
    tool_choice: Any = None,
    response_format: Any = None,
    parallel_tool_calls: Any = None,
    run: Run,
) -> AsyncIterator[StreamEvent]:
    """Answer an OpenAI-style request (tools, JSON output) with a service that only does text.

    With nothing asked, ``run`` streams on the rendered history and its events pass through.
    Otherwise the instructions go into the system message, the whole reply is read and
    validated, a wrong one gets one repair turn, and the answer is yielded as
    ``ToolCallDelta``s + ``Finish("tool_calls")``, or one ``TextDelta`` + ``Finish``. A reply
    still wrong after the repair raises :class:`ProtocolError` with nothing yielded.
    """
    ask = _ask(tools, tool_choice, response_format, parallel_tool_calls)
    history = render_history(messages)
    if ask.nothing:
        source = run(history)
        try:
            async for event in source:
                yield event
        finally:
            await _close(source)
        return
    conversation = _with_system(history, _instructions(ask) or "")
    turns = [await _buffer(run(conversation))]
    reading = _read(turns[0].text, ask, turns[0].finish)
    if isinstance(reading, _Problem):
        repair = (f"Your last reply did not follow the required format: {reading.why}.\n"
                  f"{_reply_with(ask)}")
        retry = [*conversation, {"role": "assistant", "content": turns[0].text or "(empty reply)"},
                 {"role": "user", "content": repair}]
        turns.append(await _buffer(run(retry)))
        reading = _read(turns[1].text, ask, turns[1].finish)
        if isinstance(reading, _Problem):
            raise ProtocolError(f"the service's reply did not follow the required format after one repair turn: "
                                f"{reading.why} (reply began {_excerpt(turns[1].text)})")
    usages = [turn.usage for turn in turns if turn.usage is not None]
    usage = Usage(sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages)) if usages else None
    if isinstance(reading, _Calls):
        for index, (name, arguments) in enumerate(reading.calls):
            yield ToolCallDelta(index=index, id=_new_call_id(), name=name, arguments=_compact(arguments))
        finish = "tool_calls"
    elif isinstance(reading, _Json):
        yield TextDelta(reading.text)
        finish = "stop"
    else:
        yield TextDelta(reading.text)
        finish = turns[-1].finish or "stop"
    if usage is not None:
        yield usage
    yield Finish(finish)
