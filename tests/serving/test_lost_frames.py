"""The orchestrator never ends a session OK with frames missing, and never sends a frame twice.

Asynchronous replication means a Redis failover can lose the newest entries of a stream, and a commit retried across
it can append an entry again. The renderer numbers its entries per session and epoch (0, 1, 2, ...), so the
orchestrator can tell: a number it has passed is a repeat (dropped), a number beyond the next one means entries were
lost (the session ends with UNAVAILABLE saying so). Here an in-memory bus plays that failover for the orchestrator's
frames streams: it loses one of the renderer's entries, or delivers one twice.
"""

from __future__ import annotations

import grpc
from serving_helpers import chunks, collect, config, embedded_service, frames_of, portrait_png, requests, speech_pcm16

from ditto.bus import MemoryBus
from ditto_client.v1 import avatar_pb2, bus_pb2


class FailedOverFramesBus(MemoryBus):
    """The in-memory bus whose orchestrator reads lose the renderer's DATA entry `lose` (its seq in epoch 0) and
    deliver entry `repeat` twice."""

    def __init__(self, lose: int | None = None, repeat: int | None = None) -> None:
        super().__init__()
        self.lose, self.repeat = lose, repeat
        self.lost = self.repeated = 0

    async def read(self, group, consumer, streams, count=64, block_ms=0):
        got = await super().read(group, consumer, streams, count, block_ms)
        if group != "orchestrator":
            return got
        out = []
        for d in got:
            e = d.entry
            if e.kind == bus_pb2.ENTRY_KIND_DATA and e.epoch == 0:
                if e.seq == self.lose:
                    self.lost += 1
                    continue
                if e.seq == self.repeat:
                    self.repeated += 1
                    out.append(d)
            out.append(d)
        return out


async def _converse(bus: MemoryBus) -> tuple[list[avatar_pb2.VideoFrame], grpc.StatusCode, str]:
    async with embedded_service(bus=bus) as (stub, _):
        avatar = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png()), timeout=120)
        responses, code, details = await collect(stub, requests(config(avatar.avatar_id),
                                                                chunks(speech_pcm16(1.2))))
        return frames_of(responses), code, details


async def test_an_entry_delivered_twice_reaches_the_client_once():
    bus = FailedOverFramesBus(repeat=4)
    frames, code, details = await _converse(bus)
    assert bus.repeated == 1
    assert code == grpc.StatusCode.OK, details
    indices = [f.index for f in frames]
    assert indices == list(range(len(indices))) and len(indices) == 30  # 1.2 s at 25 fps, each frame once


async def test_a_lost_entry_ends_the_session_unavailable_never_ok():
    bus = FailedOverFramesBus(lose=6)
    frames, code, details = await _converse(bus)
    assert bus.lost == 1
    assert code == grpc.StatusCode.UNAVAILABLE, (code, details)
    assert "were lost" in details and "start a new session" in details
    assert len(frames) < 30 and [f.index for f in frames] == list(range(len(frames)))
