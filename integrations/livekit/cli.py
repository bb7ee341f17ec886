"""`ditto livekit-worker`: the avatar dispatcher for LiveKit Agents (needs `pip install '.[livekit]'`).

LiveKit is imported inside the handler, so `ditto --help` works without the extra."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("livekit-worker", help="start Ditto avatar workers in LiveKit rooms on request (HTTP)")
    p.add_argument("--host", default=None, help="bind address (default: $DITTO_LIVEKIT_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="default: $DITTO_LIVEKIT_PORT or 8089")
    p.add_argument("--ditto", default=None, help="Ditto service host:port (default: $DITTO_LIVEKIT_DITTO_ADDRESS)")
    p.add_argument("--avatar", default=None, help="default avatar id (default: $DITTO_LIVEKIT_DEFAULT_AVATAR_ID)")
    p.add_argument("--max-workers", type=int, default=None)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    try:
        import livekit.agents  # noqa: F401 - fail here, with what to install, not in the first room

        from integrations.livekit.dispatcher import serve
        from integrations.livekit.settings import LiveKitWorkerSettings
    except ModuleNotFoundError as err:
        print(f"ditto livekit-worker needs the LiveKit extra ({err.name} is missing): "
              "pip install 'ditto-service[livekit]'")
        return 2
    from pydantic import ValidationError

    from ditto import telemetry
    from ditto.config import load_settings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "ditto_address": args.ditto,
                                   "default_avatar_id": args.avatar, "max_workers": args.max_workers}.items()
                 if v is not None}
    try:
        settings = LiveKitWorkerSettings(**overrides)
    except ValidationError as err:
        print(f"invalid livekit-worker settings: {err}")
        return 2
    telemetry.setup(load_settings().telemetry, "ditto-livekit-worker")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop, ready=lambda port: print(f"READY livekit-worker http={settings.host}:{port}",
                                                                flush=True))

    asyncio.run(main())
    return 0
