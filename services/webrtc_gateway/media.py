"""The media of one gateway session: the microphone audio going up, the avatar's video and speech coming down.

Lip sync: the down audio is the speech the avatar is saying, i.e. the audio that drove each frame. Both down tracks
run on one clock (`MediaClock`): each frame's 40 ms of audio is scheduled on the audio track's sample timeline, and
the frame is due at the wall time of that audio's first sample. Both tracks hand their media to aiortc at those due
times with RTP timestamps on that same clock, so the RTCP sender reports a receiver syncs with describe one timeline.
The tracks note when each frame and the first sample of its audio actually left (`SyncMeter`): that is the measured
audio-video offset.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ditto_client.timeline import FPS, SESSION_RATE, Placement, SpeechTimeline

AUDIO_RATE = 48000            # Opus's clock; the down audio is produced at this rate
PACKET_SAMPLES = 960          # 20 ms, the usual Opus packet
FRAME_SAMPLES = AUDIO_RATE // FPS  # the 48 kHz audio of one frame
VIDEO_CLOCK = 90000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
CATCH_UP_S = 0.1              # a track called this late jumps to now instead of sending a burst


class MediaClock:
    """Sample positions on the down audio timeline <-> monotonic wall time, shared by both down tracks."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def time_of(self, position: int) -> float:
        return self.t0 + position / AUDIO_RATE

    def position_now(self) -> int:
        return int((time.monotonic() - self.t0) * AUDIO_RATE)


class SyncMeter:
    """When each frame left the video track and when the first sample of its audio left the audio track."""

    def __init__(self, keep: int = 4096) -> None:
        self.video: dict[int, float] = {}
        self.audio: dict[int, float] = {}
        self.offsets_ms: deque[float] = deque(maxlen=keep)
        self._keep = keep

    def _pair(self, key: int) -> None:
        if key in self.video and key in self.audio:
            self.offsets_ms.append((self.audio.pop(key) - self.video.pop(key)) * 1000)
        for d in (self.video, self.audio):
            while len(d) > self._keep:  # a frame dropped on one side never pairs: forget the oldest
                d.pop(next(iter(d)))

    def video_left(self, key: int, at: float) -> None:
        self.video[key] = at
        self._pair(key)

    def audio_left(self, key: int, at: float) -> None:
        self.audio[key] = at
        self._pair(key)

    def summary(self) -> dict[str, float | int]:
        if not self.offsets_ms:
            return {"frames": 0}
        a = np.abs(np.asarray(self.offsets_ms))
        return {"frames": len(a), "mean_ms": round(float(np.mean(self.offsets_ms)), 2),
                "p50_abs_ms": round(float(np.percentile(a, 50)), 2),
                "p95_abs_ms": round(float(np.percentile(a, 95)), 2), "max_abs_ms": round(float(a.max()), 2)}


