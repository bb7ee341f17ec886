"""One browser session: a peer connection on one side, a Converse stream of the public API on the other.

Up: the peer's audio track goes on the session's timeline (`ditto_client.timeline`), which sends it to Converse at
16 kHz in `chunk_ms` pieces as it arrives (so at realtime). The gateway sends every sample of the session: silence
until the peer's track arrives and wherever its packets pause, so the service never fills a gap with audio of its
own; a gap longer than `stall_timeout_s` ends the session (network stall). Down: the timeline says which of the
peer's audio each frame shows (none for the frames easing back to rest after an interrupt); the frame is decoded,
and it and that audio are scheduled on one clock (see media.py). Every exit path (hang-up, peer connection
failed or closed, stall, the service's final status, gateway shutdown) goes through `close`, which cancels the
Converse call, so the service frees the session and its quota at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import deque
from typing import Any

import av
import grpc
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ditto import telemetry
from ditto_client import AsyncAvatarClient, ConverseStream, emotion_control, session_config, status_code
from ditto_client.timeline import SESSION_RATE, FrameDecoder, SpeechTimeline
from ditto_client.v1 import avatar_pb2, common_pb2
from services.webrtc_gateway.config import GatewaySettings
from services.webrtc_gateway.media import (
    AvatarVideoTrack,
    DownAudioTrack,
    MediaClock,
    SyncMeter,
    UpAudio,
    frame_audio,
)

log = telemetry.get_logger("ditto.webrtc")
_sessions = telemetry.gauge("ditto_webrtc_sessions_active", "Peer connections open on this gateway", ())
_ended = telemetry.counter("ditto_webrtc_sessions_ended_total", "Gateway sessions ended, by reason", ("reason",))
_added = telemetry.histogram("ditto_webrtc_frame_latency_seconds",
                             "Audio in at the gateway to its frame out of the gateway", (),
                             buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10))
_sync = telemetry.histogram("ditto_webrtc_av_offset_seconds", "Absolute audio-video offset of each frame sent",
                            (), buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16))

IDLE_POLICIES = {"alive": avatar_pb2.IDLE_POLICY_ALIVE, "freeze": avatar_pb2.IDLE_POLICY_FREEZE}
ENCODINGS = {"jpeg": common_pb2.FRAME_ENCODING_JPEG, "raw": common_pb2.FRAME_ENCODING_RAW_RGB}
SILENCE_FILL_S = 0.2  # no packet for this long: send this much silence (below the service's own idle feed, 400 ms)


class OfferError(Exception):
    """A request the gateway refuses, with the HTTP status the client gets."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


# gRPC status of a refused Converse -> HTTP status of the refused offer
HTTP_OF_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def key_digest(api_key: str | None) -> str:
    return hashlib.sha256((api_key or "").encode()).hexdigest()


def check_offer(sdp: str) -> None:
    """What the gateway needs from an offer, said before any resource is taken."""
    from aiortc.sdp import SessionDescription

    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as err:
        raise OfferError(400, f"invalid SDP offer ({type(err).__name__}: {err}); send the offer a WebRTC "
                              "RTCPeerConnection.createOffer() produced") from None
    if not parsed.media:
        raise OfferError(400, "invalid SDP offer: it has no media section; add an audio and a video transceiver")
    kinds = {m.kind: m for m in parsed.media}
    audio = kinds.get("audio")
    if audio is None or audio.direction not in ("sendrecv", "sendonly", None) or audio.port == 0:
        raise OfferError(400, "the offer has no audio track to send: add the microphone (or a file's audio) as a "
                              "sendrecv audio track; it drives the avatar")
    video = kinds.get("video")
    if video is None or video.direction not in ("sendrecv", "recvonly", None) or video.port == 0:
        raise OfferError(400, "the offer receives no video: add a video transceiver with direction 'recvonly'")
    if not any(c.name.lower() in ("vp8", "h264") for c in video.rtp.codecs):
        raise OfferError(400, "the offer's video section has neither VP8 nor H264; the gateway sends one of those")


