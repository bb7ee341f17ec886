"""A WebRTC client in Python (aiortc) for the gateway tests, and the gateway served in this process."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from converse_recorder import BURST_RMS, converse_recorder, frame_rms, tone_bursts  # noqa: E402
from serving_helpers import embedded_service, portrait_png, speech_pcm16  # noqa: E402

from services.webrtc_gateway.app import build_app  # noqa: E402
from services.webrtc_gateway.config import GatewaySettings  # noqa: E402

__all__ = ["BURST_RMS", "SpeechTrack", "ToneBursts", "WebRTCClient", "converse_recorder", "embedded_service",
           "frame_rms", "gateway", "portrait_png", "speech_pcm16"]


class SpeechTrack(MediaStreamTrack):
    """A microphone stand-in: `seconds` of a voice-like signal at 48 kHz, 20 ms frames at realtime, then silence
    (as a browser keeps sending while the user is quiet)."""

    kind = "audio"

    def __init__(self, seconds: float = 3.0) -> None:
        super().__init__()
        self.pcm = np.frombuffer(speech_pcm16(seconds, rate=48000), dtype=np.int16)
        self.position = 0
        self.t0: float | None = None
        self.sent_at: list[tuple[int, float]] = []  # (48 kHz position, time sent)

    async def recv(self) -> av.AudioFrame:
        if self.t0 is None:
            self.t0 = time.monotonic()
        due = self.t0 + self.position / 48000
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self.pcm[self.position:self.position + 960]
        if len(chunk) < 960:
            chunk = np.concatenate([chunk, np.zeros(960 - len(chunk), dtype=np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.position
        frame.time_base = Fraction(1, 48000)
        self.sent_at.append((self.position, time.monotonic()))
        self.position += 960
        return frame


class ToneBursts(SpeechTrack):
    """A microphone saying `tone_bursts` (40 ms that tell apart from their neighbours), then silence."""

    def __init__(self, seconds: float = 20.0, seed: int = 0) -> None:
        super().__init__(0.0)
        self.pcm = tone_bursts(seconds, 48000, seed)


class WebRTCClient:
    """Offer (microphone up, video + audio down), count what comes back."""

    def __init__(self, base_url: str, api_key: str | None = None, audio: MediaStreamTrack | None = None) -> None:
        self.base_url = base_url
        self.headers = {"x-api-key": api_key} if api_key else {}
        self.pc = RTCPeerConnection()
        self.audio = audio or SpeechTrack()
        self.frames: list[tuple[float, int, int]] = []  # (time, width, height)
        self.audio_frames = 0
        self.location = ""
        self._tasks: list[asyncio.Task] = []

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(Exception):
            while True:
                f = await track.recv()
                if track.kind == "video":
                    self.frames.append((time.monotonic(), f.width, f.height))
                else:
                    self.audio_frames += 1

    async def offer_sdp(self) -> str:
        self.pc.addTrack(self.audio)
        self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def connect(self, http: aiohttp.ClientSession, **params: str) -> aiohttp.ClientResponse:
        sdp = await self.offer_sdp()
        r = await http.post(f"{self.base_url}/whip", data=sdp, params=params,
                            headers={**self.headers, "Content-Type": "application/sdp"})
        if r.status == 201:
            self.location = r.headers["Location"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
        return r

    async def wait_frames(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < n:
            assert time.monotonic() < deadline, f"only {len(self.frames)} frames in {timeout} s"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.pc.close()


@contextlib.asynccontextmanager
async def gateway(orchestrator: str, **settings):
    """The gateway's app on a loopback port of this process; yields (base_url, app)."""
    from aiohttp import web

    s = GatewaySettings(orchestrator=orchestrator, host="127.0.0.1", port=0, **settings)
    app = build_app(s)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()
