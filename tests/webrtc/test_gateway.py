"""The gateway with a WebRTC client in Python (aiortc), in front of the whole service served in this process: bad
input gets a clear HTTP status and the gateway keeps serving; every way a session ends frees the service session
(and so the tenant's quota) at once."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack as MediaStreamTrackBase
from webrtc_helpers import (
    BURST_RMS,
    SpeechTrack,
    ToneBursts,
    WebRTCClient,
    converse_recorder,
    embedded_service,
    frame_rms,
    gateway,
    portrait_png,
)

from ditto_client import AsyncAvatarClient
from services.orchestrator.tenants import Tenant, TenantDirectory, hash_key
from services.webrtc_gateway.app import GATEWAY_KEY
from services.webrtc_gateway.media import (
    AUDIO_RATE,
    FRAME_SAMPLES,
    AvatarVideoTrack,
    DownAudioTrack,
    MediaClock,
    SyncMeter,
    UpAudio,
    frame_audio,
)
from services.webrtc_gateway.session import check_offer, keep_candidates

KEY = "gateway-test-key"
LOOPBACK = {"ice_host_addresses": ["127.0.0.1"]}


def tenants(max_sessions: int = 1) -> TenantDirectory:
    return TenantDirectory({hash_key(KEY): Tenant("gw", max_sessions=max_sessions)})


async def wait_until(condition, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met in {timeout} s"
        await asyncio.sleep(0.05)


async def register(address: str) -> str:
    async with AsyncAvatarClient(address, api_key=KEY) as client:
        return (await client.register_avatar(portrait_png())).avatar_id


async def no_audio_offer() -> str:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_bad_offers_get_clear_statuses_and_the_gateway_keeps_serving():
    async with embedded_service(tenants=tenants()) as (stub, orch):
        avatar_id = await register(stub.address)
        async with gateway(stub.address, max_sessions=1, max_offer_bytes=8192, **LOOPBACK) as (url, app), \
                aiohttp.ClientSession() as http:
            sdp_headers = {"x-api-key": KEY, "Content-Type": "application/sdp"}
            probe = WebRTCClient(url, KEY)
            good_sdp = await probe.offer_sdp()
            await probe.close()

            async def post(data, params=None, headers=None):
                r = await http.post(f"{url}/whip", data=data,
                                    params={"avatar": avatar_id} if params is None else params,
                                    headers=sdp_headers if headers is None else headers)
                return r.status, (await r.json()).get("error", "") if r.status != 201 else await r.text()

            status, msg = await post("v=0\r\nthis is not sdp")
            assert status == 400 and "SDP" in msg
            status, msg = await post(good_sdp, headers={"Content-Type": "application/sdp"})
            assert status == 401 and "API key" in msg
            status, msg = await post(good_sdp, headers={**sdp_headers, "x-api-key": "wrong"})
            assert status == 401 and "unknown API key" in msg
            status, msg = await post(good_sdp, params={"avatar": "f" * 32})
            assert status == 404 and "RegisterAvatar" in msg
            status, msg = await post(await no_audio_offer())
            assert status == 400 and "no audio track" in msg
            status, msg = await post(good_sdp, params={})
            assert status == 400 and "?avatar=" in msg
            status, msg = await post(good_sdp, params={"avatar": avatar_id, "emotion": "smug"})
            assert status == 400 and "emotion must be one of" in msg
            status, msg = await post(good_sdp, headers={**sdp_headers, "Content-Type": "text/plain"})
            assert status == 415
            status, msg = await post("v=0\r\n" + "a=x\r\n" * 4000)
            assert status == 413 and "8192" in msg
            assert not orch.sessions, "a refused offer left a service session open"

            # after all that, a real session: frames at the avatar's size, interrupt, hang-up
            client = WebRTCClient(url, KEY)
            r = await client.connect(http, avatar=avatar_id, emotion="happy")
            assert r.status == 201, await r.text()
            assert r.headers["Content-Type"].startswith("application/sdp")
            session_url = url + client.location
            # the gateway is full (max_sessions=1): the next offer is refused with a retry hint
            status, msg = await post(good_sdp)
            assert status == 503 and "full" in msg
            await client.wait_frames(10)
            assert {(w, h) for _, w, h in client.frames} == {(160, 128)}
            r = await http.post(f"{session_url}/interrupt", headers={"x-api-key": KEY})
            assert r.status == 200
            r = await http.post(f"{session_url}/emotion", json={"emotion": "sad"}, headers={"x-api-key": KEY})
            assert r.status == 200
            r = await http.post(f"{session_url}/emotion", json={"emotion": "smug"}, headers={"x-api-key": KEY})
            assert r.status == 400
            r = await http.delete(session_url, headers={"x-api-key": "someone-else"})
            assert r.status == 403
            r = await http.delete(session_url, headers={"x-api-key": KEY})
            stats = await r.json()
            assert r.status == 200 and stats["state"] == "ended" and stats["end_reason"] == "hang-up"
            assert stats["interrupts"] == 1 and stats["video_codec"] == "VP8"
            await client.close()
            # hang-up freed the service session (the tenant's only one) at once
            await wait_until(lambda: not orch.sessions, 10, "service session closed")
            # a second offer on the finished session, and controls on it: 409 with what to do instead
            r = await http.patch(session_url, data=good_sdp, headers=sdp_headers)
            assert r.status == 409 and "POST a new offer" in (await r.json())["error"]
            r = await http.post(f"{session_url}/interrupt", headers={"x-api-key": KEY})
            assert r.status == 409
            r = await http.get(f"{url}/whip/{'0' * 32}", headers={"x-api-key": KEY})
            assert r.status == 404
            # and the gateway still serves: the tenant's quota is free for a new session
            again = WebRTCClient(url, KEY)
            r = await again.connect(http, avatar=avatar_id)
            assert r.status == 201, await r.text()
            await again.wait_frames(3)
            await http.delete(url + again.location, headers={"x-api-key": KEY})
            await again.close()
            await wait_until(lambda: not orch.sessions, 10, "service session closed")


async def test_after_an_interrupt_each_frame_leaves_with_the_speech_that_drove_it(monkeypatch):
    """Interrupt in the middle of an answer while the peer goes on speaking: every frame the gateway sends is paired
    with the 40 ms of speech the service made it from (taken on the wire by a recording proxy), the frames that ease
    the face back to rest with silence. The speech is tone bursts whose lengths vary, so a frame paired with audio
    even one frame off shows. (The gateway used to pair the 8 rest frames with the first 320 ms of the new speech,
    so every later frame played its audio 320 ms before the lips.)"""
    paired: dict[int, np.ndarray] = {}  # frame index -> the 48 kHz audio the gateway scheduled with it
    schedule = DownAudioTrack.schedule

    def recording_schedule(self, samples, not_before, key):
        paired[key] = np.array(samples, copy=True)
        return schedule(self, samples, not_before, key)

    monkeypatch.setattr(DownAudioTrack, "schedule", recording_schedule)
    async with embedded_service(tenants=tenants()) as (stub, orch):
        avatar_id = await register(stub.address)
        async with converse_recorder(stub.address) as proxy, gateway(proxy.address, **LOOPBACK) as (url, app), \
                aiohttp.ClientSession() as http:
            client = WebRTCClient(url, KEY, audio=ToneBursts())
            assert (await client.connect(http, avatar=avatar_id)).status == 201
            await wait_until(lambda: len(paired) >= 15, 120, "15 frames sent")
            r = await http.post(f"{url}{client.location}/interrupt", headers={"x-api-key": KEY})
            assert r.status == 200
            (record,) = proxy.calls
            await wait_until(lambda: sum(f.epoch == 1 and f.index in paired for f in record.frames()) >= 40, 120,
                             "40 frames sent after the interrupt")
            await http.delete(url + client.location, headers={"x-api-key": KEY})
            await client.close()
    frames = [f for f in record.frames() if f.index in paired]
    rest = [f for f in frames if record.audio_of(f) is None]
    speech = [f for f in frames if record.audio_of(f) is not None]
    # the service eased the face to rest after the interrupt, and otherwise showed only audio the gateway sent
    assert len(rest) == 8 and all(f.idle and f.epoch == 1 for f in rest)
    assert not any(f.idle for f in speech)
    assert sum(f.epoch == 1 for f in speech) >= 32
    assert all(not paired[f.index].any() for f in rest), "a frame easing to rest was paired with speech"
    wanted = {f.index: frame_rms(record.audio_of(f), 16000) for f in speech}
    sent = {f.index: frame_rms(paired[f.index], 48000) for f in speech}
    assert sum(wanted[f.index] > BURST_RMS / 2 for f in speech if f.epoch == 1) >= 8  # bursts there to miss
    wrong = [(f.epoch, f.index, round(wanted[f.index]), round(sent[f.index])) for f in speech
             if abs(wanted[f.index] - sent[f.index]) > 0.2 * BURST_RMS]
    assert not wrong, f"frames paired with audio other than what drove them (epoch, index, rms wanted, rms sent): " \
                      f"{wrong}"


async def test_peer_connection_closing_ends_the_session_and_frees_the_quota():
    async with embedded_service(tenants=tenants()) as (stub, orch):
        avatar_id = await register(stub.address)
        async with gateway(stub.address, stall_timeout_s=30, **LOOPBACK) as (url, app), \
                aiohttp.ClientSession() as http:
            client = WebRTCClient(url, KEY)
            assert (await client.connect(http, avatar=avatar_id)).status == 201
            await client.wait_frames(3)
            await client.close()  # no DELETE: the browser tab just went away
            gw = app[GATEWAY_KEY]
            await wait_until(lambda: not gw.sessions, 20, "gateway session ended")
            await wait_until(lambda: not orch.sessions, 10, "service session closed")
            (digest, stats), = gw.ended.values()
            # the peer's DTLS close ends its audio track first, or the connection state changes first
            assert stats["end_reason"] in ("peer audio ended", "peer connection closed"), stats


async def test_a_network_stall_ends_the_session_by_the_idle_timeout():
    class StallingTrack(SpeechTrack):
        """Sends 1 s of audio, then nothing (packets stop: the network stalled)."""

        async def recv(self):
            if self.position >= AUDIO_RATE:
                await asyncio.Event().wait()
            return await super().recv()

    async with embedded_service(tenants=tenants()) as (stub, orch):
        avatar_id = await register(stub.address)
        async with gateway(stub.address, stall_timeout_s=1.5, **LOOPBACK) as (url, app), \
                aiohttp.ClientSession() as http:
            client = WebRTCClient(url, KEY, audio=StallingTrack())
            assert (await client.connect(http, avatar=avatar_id)).status == 201
            gw = app[GATEWAY_KEY]
            await wait_until(lambda: not gw.sessions, 60, "gateway session ended")
            await wait_until(lambda: not orch.sessions, 10, "service session closed")
            (digest, stats), = gw.ended.values()
            assert stats["end_reason"] == "network stall", stats
            await client.close()


# ---- the media parts alone


def test_offer_checks_and_candidate_filter():
    with pytest.raises(Exception, match="SDP"):
        check_offer("hello")
    sdp = "v=0\r\na=candidate:1 1 udp 1 192.0.2.2 5000 typ host\r\na=candidate:2 1 udp 1 127.0.0.1 5001 typ host\r\n"
    kept = keep_candidates(sdp, ["127.0.0.1"])
    assert "192.0.2.2" not in kept and "127.0.0.1 5001" in kept
    assert keep_candidates(sdp, []) == sdp


def test_frame_audio_is_the_audio_that_drove_the_frame():
    import av

    from ditto_client.timeline import SpeechTimeline
    from ditto_client.v1 import avatar_pb2

    timeline = SpeechTimeline()
    up = UpAudio(timeline)
    t = np.arange(48000) / 48000
    tone = (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16)
    for k in range(50):  # 1 s in 20 ms packets, as a browser sends
        f = av.AudioFrame.from_ndarray(tone[k * 960:(k + 1) * 960].reshape(1, -1), format="s16", layout="mono")
        f.sample_rate = 48000
        up.add(f, now=float(k))
    assert abs(timeline.received - 16000) <= 64
    chunks = []
    while (c := timeline.take_chunk(1280, 1280)) is not None:
        chunks.append(c)
    assert len(chunks) == timeline.received // 1280 and timeline.sent == 1280 * len(chunks)
    # frame 10 stands for 16 kHz samples 6400.. -> 48 kHz samples 19200..
    placed = timeline.place(avatar_pb2.VideoFrame(index=10))
    assert placed.start == 6400 and np.array_equal(frame_audio(placed), tone[19200:19200 + FRAME_SAMPLES])
    # packet k holds 16 kHz samples 320k..320k+319 (less the resampler's delay of a few samples): came in at t=k
    assert up.arrival_of(6400 + 100) == 20.0 and up.arrival_of(6240) == 19.0
    # a gap filled with silence goes out as silence with its frames; the speech after it lines up again
    timeline.end_speech()  # the resampler's last samples come out
    gap_at = timeline.received
    up.add_silence(0.2)
    speech_at = timeline.received
    f = av.AudioFrame.from_ndarray(tone[:1920].reshape(1, -1), format="s16", layout="mono")
    f.sample_rate = 48000
    up.add(f)
    timeline.add_silence(640)
    silent = timeline.place(avatar_pb2.VideoFrame(index=-(-gap_at // 640)))
    assert not frame_audio(silent).any()
    k, offset = divmod(speech_at, 640)
    audio = frame_audio(timeline.place(avatar_pb2.VideoFrame(index=k)))
    assert not audio[:3 * offset].any() and np.array_equal(audio[3 * offset:], tone[:1920 - 3 * offset])


async def test_frame_and_its_audio_leave_on_one_clock():
    clock, meter = MediaClock(), SyncMeter()
    audio, video = DownAudioTrack(clock, meter), AvatarVideoTrack(clock, meter)
    speech = (np.arange(FRAME_SAMPLES) % 100 + 1).astype(np.int16)
    first = await audio.recv()  # the audio track runs from now on, silence while nothing is scheduled
    assert not first.to_ndarray().any()
    import av

    for k in range(3):
        start = audio.schedule(speech, clock.position_now(), key=k)
        video.put(av.VideoFrame(width=16, height=16, format="yuv420p"), clock.time_of(start), key=k)

    async def audio_packets():
        out = []
        for _ in range(8):
            f = await audio.recv()
            out.append((f.pts, f.to_ndarray().reshape(-1)))
        return out

    async def video_frames():
        return [await video.recv() for _ in range(3)]

    # both tracks are pulled at once, as aiortc's two senders do
    got, frames = await asyncio.gather(audio_packets(), video_frames())
    # the three frames' audio is on the timeline back to back, and each frame's RTP time is its audio's
    samples = np.concatenate([s for _, s in got])
    nonzero = np.flatnonzero(samples)
    assert len(nonzero) == 3 * FRAME_SAMPLES and np.all(np.diff(nonzero) == 1)
    first_audio_pts = got[0][0] + nonzero[0]
    assert frames[0].pts == round(first_audio_pts * 90000 / AUDIO_RATE)
    assert [f.pts - frames[0].pts for f in frames] == [0, 3600, 7200]
    assert meter.summary()["frames"] == 3  # every frame paired with its audio; the offsets are bench figures


async def test_portrait_upload_is_bounded_and_refusals_are_explained():
    async with embedded_service(tenants=tenants()) as (stub, orch):
        async with gateway(stub.address, max_avatar_bytes=256 * 1024, **LOOPBACK) as (url, app), \
                aiohttp.ClientSession() as http:
            key = {"x-api-key": KEY}
            r = await http.post(f"{url}/avatars", data=b"\0" * (256 * 1024 + 1), headers=key)
            assert r.status == 413 and "smaller image" in (await r.json())["error"]
            r = await http.post(f"{url}/avatars", data=b"", headers=key)
            assert r.status == 400
            r = await http.post(f"{url}/avatars", data=b"not an image at all", headers=key)
            assert r.status == 400, await r.text()
            r = await http.post(f"{url}/avatars", data=portrait_png(), headers={"x-api-key": "wrong"})
            assert r.status == 401
            r = await http.post(f"{url}/avatars", data=portrait_png(), headers=key)
            avatar = await r.json()
            assert r.status == 200 and (avatar["width"], avatar["height"]) == (160, 128), avatar
            face = avatar["face"]  # what registration found, for the page to draw
            assert face["faces_found"] == 1 and set(face["crop"]) == {"center_x", "center_y", "size", "rotation_deg"}
            assert face["face_box"]["x1"] > face["face_box"]["x0"] and len(face["eye_open"]) == 2
            r = await http.get(f"{url}/config")
            assert "happy" in (await r.json())["emotions"]
            r = await http.get(f"{url}/readyz")
            assert r.status == 200
        # a gateway whose orchestrator is gone is not ready, and says where it looked
        async with gateway("127.0.0.1:1", **LOOPBACK) as (url, app), aiohttp.ClientSession() as http:
            r = await http.get(f"{url}/readyz")
            assert r.status == 503 and "127.0.0.1:1" in (await r.json())["error"]
            r = await http.get(f"{url}/healthz")
            assert r.status == 200


def test_frames_beyond_the_backlog_are_dropped_so_latency_stays_bounded():
    """Frames arriving faster than realtime (a burst after a stall) queue up to max_backlog_s, then are dropped,
    each with its audio: the queue, and so the added latency, stays bounded and lips stay in sync."""
    import cv2

    from ditto_client.v1 import avatar_pb2, common_pb2
    from services.webrtc_gateway.config import GatewaySettings
    from services.webrtc_gateway.session import GatewaySession

    async def burst() -> GatewaySession:
        session = GatewaySession(GatewaySettings(max_backlog_s=0.2), None, {"avatar_id": "a"})
        jpeg = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
        for i in range(50):  # two seconds of frames at once
            session._on_frame(avatar_pb2.VideoFrame(index=i, pts_ms=40 * i, data=jpeg, width=32, height=32,
                                                    encoding=common_pb2.FRAME_ENCODING_JPEG))
        return session

    session = asyncio.run(burst())
    queued = session.video._queue.qsize()
    assert session.frames_received == 50 and queued + session.frames_dropped == 50
    assert queued <= 0.2 / 0.04 + 2, queued
    assert session.audio.backlog_samples() <= (0.2 + 0.08) * AUDIO_RATE


def test_invalid_settings_stop_the_gateway_naming_the_variable(monkeypatch):
    from services.webrtc_gateway.config import load_gateway_settings

    monkeypatch.setenv("DITTO_WEBRTC_MAX_SESSIONS", "0")
    with pytest.raises(SystemExit, match="DITTO_WEBRTC_MAX_SESSIONS"):
        load_gateway_settings()
    monkeypatch.setenv("DITTO_WEBRTC_MAX_SESSIONS", "4")
    monkeypatch.setenv("DITTO_WEBRTC_ICE_SERVERS", '[{"urls": ["turn:turn.example.com:3478"], "username": "u", '
                                                   '"credential": "s3cret"}]')
    settings = load_gateway_settings()
    assert settings.max_sessions == 4 and "s3cret" not in repr(settings)  # the TURN secret stays out of logs


async def test_audio_the_service_cannot_take_is_dropped_not_queued():
    """A service slower than realtime (no frames come back): the gateway queues at most max_pending_audio_s of
    the peer's audio for it and drops the rest, so memory stays bounded and an interrupt waits behind little."""
    import av

    from ditto_client import ConverseStream
    from ditto_client.sdk import _Outbox
    from ditto_client.v1 import avatar_pb2
    from services.webrtc_gateway.config import GatewaySettings
    from services.webrtc_gateway.session import GatewaySession

    class TenSeconds(MediaStreamTrackBase):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.sent = 0

        async def recv(self):
            if self.sent >= 500:  # 10 s in 20 ms packets, as fast as the gateway reads them, then quiet
                await asyncio.Event().wait()
            self.sent += 1
            f = av.AudioFrame.from_ndarray(np.full((1, 960), 1000, np.int16), format="s16", layout="mono")
            f.sample_rate = 48000
            return f

    session = GatewaySession(GatewaySettings(max_pending_audio_s=3.0), None, {"avatar_id": "a"})
    session.started = avatar_pb2.SessionStarted(audio_look_ahead_ms=1200)
    outbox = _Outbox()
    session.stream = ConverseStream(call=None, outbox=outbox)  # what the SDK holds for gRPC to carry
    session._up_track = TenSeconds()
    session._up_seen.set()
    uplink = asyncio.create_task(session._uplink())
    await wait_until(lambda: session._up_track.sent >= 500, 30, "the peer's 10 s read")
    uplink.cancel()
    queued_s = outbox.audio_bytes / 32000
    # at most the bound, less what waits to fill the next 80 ms chunk (and the resampler's few samples)
    assert 3.0 - 0.08 - 0.01 <= queued_s <= 3.0 + 0.01, queued_s
    assert abs(session.audio_dropped_s - (10.0 - queued_s)) < 0.1, session.audio_dropped_s
    assert session.timeline.ahead_s <= 3.0 + 0.021  # and so is the speech kept for the frames (one packet past)
