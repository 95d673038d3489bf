"""``patchbay chat``: ask once and stream the answer, or talk in an interactive session.

Which provider answers: ``-p NAME`` asks that provider (a configured service, a built-in one or
a preset); otherwise the routes of the config file decide (``-m`` names a route, the first route
by default); with no routes, the embedded local model answers, so ``patchbay chat "..."`` works
offline with no configuration. Every turn is recorded in the request log under a conversation id, which is how
``-c`` and ``--conversation`` continue a conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from patchbay.cli.common import (
    EXIT_INTERRUPTED,
    config_option,
    error_line,
    fail,
    find_provider,
    listed_model,
    load,
    model_for,
    open_log,
    reported,
    require_key,
    verbose_option,
)
from patchbay.errors import ModelNotSupported, PatchbayError

if TYPE_CHECKING:
    from patchbay.events import EventStream
    from patchbay.providers.base import AsyncGeneratorProvider
    from patchbay.requestlog import Exchange, RequestLog
    from patchbay.routing import Router
    from patchbay.settings import Settings

__all__ = ["COMMANDS", "Conversation", "chat"]

SESSION_HELP = """Commands:
  /model [NAME]    show the model, or switch to NAME
  /system [TEXT]   set the system prompt (with no TEXT: remove it)
  /clear           forget the conversation and start a new one
  /exit            leave (Ctrl-D does too)"""


def new_conversation_id() -> str:
    """A short id that sorts by time: milliseconds in hex, then random hex."""
    return f"{int(time.time() * 1000):x}{secrets.token_hex(3)}"


@dataclass
class Answer:
    """One finished turn, for ``--json``."""

    events: EventStream
    provider: str
    model: str | None
    total: float
    first_text: float | None


class Conversation:
    """One chat: who answers, the system prompt and the history. Each turn is recorded."""

    def __init__(self, settings: Settings, log: RequestLog | None, *, provider_name: str | None,
                 model: str | None, system: str | None, options: dict[str, Any], base_url: str | None) -> None:
        self.settings = settings
        self.log = log
        self.provider_name = provider_name
        self.system = system
        self.options = options
        self.base_url = base_url
        self.given_model = model  # what -m asked for (None: the default, or the resumed conversation's)
        self.id = new_conversation_id()
        self.history: list[dict[str, Any]] = []
        self.provider, self.model = self._choose(model)

    @property
    def routed(self) -> bool:
        """Whether the routes decide who answers (no ``-p``)."""
        from patchbay.routing import Router

        return isinstance(self.provider, type) and issubclass(self.provider, Router)

    def _choose(self, model: str | None) -> tuple[type[AsyncGeneratorProvider], str | None]:
        """The provider class for ``model`` (see the module docstring) and the model to ask it for;
        a model it cannot serve fails here, at once."""
        from patchbay.providers import registry

        if self.provider_name:
            chosen = find_provider(self.settings, self.provider_name)
        elif not self.settings.routes:
            chosen = registry.get("Local")
        else:
            router = self.settings.build_router()
            if model is None:
                names = router.routes.names() if router.routes is not None else []  # the first route, no I/O
                model = names[0] if names else None
            _check_route(router, model)  # an unknown name fails here, listing the routes
            return router, model
        if model:
            _check_model(chosen, model)
        return chosen, model_for(chosen, model)

    async def switch_model(self, model: str) -> str | None:
        """Switch to ``model``, checked at once: an unknown one raises and the old one stays. For a
        service that lists its models only when asked, the list is read; when it cannot be, the
        switch is made and the returned note says it was not checked."""
        provider, chosen = self._choose(model)
        note = None
        known = getattr(provider, "fetch_models", None)
        if known is not None and not getattr(provider, "models", None) and not self.base_url:
            try:
                require_key(provider)
                served = await known()
            except PatchbayError as error:
                note = f"not checked: the model list could not be read ({error})"
            else:
                if served and model not in served:
                    raise ModelNotSupported(f"model {model!r} is not served; models: {', '.join(served)}",
                                            provider=provider.name, model=model, param="model")
        self.provider, self.model = provider, chosen
        return note

    def first_target(self) -> str:
        """Who is asked first, as ``provider/model``: the route's first target, or the provider."""
        if self.routed:
            table = self.provider.routes  # type: ignore[attr-defined]
            target = table.targets_for(self.model)[0]
            provider, model = target.provider.name, target.model_for(self.model)
        else:
            provider, model = self.provider.name, self.model
        return f"{provider}/{model}" if model else provider

    def describe(self) -> str:
        """The model and who answers it, for the session's messages."""
        if not self.routed:
            return self.first_target()
        others = len(self.provider.routes.targets_for(self.model)) - 1  # type: ignore[attr-defined]
        more = f" ({others} fallback{'s' if others > 1 else ''})" if others else ""
        return f"{self.model or 'the default model'} through {self.first_target()}{more}"

    def clear(self) -> None:
        """Forget the history; later turns belong to a new conversation."""
        self.history = []
        self.id = new_conversation_id()

    def resume(self, conversation_id: str | None) -> None:
        """Continue a logged conversation (the last one when ``conversation_id`` is None)."""
        if self.log is None:
            raise click.ClickException("continuing a conversation needs the request log, which is turned off")
        conversation_id = conversation_id or self.log.last_conversation_id()
        if conversation_id is None:
            raise click.ClickException("there is no conversation to continue yet")
        logged = self.log.conversation(conversation_id)
        if not logged:
            raise click.ClickException(f"no conversation {conversation_id!r} in the request log")
        self.id = conversation_id
        answered = [turn for turn in logged if turn.error is None]  # failed turns are not history
        if answered:
            last = answered[-1]
            sent = [dict(m) for m in last.messages]
            if self.system is None:
                self.system = next((m.get("content") for m in sent if m.get("role") == "system"), None)
            self.history = [m for m in sent if m.get("role") != "system"]
            self.history.append({"role": "assistant", "content": last.response})
            if self.provider_name is None and last.options.get("provider"):
                self.provider_name = str(last.options["provider"])
            self.provider, self.model = self._choose(self.given_model or last.requested_model)

    def messages_for(self, prompt: str) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": prompt}]

    async def ask(self, prompt: str, show: Callable[[str], None] | None = None) -> Answer:
        """Send ``prompt`` with the history, passing each text delta to ``show``; record the turn."""
        from patchbay.requestlog import Exchange, describe_error

        messages = self.messages_for(prompt)
        options = dict(self.options)
        wall, started = time.time(), time.perf_counter()
        first: float | None = None
        try:
            if not self.routed:
                require_key(self.provider)  # said as such, whatever else would fail first
                if self.model is None and not self.base_url:  # no default named: ask the service
                    self.model = await listed_model(self.provider)
            stream = self.provider.stream(self.model, messages, base_url=self.base_url,
                                          timeout=self.settings.router.limits(), **options)
        except PatchbayError as refused:
            self._record(Exchange(time=wall, source="cli", messages=messages, requested_model=self.model,
                                  provider=self.provider.name, conversation_id=self.id,
                                  error=describe_error(refused), options=self._logged_options()))
            raise
        error: BaseException | None = None
        try:
            async for text in stream.text_stream():
                if first is None:
                    first = time.perf_counter()
                if show is not None:
                    show(text)
        except BaseException as exc:  # recorded below, then re-raised
            error = exc
            raise
        finally:
            await stream.aclose()
            self._record(Exchange.from_stream(
                stream, time=wall, source="cli", messages=messages, requested_model=self.model,
                latency=time.perf_counter() - started, ttft=None if first is None else first - started,
                error=error, conversation_id=self.id, options=self._logged_options()))
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": stream.text}]
        info = stream.provider_info
        return Answer(stream, info.provider if info else self.provider.name, info.model if info else self.model,
                      time.perf_counter() - started, None if first is None else first - started)

    def _logged_options(self) -> dict[str, Any]:
        return {**self.options, **({"provider": self.provider_name} if self.provider_name else {})}

    def _record(self, exchange: Exchange) -> None:
        if self.log is not None:
            self.log.record(exchange)


