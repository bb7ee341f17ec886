"""No tenant's file can crash the server or exhaust its memory: client media is decoded in helper processes.

One `ditto serve` process (tiny synthetic weights) with two tenants: "mallory" sends hostile media, "alice" uses the
service meanwhile. Its decoder helpers run with a small memory limit and the test-only fault hook
(DITTO_TEST_DECODER_FAULTS=1, which only tests set: it lets a file make the helper abort). Each case checks the
answer the sender gets, that the server process lives on with bounded memory, and that alice is not disturbed.
"""

from __future__ import annotations

import asyncio
import io
import json

import av
import grpc
import pytest
from hardening_helpers import channel, ditto_serve, huge_png, measure, portrait_png, speech_pcm16
from hardening_helpers import register as shared_register
from serving_helpers import chunks, config

from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc, common_pb2
from services.orchestrator.tenants import hash_key
from tools.hostile import (
    LAYOUTS,
    decoder_fault,
    decoder_helpers,
    encoded_audio,
    silent_flac,
    video_with_audio,
    wav_without_layout,
)

MALLORY = (("x-api-key", "mallory-key"),)
ALICE = (("x-api-key", "alice-key"),)
DECODE_MEMORY_MB = 128  # a 100-megapixel picture needs 300 MB of pixels: past it; everything else here fits
MAX_PIXELS = 100_000_000  # an operator who allows large pictures: the helper's memory limit still bounds them
RENDER_LIMIT_S = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("isolation")
    keys = tmp / "tenants.json"
    keys.write_text(json.dumps({"tenants": [
        {"id": "mallory", "api_key_sha256": hash_key("mallory-key"), "max_sessions": 4, "max_uploads": 2},
        {"id": "alice", "api_key_sha256": hash_key("alice-key"), "max_sessions": 4, "max_uploads": 2}]}))
    env = {"DITTO_API_KEYS_FILE": str(keys), "DITTO_MODEL__CACHE_DIR": str(tmp / "cache"),
           "DITTO_TEST_DECODER_FAULTS": "1", "DITTO_DECODE__MAX_MEMORY_MB": str(DECODE_MEMORY_MB),
           "DITTO_MAX_RENDER_AUDIO_S": str(RENDER_LIMIT_S), "DITTO_MEDIA__MAX_IMAGE_PIXELS": str(MAX_PIXELS)}
    with ditto_serve(tmp, env) as s:
        yield s


async def register(address: str, media: bytes, filename: str = "", metadata=MALLORY):
    return await shared_register(address, media, filename, metadata)


async def render(address: str, avatar_id: str, audio: bytes, filename: str = "a", metadata=MALLORY) -> bytes:
    """The MP4 a Render returns."""
    async with channel(address) as ch:
        call = avatar_pb2_grpc.AvatarStub(ch).Render(
            avatar_pb2.RenderRequest(avatar_id=avatar_id, audio=audio, audio_filename=filename, seed=1),
            metadata=metadata, timeout=300)
        return b"".join([m.mp4_chunk async for m in call if m.WhichOneof("kind") == "mp4_chunk"])


@pytest.fixture(scope="module")
def avatar_id(server) -> str:
    return asyncio.run(register(server.address, portrait_png((64, 64)))).avatar_id


def mp4_audio(mp4: bytes) -> tuple[int, float, str]:
    """(rate, seconds, codec) of an MP4's audio track."""
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(s))
        return s.rate, samples / s.rate, s.codec_context.name


async def alice_session(address: str, avatar_id: str, seconds: float, started: asyncio.Event):
    """A realtime-paced Converse of alice's; returns (frames, final code, details)."""
    async with channel(address) as ch:
        stub = avatar_pb2_grpc.AvatarStub(ch)
        call = stub.Converse(metadata=ALICE)
        await call.write(avatar_pb2.ConverseRequest(config=config(avatar_id, output=common_pb2.OutputOptions(
            encoding=common_pb2.FRAME_ENCODING_JPEG))))
        assert (await call.read()).WhichOneof("kind") == "started"

        async def send():
            for chunk in chunks(speech_pcm16(seconds)):
                await call.write(avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=chunk)))
                await asyncio.sleep(0.2)
            await call.write(avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio()))

        sender = asyncio.create_task(send())
        frames = 0
        try:
            while (msg := await asyncio.wait_for(call.read(), 120)) != grpc.aio.EOF:
                if msg.WhichOneof("kind") == "frame":
                    frames += 1
                    started.set()
            return frames, await call.code(), await call.details()
        except grpc.aio.AioRpcError as err:
            return frames, err.code(), err.details()
        finally:
            started.set()
            await sender


