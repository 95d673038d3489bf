"""``patchbay chat``: ask a provider and stream the answer."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import click

from patchbay.cli.common import EXIT_INTERRUPTED, fail
from patchbay.errors import PatchbayError

__all__ = ["COMMANDS", "chat"]


@click.command()
@click.argument("prompt", required=False)
@click.option("-m", "--model", default=None, help="Model name (default: the provider's default model).")
@click.option("-p", "--provider", "provider_name", default="Local", show_default=True,
              help="Provider to ask (see `patchbay providers`).")
@click.option("-s", "--system", default=None, help="System prompt.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, help="Sampling temperature, 0 to 2.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Longest answer, in tokens.")
@click.option("--base-url", default=None, help="Override the provider's API address.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with text, provider, usage, timings.")
@click.option("-v", "--verbose", is_flag=True, help="Show more detail on errors.")
def chat(prompt: str | None, model: str | None, provider_name: str, system: str | None,
         temperature: float | None, max_tokens: int | None, base_url: str | None, as_json: bool,
         verbose: bool) -> None:
    """Ask PROMPT and stream the answer (reads the prompt from stdin when piped)."""
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a prompt, e.g. patchbay chat \"What is the capital of France?\"")
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise click.UsageError("the prompt read from stdin is empty")
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    options = {k: v for k, v in {"temperature": temperature, "max_tokens": max_tokens}.items() if v is not None}
    try:
        asyncio.run(_chat(provider_name, model, messages, options, base_url, as_json))
    except KeyboardInterrupt:
        click.echo("", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except PatchbayError as error:
        fail(error, verbose)


async def _chat(provider_name: str, model: str | None, messages: list[dict[str, Any]], options: dict[str, Any],
                base_url: str | None, as_json: bool) -> None:
    from patchbay.providers import registry

    provider = registry.get(provider_name)
    started = time.perf_counter()
    first_text: float | None = None
    stream = provider.stream(model, messages, base_url=base_url, **options)
    try:
        async for text in stream.text_stream():
            if first_text is None:
                first_text = time.perf_counter()
            if not as_json:
                sys.stdout.write(text)
                sys.stdout.flush()
    finally:
        await stream.aclose()
    finished = time.perf_counter()
    if as_json:
        info = stream.provider_info
        usage = stream.usage
        click.echo(json.dumps({
            "text": stream.text,
            "provider": info.provider if info else provider.name,
            "model": info.model if info else model,
            "finish_reason": stream.finish_reason,
            "usage": None if usage is None else {"prompt_tokens": usage.prompt_tokens,
                                                 "completion_tokens": usage.completion_tokens,
                                                 "total_tokens": usage.total_tokens},
            "timings": {"total_s": round(finished - started, 4),
                        "first_text_s": None if first_text is None else round(first_text - started, 4)},
        }, ensure_ascii=False))
    elif not stream.text.endswith("\n"):
        sys.stdout.write("\n")



COMMANDS = [chat]
