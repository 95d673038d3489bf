"""A fault-injecting OpenAI-compatible upstream (docs/protocols.md#openai-compatible-chat-completions).

Serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed and not) with the exact
object shapes of the real API, and can answer every documented error, mid-stream failure and
transport fault.  Request bodies are kept whole so tests can assert on pass-through fields.

Fault scenarios (``scenario``), each for streamed and whole answers unless noted:

- ``status_<code>``: the API's error object with that status (429 carries ``Retry-After``);
- ``html_200``: an nginx-style HTML error page with status 200;
- ``slow_first_byte``, ``stall``, ``disconnect``, ``reset_before_headers``, ``truncated_chunked``,
  ``invalid_utf8``, ``one_byte``: the transport faults of :meth:`ReplicaServer.send`;
- ``mid_stream_error``: an error event after a few chunks (streamed only);
- ``malformed_stream``: invalid JSON after a few chunks; a whole answer is cut mid-object;
- ``enormous``: the answer plus ``enormous_size`` characters, streamed as *one* SSE event
  (one line of several MB) or sent as one JSON body; :meth:`OpenAIFake.enormous_text` is the text;
- ``endless``: deltas ``"0 "``, ``"1 "``, ... every ``endless_interval`` seconds, never ``[DONE]``
  (a whole answer: a JSON string that never closes), until the client goes (at most
  :data:`~tests.replicas.base.MAX_SLEEP` seconds); :func:`endless_text` spells the first n deltas;
- ``wrong_content_type``: a correct body under the wrong type: a stream labelled
  ``application/json``, a whole answer labelled ``text/plain``;
- ``keepalive``, ``tool_call``: not faults (comment lines between events; a tool call);
- ``tool_call_then_fail``: a streamed tool call whose connection drops right after its first
  arguments fragment (:meth:`OpenAIFake.tool_call_fragments` are the fragments of the whole
  call); a whole answer is cut mid-object.

Tool calls (``tool_call`` and ``tool_call_then_fail``, with ``tools`` in the request) call the
tool that ``tool_choice`` names, else the first one; with ``tool_choice`` "none", or when the
last message is a tool result, the answer is text, as a model that read the result would write.
``n`` > 1 gives that many choices (the same answer in each), and ``logprobs`` a ``logprobs``
object per choice (one item per word of the answer, with ``top_logprobs`` alternatives).

``POST /v1/completions`` (legacy text completions, streamed and not; ``prompt`` a string or a
list of strings, ``n`` choices per prompt, ``max_tokens`` cuts the answer to that many words with
finish reason "length") answers the text after an ``echo:`` prefix of the prompt, else
``answer``; the status scenarios, ``fail_next`` and ``mid_stream_error`` apply. Bodies are kept
in ``completion_bodies``.

``POST /v1/embeddings`` answers a deterministic unit vector per input (from a hash of its
text, or of its token ids), ``embedding_dims`` long, or ``dimensions`` long when the request
asks and ``honours_dimensions`` is true; ``encoding_format`` "base64" is honoured; the status
scenarios and ``fail_next`` apply. Bodies are kept in ``embedding_bodies``;
:meth:`OpenAIFake.vector` is the vector of one input.

Connection refused needs no fake: use :func:`tests.replicas.base.refused_url`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import secrets
import struct
import time
from typing import Any, ClassVar

from aiohttp import web

from tests.replicas.base import DEFAULT_ANSWER, MAX_SLEEP, ReplicaServer, split_deltas, sse

STATUS_SCENARIOS = {
    f"status_{code}": code for code in (400, 401, 402, 403, 404, 409, 422, 429, 500, 502, 503)
}

#: (type, code, message) of the error object for each status.
ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    402: ("insufficient_quota", "insufficient_quota", "You exceeded your current quota."),
    403: ("permission_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    409: ("conflict_error", None, "Conflict, please retry."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached, please retry later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded."),
}

HTML_ERROR_PAGE = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

ENORMOUS_FILLER = "0123456789abcdef"


def endless_text(deltas: int) -> str:
    """The text of the first ``deltas`` deltas of the ``endless`` scenario."""
    return "".join(f"{i} " for i in range(deltas))


ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def error_object(status: int, message: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The ``{"error": {...}}`` body the real API sends with ``status`` (docs/protocols.md#openai-error-objects)."""
    err_type, code, default = ERRORS.get(status, ("server_error", None, "Error."))
    return {"error": {"message": message or default, "type": err_type, "param": param, "code": code}}


