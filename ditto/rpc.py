"""gRPC plumbing shared by every service: an asyncio server with health checking and reflection, and status
helpers. Each service registers its servicers here instead of repeating the boilerplate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
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


# How long a call that ends while its client is still sending keeps reading (and discarding) the client's stream
# before its status goes out. See HalfCloseFirst.
DRAIN_S = 5.0


class _TrackedRequests:
    """A client stream that remembers whether the client has half-closed it."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests
        self._it: AsyncIterator[Any] | None = None  # made on the first read: grpc warns of one never iterated
        self.ended = False

    def __aiter__(self) -> _TrackedRequests:
        return self

    async def __anext__(self) -> Any:
        if self._it is None:
            self._it = self._requests.__aiter__()
        try:
            return await self._it.__anext__()
        except StopAsyncIteration:
            self.ended = True
            raise

    async def drain(self, context: grpc.aio.ServicerContext, within_s: float) -> None:
        """Read and drop what the client still sends until it half-closes, for at most `within_s` seconds."""
        if self.ended:
            return
        self.ended = True
        try:
            async with asyncio.timeout(within_s):
                while await context.read() is not grpc.aio.EOF:
                    pass
        except Exception:  # noqa: BLE001 - timed out, cancelled by the client, or the call already ended: send now
            pass


class _DrainingContext:
    """The servicer context, except that `abort` first lets the client finish its stream."""

    def __init__(self, context: grpc.aio.ServicerContext, requests: _TrackedRequests, drain_s: float) -> None:
        self._context, self._requests, self._drain_s = context, requests, drain_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        await self._requests.drain(self._context, self._drain_s)
        await self._context.abort(code, details, trailing_metadata)


class HalfCloseFirst(grpc.aio.ServerInterceptor):
    """Send a client-streaming call's status only after the client has stopped sending (or `drain_s` passed).

    A grpc.aio client whose write fails because the server already ended the call reports INTERNAL "Internal error
    from Core" in place of the server's status (grpc/grpc#36066), so a refusal (bad key, no capacity, bad input)
    would reach a busy client as a meaningless error. Our handlers send their reason in-band first where the protocol
    has a final message, and our clients half-close when they read it; this interceptor then waits for that
    half-close before the status goes out. Bounded: a client that never half-closes gets the status after
    `drain_s`, and what it sent meanwhile is read and dropped, never kept."""

    def __init__(self, drain_s: float = DRAIN_S) -> None:
        self.drain_s = drain_s

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not handler.request_streaming:
            return handler
        drain_s = self.drain_s

        if handler.response_streaming:
            stream_behaviour = handler.stream_stream

            async def stream_stream(requests, context):
                async with _half_close_first(requests, context, drain_s) as (tracked, draining):
                    async for msg in stream_behaviour(tracked, draining):
                        yield msg

            return grpc.stream_stream_rpc_method_handler(stream_stream,
                                                         request_deserializer=handler.request_deserializer,
                                                         response_serializer=handler.response_serializer)
        unary_behaviour = handler.stream_unary

        async def stream_unary(requests, context):
            async with _half_close_first(requests, context, drain_s) as (tracked, draining):
                return await unary_behaviour(tracked, draining)

        return grpc.stream_unary_rpc_method_handler(stream_unary, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)


@asynccontextmanager
async def _half_close_first(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, drain_s: float
                            ) -> AsyncIterator[tuple[_TrackedRequests, _DrainingContext]]:
    """The handler's view of the call (tracked requests, a context whose abort drains); when it ends, however it
    ends short of a cancel or an abort (which drained already), the client's stream is drained before the status."""
    tracked = _TrackedRequests(requests)
    try:
        yield tracked, _DrainingContext(context, tracked, drain_s)
    except (asyncio.CancelledError, GeneratorExit, grpc.aio.AbortError):
        raise
    except BaseException:
        await tracked.drain(context, drain_s)
        raise
    await tracked.drain(context, drain_s)


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
    # HalfCloseFirst last: it must see the methods' own handlers, not ones an earlier interceptor made streaming
    server = grpc.aio.server(options=server_options(max_message_bytes),
                             interceptors=[*(interceptors or []), HalfCloseFirst()])
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
