"""gRPC plumbing shared by every service: an asyncio server with health checking and reflection, and status
helpers. Each service registers its servicers here instead of repeating the boilerplate."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ditto.config import TlsSettings

# One definition of the channel options, shared with clients.
from ditto_client.channel import DEFAULT_MAX_MESSAGE, channel_options  # noqa: F401


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE) -> list[tuple[str, Any]]:
    """The channel options, plus accepting the clients' keep-alive pings: our clients ping every 20 s, also between
    calls, and a server left at gRPC's defaults (one ping per 5 minutes without data) answers that with a
    GOAWAY "too_many_pings" that kills their channel."""
    return [*channel_options(max_message_bytes),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 0)]


@dataclass
class Service:
    """One servicer: `add` is the generated `add_XServicer_to_server`, `name` the full service name
    (e.g. `ditto.v1.Renderer`, from the pb2 module's DESCRIPTOR)."""

    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    name: str


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer  # type: ignore[name-defined]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set_serving(self, serving: bool, names: Iterable[str] = ("",)) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for n in names:
            await self.health.set(n, status)

    async def stop(self, grace: float | None = 5.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace)


def server_credentials(tls: TlsSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files (None = plaintext). With a client CA, client certificates are
    required and checked against it."""
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    root = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials([(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
                                       root_certificates=root, require_client_auth=root is not None)


async def start_server(services: list[Service], host: str = "127.0.0.1", port: int = 0,
                       max_message_bytes: int = DEFAULT_MAX_MESSAGE,
                       interceptors: list[Any] | None = None,
                       credentials: grpc.ServerCredentials | None = None) -> RunningServer:
    """Start an asyncio gRPC server with the given services plus grpc.health.v1 and reflection, all SERVING;
    over TLS when `credentials` are given."""
    server = grpc.aio.server(options=server_options(max_message_bytes), interceptors=interceptors or [])
    for s in services:
        s.add(s.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.name for s in services]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    if credentials is not None:
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC server to {host}:{port}")
    await server.start()
    running = RunningServer(server, bound, health_servicer)
    await running.set_serving(True, ["", *names])
    return running


def service_name(pb2_module: Any, short_name: str) -> str:
    return pb2_module.DESCRIPTOR.services_by_name[short_name].full_name
