"""A session's outgoing messages: frames and events for the client, bounded, then its FinalStatus once.

A client that does not read stops the pacer (putting waits while the buffer is full), then, through credits that
come back only when it takes frames, the reading of its audio. Once the session has ended nothing more is queued:
what is queued goes out, then the FinalStatus, then nothing.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from ditto_client.v1 import avatar_pb2


class Outbox:
    def __init__(self, limit: int, final_message: Callable[[], avatar_pb2.ConverseResponse]) -> None:
        self.limit = limit
        self.final_message = final_message  # made when it is sent: it counts every frame sent before it
        self._out: collections.deque[avatar_pb2.ConverseResponse] = collections.deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self.ended = False
        self._final_sent = False
        self.writing = False  # a message is handed to the transport and not yet taken by the client
        self.last_progress = time.monotonic()  # last time the client took a message (or one became ready)

    async def put(self, msg: avatar_pb2.ConverseResponse) -> None:
        """Queue a message for the client; waits while the buffer is full (the client is behind)."""
        while len(self._out) >= self.limit and not self.ended:
            self._space.clear()
            await self._space.wait()
        if self.ended:
            return  # the session has ended: its FinalStatus is the last message
        if not self._out and not self.writing:
            self.last_progress = time.monotonic()
        self._out.append(msg)
        self._ready.set()

    def notice(self, msg: avatar_pb2.ConverseResponse) -> None:
        """Queue an event at once, even past the limit: for the few a session sends (a warning) from a task that must
        not wait on the client."""
        if self.ended:
            return
        if not self._out and not self.writing:
            self.last_progress = time.monotonic()
        self._out.append(msg)
        self._ready.set()

    async def next(self) -> avatar_pb2.ConverseResponse | None:
        """The next message for the client: queued frames and events, then the FinalStatus once, then None."""
        while True:
            if self._out:
                msg = self._out.popleft()
                self._space.set()
                return msg
            if self.ended:
                if self._final_sent:
                    return None
                self._final_sent = True
                return self.final_message()
            self._ready.clear()
            await self._ready.wait()

    def taken(self) -> None:
        """The client took the message handed to the transport."""
        self.writing = False
        self.last_progress = time.monotonic()

    def stalled_s(self) -> float:
        """How long messages have been waiting for a client that takes none (0 when none wait)."""
        if not (self._out or self.writing):
            return 0.0
        return time.monotonic() - self.last_progress

    def end(self) -> None:
        """The session ended: wake whoever waits to put or to send."""
        self.ended = True
        self._ready.set()
        self._space.set()

    def drop_queued(self) -> None:
        self._out.clear()
