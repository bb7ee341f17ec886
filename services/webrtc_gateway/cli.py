"""`ditto webrtc-gateway`: browsers and other WebRTC clients talk to the avatar service through this gateway."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webrtc-gateway", help="serve WebRTC (WHIP-style signalling) and the web page in front of the "
                                              "ditto.v1.Avatar API")
    p.add_argument("--host", default=None, help="HTTP bind address (default: $DITTO_WEBRTC_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: $DITTO_WEBRTC_PORT or 8080)")
    p.add_argument("--orchestrator", default=None,
                   help="host:port of the Avatar API (default: $DITTO_WEBRTC_ORCHESTRATOR or 127.0.0.1:50051)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus endpoint port (default: none)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from ditto import telemetry
    from services.webrtc_gateway.app import serve
    from services.webrtc_gateway.config import load_gateway_settings

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("orchestrator", args.orchestrator))
                 if v is not None}
    settings = load_gateway_settings(**overrides)
    if args.metrics_port is not None:
        settings.telemetry.metrics_port = args.metrics_port
    telemetry.setup(settings.telemetry, "ditto-webrtc-gateway")
    return asyncio.run(serve(settings))
