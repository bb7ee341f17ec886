"""What every voice-agent adapter needs from one Ditto `Converse` session, written once.

An agent framework hands us its speech (TTS audio at whatever rate it runs, in frames of any size) and expects back
video frames and the same speech, delayed so that each 40 ms of audio leaves together with the frame that shows it.
`AvatarBridge` does that over the public API (the SDK's `AsyncAvatarClient`):

- Timeline. The bridge sends every sample of the session: the agent's speech as it comes and, between utterances,
  silence (the session runs with the FREEZE idle policy, so the server never inserts audio of its own), which keeps
  the face moving. The SDK's `SpeechTimeline` (ditto_client.timeline) keeps that account, as it does for the WebRTC
  gateway: it says which samples each frame shows, and the original speech under them (at its own rate and channel
  count, never resampled) leaves with the frame.
- Interrupt. `interrupt()` drops everything queued for the consumer, sends `Interrupt`, and ignores frames of the
  old epoch still in flight; the frames easing the face back to rest show no speech, and the new speech lines up
  again after them.
- No face. If the server cannot be reached, refuses the API key, does not know the avatar, or ends the session, the
  bridge logs one clear error and goes on as a pass-through: the speech still comes out (undelayed, with segment
  ends), just without video. The agent keeps talking.

Items come out of `async for item in bridge` as `VideoOut`, `AudioOut` and `SegmentEnd`, in presentation order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from ditto import telemetry
from ditto_client import AsyncAvatarClient, ConverseStream, session_config, status_code
from ditto_client.timeline import SESSION_RATE, FrameDecoder, Placement, SpeechTimeline
from ditto_client.v1 import avatar_pb2, common_pb2

MAX_SEND_SAMPLES = SESSION_RATE // 5  # 200 ms per message, well under the server's max_chunk_ms
IDLE_CHUNK_SAMPLES = MAX_SEND_SAMPLES
KEEP_ALIVE_S = 5.0                    # well inside the server's idle timeout (30 s by default)

log = telemetry.get_logger("ditto.integrations")


@dataclass(frozen=True)
class VideoOut:
    """One video frame: RGB, row-major, height x width x 3."""
    rgb: np.ndarray
    index: int       # the server's frame index (over the whole session)
    speech: bool     # True when this frame shows speech the agent sent (not idle silence or easing to rest)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


@dataclass(frozen=True)
class AudioOut:
    """Speech to play with the frame just yielded: PCM16, interleaved, at the rate it came in."""
    pcm: bytes
    sample_rate: int
    channels: int

    @property
    def samples(self) -> int:
        return len(self.pcm) // (2 * self.channels)

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate


@dataclass(frozen=True)
class SegmentEnd:
    """The last audio of one utterance has been yielded."""


@dataclass
class BridgeOptions:
    address: str                          # host:port of the Ditto server
    avatar_id: str
    api_key: str | None = None
    emotion: Any = None                   # 'happy', ['happy', 'surprise'], 8 probabilities, or None
    seed: int = 0
    sampling_steps: int = 0               # 0 = the server's default
    jpeg: bool = True                     # JPEG over the wire (decoded here); False = raw RGB (same host)
    # How far ahead of the last frame received the bridge keeps the timeline with silence while the agent is
    # quiet: the server needs 1.2 s of audio beyond a frame before it can leave (the motion window's look-ahead), and
    # feeds its own idle sessions 0.2 s beyond that. Speech that follows idle waits behind this much silence.
    idle_lead_s: float = 1.4
    idle_after_s: float = 0.4             # quiet this long (or since start) before silence is fed
    start_timeout_s: float = 15.0         # how long start() waits for SessionStarted
    max_queued_items: int = 400           # frames + audio waiting for the consumer (~8 s); back-pressure beyond


def explain(code: grpc.StatusCode, details: str, opts: BridgeOptions) -> str:
    """A message that says what to do next (never the API key itself)."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return (f"cannot reach the Ditto server at {opts.address} ({details}); start it (`ditto serve`) or fix the "
                "address")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return f"the Ditto server refused the API key ({details}); set the key of your tenant"
    if code == grpc.StatusCode.NOT_FOUND:
        return (f"avatar {opts.avatar_id!r} is not registered on {opts.address} for this tenant ({details}); "
                "register the portrait first (AvatarClient.register_avatar)")
    return f"the Ditto session ended with {code.name}: {details}"