def limit_host_addresses(addresses: list[str]) -> None:
    """Gather host candidates on these addresses only. aiortc has no setting for it, so this replaces aioice's
    interface listing for the whole process (the gateway runs one configuration per process)."""
    import aioice.ice

    allowed = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in allowed if (use_ipv6 if ":" in a else use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def keep_candidates(sdp: str, addresses: list[str]) -> str:
    """The offer without candidates on other addresses (the gateway would not reach them)."""
    if not addresses:
        return sdp
    lines = [line for line in sdp.splitlines()
             if not (line.startswith("a=candidate:") and len(line.split()) > 4 and line.split()[4] not in addresses)]
    return "\r\n".join(lines) + "\r\n"


def _percentiles(seconds: deque[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    a = np.asarray(seconds) * 1000
    return {"p50": round(float(np.percentile(a, 50)), 2), "p90": round(float(np.percentile(a, 90)), 2)}


def answer_video_codec(sdp: str) -> str:
    """The codec the answer sends video with (its first video codec)."""
    from aiortc.sdp import SessionDescription

    for m in SessionDescription.parse(sdp).media:
        if m.kind == "video" and m.rtp.codecs:
            return m.rtp.codecs[0].name
    return ""


class GatewaySession:
    def __init__(self, settings: GatewaySettings, api_key: str | None, options: dict[str, Any]) -> None:
        self.settings = settings
        self.id = uuid.uuid4().hex
        self.key_digest = key_digest(api_key)
        self.api_key = api_key
        self.options = options
        self.client: AsyncAvatarClient | None = None
        self.stream: ConverseStream | None = None
        self.started: avatar_pb2.SessionStarted | None = None
        self.pc: RTCPeerConnection | None = None
        self.clock = MediaClock()
        self.meter = SyncMeter()
        self.video = AvatarVideoTrack(self.clock, self.meter, self._frame_left)
        self.audio = DownAudioTrack(self.clock, self.meter)
        self.timeline = SpeechTimeline()
        self.up = UpAudio(self.timeline)
        self.pictures = FrameDecoder()
        self.created_at = time.monotonic()
        self.closed = asyncio.Event()
        self.end_reason = ""
        self.final_status: tuple[str, str] | None = None
        self.frames_received = 0
        self.frames_sent = 0
        self.frames_dropped = 0
        self.first_frame_at: float | None = None
        self.first_audio_at: float | None = None
        self.interrupts = 0
        self.interrupts_acknowledged = 0  # the service's InterruptedEvent came back
        self.audio_dropped_s = 0.0
        self._latency_s: deque[float] = deque(maxlen=4096)
        self._frame_audio_at: dict[int, float] = {}
        self._frame_in_at: dict[int, float] = {}  # when each frame came in from the service
        self._hold_s: deque[float] = deque(maxlen=4096)  # frame in from the service -> frame out to the encoder
        self._sent_at: deque[float] = deque(maxlen=64)
        self._tasks: list[asyncio.Task] = []
        self._up_track: MediaStreamTrack | None = None
        self._up_seen = asyncio.Event()
        self.video_codec = ""
        self._counted = False  # in the active-sessions gauge

    # ---- start ----
    async def open(self, offer_sdp: str) -> str:
        """Start the Converse session, then answer the offer. Raises OfferError with the status to return."""
        check_offer(offer_sdp)
        await self._open_converse()
        try:
            return await self._answer(offer_sdp)
        except OfferError:
            await self.close("refused")
            raise
        except Exception as err:
            await self.close("refused")
            raise OfferError(400, f"cannot answer this offer ({type(err).__name__}: {err})") from None

    async def _open_converse(self) -> None:
        o = self.options
        cfg = session_config(
            o["avatar_id"], sample_rate_hz=SESSION_RATE, encoding=ENCODINGS[self.settings.frame_encoding],
            emotion=o.get("emotion") or None, idle_policy=IDLE_POLICIES[o.get("idle", "alive")],
            seed=int(o.get("seed") or 0), sampling_steps=int(o.get("steps") or 0),
            idle_timeout_s=self.settings.service_idle_timeout_s)
        self.client = AsyncAvatarClient(self.settings.orchestrator, api_key=self.api_key)
        try:
            self.stream = await self.client.open_session(o["avatar_id"], config=cfg)
            first = await asyncio.wait_for(self.stream.__aiter__().__anext__(), self.settings.open_timeout_s)
        except grpc.aio.AioRpcError as err:
            await self._abandon()
            raise OfferError(HTTP_OF_GRPC.get(err.code(), 502), f"the avatar service refused the session: "
                                                                f"{err.details()}") from None
        except (TimeoutError, StopAsyncIteration):
            await self._abandon()
            raise OfferError(504, f"the avatar service at {self.settings.orchestrator} did not start the session in "
                                  f"{self.settings.open_timeout_s:.0f} s; try again") from None
        kind = first.WhichOneof("kind")
        if kind == "final":
            await self._abandon()
            code = status_code(first.final.status.code)
            retry = 1.0 if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
            raise OfferError(HTTP_OF_GRPC.get(code, 502), first.final.status.message, retry)
        if kind != "started":
            await self._abandon()
            raise OfferError(502, f"the avatar service answered '{kind}' before SessionStarted")
        self.started = first.started

    async def _answer(self, offer_sdp: str) -> str:
        servers = [RTCIceServer(urls=s.urls, username=s.username or None,
                                credential=s.credential.get_secret_value() or None)
                   for s in self.settings.ice_servers]
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=servers or None))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self._up_track is None:
                self._up_track = track
                self._up_seen.set()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(f"peer connection {pc.connectionState}")

        offer_sdp = keep_candidates(offer_sdp, self.settings.ice_host_addresses)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        for t in pc.getTransceivers():
            if t.kind == "video" and t.sender.track is None:
                t.sender.replaceTrack(self.video)
                t.direction = "sendrecv" if t.direction == "sendrecv" else "sendonly"
                prefs = [c for c in RTCRtpSender.getCapabilities("video").codecs
                         if c.mimeType.lower() == f"video/{self.settings.video_codec.lower()}"]
                others = [c for c in RTCRtpSender.getCapabilities("video").codecs if c not in prefs]
                t.setCodecPreferences(prefs + others)
                break
        for t in pc.getTransceivers():
            if t.kind == "audio" and t.sender.track is None:
                t.sender.replaceTrack(self.audio)
                t.direction = "sendrecv"
                break
        await pc.setLocalDescription(await pc.createAnswer())
        self.video_codec = answer_video_codec(pc.localDescription.sdp)
        self._tasks.append(asyncio.create_task(self._uplink()))
        self._tasks.append(asyncio.create_task(self._downlink()))
        _sessions.inc()
        self._counted = True
        log.info("webrtc session started", session=self.id,
                 service_session=self.started.session_id if self.started else "",
                 avatar=self.options["avatar_id"])
        return pc.localDescription.sdp

    # ---- up: the peer's audio into Converse ----
    async def _uplink(self) -> None:
        s = self.settings
        chunk = SESSION_RATE * s.chunk_ms // 1000
        # never below what the service needs before its first frame, or no frame would ever come back
        look_ahead_s = (self.started.audio_look_ahead_ms / 1000) if self.started else 0.0
        max_pending_s = max(s.max_pending_audio_s, look_ahead_s + 1.0)
        assert self.stream is not None
        try:
            silent_for = 0.0
            while True:
                try:
                    if self._up_track is None:  # the peer is still connecting: silence meanwhile
                        await asyncio.wait_for(self._up_seen.wait(), SILENCE_FILL_S)
                        continue
                    frame = await asyncio.wait_for(self._up_track.recv(), SILENCE_FILL_S)
                    silent_for = 0.0
                    if self.first_audio_at is None:
                        self.first_audio_at = time.monotonic()
                    if isinstance(frame, av.AudioFrame):
                        if self.timeline.ahead_s > max_pending_s:
                            # the service is slower than realtime: drop what it cannot take (never sent, so the
                            # timeline of sent audio, and with it lip sync, stays exact)
                            self.audio_dropped_s += frame.samples / frame.sample_rate
                        else:
                            self.up.add(frame)
                except TimeoutError:
                    silent_for += SILENCE_FILL_S
                    if silent_for >= s.stall_timeout_s:
                        await self.close("network stall" if self._up_track else "no audio track arrived")
                        return
                    if self.timeline.ahead_s <= max_pending_s:
                        self.up.add_silence(SILENCE_FILL_S)
                while (data := self.timeline.take_chunk(chunk, chunk)) is not None:
                    await self.stream.send_audio(data)
        except MediaStreamError:
            await self.close("peer audio ended")
        except asyncio.CancelledError:
            pass

    # ---- down: frames and their audio to the peer ----
    async def _downlink(self) -> None:
        assert self.stream is not None
        try:
            async for msg in self.stream:
                kind = msg.WhichOneof("kind")
                if kind == "frame":
                    self._on_frame(msg.frame)
                elif kind == "event" and msg.event.WhichOneof("event") == "interrupted":
                    self.timeline.interrupted(msg.event.interrupted)
                    self.interrupts_acknowledged += 1
                elif kind == "final":
                    st = msg.final.status
                    self.final_status = (status_code(st.code).name, st.message)
            reason = "service ended the session" + (f": {self.final_status[0]}" if self.final_status else "")
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            self.final_status = (err.code().name, err.details() or "")
            reason = f"service ended the session: {err.code().name}"
        except asyncio.CancelledError:
            return
        await self.close(reason)

    def _on_frame(self, frame: avatar_pb2.VideoFrame) -> None:
        self.frames_received += 1
        came_in = time.monotonic()
        placed = self.timeline.place(frame)
        if placed is None:
            return  # already on its way before the interrupt: it is not said any more
        now_pos = self.clock.position_now()
        if self.audio.tail - now_pos > self.settings.max_backlog_s * 48000:
            self.frames_dropped += 1  # far behind: drop rather than let latency grow; lips stay in sync
            return
        try:
            picture = self.pictures.video_frame(frame)
        except ValueError as err:
            log.warning("frame dropped", session=self.id, index=frame.index, error=str(err))
            self.frames_dropped += 1
            return
        start = self.audio.schedule(frame_audio(placed), now_pos, frame.index)
        arrived = self.up.arrival_of(placed.start) if placed.start is not None else None
        if arrived is not None:
            self._frame_audio_at[frame.index] = arrived
        self._frame_in_at[frame.index] = came_in
        self.video.put(picture, self.clock.time_of(start), frame.index)

    def _frame_left(self, index: int, at: float) -> None:
        self.frames_sent += 1
        if self.first_frame_at is None:
            self.first_frame_at = at
        self._sent_at.append(at)
        arrived = self._frame_audio_at.pop(index, None)
        if arrived is not None:
            self._latency_s.append(at - arrived)
            _added.observe(at - arrived)
        came_in = self._frame_in_at.pop(index, None)
        if came_in is not None:
            self._hold_s.append(at - came_in)
        for pending in (self._frame_audio_at, self._frame_in_at):
            while len(pending) > 256:  # frames cleared by an interrupt never leave
                pending.pop(next(iter(pending)))
        if self.meter.offsets_ms:
            _sync.observe(abs(self.meter.offsets_ms[-1]) / 1000)

    # ---- controls ----
    async def interrupt(self) -> None:
        if self.stream is None or self.closed.is_set():
            raise OfferError(409, "the session has ended; start a new one")
        # the next epoch's frames stand for audio sent from now on; what is queued down is not said any more
        self.timeline.interrupt()
        await self.stream.interrupt()
        self.interrupts += 1
        self.video.clear()
        self.audio.clear()

    async def set_emotion(self, emotion: str) -> None:
        if self.stream is None or self.closed.is_set():
            raise OfferError(409, "the session has ended; start a new one")
        try:
            control = emotion_control(emotion)
        except ValueError as err:
            raise OfferError(400, str(err)) from None
        await self.stream.control(overall=common_pb2.MotionControls(emotion=control))

    # ---- end ----
    async def close(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.end_reason = reason
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()
        if self.stream is not None:
            self.stream.cancel()  # the service frees the session and its quota now
        self.video.end()
        self.audio.stop()
        if self._counted:
            self._counted = False
            _sessions.dec()
        if self.pc is not None:
            await self.pc.close()
        await self._close_client()
        _ended.labels(reason.split(":")[0]).inc()
        log.info("webrtc session ended", session=self.id, reason=reason, frames_sent=self.frames_sent,
                 sync=self.meter.summary())

    async def _abandon(self) -> None:
        """A refused start: end the call (and its request stream) before the channel."""
        if self.stream is not None:
            self.stream.cancel()
        await self._close_client()

    async def _close_client(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    # ---- what the page shows ----
    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        recent = [t for t in self._sent_at if now - t < 2.0]
        lat = np.asarray(self._latency_s) * 1000 if self._latency_s else None
        return {
            "id": self.id, "state": "ended" if self.closed.is_set() else "live", "end_reason": self.end_reason,
            "final_status": list(self.final_status) if self.final_status else None,
            "service_session_id": self.started.session_id if self.started else "",
            "width": self.started.width if self.started else 0, "height": self.started.height if self.started else 0,
            "frames_received": self.frames_received, "frames_sent": self.frames_sent,
            "frames_dropped": self.frames_dropped, "audio_dropped_s": round(self.audio_dropped_s, 2),
            "fps": round(len(recent) / 2.0, 2),
            "first_frame_ms": round((self.first_frame_at - self.first_audio_at) * 1000, 1)
            if self.first_frame_at and self.first_audio_at else None,
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p90": round(float(np.percentile(lat, 90)),
                                                                                         1),
                           "last": round(float(lat[-1]), 1)} if lat is not None else None,
            "hold_ms": _percentiles(self._hold_s),
            "av_sync": self.meter.summary(), "interrupts": self.interrupts,
            "interrupts_acknowledged": self.interrupts_acknowledged,
            "video_codec": self.video_codec,
        }
