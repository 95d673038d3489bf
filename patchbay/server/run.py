"""Running the gateway: bind checks, logging, and uvicorn with one or more worker processes.

Workers are separate processes sharing one listening socket (uvicorn's supervisor). Each builds
its app from the config file and environment, which is why command-line flags are handed down as
the environment variables that every option also has.
"""

from __future__ import annotations

import ipaddress
import logging
import os

from patchbay.errors import InvalidRequest
from patchbay.secrets import RedactingFilter
from patchbay.settings import Settings

__all__ = ["check_bind", "is_loopback", "serve"]

log = logging.getLogger("patchbay.server")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond this machine without API keys, unless explicitly allowed."""
    server = settings.server
    if is_loopback(server.host) or server.api_keys() or server.insecure_no_auth:
        return
    raise InvalidRequest(
        f"refusing to listen on {server.host} without API keys: set {server.api_keys_env} "
        "(comma-separated keys clients must send), or pass --insecure-no-auth"
    )


def _environment(settings: Settings) -> dict[str, str]:
    """The environment that makes a worker load exactly these settings."""
    server = settings.server
    env = {
        "PATCHBAY_HOST": server.host, "PATCHBAY_PORT": str(server.port), "PATCHBAY_WORKERS": str(server.workers),
        "PATCHBAY_INSECURE_NO_AUTH": "true" if server.insecure_no_auth else "false",
        "PATCHBAY_LOG_LEVEL": server.log_level, "PATCHBAY_REQUEST_LOG": "true" if server.request_log else "false",
    }
    if settings.source is not None:
        env["PATCHBAY_CONFIG"] = str(settings.source.resolve())
    return env


def serve(settings: Settings) -> None:
    """Serve until interrupted (blocks)."""
    import uvicorn

    check_bind(settings)
    os.environ.update(_environment(settings))
    server = settings.server
    logging.basicConfig(level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    log.info("patchbay serving on http://%s:%d with %d worker(s)%s", server.host, server.port, server.workers,
             "; the chat page is at /" if server.web_ui else "")
    uvicorn.run(
        "patchbay.server.app:create_app", factory=True, host=server.host, port=server.port,
        workers=server.workers, loop=loop, http="httptools", lifespan="on", access_log=False,
        log_level=server.log_level, server_header=False, date_header=False, proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