class AvatarBridge:
    """One agent session's face: a Converse session plus the timeline that lines speech up with frames."""

    def __init__(self, options: BridgeOptions) -> None:
        self.opts = options
        self.face = False                 # True while the session delivers frames
        self.error: str | None = None     # why there is no face, once there is none
        self.width = 0
        self.height = 0
        self.session_id = ""
        self._client: AsyncAvatarClient | None = None
        self._stream: ConverseStream | None = None
        self._out: asyncio.Queue[VideoOut | AudioOut | SegmentEnd | None] = asyncio.Queue(options.max_queued_items)
        self._tasks: list[asyncio.Task] = []
        self._started = asyncio.Event()
        self._closed = False
        self.timeline = SpeechTimeline()
        self._pictures = FrameDecoder()
        self._last_frame_at = 0.0
        self._last_speech_at = time.monotonic()
        self._last_sent_at = time.monotonic()
        self._all_played = asyncio.Event()  # set while no speech waits to be shown
        self._all_played.set()

    # ---- life cycle ----
    async def start(self) -> bool:
        """Open the session; returns whether there is a face. Never raises for a server-side problem."""
        o = self.opts
        try:
            self._client = AsyncAvatarClient(o.address, api_key=o.api_key)
            cfg = session_config(
                o.avatar_id, sample_rate_hz=SESSION_RATE, channels=1, sample_format="s16",
                encoding=common_pb2.FRAME_ENCODING_JPEG if o.jpeg else common_pb2.FRAME_ENCODING_RAW_RGB,
                emotion=o.emotion, idle_policy=avatar_pb2.IDLE_POLICY_FREEZE, sampling_steps=o.sampling_steps,
                seed=o.seed)
            # the SDK waits out "no capacity, retry after N ms" for up to start_timeout_s, then raises the refusal
            self._stream = await asyncio.wait_for(
                self._client.open_session(o.avatar_id, config=cfg, retry_for_s=o.start_timeout_s),
                o.start_timeout_s)
        except TimeoutError:
            await self._lose_face(f"the Ditto server at {o.address} did not start a session within "
                                  f"{o.start_timeout_s:.0f} s; check that it is up and not overloaded")
            return False
        except grpc.aio.AioRpcError as err:  # the server refused the session: say why, and what to do
            await self._lose_face(explain(err.code(), err.details() or "", o))
            return False
        except Exception as err:  # a malformed address, a bad emotion: no face, but the agent runs on
            await self._lose_face(f"cannot open a Ditto session: {err}")
            return False
        self._tasks.append(asyncio.create_task(self._read(), name="ditto-bridge-read"))
        try:
            await asyncio.wait_for(self._started.wait(), o.start_timeout_s)
        except TimeoutError:
            await self._lose_face(f"the Ditto server at {o.address} did not start a session within "
                                  f"{o.start_timeout_s:.0f} s; check that it is up and not overloaded")
            return False
        if not self.face:
            return False
        self._tasks.append(asyncio.create_task(self._feed_idle(), name="ditto-bridge-idle"))
        return True

    async def aclose(self) -> None:
        """End the session and free everything; safe to call more than once, from any state."""
        if self._closed:
            return
        self._closed = True
        self.face = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._stream is not None:
            self._stream.cancel()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        self._drain()
        self.timeline.unshown()
        self._note_played()
        with contextlib.suppress(asyncio.QueueFull):
            self._out.put_nowait(None)

    # ---- what the agent says ----
    async def push_audio(self, pcm: bytes, sample_rate: int, channels: int = 1) -> None:
        """Speech from the agent: PCM16 interleaved, any rate and channel count, any frame size."""
        if not pcm or self._closed:
            return
        if not self.face:
            await self._out.put(AudioOut(bytes(pcm), sample_rate, channels))
            return
        self._last_speech_at = time.monotonic()
        self.timeline.push(pcm, sample_rate, channels)
        if self.timeline.speaking:
            self._all_played.clear()
        await self._send()

    async def end_segment(self) -> None:
        """The utterance is complete: its last frame will be followed by a SegmentEnd."""
        if self.face and not self.timeline.end_speech():
            await self._send()  # its last samples, held by the resampler
        elif not self._closed:  # no face, or nothing of it to show: it ends now
            self._note_played()
            await self._out.put(SegmentEnd())

    async def drain(self, stall_s: float = 10.0) -> bool:
        """Wait until every utterance received so far has been handed out (for a graceful end). Gives up only when
        no frame has come for `stall_s` (a slow server is still a server making progress)."""
        if self.timeline.in_utterance:
            await self.end_segment()
        while not self._all_played.is_set():
            try:
                await asyncio.wait_for(self._all_played.wait(), 0.5)
            except TimeoutError:
                if time.monotonic() - self._last_frame_at > stall_s:
                    log.warning("speech still queued at the end; the server sent no frame", stall_s=stall_s)
                    return False
        return True

    def _note_played(self) -> None:
        if not self.timeline.speaking:
            self._all_played.set()

    async def interrupt(self) -> None:
        """Stop the current speech now: queued frames and audio are dropped, the face eases back to rest."""
        self._drain()
        self.timeline.interrupt()
        self._note_played()
        if not self.face or self._stream is None:
            return
        await self._stream.interrupt()

    def __aiter__(self) -> AsyncIterator[VideoOut | AudioOut | SegmentEnd]:
        return self._items()

    async def _items(self) -> AsyncIterator[VideoOut | AudioOut | SegmentEnd]:
        while True:
            item = await self._out.get()
            if item is None:
                return
            yield item

    # ---- internals ----
    async def _send(self) -> None:
        """Send what is on the timeline and not sent yet."""
        if self._stream is None:
            return
        while (data := self.timeline.take_chunk(MAX_SEND_SAMPLES)) is not None:
            self._last_sent_at = time.monotonic()
            await self._stream.send_audio(data)

    async def _feed_idle(self) -> None:
        """While the agent is quiet, keep the timeline a little ahead of the frames so the face stays alive."""
        while self.face:
            await asyncio.sleep(0.04)
            if self._stream is not None and time.monotonic() - self._last_sent_at > KEEP_ALIVE_S:
                # the server is still rendering what it has (a slow machine, a long utterance sent at once): say
                # we are here, or its idle timeout ends the session
                self._last_sent_at = time.monotonic()
                await self._stream.keep_alive()
            if self.timeline.in_utterance or time.monotonic() - self._last_speech_at < self.opts.idle_after_s:
                continue
            # Measured from the last frame received, so never less than the server's own idle feed keeps (1.2 s of
            # look-ahead + 0.2 s beyond the frames it has made): enough for frames to keep coming, and no more, since
            # speech that follows waits behind this silence.
            if self.timeline.ahead_s < self.opts.idle_lead_s:
                self.timeline.add_silence(IDLE_CHUNK_SAMPLES)
                await self._send()

    async def _read(self) -> None:
        assert self._stream is not None
        try:
            async for msg in self._stream:
                kind = msg.WhichOneof("kind")
                if kind == "started":
                    self.session_id = msg.started.session_id
                    self.width, self.height = msg.started.width, msg.started.height
                    self.face = True
                    self._last_frame_at = time.monotonic()
                    self._started.set()
                    log.info("avatar session started", session=self.session_id, avatar=self.opts.avatar_id,
                             width=self.width, height=self.height)
                elif kind == "frame":
                    await self._on_frame(msg.frame)
                elif kind == "event" and msg.event.WhichOneof("event") == "interrupted":
                    self.timeline.interrupted(msg.event.interrupted)
                elif kind == "final":
                    st = msg.final.status
                    if self._closed:
                        return
                    message = st.message or "the server ended the session"
                    await self._lose_face(explain(status_code(st.code), message, self.opts))
                    return
            if not self._closed:
                await self._lose_face("the Ditto server closed the session without a final status")
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as err:
            if not self._closed:
                await self._lose_face(explain(err.code(), err.details() or "", self.opts))
        except Exception as err:
            if not self._closed:
                log.exception("avatar session reader failed")
                await self._lose_face(f"the avatar session failed: {err}")
        finally:
            self._started.set()

    async def _on_frame(self, f: avatar_pb2.VideoFrame) -> None:
        placed = self.timeline.place(f)
        if placed is None:
            return  # speech that was interrupted
        self._last_frame_at = time.monotonic()
        self._note_played()
        try:
            await self._out.put(VideoOut(self._pictures.rgb(f), int(f.index), bool(placed.speech)))
        except ValueError as err:  # the picture is skipped; its speech still plays
            log.warning("undecodable frame skipped", index=f.index, error=str(err))
        await self._hand_out(placed)

    async def _hand_out(self, placed: Placement) -> None:
        for piece in placed.speech:
            await self._out.put(AudioOut(piece.pcm, piece.rate, piece.channels))
        for _ in range(placed.ended):
            await self._out.put(SegmentEnd())

    def _drain(self) -> None:
        while True:
            try:
                item = self._out.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is None:  # keep the end marker
                self._out.put_nowait(None)
                return

    async def _lose_face(self, reason: str) -> None:
        """Log once, hand out the speech still waiting (so the user hears it), and pass audio through from now."""
        self.face = False
        if self.error is None:
            self.error = reason
            log.error("avatar has no face; the agent goes on with audio only", reason=reason,
                      avatar=self.opts.avatar_id, session=self.session_id or None)
        for pcm, rate, channels, ended in self.timeline.unshown():
            if pcm:
                await self._out.put(AudioOut(pcm, rate, channels))
            if ended:
                await self._out.put(SegmentEnd())
        self._note_played()
        self._started.set()