async def test_a_crashing_or_bombing_decoder_fails_only_its_own_call(server, avatar_id):
    """While alice's session runs, mallory sends a portrait that makes the decoder abort, a Render file that does
    the same, and a 100-megapixel picture (inside the pixel limit) whose decode needs more than the helper's memory
    limit: each call gets INVALID_ARGUMENT saying so, the server process does not notice, alice's session delivers
    every frame, and the pool replaces each helper that died."""
    alice_avatar = (await register(server.address, portrait_png((64, 64)), metadata=ALICE)).avatar_id
    frames_flowing = asyncio.Event()
    alice = asyncio.create_task(alice_session(server.address, alice_avatar, 4.0, frames_flowing))
    await asyncio.wait_for(frames_flowing.wait(), 120)
    before = decoder_helpers(server.pid)
    assert before, "the server decodes in no helper process"

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(server.address, decoder_fault("abort"), "portrait.png")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "decoder was killed by SIGABRT" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await render(server.address, avatar_id, decoder_fault("abort"), "speech.wav")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "decoder was killed by SIGABRT" in err.value.details()

    png = huge_png(10000, 10000)  # 100 megapixels, inside the limit; 300 MB once decoded, 12 KB sent
    with measure(server.pid) as mem:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await register(server.address, png, "big.png")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DITTO_DECODE__MAX_MEMORY_MB" in err.value.details() and f"{DECODE_MEMORY_MB} MB" in err.value.details()
    # decoded in the server, the picture alone would take 300 MB; alice's session runs meanwhile and takes some (up
    # to 78 MB seen on a loaded machine)
    assert mem.peak_growth < 150, f"the server itself grew {mem.peak_growth:.0f} MB for a decode done elsewhere"

    frames, code, details = await alice
    assert code == grpc.StatusCode.OK, details
    assert frames == 100, f"alice's 4 s session delivered {frames} of 100 frames"
    assert server.popen.poll() is None
    after = decoder_helpers(server.pid)
    assert len(after) == len(before) and after != before, f"helpers {before} -> {after}: none was replaced"
    again = await register(server.address, portrait_png((72, 64)))  # the replaced helpers decode as before
    assert again.avatar_id


RENDER_CASES = [
    *((f"wav-{n}ch", lambda n=n: wav_without_layout(n, 16000, 0.2)) for n in LAYOUTS),
    *((f"flac-{layout}", lambda layout=layout: encoded_audio("flac", "flac", layout, 44100, 0.2))
      for layout in (*LAYOUTS.values(), "2.1", "4.0", "hexagonal", "octagonal")),
    *((f"opus-{layout}", lambda layout=layout: encoded_audio("libopus", "ogg", layout, 48000, 0.2))
      for layout in LAYOUTS.values()),
    ("flac-6.1-192kHz", lambda: encoded_audio("flac", "flac", "6.1", 192000, 0.2)),
]


@pytest.mark.parametrize("make", [c[1] for c in RENDER_CASES], ids=[c[0] for c in RENDER_CASES])
async def test_every_channel_count_and_layout_renders(server, avatar_id, make):
    """1-8 channels (8 crashed the whole server), the usual layouts, WAV, FLAC and Opus, and 192 kHz (the AAC
    track failed with UNKNOWN): each Render gives an MP4 with its audio as AAC at a rate AAC takes."""
    mp4 = await render(server.address, avatar_id, make())
    rate, seconds, codec = mp4_audio(mp4)
    assert codec == "aac" and rate <= 48000
    assert 0.15 < seconds < 0.35, f"the MP4 holds {seconds:.2f} s of audio, the file 0.2 s"


@pytest.mark.parametrize("layout,codec,container", [
    *((layout, "pcm_s16le", "matroska") for layout in LAYOUTS.values()),
    ("7.1", "aac", "mp4"), ("5.1", "libopus", "matroska")])
async def test_video_avatar_with_multichannel_audio_registers(server, layout, codec, container):
    """A video avatar's audio track, whatever its channels, is not the avatar's business: it registers, and the
    stored copy carries no audio."""
    reply = await register(server.address, video_with_audio(layout, codec, container), "clip.mkv")
    assert reply.source_frames == 3


async def test_small_file_of_many_channels_at_192khz_costs_what_it_produces(server, avatar_id):
    """A FLAC of silence, 7 channels at 192 kHz without its length in the header: decoding it to float at its own
    rate took +9.6 GB for 590 s. Now it is decoded to 16 kHz mono inside the resampler in a helper, and stops at the
    Render limit: INVALID_ARGUMENT naming the limit, and the server process does not grow."""
    flac = silent_flac(RENDER_LIMIT_S + 30, rate=192000, strip_length=True, layout="6.1")
    assert len(flac) < 300_000
    with measure(server.pid) as mem:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await render(server.address, avatar_id, flac, "silence.flac")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{RENDER_LIMIT_S} s" in err.value.details() and "DITTO_MAX_RENDER_AUDIO_S" in err.value.details()
    # the old path held 60 s x 192 kHz x 7 channels of float (323 MB) and its copies in the server
    assert mem.peak_growth < 60, f"the server grew {mem.peak_growth:.0f} MB"
