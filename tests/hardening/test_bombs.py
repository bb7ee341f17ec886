"""Memory and CPU bombs: one request never costs more than a bounded amount.

A `ditto serve` process (tiny synthetic weights, its own memory) is sent inputs that are small on the wire and huge
once decoded: a 20000x20000 PNG of 50 KB, an H.264 of 300 static 720p frames, a FLAC of two hours of silence (with
and without its length in the header), ten unauthenticated 30 MB uploads at once. Each is refused or bounded with a
clear status; the server's peak (VmHWM) and retained memory stay within generous bounds that the unbounded code
exceeded by gigabytes; and the server goes on serving a normal request after each.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from hardening_helpers import channel, ditto_serve, huge_png, measure, register, silent_flac, static_video
from serving_helpers import chunks, embedded_service, portrait_png, speech_pcm16

from ditto.config import load_settings
from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.tenants import hash_key

KEY = "bomb-test-key"
AUTH = (("x-api-key", KEY),)
VIDEO_FRAMES_LIMIT = 25


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bombs")
    keys = tmp / "tenants.json"
    keys.write_text(json.dumps({"tenants": [{"id": "acme", "api_key_sha256": hash_key(KEY), "max_sessions": 4,
                                             "session_minutes": 600}]}))
    env = {"DITTO_API_KEYS_FILE": str(keys), "DITTO_MEDIA__MAX_VIDEO_FRAMES": str(VIDEO_FRAMES_LIMIT),
           "DITTO_MAX_RENDER_AUDIO_S": "60", "DITTO_MODEL__CACHE_DIR": str(tmp / "cache")}
    with ditto_serve(tmp, env) as s:
        yield s


async def _register(address: str, media: bytes, filename: str = "", metadata=AUTH):
    return await register(address, media, filename, metadata)


async def _still_serves(address: str) -> None:
    reply = await _register(address, portrait_png())
    assert reply.avatar_id and reply.width == 160


@pytest.mark.parametrize("side,filename", [(20000, "portrait.png"), (30000, "portrait.png"), (15000, "bomb.mp4")])
async def test_giant_image_is_refused_from_its_header(server, side, filename):
    """Whatever its name: the decoder follows the bytes, so an RGB PNG sent as `bomb.mp4` gets the PNG header check
    too (it went to FFmpeg, whose probe decoded it: +655 MB before the refusal)."""
    png = huge_png(side, side, colour=filename.endswith(".mp4"))  # 50-650 KB; side*side*3 bytes once decoded
    assert len(png) < 2_000_000
    with measure(server.pid) as mem:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _register(server.address, png, filename)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "16 megapixels" in err.value.details() and "DITTO_MEDIA__MAX_IMAGE_PIXELS" in err.value.details()
    assert mem.peak_growth < 150, f"the refused image raised the server's peak memory by {mem.peak_growth:.0f} MB"
    await _still_serves(server.address)


async def test_video_avatar_is_bounded_in_frames_and_duration(server):
    video = static_video(300)  # 12 s of 1280x720, ~16 KB; 830 MB as RGB frames
    with measure(server.pid) as mem:
        reply = await _register(server.address, video, "loop.mp4")
    assert reply.source_frames == VIDEO_FRAMES_LIMIT  # only the kept frames were decoded
    assert mem.peak_growth < 600, f"registration peaked {mem.peak_growth:.0f} MB above its start"
    assert mem.retained < 250, f"registration left {mem.retained:.0f} MB behind"

    too_long = static_video(130, 64, 64, fps=2)  # 65 s by its header
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _register(server.address, too_long, "long.mp4")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "60 s" in err.value.details() and "DITTO_MEDIA__MAX_VIDEO_S" in err.value.details()
    await _still_serves(server.address)


async def test_avatar_byte_limit_fires_below_the_message_cap(server):
    media = b"\0" * (17 * 1024 * 1024)  # above max_avatar_bytes (16 MiB), below the 32 MiB gRPC cap
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _register(server.address, media, "x.png")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DITTO_MAX_AVATAR_BYTES" in err.value.details()
    # an incoherent set of limits stops the server at start, naming the setting
    with pytest.raises(SystemExit, match="max_avatar_bytes"):
        load_settings(OrchestratorSettings, max_avatar_bytes=64 * 1024 * 1024)


async def _render(address: str, audio: bytes, filename: str, avatar_id: str):
    async with channel(address) as ch:
        call = avatar_pb2_grpc.AvatarStub(ch).Render(
            avatar_pb2.RenderRequest(avatar_id=avatar_id, audio=audio, audio_filename=filename), metadata=AUTH,
            timeout=120)
        return [m async for m in call]


@pytest.mark.parametrize("length_in_header", [True, False])
async def test_render_of_hours_of_silence_is_refused_without_decoding_it(server, length_in_header):
    avatar = await _register(server.address, portrait_png())
    flac = silent_flac(7200, strip_length=not length_in_header)  # ~1.3 MB, 2 h at 8 kHz
    with measure(server.pid) as mem:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _render(server.address, flac, "silence.flac", avatar.avatar_id)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert "60 s" in details and "DITTO_MAX_RENDER_AUDIO_S" in details
    if length_in_header:
        assert "7200 s" in details  # known from the header: refused before decoding anything
    # two hours decoded whole are 230 MB of float32 samples (several copies while converting)
    assert mem.peak_growth < 100, f"the refused audio raised the peak by {mem.peak_growth:.0f} MB"
    await _still_serves(server.address)


async def test_unauthenticated_uploads_are_refused_before_their_bodies_are_read(server):
    body = b"\1" * 30_000_000
    with measure(server.pid) as mem:
        results = await asyncio.gather(*(_register(server.address, body, "x.png", metadata=(("x-api-key", "wrong"),))
                                         for _ in range(10)), return_exceptions=True)
    codes = {r.code() if isinstance(r, grpc.aio.AioRpcError) else r for r in results}
    assert codes == {grpc.StatusCode.UNAUTHENTICATED}
    assert mem.peak_growth < 150, f"10 refused 30 MB uploads raised the peak by {mem.peak_growth:.0f} MB"
    await _still_serves(server.address)


async def test_concurrent_uploads_are_bounded():
    """With one upload slot, a RegisterAvatar arriving while a Render holds it is refused at once with
    RESOURCE_EXHAUSTED and a retry-after-ms trailer; once the slot is free it succeeds."""
    async with embedded_service(max_concurrent_uploads=1) as (stub, _):
        avatar = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png()))
        import io
        import wave

        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(b"".join(chunks(speech_pcm16(3.0))))
        call = stub.Render(avatar_pb2.RenderRequest(avatar_id=avatar.avatar_id, audio=buf.getvalue(),
                                                    audio_filename="speech.wav"))
        first = await call.read()  # the Render runs, and holds the only slot
        assert first.WhichOneof("kind") == "progress"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png((96, 96))))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "DITTO_MAX_CONCURRENT_UPLOADS" in err.value.details()
        assert dict(err.value.trailing_metadata() or ()).get("retry-after-ms")
        while await call.read() != grpc.aio.EOF:
            pass
        assert await call.code() == grpc.StatusCode.OK
        again = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png((96, 96))))
        assert again.avatar_id