def text_of(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class OpenAIFake(ReplicaServer):
    """OpenAI-compatible fake.  Base for clients: ``api_base`` (``<base_url>/v1``).

    Attributes: ``models``, ``answer``, ``continuation`` (answer to an assistant prefill),
    ``prefills`` (prefilled assistant texts seen), ``api_key`` (None = no auth check),
    ``fail_next``/``fail_status`` (the next N chat requests fail), ``retry_after`` (seconds, for
    429), ``usage_extra`` (fields merged into every chat usage object: ``cost``,
    ``prompt_tokens_details``, or fixed token counts), ``delay_per_chunk``, ``tool_arguments``
    (the JSON arguments of the "tool_call" scenario), ``bodies`` (every chat request body),
    ``last_body``, ``chat_count``.

    Answer selection: tool call (see the module docstring), else
    ``continuation`` if the last message is an assistant prefill, else the text after an
    ``echo:`` prefix of the last message (verbatim), else ``answer``.
    """

    SCENARIOS: ClassVar[frozenset[str]] = frozenset(
        {
            "normal",
            "one_byte",
            "mid_stream_error",
            "malformed_stream",
            "slow_first_byte",
            "stall",
            "disconnect",
            "keepalive",
            "html_200",
            "tool_call",
            "tool_call_then_fail",
            "reset_before_headers",
            "truncated_chunked",
            "invalid_utf8",
            "enormous",
            "endless",
            "wrong_content_type",
        }
        | set(STATUS_SCENARIOS)
    )

    def __init__(self, scenario: str = "normal") -> None:
        super().__init__(scenario)
        self.models = ["fake-small", "fake-large"]
        self.answer = DEFAULT_ANSWER
        self.continuation = " and that is all."
        self.prefills: list[str] = []
        self.api_key: str | None = None
        self.fail_next = 0
        self.fail_status = 500
        self.retry_after = 1
        self.tool_arguments: dict[str, Any] = {"city": "Paris", "unit": "celsius"}
        self.bodies: list[dict[str, Any]] = []
        self.chat_count = 0
        self.enormous_size = 4 * 1024 * 1024
        self.endless_interval = 0.005
        self.completion_bodies: list[dict[str, Any]] = []
        self.embedding_bodies: list[dict[str, Any]] = []
        self.embedding_dims = 8
        self.honours_dimensions = True
        self.usage_extra: dict[str, Any] = {}

    @property
    def api_base(self) -> str:
        """The base URL an OpenAI client takes (``.../v1``)."""
        return self.url("/v1")

    @property
    def last_body(self) -> dict[str, Any]:
        """Body of the latest chat completions request."""
        return self.bodies[-1]

    def enormous_text(self) -> str:
        """The answer of the ``enormous`` scenario: ``answer`` then ``enormous_size`` filler characters."""
        repeat = -(-self.enormous_size // len(ENORMOUS_FILLER))
        return self.answer + (ENORMOUS_FILLER * repeat)[: self.enormous_size]

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/models", self.list_models), web.post("/v1/chat/completions", self.completions),
                web.post("/v1/completions", self.text_completions), web.post("/v1/embeddings", self.embeddings)]

    # ----------------------------------------------------------------- helpers

    def violation_response(self, reason: str) -> web.StreamResponse:
        return web.json_response(error_object(400, f"replica shape check failed: {reason}"), status=400)

    def error_response(self, status: int) -> web.Response:
        """An error answer in the API's format; 429 carries ``Retry-After``."""
        headers = {"Retry-After": str(self.retry_after)} if status == 429 else None
        return web.json_response(error_object(status), status=status, headers=headers)

    def authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _check(self, body: dict[str, Any]) -> None:
        self.check(
            isinstance(body.get("model"), str) and body["model"],
            f"model must be a non-empty string: {body.get('model')!r}",
        )
        messages = body.get("messages")
        self.check(isinstance(messages, list) and messages, "messages must be a non-empty list")
        assert isinstance(messages, list)
        for i, message in enumerate(messages):
            self.check(
                isinstance(message, dict) and message.get("role") in ROLES,
                f"messages[{i}] has no valid role: {message!r}",
            )
            content = message.get("content")
            ok = isinstance(content, str | list) or (content is None and message["role"] == "assistant")
            self.check(ok, f"messages[{i}].content must be a string or a list of parts: {content!r}")
            if message["role"] == "tool":
                self.check(
                    isinstance(message.get("tool_call_id"), str), f"messages[{i}] (tool) lacks tool_call_id"
                )
        stream = body.get("stream", False)
        self.check(isinstance(stream, bool), f"stream must be a boolean: {stream!r}")
        if "stream_options" in body and body["stream_options"] is not None:
            self.check(stream, "stream_options is only allowed when stream is true")
            self.check(isinstance(body["stream_options"], dict), "stream_options must be an object")
        tools = body.get("tools")
        if tools is not None:
            self.check(isinstance(tools, list), "tools must be a list")
            for i, tool in enumerate(tools):
                fn = tool.get("function") if isinstance(tool, dict) else None
                self.check(
                    isinstance(tool, dict)
                    and tool.get("type") == "function"
                    and isinstance(fn, dict)
                    and fn.get("name"),
                    f"tools[{i}] is not a function tool: {tool!r}",
                )
        temperature = body.get("temperature")
        if temperature is not None:
            self.check(
                isinstance(temperature, int | float) and 0 <= temperature <= 2,
                f"bad temperature {temperature!r}",
            )

    def choose_answer(self, body: dict[str, Any]) -> str:
        last = body["messages"][-1]
        content = text_of(last.get("content"))
        if last["role"] == "assistant":
            self.prefills.append(content)
            return self.continuation
        if content.startswith("echo:"):
            return content.removeprefix("echo:")
        return self.answer

    # ----------------------------------------------------------------- endpoints

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """The model list in the API's ``{"object": "list", "data": [...]}`` shape."""
        if not self.authorized(request):
            return self.error_response(401)
        data = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "openai-fake"}
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """Chat completions, streamed (SSE) or whole, shaped by the scenario."""
        self.chat_count += 1
        body = self.json_body(request)
        self.bodies.append(body)
        self._check(body)
        if (failure := self._failure(request)) is not None:
            return failure
        if self.scenario == "html_200":
            return web.Response(text=HTML_ERROR_PAGE, content_type="text/html")
        tools = body.get("tools")
        tool_call = self.wants_tool_call(body)
        text = "" if tool_call else self.choose_answer(body)
        if self.scenario == "enormous":
            text = self.enormous_text()
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        usage = {**self.usage(body, text), **self.usage_extra}
        if self.scenario == "endless":
            return await self.endless(request, body, completion_id, created)
        if body.get("stream"):
            return await self.stream(request, body, text, completion_id, created, usage, tool_call)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        finish = "stop"
        if tool_call:
            assert isinstance(tools, list)
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": self.tool_call_id(completion_id),
                    "type": "function",
                    "function": {
                        "name": self.called_tool(body),
                        "arguments": json.dumps(self.tool_arguments),
                    },
                }
            ]
            finish = "tool_calls"
        logprobs = self.logprobs(body, text)
        choices = [
            {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}
            for index in range(self.choice_count(body))
        ]
        obj = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": body["model"],
            "system_fingerprint": "fp_replica",
            "choices": choices,
            "usage": usage,
        }
        encoded = json.dumps(obj, ensure_ascii=False).encode()
        if self.scenario in ("malformed_stream", "tool_call_then_fail"):
            encoded = encoded[: len(encoded) // 2]
        content_type = "text/plain; charset=utf-8" if self.scenario == "wrong_content_type" else "application/json"
        return await self.send(request, [encoded], content_type=content_type, sized=True)

    @staticmethod
    def tool_call_id(completion_id: str) -> str:
        return "call_" + completion_id.removeprefix("chatcmpl-")[:16]

    def wants_tool_call(self, body: dict[str, Any]) -> bool:
        """Whether this request is answered with a tool call (see the module docstring)."""
        if self.scenario not in ("tool_call", "tool_call_then_fail") or not body.get("tools"):
            return False
        if body.get("tool_choice") == "none":
            return False
        return body["messages"][-1].get("role") != "tool"

    @staticmethod
    def called_tool(body: dict[str, Any]) -> str:
        """The tool ``tool_choice`` names, else the first tool."""
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            return str(choice["function"].get("name"))
        return str(body["tools"][0]["function"]["name"])

    def tool_call_fragments(self) -> list[str]:
        """The arguments fragments of a streamed tool call, in order."""
        return split_deltas(json.dumps(self.tool_arguments), 4)

    @staticmethod
    def choice_count(body: dict[str, Any]) -> int:
        n = body.get("n")
        return n if isinstance(n, int) and n > 1 else 1

    @staticmethod
    def logprobs(body: dict[str, Any], text: str) -> dict[str, Any] | None:
        """A ``logprobs`` object for ``text`` when the request asks for one: an item per word."""
        if not body.get("logprobs"):
            return None
        top = body.get("top_logprobs") or 0
        items = []
        for rank, word in enumerate(text.split(" ")):
            token = word if rank == 0 else " " + word
            raw = list(token.encode())
            alternatives = [{"token": token, "logprob": -0.1, "bytes": raw}]
            alternatives += [{"token": f"alt{i}", "logprob": -2.0 - i, "bytes": list(f"alt{i}".encode())}
                             for i in range(1, top)]
            items.append({"token": token, "logprob": -0.1, "bytes": raw, "top_logprobs": alternatives[:top]})
        return {"content": items, "refusal": None}

    @staticmethod
    def usage(body: dict[str, Any], text: str) -> dict[str, int]:
        """Rough word-count usage, deterministic for a given request and answer."""
        prompt = sum(len(text_of(m.get("content")).split()) for m in body["messages"]) or 1
        completion = len(text.split()) or 1
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        text: str,
        completion_id: str,
        created: int,
        usage: dict[str, int],
        tool_call: bool,
    ) -> web.StreamResponse:
        """SSE ``chat.completion.chunk`` events, the optional usage chunk and ``[DONE]``
        (docs/protocols.md#openai-streaming, docs/protocols.md#openai-usage-chunk)."""
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        choices = self.choice_count(body)

        def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0,
                  logprobs: dict[str, Any] | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body["model"],
                "system_fingerprint": "fp_replica",
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            }
            if include_usage:
                obj["usage"] = None
            return sse(obj)

        events: list[bytes] = []
        if tool_call:
            head = {
                "index": 0,
                "id": self.tool_call_id(completion_id),
                "type": "function",
                "function": {"name": self.called_tool(body), "arguments": ""},
            }
            events.append(chunk({"role": "assistant", "content": None, "tool_calls": [head]}))
            for fragment in self.tool_call_fragments():
                events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}))
            if self.scenario == "tool_call_then_fail":
                return await self.break_after(request, events[:2])
            events.append(chunk({}, "tool_calls"))
        else:
            deltas = [text] if self.scenario == "enormous" else split_deltas(text, 6)
            for index in range(choices):
                events.append(chunk({"role": "assistant", "content": "", "refusal": None}, index=index))
                for delta in deltas:
                    events.append(chunk({"content": delta}, index=index, logprobs=self.logprobs(body, delta)))
                events.append(chunk({}, "stop", index=index))
        if include_usage:
            events.append(
                sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": body["model"],
                        "system_fingerprint": "fp_replica",
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        events.append(b"data: [DONE]\n\n")
        if self.scenario == "mid_stream_error":
            events = [*events[:3], sse(error_object(500, "The server had an error while streaming."))]
        elif self.scenario == "malformed_stream":
            events = [*events[:3], b"data: {not json\n\n"]
        elif self.scenario == "keepalive":
            events = [piece for event in events for piece in (b": ping\n\n", event)]
        headers = {"Cache-Control": "no-cache"}
        content_type = "text/event-stream; charset=utf-8"
        if self.scenario == "wrong_content_type":
            content_type = "application/json"
        return await self.send(request, events, content_type=content_type, headers=headers)

    # ----------------------------------------------------------------- legacy completions

    def _failure(self, request: web.Request) -> web.StreamResponse | None:
        """The error answer this request gets (auth, ``fail_next``, a status scenario), if any."""
        if not self.authorized(request):
            return self.error_response(401)
        if self.fail_next > 0:
            self.fail_next -= 1
            return self.error_response(self.fail_status)
        if self.scenario in STATUS_SCENARIOS:
            return self.error_response(STATUS_SCENARIOS[self.scenario])
        return None

    async def text_completions(self, request: web.Request) -> web.StreamResponse:
        """``text_completion`` objects, streamed (SSE) or whole (see the module docstring)."""
        body = self.json_body(request)
        self.completion_bodies.append(body)
        self.check(isinstance(body.get("model"), str) and body["model"], "model must be a non-empty string")
        self.check("messages" not in body, "a completions request has no messages")
        prompt = body.get("prompt")
        prompts: list[str] = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
        self.check(bool(prompts) and all(isinstance(p, str) for p in prompts),
                   f"prompt must be a string or a list of strings: {prompt!r}")
        failure = self._failure(request)
        if failure is not None:
            return failure
        completion_id = f"cmpl-{secrets.token_hex(12)}"
        created = int(time.time())
        n = self.choice_count(body)
        answers = []
        for text in prompts:
            answer = text.removeprefix("echo:") if text.startswith("echo:") else self.answer
            words = answer.split(" ")
            limit = body.get("max_tokens")
            if isinstance(limit, int) and 0 < limit < len(words):
                answers.append((" ".join(words[:limit]), "length"))
            else:
                answers.append((answer, "stop"))
        prompt_tokens = sum(max(len(p.split()), 1) for p in prompts)
        completion_tokens = sum(max(len(a.split()), 1) for a, _ in answers) * n
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        head = {"id": completion_id, "object": "text_completion", "created": created, "model": body["model"]}

        def choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
            return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}

        if not body.get("stream"):
            choices = [choice(p * n + j, text, finish) for p, (text, finish) in enumerate(answers) for j in range(n)]
            return web.json_response({**head, "choices": choices, "usage": usage})
        events: list[bytes] = []
        for p, (text, finish) in enumerate(answers):
            for j in range(n):
                for delta in split_deltas(text, 5):
                    events.append(sse({**head, "choices": [choice(p * n + j, delta, None)]}))
                events.append(sse({**head, "choices": [choice(p * n + j, "", finish)]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(sse({**head, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        if self.scenario == "mid_stream_error":
            events = [*events[:2], sse(error_object(500, "The server had an error while streaming."))]
        return await self.send(request, events, content_type="text/event-stream; charset=utf-8",
                               headers={"Cache-Control": "no-cache"})

    # ----------------------------------------------------------------- embeddings

    @staticmethod
    def vector(item: str | list[int], dims: int) -> list[float]:
        """The fake's unit vector for one input (a text or token ids), ``dims`` long."""
        seed = item if isinstance(item, str) else " ".join(map(str, item))
        raw: list[float] = []
        counter = 0
        while len(raw) < dims:
            digest = hashlib.sha256(f"{counter}:{seed}".encode()).digest()
            raw.extend((byte - 127.5) / 127.5 for byte in digest)
            counter += 1
        raw = raw[:dims]
        norm = math.sqrt(sum(x * x for x in raw))
        # float32 values, so that the base64 form holds exactly the numbers of the float form
        return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in raw]

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """An OpenAI ``CreateEmbeddingResponse`` (see the module docstring)."""
        body = self.json_body(request)
        self.embedding_bodies.append(body)
        self.check(isinstance(body.get("model"), str) and body["model"], "model must be a non-empty string")
        given = body.get("input")
        if isinstance(given, str) or (isinstance(given, list) and given and isinstance(given[0], int)):
            inputs: list[Any] = [given]
        else:
            inputs = given if isinstance(given, list) else []
        self.check(bool(inputs) and all(isinstance(i, str | list) and bool(i) for i in inputs),
                   f"input must be a string, strings, token ids or lists of token ids: {given!r}")
        dimensions = body.get("dimensions")
        self.check(dimensions is None or (isinstance(dimensions, int) and dimensions > 0), "bad dimensions")
        encoding = body.get("encoding_format", "float")
        self.check(encoding in ("float", "base64"), f"bad encoding_format {encoding!r}")
        failure = self._failure(request)
        if failure is not None:
            return failure
        dims = dimensions if dimensions is not None and self.honours_dimensions else self.embedding_dims
        data = []
        for index, item in enumerate(inputs):
            vector = self.vector(item, dims)
            embedding: Any = vector
            if encoding == "base64":
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in inputs)
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def break_after(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        """Stream ``events``, then drop the connection without ``[DONE]`` (counted in ``dropped``)."""
        resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        with self.streaming():
            await resp.prepare(request)
            for event in events:
                await resp.write(event)
                await asyncio.sleep(0)  # each event leaves as its own segment
            self.dropped += 1
            self._notify()
            if request.transport is not None:
                request.transport.close()
        return resp

    async def endless(
        self, request: web.Request, body: dict[str, Any], completion_id: str, created: int
    ) -> web.StreamResponse:
        """The ``endless`` scenario: deltas until the client goes (or :data:`MAX_SLEEP` seconds pass)."""
        stream = bool(body.get("stream"))
        resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream" if stream else "application/json"
        head = {"id": completion_id, "created": created, "model": body["model"]}
        with self.streaming():
            await resp.prepare(request)

            def chunk(delta: dict[str, Any]) -> bytes:
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                return sse({**head, "object": "chat.completion.chunk", "choices": [choice]})

            if stream:
                await resp.write(chunk({"role": "assistant", "content": ""}))
            else:  # an object whose content string never closes
                opening = json.dumps({**head, "object": "chat.completion"})[:-1]
                await resp.write(opening.encode() + b', "choices": [{"index": 0, "message": {"content": "')
            loop = asyncio.get_running_loop()
            ends = loop.time() + MAX_SLEEP
            index = 0
            while loop.time() < ends:
                delta = f"{index} "
                await resp.write(chunk({"content": delta}) if stream else delta.encode())
                index += 1
                await asyncio.sleep(self.endless_interval)
        return resp
