"""What the server's statuses say: the gRPC code a FinalStatus carries, and when a refusal asks to be retried.

A session the server cannot take right now (no capacity: right after the stack starts, while workers restart, or when
every slot is full) is refused with a `retry-after-ms` trailer; `RetryPolicy` waits that out, for as long as the
caller allows, for the blocking and the asyncio client alike.
"""

from __future__ import annotations

import time
from typing import Any

import grpc

# How long a new session waits, by default, for a server that says "no capacity now, retry after N ms". 0 = give up
# at the first refusal.
DEFAULT_RETRY_FOR_S = 30.0


def status_code(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a status code as messages carry it (FinalStatus.status.code); UNKNOWN if none is."""
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def retry_hint_ms(trailing_metadata: Any) -> int | None:
    """The server's `retry-after-ms` trailer: present only on refusals it wants retried (no capacity right now)."""
    for key, value in trailing_metadata or ():
        if key == "retry-after-ms":
            try:
                return max(0, int(value))
            except ValueError:
                return None
    return None


class RetryPolicy:
    """How long to wait before opening again after a refusal, within `retry_for_s` from now."""

    def __init__(self, retry_for_s: float) -> None:
        self.deadline = time.monotonic() + retry_for_s

    def delay_s(self, error: grpc.RpcError) -> float:
        """Seconds to wait before the next try; raises `error` itself when the server gave no retry hint or the
        wait would pass the deadline."""
        hint = retry_hint_ms(error.trailing_metadata())  # type: ignore[attr-defined]
        if hint is None or time.monotonic() + hint / 1000 > self.deadline:
            raise error
        return hint / 1000
