"""Run one replica by hand: ``python -m tests.replicas liaobots --port 8080 [--scenario NAME]``.

Prints the base URL, serves until Ctrl-C, and reports shape violations as they happen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from tests.replicas import REPLICAS, ReplicaServer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.replicas", description=__doc__)
    parser.add_argument("service", choices=sorted(REPLICAS), help="which service to replicate")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--scenario", default="normal", help="fault scenario (see --list-scenarios)")
    parser.add_argument(
        "--list-scenarios", action="store_true", help="print the service's scenarios and exit"
    )
    parser.add_argument(
        "--valid-code",
        action="append",
        default=[],
        help="liaobots: accept this user-supplied auth code; liaobots_legacy: the expected auth code",
    )
    return parser


async def serve(replica: ReplicaServer, host: str, port: int) -> None:
    """Serve until cancelled, echoing new violations to stderr."""
    url = await replica.start(host, port)
    print(f"{type(replica).__name__} ({replica.scenario}) serving at {url}", flush=True)
    reported = 0

    def news() -> bool:
        return len(replica.violations) > reported

    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await replica.wait_until(news, timeout=3600)
            for violation in replica.violations[reported:]:
                print(f"violation: {violation}", file=sys.stderr, flush=True)
            reported = len(replica.violations)
    finally:
        await replica.stop()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cls = REPLICAS[args.service]
    if args.list_scenarios:
        print("\n".join(sorted(cls.SCENARIOS)))
        return 0
    if args.scenario not in cls.SCENARIOS:
        parser.error(
            f"unknown scenario {args.scenario!r} for {args.service}; choose from {sorted(cls.SCENARIOS)}"
        )
    replica = cls(args.scenario)
    if args.valid_code:
        if hasattr(replica, "valid_codes"):
            replica.valid_codes.update(args.valid_code)
        elif hasattr(replica, "auth_code"):
            replica.auth_code = args.valid_code[-1]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(replica, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
