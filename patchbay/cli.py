"""The ``patchbay`` command line.

Importing this module has no side effects; :func:`main` is the console entry point. Library
errors become one readable line on stderr and a non-zero exit status, in one place
(:func:`_fail`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import click

from patchbay.errors import PatchbayError
from patchbay.secrets import redact

__all__ = ["cli", "main"]

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _fail(error: PatchbayError, verbose: bool = False) -> None:
    """Print ``error`` as one line on stderr and exit non-zero."""
    click.echo(f"Error: {error}", err=True)
    if verbose and error.__cause__ is not None:
        click.echo(f"  caused by: {redact(repr(error.__cause__))}", err=True)
    sys.exit(EXIT_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="patchbay")
def cli() -> None:
    """patchbay: one streaming interface to many chat-model providers."""


@cli.command()
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
        _fail(error, verbose)


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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def providers(as_json: bool) -> None:
    """List providers with their flags."""
    from patchbay.providers import registry

    rows = registry.describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<16} {'working':<8} {'auth':<6} {'models':>6}  default model")
    for row in rows:
        click.echo(f"{row['name']:<16} {('yes' if row['working'] else 'no'):<8} "
                   f"{('yes' if row['needs_auth'] else 'no'):<6} {len(row['models']):>6}  {row['default_model']}")


@cli.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML config file (default: $PATCHBAY_CONFIG, else config.toml in the config directory).")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default 8000).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes sharing the port.")
@click.option("--insecure-no-auth", is_flag=True, default=None,
              help="Allow a non-loopback address without API keys.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None,
          insecure_no_auth: bool | None, log_level: str | None) -> None:
    """Run the OpenAI-compatible server (POST /v1/chat/completions, GET /v1/models, ...)."""
    from patchbay.server.run import check_bind
    from patchbay.server.run import serve as run_server
    from patchbay.settings import load_settings

    try:
        settings = load_settings(config_path).with_server(host=host, port=port, workers=workers,
                                                          insecure_no_auth=insecure_no_auth, log_level=log_level)
        settings.build_router()  # a mistake in the routes fails here, before any worker starts
        check_bind(settings)
    except PatchbayError as error:
        _fail(error)
    run_server(settings)


def main() -> None:
    """Console entry point."""
    cli(prog_name="patchbay")


if __name__ == "__main__":
    main()
