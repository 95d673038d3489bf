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

Everything takes plain JSON values, so it does not depend on the request type; the four fields
are read and checked by :func:`patchbay.chat.output.output_spec`.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import ValidationError
from referencing.exceptions import Unresolvable

from patchbay.chat.output import JSON_SCHEMA, AnswerFormat, OutputSpec, answer_description, output_spec, tool_listing
from patchbay.errors import InvalidRequest, ProtocolError
from patchbay.events import Finish, StreamEvent, TextDelta, ToolCallDelta, Usage
from patchbay.redact import clip

__all__ = ["Run", "emulate", "instructions", "render_history"]

Message = dict[str, Any]
#: Runs the underlying service on a rendered conversation and streams its events.
Run = Callable[[list[Message]], AsyncIterator[StreamEvent]]

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
class _Ask:
    """What is asked (:class:`OutputSpec`) and the validators replies are checked with."""

    spec: OutputSpec
    tools: dict[str, tuple[Any, str]]  # allowed tool name -> a validator for its arguments, and its param
    answer: Any  # a validator for a JSON answer that has a schema, or None


def _ask(tools: Any, tool_choice: Any, response_format: Any, parallel_tool_calls: Any) -> _Ask:
    """Check the four request fields (InvalidRequest with ``param``) and make the validators."""
    return _validators(output_spec(tools, tool_choice, response_format, parallel_tool_calls))


@functools.lru_cache(maxsize=64)
def _validators(spec: OutputSpec) -> _Ask:
    answer = spec.answer
    return _Ask(spec, {tool.name: (JSON_SCHEMA(tool.parameters), tool.param) for tool in spec.allowed_tools},
                JSON_SCHEMA(answer.schema) if answer is not None and answer.schema is not None else None)


# -- instructions ------------------------------------------------------------------------------


def _call_shape(spec: OutputSpec) -> str:
    name = spec.allowed[0] if len(spec.allowed) == 1 else "<tool name>"
    return f'{{"tool_calls": [{{"name": "{name}", "arguments": {{<arguments following the tool\'s schema>}}}}]}}'


def _reply_with(spec: OutputSpec) -> str:
    """How to reply, in one or two sentences (the end of the instructions and of a repair turn)."""
    alone = "nothing before or after it, no code fence"
    if spec.must_call:
        target = f"call the tool {spec.allowed[0]}" if len(spec.allowed) == 1 else "call at least one tool"
        count = " with exactly one call in the list" if not spec.parallel else ""
        return f"You must {target} now: reply with only this JSON object{count} ({alone}):\n{_call_shape(spec)}"
    parts = []
    if spec.allowed:
        count = "one or more calls" if spec.parallel else "exactly one call"
        parts.append(f"Call a tool when it helps. To call tools, reply with only this JSON object, with {count} in "
                     f"the list ({alone}):\n{_call_shape(spec)}")
    if spec.answer is not None:
        answer = f"reply with only {answer_description(spec.answer)} ({alone})."
        parts.append(f"To answer without a tool, {answer}" if spec.allowed else answer[0].upper() + answer[1:])
    elif spec.allowed:
        parts.append("To answer without a tool, reply in plain text.")
    return "\n".join(parts)


def _instructions(spec: OutputSpec) -> str | None:
    if spec.plain:
        return None
    sections = []
    if spec.allowed:
        sections.append("# Tools\nYou can call these tools, one a line: its name, what it does, and the JSON Schema "
                        f"of its arguments (parameters).\n{tool_listing(spec.allowed_tools)}\n"
                        "Tool results come back to you in a later message, as text.")
    sections.append("# How to reply\n" + _reply_with(spec))
    return "\n\n".join(sections)


def instructions(tools: Any, tool_choice: Any, response_format: Any, parallel_tool_calls: Any) -> str | None:
    """The text to add to the system prompt for what is asked, or None when nothing is.

    It lists the tools that may be called (names, descriptions, parameter schemas) and says
    exactly how to reply: the ``{"tool_calls": [...]}`` object, plain text where text is
    allowed, or the JSON object / schema to follow. Bad fields raise :class:`InvalidRequest`
    with ``param``.
    """
    return _instructions(output_spec(tools, tool_choice, response_format, parallel_tool_calls))


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


