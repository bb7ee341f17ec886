"""Bounded retries of bus calls through a short outage (Redis restarting, failing over, or frozen for a few seconds).

Only for calls that are safe to repeat: one that may have been applied before its answer was lost must do no harm
when applied again. Publishing a session's entry is such a call (a stage recognises a repeated entry by its session,
epoch and sequence number and acknowledges it unprocessed); reads of state and presence refreshes are too. A commit
refused because the lease moved (`LeaseLost`) is an answer, not an outage: it is never retried here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ditto import telemetry
from ditto.bus.base import BusError, LeaseLost

log = telemetry.get_logger("ditto.bus")
T = TypeVar("T")

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0


def backoff_s(failures: int, first_s: float = FIRST_DELAY_S, cap_s: float = MAX_DELAY_S) -> float:
    """The wait after `failures` failures in a row (1, 2, ...): doubling from `first_s`, at most `cap_s`, with
    jitter, so many processes that lost the same Redis do not all come back in the same millisecond."""
    base = min(cap_s, first_s * 2 ** max(0, failures - 1))
    return base * random.uniform(0.5, 1.0)


async def retry_bus(call: Callable[[], Awaitable[T]], budget_s: float, what: str) -> T:
    """`call()` until it answers, for up to `budget_s` seconds of bus errors; then the last error is raised."""
    deadline = time.monotonic() + budget_s
    failures = 0
    while True:
        try:
            return await call()
        except LeaseLost:
            raise
        except BusError as err:
            failures += 1
            delay = backoff_s(failures)
            if time.monotonic() + delay > deadline:
                raise
            if failures == 1:
                log.warning("bus call failed; retrying", call=what, budget_s=budget_s, error=str(err))
            await asyncio.sleep(delay)
