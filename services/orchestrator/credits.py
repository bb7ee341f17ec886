"""Credits: how much of a session's audio may be in the pipeline ahead of the frames its client has taken.

Audio read from the client costs its seconds; a frame the client takes gives 40 ms back. When the audio in flight
passes the read-ahead, the session stops reading the client until frames are taken, so gRPC flow control reaches a
client that sends faster than realtime (text-to-speech) or reads nothing. An interrupted epoch's audio keeps counting
(as debt) until the renderer confirms it has left the pipeline, so interrupting never lets more audio in than the
credits allow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from ditto.pipeline import FPS
from ditto_client.v1 import common_pb2, renderer_pb2
from services.orchestrator.config import OrchestratorSettings

FRAME_S = 1 / FPS
READ_AHEAD_SLACK_S = 5 * FRAME_S  # frames in transit: counted as taken here, not yet by the client


def video_frame_bytes(out: common_pb2.OutputOptions, avatar: renderer_pb2.RegisterSourceResponse) -> int:
    """What one frame of a session's output weighs, at most: raw RGB(A) exactly; JPEG, PNG (transparent
    backgrounds) and H.264 by a generous bound on their compression."""
    pixels = max(int(avatar.width) * int(avatar.height), 1)
    if not out.paste_back:
        pixels = max(pixels, 512 * 512)  # the crop itself
    channels = 4 if out.background == common_pb2.BACKGROUND_TRANSPARENT else 3
    if out.encoding == common_pb2.FRAME_ENCODING_RAW_RGB:
        return pixels * channels
    return pixels * channels // 4


def read_ahead_s(s: OrchestratorSettings, offline: bool, look_ahead_s: float, overlap: int, frame_bytes: int) -> float:
    """Audio seconds read ahead of the frames the client has taken (announced as SessionStarted's
    audio_read_ahead_ms): the look-ahead, which makes no frame yet, plus the credits. The credits are bounded
    in bytes too: a client that reads nothing holds at most `outgoing_buffer_mb` of frames (times the copies
    on their way), however large each frame is, yet never less than one motion window's advance of credit."""
    credit = s.credits_s * 4 + look_ahead_s * 3 if offline else s.credits_s
    by_bytes = s.outgoing_buffer_mb * 1024 * 1024 / (frame_bytes * FPS)
    one_window = (80 - overlap) * FRAME_S
    return look_ahead_s + max(min(credit, by_bytes), one_window)


@dataclass
class EpochCounters:
    audio_s: float = 0.0
    frames: int = 0


class Credits:
    def __init__(self, read_ahead_s: float) -> None:
        self.read_ahead_s = read_ahead_s
        self.counters = EpochCounters()  # this epoch's audio sent and frames taken
        self.debt_s = 0.0  # audio of interrupted epochs still in the pipeline, until the renderer confirms it gone
        self.available = asyncio.Event()  # set when credits may have come back (or the session ended)
        self.waiting = False  # the session holds the client's stream back for credits now

    def in_flight_s(self) -> float:
        """Audio seconds sent into the pipeline whose frames the client has not taken yet (interrupted epochs'
        audio included until the pipeline has dropped it)."""
        return self.debt_s + self.counters.audio_s - self.counters.frames * FRAME_S

    def waiting_for_frames(self) -> bool:
        """The client's audio fills the read-ahead: a client that paces by it (the SDK does) holds the rest of its
        speech until frames come back, so it is the one waiting. Frames on their way count as taken here before the
        client has counted them, hence a few frames of slack."""
        return self.in_flight_s() >= self.read_ahead_s - READ_AHEAD_SLACK_S

    async def wait(self, ended: Callable[[], bool]) -> bool:
        """Out of credits: wait (the caller stops reading the client) until it takes frames or `ended()`. True if
        it waited."""
        waited = False
        while self.in_flight_s() > self.read_ahead_s and not ended():
            self.available.clear()
            self.waiting = waited = True
            try:
                await self.available.wait()
            finally:
                self.waiting = False
        return waited

    def spent(self, seconds: float) -> None:
        self.counters.audio_s += seconds

    def frame_taken(self) -> None:
        self.counters.frames += 1
        self.available.set()

    def interrupted(self) -> None:
        """A new epoch: what the old one has in flight becomes debt, and its counters start again."""
        self.debt_s += max(0.0, self.counters.audio_s - self.counters.frames * FRAME_S)
        self.counters = EpochCounters()

    def pipeline_cleared(self) -> None:
        """The renderer passed the new epoch's first entry: the interrupted epochs' audio has left the pipeline."""
        if self.debt_s:
            self.debt_s = 0.0
            self.available.set()

    def release(self) -> None:
        """The session ended: a reader waiting for credits sees it."""
        self.available.set()
