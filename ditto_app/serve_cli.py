"""`ditto serve`: the public Avatar API.

Without --redis: the whole service in one process over the in-memory bus (single-machine default, no Redis).
With --redis URL: the orchestrator alone, over Redis Streams, in front of `ditto worker` processes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from ditto_app.cli import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the ditto.v1.Avatar gRPC API")
    add_model_args(p)
    p.add_argument("--host", default=None, help="bind address (default: $DITTO_GRPC_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="default: $DITTO_GRPC_PORT or 50051")
    p.add_argument("--redis", default=None, help="run as orchestrator only, over this Redis (workers run apart). "
                   "Prefer DITTO_BUS__KIND=redis with REDIS_URL in the environment: a URL with a password does not "
                   "belong on a command line")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"))
    p.add_argument("--metrics-port", type=int, default=None)
    p.set_defaults(handler=_run)


async def serve(args: argparse.Namespace, ready: asyncio.Event | None = None) -> int:
    from ditto import rpc, telemetry
    from ditto.bus import RedisBus
    from ditto.config import load_settings
    from ditto_app.stack import EmbeddedStack
    from ditto_app.synthetic import BANNER, is_synthetic, profile_of, resolve_weights
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc
    from services.orchestrator.avatars import GrpcRegistrar
    from services.orchestrator.config import OrchestratorSettings
    from services.orchestrator.service import AvatarService, Orchestrator, public_interceptors
    from services.orchestrator.tenants import TenantDirectory

    settings = load_settings(OrchestratorSettings)
    assert isinstance(settings, OrchestratorSettings)
    if args.metrics_port is not None:
        settings.telemetry.metrics_port = args.metrics_port
    telemetry.setup(settings.telemetry, "ditto-orchestrator")
    log = telemetry.get_logger("ditto.serve")
    # A bad tenants file stops the start before anything heavy is built (an empty one never means "open").
    tenants = TenantDirectory.from_file(settings.api_keys_file)
    stack = None
    if args.redis:
        settings.bus.kind = "redis"
        settings.bus.redis_url = args.redis
    distributed = settings.bus.kind == "redis"
    if distributed:
        bus = RedisBus(settings.bus.redis_url, settings.bus.prefix, settings.bus.state_ttl_s)
        orch = Orchestrator(settings, bus, GrpcRegistrar(bus, settings.renderer_address), tenants)
        await orch.start()
    else:
        weights = resolve_weights(args.weights, args.profile, settings.model.cache_dir)
        if is_synthetic(weights):
            print(BANNER, flush=True)
        device = args.device if args.device != "auto" else settings.model.device
        stack = EmbeddedStack(weights, profile_of(weights, args.profile), settings, device,
                              args.backend if args.backend != "auto" else settings.model.backend, tenants=tenants)
        orch = await stack.start()
    service = rpc.Service(avatar_pb2_grpc.add_AvatarServicer_to_server, AvatarService(orch),
                          rpc.service_name(avatar_pb2, "Avatar"))
    host = args.host or settings.grpc_host
    port = args.port if args.port is not None else (settings.grpc_port or 50051)
    server = await rpc.start_server([service], host, port, settings.max_message_bytes,
                                    credentials=rpc.server_credentials(settings.tls),
                                    interceptors=public_interceptors(orch))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving", address=f"{host}:{server.port}", mode="orchestrator" if distributed else "embedded",
             redis=bus.url if distributed else None, tls=settings.tls.enabled,
             client_certificates=settings.tls.client_ca_file is not None)
    health = None
    if distributed:  # NOT_SERVING until every stage has a live worker
        await server.set_serving(False, ["", service.name])
        health = asyncio.create_task(report_stage_health(orch, server, [service.name], log))
    print(f"READY orchestrator grpc={host}:{server.port}", flush=True)
    if ready:
        ready.set()
    await stop.wait()
    if health:
        health.cancel()
    await server.set_serving(False)
    await orch.stop()
    await server.stop(3)
    if stack:
        await stack.stop()
    return 0


HEALTH_EVERY_S = 0.5


async def report_stage_health(orch, server, names: list[str], log) -> None:
    """gRPC health of a distributed orchestrator: SERVING only while every stage has a live worker (a slot held),
    so a load balancer, a readiness probe and `ditto up` wait for a stack that can really start sessions."""
    serving: bool | None = None
    while True:
        try:
            missing = await orch.check_stages()  # and ditto_stage_workers, which the "no live worker" alert reads
        except Exception as err:  # Redis away: sessions cannot start either
            missing = [f"session store ({type(err).__name__})"]
        if serving != (not missing):
            serving = not missing
            await server.set_serving(serving, ["", *names])
            if missing:
                log.warning("not serving: waiting for workers", missing=missing)
            else:
                log.info("serving: every stage has a live worker")
        await asyncio.sleep(HEALTH_EVERY_S)


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))