@click.command()
@click.argument("prompt", required=False)
@click.option("-m", "--model", default=None, metavar="MODEL",
              help="Model or route name (default: the first route of the config, else the embedded model).")
@click.option("-p", "--provider", "provider_name", default=None, metavar="NAME",
              help="Ask this provider directly (see `patchbay providers`).")
@click.option("-s", "--system", default=None, metavar="TEXT", help="System prompt.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, metavar="T",
              help="Sampling temperature, 0 to 2.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, metavar="N", help="Longest answer, in tokens.")
@click.option("--base-url", default=None, metavar="URL", help="Override the provider's API address.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with text, provider, usage, timings.")
@click.option("-c", "--continue", "continue_last", is_flag=True, help="Continue the last conversation.")
@click.option("--conversation", "conversation_id", default=None, metavar="ID", help="Continue conversation ID.")
@click.option("--no-log", is_flag=True, help="Do not record this chat in the request log.")
@config_option
@verbose_option
def chat(prompt: str | None, model: str | None, provider_name: str | None, system: str | None,
         temperature: float | None, max_tokens: int | None, base_url: str | None, as_json: bool,
         continue_last: bool, conversation_id: str | None, no_log: bool, config_path: str | None,
         verbose: bool) -> None:
    """Ask PROMPT and stream the answer; with no PROMPT, read it from stdin when piped, else start
    an interactive session (/model, /system, /clear, /exit)."""
    interactive = prompt is None and sys.stdin.isatty()
    if interactive and as_json:
        raise click.UsageError("--json needs a prompt")
    if prompt is not None and not prompt.strip():
        raise click.UsageError("the prompt is empty")
    if prompt is None and not interactive:
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise click.UsageError("the prompt read from stdin is empty")
    options = {k: v for k, v in {"temperature": temperature, "max_tokens": max_tokens}.items() if v is not None}
    log = None
    with reported(verbose):
        settings = load(config_path)
        log = open_log(settings, not no_log)
    try:
        with reported(verbose):
            conversation = Conversation(settings, log, provider_name=provider_name, model=model, system=system,
                                        options=options, base_url=base_url)
            if continue_last or conversation_id:
                conversation.resume(conversation_id)
        if interactive:
            _session(conversation, verbose)
        else:
            assert prompt is not None
            _once(conversation, prompt, as_json, verbose)
    finally:
        if log is not None:
            log.close()


def _once(conversation: Conversation, prompt: str, as_json: bool, verbose: bool) -> None:
    from patchbay.cli.output import AnswerView

    try:
        if as_json:
            answer = asyncio.run(conversation.ask(prompt))
        else:
            with AnswerView(f"Waiting for {conversation.first_target()}…") as view:
                answer = asyncio.run(conversation.ask(prompt, view.write))
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except PatchbayError as error:
        fail(error, verbose)
    if as_json:
        click.echo(json.dumps(_as_json(conversation, answer), ensure_ascii=False))


def _as_json(conversation: Conversation, answer: Answer) -> dict[str, Any]:
    usage = answer.events.usage
    return {
        "conversation_id": conversation.id,
        "text": answer.events.text,
        "provider": answer.provider,
        "model": answer.model,
        "finish_reason": answer.events.finish_reason,
        "usage": None if usage is None else {"prompt_tokens": usage.prompt_tokens,
                                             "completion_tokens": usage.completion_tokens,
                                             "total_tokens": usage.total_tokens},
        "fallbacks": [f.provider + "/" + f.model for f in answer.events.fallbacks],
        "timings": {"total_s": round(answer.total, 4),
                    "first_text_s": None if answer.first_text is None else round(answer.first_text, 4)},
    }


def _session(conversation: Conversation, verbose: bool) -> None:
    """The interactive loop: one event loop for the whole session, input read between turns."""
    from patchbay.cli.output import AnswerView

    with contextlib.suppress(ImportError):  # not on every platform
        import readline  # noqa: F401  (line editing and history for input())
    click.echo(f"Chatting with {conversation.describe()}. Type /help for commands, /exit or Ctrl-D to leave.")
    with asyncio.Runner() as runner:
        while True:
            try:
                line = input("> ").strip()
            except (EOFError, KeyboardInterrupt):
                click.echo()
                break
            if not line:
                continue
            if line.startswith("/"):
                if not _command(conversation, line, verbose, runner):
                    break
                continue
            try:
                with AnswerView(f"Waiting for {conversation.first_target()}…") as view:
                    runner.run(conversation.ask(line, view.write))
            except KeyboardInterrupt:
                click.echo("Interrupted.", err=True)
            except PatchbayError as error:
                error_line(error, verbose)


def _command(conversation: Conversation, line: str, verbose: bool, runner: asyncio.Runner) -> bool:
    """Run one slash command; False means leave the session."""
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/help":
        click.echo(SESSION_HELP)
    elif name == "/clear":
        conversation.clear()
        click.echo("Cleared: a new conversation starts.")
    elif name == "/system":
        conversation.system = argument or None
        click.echo(f"System prompt set: {argument}" if argument else "System prompt removed.")
    elif name == "/model":
        note = None
        if argument:
            try:
                note = runner.run(conversation.switch_model(argument))
            except PatchbayError as error:
                error_line(error, verbose)
                click.echo(f"Model: {conversation.describe()} (unchanged).")
                return True
            except KeyboardInterrupt:
                click.echo("Interrupted: the model is unchanged.", err=True)
                return True
        click.echo(f"Model: {conversation.describe()}." + (f" ({note})" if note else ""))
    else:
        click.echo(f"Unknown command {name}.\n{SESSION_HELP}", err=True)
    return True


def _check_route(router: type[Router], model: str | None) -> None:
    """Fail at once when no target of ``model``'s route can serve it: an unknown route, or a name
    the catch-all's providers do not know."""
    refused: list[PatchbayError] = []
    targets = router.routes.targets_for(model) if router.routes is not None else []  # unknown: ModelNotSupported
    for target in targets:
        asked = target.model_for(model)
        try:
            if asked:
                _check_model(target.provider, asked)
            return
        except PatchbayError as error:
            refused.append(error)
    if len(refused) == 1:
        raise refused[0]
    if refused:
        raise ModelNotSupported(f"no provider of the route serves model {model!r}: "
                                + "; ".join(str(error) for error in refused), model=model, param="model")


def _check_model(provider: type[AsyncGeneratorProvider], model: str) -> None:
    """Fail at once when ``provider`` cannot serve ``model``: the provider's own check, and for an
    OpenAI-compatible service the models its configuration lists (it passes any name on)."""
    from patchbay.providers.openai_compatible import OpenAICompatible

    provider.resolve_model(model)
    if issubclass(provider, OpenAICompatible) and provider.models and model not in provider.models:
        raise ModelNotSupported(f"model {model!r} is not one of its models: {', '.join(provider.models)}",
                                provider=provider.name, model=model, param="model")


COMMANDS = [chat]
