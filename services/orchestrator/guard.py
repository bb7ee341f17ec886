"""The door of the public API for calls that carry a large body (RegisterAvatar, Render).

A gRPC server interceptor runs when a call's headers arrive, before its request message is read. Here it checks the
API key and takes one of a bounded number of upload slots: at most the tenant's own share (`max_uploads` in the
tenants file) and at most `DITTO_MAX_CONCURRENT_UPLOADS` on the server, so one tenant cannot take every slot. A
caller without a valid key, or one arriving when its share or the server's slots are taken, is answered at once and
its body is never read into memory (gRPC discards it with the stream). A call whose body has not arrived
`DITTO_UPLOAD_BODY_TIMEOUT_S` after its headers ends with DEADLINE_EXCEEDED, giving its slot back: sending headers
and never a body holds a slot no longer than that. The handler returned for a refusal is client-streaming on
purpose: a unary handler would make grpc read and parse the whole message first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc

from services.orchestrator.errors import ApiError, abort
from services.orchestrator.tenants import TenantDirectory

LARGE_BODY_METHODS = ("/ditto.v1.Avatar/RegisterAvatar", "/ditto.v1.Avatar/Render")


def _refusal(method: grpc.RpcMethodHandler, err: ApiError) -> grpc.RpcMethodHandler:
    async def refuse(_requests, context: grpc.aio.ServicerContext):
        await abort(context, err)

    if method.response_streaming:
        async def refuse_stream(requests, context):
            await refuse(requests, context)
            yield  # pragma: no cover - abort raises

        return grpc.stream_stream_rpc_method_handler(refuse_stream, response_serializer=method.response_serializer)
    return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=method.response_serializer)


class UploadGuard(grpc.aio.ServerInterceptor):
    """Authenticate before the body is read, bound the large-body calls in progress at once (per tenant and per
    server), and bound the wait for their bodies."""

    def __init__(self, tenants: Callable[[], TenantDirectory], max_concurrent: int,
                 body_timeout_s: float = 30.0) -> None:
        self._tenants = tenants
        self.max_concurrent = max_concurrent
        self.body_timeout_s = body_timeout_s
        self.in_progress = 0
        self.per_tenant: dict[str, int] = {}

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method not in LARGE_BODY_METHODS:
            return handler
        try:
            tenant = self._tenants().authenticate(details.invocation_metadata)
        except ApiError as err:
            return _refusal(handler, err)
        if self.in_progress >= self.max_concurrent:
            return _refusal(handler, ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.in_progress} uploads (RegisterAvatar/Render) are in progress on this server, the limit "
                f"(DITTO_MAX_CONCURRENT_UPLOADS={self.max_concurrent}); retry after the retry-after-ms trailer",
                retry_after_ms=1000))
        share = tenant.max_uploads or self.max_concurrent  # open mode: the server's slots are its own
        held = self.per_tenant.get(tenant.id, 0)
        if held >= share:
            return _refusal(handler, ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"tenant {tenant.id} has {held} of its {share} uploads (RegisterAvatar/Render) in progress "
                "(max_uploads in the tenants file); wait for one to finish, then retry after the retry-after-ms "
                "trailer", retry_after_ms=1000))
        self.in_progress += 1
        self.per_tenant[tenant.id] = held + 1
        return self._released(handler, tenant.id)

    def _give_back(self, tenant: str) -> None:
        self.in_progress -= 1
        left = self.per_tenant.get(tenant, 1) - 1
        if left > 0:
            self.per_tenant[tenant] = left
        else:
            self.per_tenant.pop(tenant, None)

    def _released(self, handler: grpc.RpcMethodHandler, tenant: str) -> grpc.RpcMethodHandler:
        """The same handler, giving its slot back when the call ends, whichever way (cancel included). It is served
        as client-streaming so that it runs at once, even when the client leaves before its body arrives."""
        guard = self

        async def first(requests, context) -> object:
            try:
                return await asyncio.wait_for(anext(aiter(requests)), guard.body_timeout_s)
            except StopAsyncIteration:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended before its request arrived")
            except TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"the request did not arrive within {guard.body_timeout_s:g} s of the call's "
                                    "headers (DITTO_UPLOAD_BODY_TIMEOUT_S); send the whole request at once, or "
                                    "from a faster link")
            raise AssertionError("unreachable: abort raises")

        if handler.response_streaming:
            inner_stream = handler.unary_stream

            async def stream(requests, context):
                inner_gen = None
                try:
                    request = await first(requests, context)
                    inner_gen = inner_stream(request, context)
                    async for msg in inner_gen:
                        yield msg
                finally:
                    guard._give_back(tenant)
                    if inner_gen is not None:  # a cancel stops us at our yield: end the handler's cleanup too
                        await inner_gen.aclose()

            return grpc.stream_stream_rpc_method_handler(stream, request_deserializer=handler.request_deserializer,
                                                         response_serializer=handler.response_serializer)
        inner = handler.unary_unary

        async def unary(requests, context):
            try:
                return await inner(await first(requests, context), context)
            finally:
                guard._give_back(tenant)

        return grpc.stream_unary_rpc_method_handler(unary, request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)


async def in_thread(semaphore: asyncio.Semaphore, fn, *args):
    """Run blocking, CPU-heavy `fn(*args)` in a worker thread, at most `semaphore`'s count at once, so the event
    loop (every other session of the server) never waits on it."""
    async with semaphore:
        return await asyncio.to_thread(fn, *args)
