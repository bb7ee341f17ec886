"""Time-coded controls of a live session: which spans a ControlUpdate leaves live, and the rate at which messages
that make no frames (ControlUpdate, Interrupt) are read.

A span is (start frame, end frame or None for open, the control fields it sets), in frames of the whole session.
Spans that ended before the next frame to send are gone; a span wholly replaced by a later open span over the same
fields is gone too (later spans win). What is left is bounded per session (`DITTO_MAX_CONTROL_SPANS`).
"""

from __future__ import annotations

import asyncio
import time

import grpc

from ditto_client.v1 import avatar_pb2
from services.orchestrator.errors import ApiError
from services.orchestrator.validation import range_error, validate_controls

Span = tuple[int, int | None, frozenset[str]]


def timed_spans(update: avatar_pb2.ControlUpdate, last_sent_index: int, last_frame: int) -> list[Span]:
    """The spans `update` adds, each checked: its controls in range, its frames in order, within the session's
    longest duration (`last_frame`) and not already sent."""
    added = []
    for i, tc in enumerate(update.controls):
        validate_controls(tc.controls, f"controls[{i}].controls")
        if tc.start_frame < 0 or (tc.end_frame and tc.end_frame <= tc.start_frame):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"controls[{i}]: need 0 <= start_frame < end_frame (or end_frame 0 = open)")
        for name in ("start_frame", "end_frame"):
            if getattr(tc, name) > last_frame:
                raise range_error(f"controls[{i}].{name}", getattr(tc, name), 0, last_frame)
        added.append((tc.start_frame, tc.end_frame or None, frozenset(f.name for f, _ in tc.controls.ListFields())))
        if tc.start_frame <= last_sent_index:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"controls[{i}] starts at frame {tc.start_frame}, but frame {last_sent_index}"
                           " was already sent; time-code controls for frames still to come")
    return added


def live_spans(spans: list[Span], added: list[Span], next_frame: int) -> list[Span]:
    """The spans that can still apply after adding `added`: not ended before `next_frame`, and not wholly
    replaced by a later open span over the same controls (later spans win)."""
    spans = [sp for sp in spans + added if sp[1] is None or sp[1] > next_frame]
    live = []
    for i, (start, end, keys) in enumerate(spans):
        first = max(start, next_frame)
        if any(e2 is None and s2 <= first and k2 >= keys for s2, e2, k2 in spans[i + 1:]):
            continue
        live.append((start, end, keys))
    return live


class TokenBucket:
    """ControlUpdate and Interrupt produce no frames, so credits cannot bound them: a token bucket does (a client
    above the rate is read more slowly, like one out of credits)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._tokens_at = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._tokens_at) * self.rate_per_s)
            self._tokens_at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self.rate_per_s)
