"""`ditto worker --stage NAME`: one stage worker process. It consumes its stage's Redis Streams slots, serves its
stage's gRPC API with health checking and reflection, exposes Prometheus metrics, and on SIGTERM finishes the batch
in flight, hands its slots over and exits."""

from __future__ import annotations

import argparse
import asyncio
import signal

from ditto import pipeline
from ditto_app.cli import add_model_args

ADVERTISE_EVERY_S = 2.0  # how often a worker re-announces its gRPC address on the bus
ADVERTISE_TTL_S = 10


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run one stage worker (distributed deployment)")
    p.add_argument("--stage", required=True, choices=pipeline.active().names)
    add_model_args(p)
    p.add_argument("--backend", default=None, choices=("auto", "torch", "onnxruntime", "tensorrt"),
                   help="default: $DITTO_MODEL__BACKEND or auto")
    p.add_argument("--redis", default=None, help="Redis URL (default: $REDIS_URL or redis://127.0.0.1:6379/0)")
    p.add_argument("--port", type=int, default=None, help="gRPC port (default: $DITTO_GRPC_PORT or any free port)")
    p.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: none)")
    p.add_argument("--slots", type=int, default=None, help="slots per stage (must match the orchestrator)")
    p.set_defaults(handler=_run)


async def run_worker(args: argparse.Namespace) -> int:
    from ditto import rpc, telemetry
    from ditto.bus import RedisBus
    from ditto.bus.worker import SlotWorker, WorkerSettings
    from ditto.config import load_settings
    from ditto_app.stages import build_stage
    from ditto_app.synthetic import profile_of, resolve_weights

    settings = load_settings()
    if args.redis:
        settings.bus.redis_url = args.redis
    if args.slots:
        settings.bus.slots = args.slots
    if args.metrics_port is not None:
        settings.telemetry.metrics_port = args.metrics_port
    telemetry.setup(settings.telemetry, f"ditto-{args.stage}")
    log = telemetry.get_logger("ditto.worker")
    weights = resolve_weights(args.weights, args.profile, settings.model.cache_dir)
    profile = profile_of(weights, args.profile)
    bus = RedisBus(settings.bus.redis_url, settings.bus.prefix, settings.bus.state_ttl_s)
    device = args.device if args.device != "auto" else settings.model.device
    built = build_stage(args.stage, weights, profile, bus, device, args.backend or settings.model.backend,
                        settings.model.cache_dir, settings.media, settings.decode)
    port = args.port if args.port is not None else settings.grpc_port
    server = await rpc.start_server(built.services, settings.grpc_host, port, settings.max_message_bytes)
    owner = settings.worker_id
    address = f"{advertised_host(settings.grpc_host, settings.advertise_host)}:{server.port}"
    addresses = bus.keys.addresses(args.stage)  # the stage's gRPC addresses (registration and `ditto status`)
    await bus.touch_member(addresses, address, ADVERTISE_TTL_S * 1000)
    worker = SlotWorker(bus, built.handler, owner, WorkerSettings.from_bus(settings.bus))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def advertise() -> None:
        # Often, with a short TTL: after a Redis restart (an empty store) the orchestrator finds this worker again
        # within seconds, and a dead worker's address disappears soon.
        while True:
            await asyncio.sleep(ADVERTISE_EVERY_S)
            try:
                await bus.touch_member(addresses, address, ADVERTISE_TTL_S * 1000)
            except Exception as err:  # Redis away: the worker loop reports and retries
                log.warning("cannot advertise address", error=str(err))

    task = asyncio.create_task(worker.run())
    ad = asyncio.create_task(advertise())
    log.info("worker ready", stage=args.stage, grpc=address, redis=bus.url, weights=str(weights), profile=profile,
             owner=owner)
    print(f"READY {args.stage} grpc={address}", flush=True)
    await stop.wait()
    log.info("stopping: finishing work in flight and handing slots over", stage=args.stage)
    ad.cancel()
    await server.set_serving(False)
    await worker.stop()
    await task
    try:
        await bus.remove_member(addresses, address)
    except Exception as err:  # Redis away: the address key expires on its own
        log.warning("cannot withdraw address", error=str(err))
    await server.stop(2)
    await built.close()
    await bus.close()
    log.info("stopped", stage=args.stage, processed=worker.processed)
    return 0


def advertised_host(bind_host: str, advertise_host: str | None = None) -> str:
    """The host other processes should dial: `advertise_host` (DITTO_ADVERTISE_HOST), else the bind address, else
    (when bound to all interfaces) this machine's own address, which in Kubernetes is the pod IP."""
    import socket

    if advertise_host:
        return advertise_host
    if bind_host not in ("0.0.0.0", "::", "[::]"):
        return bind_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(run_worker(args))