def _schema_problem(validator: Any, param: str, instance: Any, what: str) -> str | None:
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
    at = f"at {clip(path, 80)}" if path else "at the top level"
    rule, value, instance = error.validator, error.validator_value, error.instance
    if rule == "required" and isinstance(instance, dict) and isinstance(value, list):
        missing = [key for key in value if key not in instance]
        return f"{at}, the required properties {clip(_compact(missing), 80)} are missing"
    if rule == "additionalProperties" and isinstance(instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = [key for key in instance if key not in known]
        return f"{at}, properties the schema does not allow: {clip(_compact(extra), 80)}"
    return f"{at}, the schema rule \"{rule}\" requires {clip(_compact(value), 80)}"


def _read_call(raw: Any, ask: _Ask) -> tuple[str, dict[str, Any]] | str:
    """One call as ``(name, arguments)``, or why it is wrong."""
    if isinstance(raw, dict) and isinstance(raw.get("function"), dict):
        raw = raw["function"]
    name = raw.get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str):
        return 'a call is not an object with a "name"'
    checker = ask.tools.get(name)
    if checker is None:
        if ask.spec.tool(name) is not None:
            return f"only {' or '.join(ask.spec.allowed)} may be called now, not {name}"
        return f"the tool {clip(name, 64)!r} does not exist (tools: {', '.join(ask.spec.allowed)})"
    arguments = raw.get("arguments", raw.get("parameters"))
    if isinstance(arguments, str):
        arguments = _loads(arguments, _NOT_JSON) if arguments.strip() else {}
        if arguments is _NOT_JSON:
            return f"the arguments of {name} are not JSON"
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return f"the arguments of {name} are not a JSON object"
    problem = _schema_problem(*checker, arguments, f"the arguments of {name}")
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
    if len(calls) > 1 and not ask.spec.parallel:
        return _Problem(f"it makes {len(calls)} calls where exactly one is allowed")
    return _Calls(calls)


def _read_output(reply: str, output: AnswerFormat, validator: Any) -> _Json | _Problem:
    """The JSON answer in a reply: an object (json_object, no validator) or a value the validator accepts."""
    first: str | None = None
    for value, source in _candidates(reply):
        if validator is None:
            if isinstance(value, dict):
                return _Json(source)
            continue
        problem = _schema_problem(validator, output.param, value, "the JSON")
        if problem is None:
            return _Json(source)
        first = first or problem
    if first:
        return _Problem(first)
    return _Problem("it contains no JSON object" if validator is None else "it contains no JSON")


def _read(reply: str, ask: _Ask, finish: str | None) -> _Reading:
    """What a whole reply says under ``ask``: tool calls, JSON output, text, or a problem."""
    cut = " (the reply was cut off at the length limit)" if finish == "length" else ""
    if not reply.strip():
        return _Problem("the reply was empty" + cut)
    if ask.spec.allowed:
        for value, _ in _candidates(reply):
            raw_calls = _as_calls(value)
            if raw_calls is not None:
                return _read_calls(raw_calls, ask)
        if ask.spec.must_call:
            return _Problem('it contains no tool call (a JSON object {"tool_calls": [...]})' + cut)
    if ask.spec.answer is not None:
        read = _read_output(reply, ask.spec.answer, ask.answer)
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
    return repr(clip(flat, _EXCERPT + 3, marker="..."))


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
    if ask.spec.plain:
        source = run(history)
        try:
            async for event in source:
                yield event
        finally:
            await _close(source)
        return
    conversation = _with_system(history, _instructions(ask.spec) or "")
    turns = [await _buffer(run(conversation))]
    reading = _read(turns[0].text, ask, turns[0].finish)
    if isinstance(reading, _Problem):
        repair = (f"Your last reply did not follow the required format: {reading.why}.\n"
                  f"{_reply_with(ask.spec)}")
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
