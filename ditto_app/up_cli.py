"""`ditto up`: the whole stack on this machine as separate processes over Redis (starts Redis if none answers)."""

from __future__ import annotations

import argparse
import signal
import threading

from ditto.redaction import redact_url
from ditto_app.cli import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run the distributed stack locally: Redis, three stage workers, the orchestrator")
    p.add_argument("--port", type=int, default=50051)
    add_model_args(p)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--quiet", action="store_true", help="do not follow the processes' logs")
    p.add_argument("--webrtc-port", type=int, default=8080,
                   help="HTTP port of the WebRTC gateway and its page (default: %(default)s)")
    p.add_argument("--no-webrtc", action="store_true", help="do not start the WebRTC gateway")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ditto_app.cluster import LocalCluster, tail_logs

    cluster = LocalCluster(weights=args.weights, profile=args.profile, port=args.port, slots=args.slots,
                           device=args.device, webrtc_port=None if args.no_webrtc else args.webrtc_port)
    print(f"starting the stack (logs in {cluster.log_dir}) ...", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        cluster.start()
        print(f"\nditto is up: gRPC ditto.v1.Avatar at {cluster.address} (Redis {redact_url(cluster.redis_url)})\n"
              f"try: ditto converse --server {cluster.address} --avatar PORTRAIT --audio SPEECH --out out.mp4\n"
              + (f"or open the page: {cluster.webrtc_url}/\n" if cluster.webrtc_url else "") +
              "Ctrl-C stops everything.\n", flush=True)
        if not args.quiet:
            threading.Thread(target=tail_logs, args=(cluster, stop), daemon=True).start()
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        cluster.stop()
    return 0