class DownAudioTrack(MediaStreamTrack):
    """The avatar's speech: 20 ms packets at 48 kHz, silence where nothing is scheduled, paced by the clock."""

    kind = "audio"

    def __init__(self, clock: MediaClock, meter: SyncMeter) -> None:
        super().__init__()
        self.clock = clock
        self.meter = meter
        self.next_position: int | None = None  # first sample of the next packet; set on the first call
        self._segments: deque[tuple[int, np.ndarray]] = deque()
        self._marks: dict[int, int] = {}  # sample position -> frame key whose audio starts there
        self.tail = 0                      # end of the last scheduled segment

    def schedule(self, samples: np.ndarray, not_before: int, key: int) -> int:
        """Queue one frame's audio (int16 mono 48 kHz) at or after `not_before`, after what is queued already and
        after the packet in preparation. Returns the position it starts at."""
        start = max(not_before, self.tail, self.next_position or 0)
        self._segments.append((start, samples))
        self._marks[start] = key
        self.tail = start + len(samples)
        return start

    def clear(self) -> None:
        """Interrupt: nothing queued is said any more."""
        self._segments.clear()
        self._marks.clear()
        self.tail = 0

    def backlog_samples(self) -> int:
        return max(0, self.tail - self.clock.position_now())

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now_pos = self.clock.position_now()
        if self.next_position is None or now_pos - self.next_position > CATCH_UP_S * AUDIO_RATE:
            # start (or resume after a stall of the sender) at the current packet, never with a burst of old ones
            self.next_position = -(-now_pos // PACKET_SAMPLES) * PACKET_SAMPLES
        position = self.next_position
        wait = self.clock.time_of(position) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        end = position + PACKET_SAMPLES
        out = np.zeros(PACKET_SAMPLES, dtype=np.int16)
        while self._segments and self._segments[0][0] + len(self._segments[0][1]) <= position:
            self._segments.popleft()  # entirely in the past (a stall skipped it)
        for start, samples in self._segments:
            if start >= end:
                break
            lo, hi = max(start, position), min(start + len(samples), end)
            if hi > lo:
                out[lo - position:hi - position] = samples[lo - start:hi - start]
        left = time.monotonic()
        for mark in [m for m in self._marks if m < end]:
            key = self._marks.pop(mark)
            if mark >= position:
                self.meter.audio_left(key, left + (mark - position) / AUDIO_RATE)
        self.next_position = end
        frame = av.AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = position
        frame.time_base = AUDIO_TIME_BASE
        return frame


class AvatarVideoTrack(MediaStreamTrack):
    """The avatar's frames, each handed to the encoder at its due time on the shared clock."""

    kind = "video"

    def __init__(self, clock: MediaClock, meter: SyncMeter, on_frame: Callable[[int, float], None] | None = None
                 ) -> None:
        super().__init__()
        self.clock = clock
        self.meter = meter
        self.on_frame = on_frame
        self._queue: asyncio.Queue[tuple[av.VideoFrame, float, int] | None] = asyncio.Queue()
        self._last_pts = -1

    def put(self, frame: av.VideoFrame, due: float, key: int) -> None:
        self._queue.put_nowait((frame, due, key))

    def clear(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:  # keep the end marker
                self._queue.put_nowait(None)
                return

    def end(self) -> None:
        self._queue.put_nowait(None)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        item = await self._queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        frame, due, key = item
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        left = time.monotonic()
        pts = max(self._last_pts + 1, int(round((due - self.clock.t0) * VIDEO_CLOCK)))
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        self.meter.video_left(key, left)
        if self.on_frame:
            self.on_frame(key, left)
        return frame


class UpAudio:
    """The peer's audio going up: as the avatar says it back (48 kHz mono, Opus's rate; the speech the session's
    timeline keeps until its frames are out) and, through the timeline, as the service wants it (16 kHz chunks),
    with the arrival time of each piece for the latency figures."""

    def __init__(self, timeline: SpeechTimeline, max_keep_s: float = 30.0) -> None:
        self.timeline = timeline
        self._to48k = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=int(max_keep_s * 50) + 64)  # (16k position, time)

    def add(self, frame: av.AudioFrame, now: float | None = None) -> None:
        self._arrivals.append((self.timeline.received, time.monotonic() if now is None else now))
        for f in self._to48k.resample(frame):
            self.timeline.push(f.to_ndarray().astype("<i2", copy=False).tobytes(), AUDIO_RATE)

    def add_silence(self, seconds: float, now: float | None = None) -> None:
        """Keep the service's timeline going while no packet comes (so frame k is still audio k * 40 ms)."""
        self._arrivals.append((self.timeline.received, time.monotonic() if now is None else now))
        self.timeline.add_silence(int(seconds * SESSION_RATE))

    def arrival_of(self, position_16k: int) -> float | None:
        """When the audio at this 16 kHz position reached the gateway."""
        if not self._arrivals:
            return None
        i = bisect.bisect_right(self._arrivals, position_16k, key=lambda a: a[0]) - 1
        return self._arrivals[i][1] if i >= 0 else None


def frame_audio(placement: Placement) -> np.ndarray:
    """The 40 ms of 48 kHz audio that goes with a frame: the speech that drove it, silence where there is none (a
    gap the gateway filled, a frame easing back to rest)."""
    out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    for piece in placement.speech:  # the timeline keeps the peer's audio at 48 kHz mono (UpAudio)
        at = piece.offset * AUDIO_RATE // SESSION_RATE
        samples = np.frombuffer(piece.pcm, "<i2")[:FRAME_SAMPLES - at]
        out[at:at + len(samples)] = samples
    return out
