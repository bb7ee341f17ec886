"""`ditto status`: workers per stage with their slots and load, sessions per tenant, pending entries and lag per
stage, from Redis and the services' health (see ditto_app/status.py). `--watch` refreshes it in the terminal."""

from __future__ import annotations

import argparse
import asyncio
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="what a distributed deployment runs now: workers, slots, load, sessions, "
                                      "pending entries and lag per stage (reads Redis)")
    p.add_argument("--redis", default=None, help="Redis URL (default: $REDIS_URL). Prefer the environment: a URL "
                   "with a password does not belong on a command line")
    p.add_argument("--server", default=None, metavar="HOST:PORT",
                   help="also ask this orchestrator's gRPC health (plaintext)")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes with --watch")
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after this many refreshes (0: never)")
    p.set_defaults(handler=_run)


async def _loop(args: argparse.Namespace) -> int:
    from ditto.bus import BusError, RedisBus
    from ditto.config import load_settings
    from ditto_app.status import render, snapshot
    from services.orchestrator.config import OrchestratorSettings

    settings = load_settings(OrchestratorSettings)
    assert isinstance(settings, OrchestratorSettings)
    url = args.redis or settings.bus.redis_url
    bus = RedisBus(url, settings.bus.prefix, settings.bus.state_ttl_s)
    tty = sys.stdout.isatty()
    shown = 0
    try:
        while True:
            try:
                snap = await snapshot(bus, settings.bus.slots, settings.sessions_per_slot, bus.url, args.server)
            except BusError as err:
                print(f"cannot read the deployment's state: {err}; check REDIS_URL (and DITTO_BUS__PREFIX)",
                      file=sys.stderr)
                if not args.watch:
                    return 1
            else:
                page = snap.to_json() if args.json else render(snap)
                if args.watch and tty and not args.json:
                    page = "\x1b[H\x1b[2J" + page + f"\n\nrefreshing every {args.interval:g} s; Ctrl-C stops"
                print(page, flush=True)
            shown += 1
            if not args.watch or (args.count and shown >= args.count):
                return 0
            await asyncio.sleep(args.interval)
    finally:
        await bus.close()


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_loop(args))
