"""The server's routes, in one table: every endpoint is declared here and nowhere else.

Each :class:`Route` names its path (an exact path, or a pattern whose last segment is a
``{parameter}``), the methods it takes, the handler that answers it (a name the
:class:`~patchbay.server.app.Gateway` binds to one of its endpoints at start-up), whether it is
public or needs an API key, and how it appears in the OpenAPI document. From this table come:

- the Gateway's dispatch (built once at start-up: a dict of exact paths, then the few patterns);
- :data:`PUBLIC_PATHS`, the paths answered without a key;
- the ``paths`` of :func:`~patchbay.server.openapi.openapi_document`;
- README's endpoint table, which ``tests/server/test_routes.py`` compares with this one.

A path has one route; a route has one handler for all its methods. Every route that takes
``GET`` also answers ``HEAD`` (same headers, no body).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODEL_ERRORS", "PUBLIC_PATHS", "ROUTES", "Operation", "Route", "documented", "public_paths"]

#: What an endpoint that reaches a model can answer besides 200 (401 is added when keys are on):
#: a bad body, an unknown model, a body over the limit, a rate limit, upstream failures.
MODEL_ERRORS = (400, 404, 413, 429, 502, 503, 504)


@dataclass(frozen=True, slots=True)
class Operation:
    """A route's operation in the OpenAPI document.

    ``request`` and ``response`` name schemas in ``components/schemas`` (the JSON body and the
    200 answer); ``response`` is None where the answer is not one of them (``/health``'s object,
    ``/metrics``' text). ``errors`` are the error statuses the operation documents; a keyed route
    also documents 401 when the server has keys."""

    operation_id: str
    summary: str
    request: str | None = None
    response: str | None = None
    errors: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of the server.

    ``path`` is exact (``/v1/models``) or a pattern with one trailing parameter
    (``/v1/models/{model}``: any rest of the path, slashes included, as model names have them).
    ``aliases`` are the same endpoint at other paths (the base URL without ``/v1`` that some
    clients use); they are neither documented nor listed in README. ``handler`` is the name the
    Gateway binds. ``public`` routes are answered without an API key. ``operation`` is None for
    what is not in the OpenAPI document (the document itself, the web page). ``web_ui`` routes
    exist only while the web page is on."""

    path: str
    methods: tuple[str, ...]
    handler: str
    public: bool = False
    operation: Operation | None = None
    aliases: tuple[str, ...] = ()
    web_ui: bool = False

    def __post_init__(self) -> None:
        for path in (self.path, *self.aliases):
            if "{" in path and (path.count("{") != 1 or not path.endswith("}") or "/" in path[path.index("{"):]):
                raise ValueError(f"route {path!r}: a pattern has one parameter, as its last segment")
        if not self.methods or any(m != m.upper() or m == "HEAD" for m in self.methods):
            raise ValueError(f"route {self.path!r}: methods are upper case, HEAD comes with GET: {self.methods}")

    @property
    def pattern(self) -> bool:
        """True when the path ends in a ``{parameter}``."""
        return "{" in self.path

    @property
    def paths(self) -> tuple[str, ...]:
        """The path and its aliases."""
        return (self.path, *self.aliases)

    @property
    def allowed(self) -> tuple[str, ...]:
        """Every method answered (``HEAD`` wherever ``GET``), in the order of the ``Allow`` header."""
        return (*self.methods, "HEAD") if "GET" in self.methods else self.methods


_GET, _POST = ("GET",), ("POST",)

ROUTES: tuple[Route, ...] = (
    Route("/v1/chat/completions", _POST, "chat_completions", aliases=("/chat/completions",), operation=Operation(
        "createChatCompletion", "Create a chat completion (streaming or not)",
        "ChatCompletionRequest", "ChatCompletion", MODEL_ERRORS)),
    Route("/v1/messages", _POST, "messages", operation=Operation(
        "createMessage", "Create a message (Anthropic Messages API)", "MessagesRequest", "Message", MODEL_ERRORS)),
    Route("/v1/messages/count_tokens", _POST, "count_tokens", operation=Operation(
        "countMessageTokens", "Estimate a Messages request's input tokens", "CountTokensRequest", "TokenCount",
        (400, 413))),
    Route("/v1/responses", _POST, "responses", operation=Operation(
        "createResponse", "Create a response (OpenAI Responses API)", "ResponsesRequest", "Response",
        MODEL_ERRORS)),
    Route("/v1/responses/{response_id}", _GET, "retrieve_response", operation=Operation(
        "retrieveResponse", "A stored response", response="Response", errors=(404,))),
    Route("/v1/embeddings", _POST, "embeddings", aliases=("/embeddings",), operation=Operation(
        "createEmbedding", "Embed texts (targets with the embeddings capability)",
        "EmbeddingRequest", "EmbeddingResponse", MODEL_ERRORS)),
    Route("/v1/completions", _POST, "completions", aliases=("/completions",), operation=Operation(
        "createCompletion", "Complete a prompt (legacy; raw-completion targets)",
        "CompletionRequest", "Completion", MODEL_ERRORS)),
    Route("/v1/models", _GET, "models", aliases=("/models",), operation=Operation(
        "listModels", "List the models (routes) served", response="ModelList")),
    Route("/v1/models/{model}", _GET, "model", aliases=("/models/{model}",), operation=Operation(
        "retrieveModel", "One model", response="Model", errors=(404,))),
    Route("/health", _GET, "health", public=True, operation=Operation(
        "health", "Liveness and each target's status; counts and last errors with an API key")),
    Route("/ready", _GET, "ready", public=True, operation=Operation("ready", "Readiness", errors=(503,))),
    Route("/metrics", _GET, "metrics", operation=Operation("metrics", "Prometheus metrics")),
    Route("/openapi.json", _GET, "openapi", public=True),
    # The page itself is public; the API calls it makes carry the key.
    Route("/", _GET, "web_page", public=True, web_ui=True),
    Route("/ui/{asset}", _GET, "web_page", public=True, web_ui=True),
)


def public_paths(*, web_ui: bool) -> frozenset[str]:
    """The paths (and patterns) answered without an API key; the page's only while it is on."""
    return frozenset(path for route in ROUTES if route.public and (web_ui or not route.web_ui)
                     for path in route.paths)


#: The paths answered without an API key whatever the configuration (the web page's come on top).
PUBLIC_PATHS = public_paths(web_ui=False)


def documented() -> tuple[tuple[Route, Operation], ...]:
    """The routes of the OpenAPI document with their operations, in table order."""
    return tuple((route, route.operation) for route in ROUTES if route.operation is not None)
