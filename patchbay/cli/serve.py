"""``patchbay serve``: the OpenAI-compatible server."""

from __future__ import annotations

import click

from patchbay.cli.common import config_option, fail

__all__ = ["COMMANDS", "serve"]


@click.command()
@config_option
@click.option("--host", default=None, metavar="HOST", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, metavar="PORT", help="Port (default 8000).")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Worker processes sharing the port.")
@click.option("--insecure-no-auth", is_flag=True, default=None,
              help="Allow a non-loopback address without API keys.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--no-log", is_flag=True, help="Do not record exchanges in the request log.")
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None,
          insecure_no_auth: bool | None, log_level: str | None, no_log: bool) -> None:
    """Run the OpenAI-compatible server (POST /v1/chat/completions, GET /v1/models, ...)."""
    from patchbay.errors import PatchbayError
    from patchbay.server.run import check_bind, listen
    from patchbay.server.run import serve as run_server
    from patchbay.settings import load_settings

    try:
        settings = load_settings(config_path).with_server(host=host, port=port, workers=workers,
                                                          insecure_no_auth=insecure_no_auth, log_level=log_level,
                                                          request_log=False if no_log else None)
        settings.build_router()  # a mistake in the routes fails here, before any worker starts
        check_bind(settings)
        sock = listen(settings)  # a port in use fails here, before anything says it is serving
    except PatchbayError as error:
        fail(error)
    run_server(settings, sock)


COMMANDS = [serve]
