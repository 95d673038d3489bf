"""uvicorn with patchbay's :class:`~patchbay.server.protocol.LimitedHttpProtocol`, serving one app
of :mod:`bench.stack_apps`: the "uvicorn + LimitedHttpProtocol" candidate of ``bench/server_stack.py``.

    python -m bench.stack_limited --port 8000 [--app static]

The limits are the defaults of ``[server]`` (``ServerSettings()``), installed the way
``patchbay serve`` installs them; everything else is uvicorn's default, as for the stock
candidates, so the difference measured is the protocol class alone.
"""

from __future__ import annotations

import argparse

import uvicorn

from patchbay.server.protocol import LimitedHttpProtocol, Limits
from patchbay.settings import ServerSettings


def main() -> None:
    """Parse the port (and app), install the default limits, run uvicorn until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", default="static", help="an app of bench.stack_apps")
    args = parser.parse_args()
    LimitedHttpProtocol.limits = Limits.from_settings(ServerSettings())
    uvicorn.run(f"bench.stack_apps:{args.app}", host="127.0.0.1", port=args.port, loop="uvloop",
                http=LimitedHttpProtocol, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
