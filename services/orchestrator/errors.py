"""The one error of the public API, and the one place it becomes an RPC's status.

Whatever refuses a call (a bad request, a bad key, a tenant's quota, no capacity, a failed registration, a Render job
that failed) raises `ApiError`: a gRPC status code, a message that says what to do next and, for refusals worth
retrying, how long to wait. `api_errors` wraps every handler of the public service and turns it, and a session
store that went away (`BusError`), into the call's status the same way for every RPC: the status and message, plus a
`retry-after-ms` trailer when the error carries a wait. A streaming RPC whose protocol ends with a status message
(Converse's FinalStatus) also sends that message, so a client still writing its stream learns the reason in-band.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from ditto.bus import BusError
from ditto.redaction import redact

RETRY_AFTER_MS = "retry-after-ms"  # the trailer clients read (ditto_client.status.retry_hint_ms)


class ApiError(Exception):
    """A refusal the client hears as `code` with `message`; with `retry_after_ms`, the client may retry after that
    long (sent as the `retry-after-ms` trailer)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms

    def trailers(self) -> tuple[tuple[str, str], ...]:
        return () if self.retry_after_ms is None else ((RETRY_AFTER_MS, str(self.retry_after_ms)),)


def store_unavailable(store: str, err: BaseException) -> ApiError:
    """Redis is away: what failed and what to do, never the URL's credentials."""
    return ApiError(grpc.StatusCode.UNAVAILABLE, redact(f"{store} (Redis) unavailable: {err}; retry in a few seconds"))


def as_api_error(err: ApiError | BusError, store: str) -> ApiError:
    return err if isinstance(err, ApiError) else store_unavailable(store, err)


async def abort(context: grpc.aio.ServicerContext, err: ApiError) -> NoReturn:
    """End the call with `err`'s status (and its retry trailer)."""
    if err.retry_after_ms is not None:
        context.set_trailing_metadata(err.trailers())
    await context.abort(err.code, err.message)
    raise AssertionError("unreachable: abort raises")


def api_errors(store: str, final: Callable[[ApiError], Any] | None = None) -> Callable:
    """Decorate a handler of the public service: an `ApiError` (or a `BusError`, as `store` being unavailable) that
    escapes it ends the call with that status. `final(err)`, for a response-streaming RPC whose protocol ends with a
    status message: that message is sent as the last one, with the status set on the call, instead of aborting."""

    def wrap(handler: Callable) -> Callable:
        if inspect.isasyncgenfunction(handler):
            @functools.wraps(handler)
            async def stream(self, request, context):
                responses = handler(self, request, context)
                try:
                    async for msg in responses:
                        yield msg
                except (ApiError, BusError) as raised:
                    err = as_api_error(raised, store)
                    if final is None:
                        await abort(context, err)
                    if err.retry_after_ms is not None:
                        context.set_trailing_metadata(err.trailers())
                    context.set_code(err.code)
                    context.set_details(err.message)
                    yield final(err)
                finally:
                    await responses.aclose()  # a cancelled call stops us at our yield: end the handler's cleanup too

            return stream

        @functools.wraps(handler)
        async def unary(self, request, context):
            try:
                return await handler(self, request, context)
            except (ApiError, BusError) as raised:
                await abort(context, as_api_error(raised, store))

        return unary

    return wrap
