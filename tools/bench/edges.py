"""Reliability benchmark of the service's edges (`make bench`, part `edges`): what each memory/CPU bomb costs a
`ditto serve` process (peak and retained memory, answer, time), how long a cancelled or abandoned session holds its
tenant's quota, and the orchestrator's memory over time while a client reads no frames (embedded, and the
distributed stack's orchestrator over Redis). `isolation`: what one tenant's hostile files and calls cost a second
server shared with another tenant (a decoder made to abort through the test-only hook, a decode past the helpers'
memory limit, 8-channel and 192 kHz audio, a PNG named .mp4, uploads that never send a body, JPEGs carrying huge
colour profiles, a 4 MiB id, a client that reads no 720p RAW frames).

Tiny profile, synthetic weights, loopback only. Numbers name the machine (tools/bench.py adds it).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
import wave
from io import BytesIO
from pathlib import Path

import grpc
import numpy as np

from tools.hostile import (
    channel,
    decoder_fault,
    decoder_helpers,
    ditto_serve,
    encoded_audio,
    huge_png,
    jpeg_with_icc_profile,
    measure,
    rss_mb,
    silent_flac,
    static_video,
    wav_without_layout,
)

KEY = "bench-key"
AUTH = (("x-api-key", KEY),)


def _portrait(width: int = 160, height: int = 128) -> bytes:
    import cv2
    from skimage import data

    img = cv2.resize(data.astronaut()[:, :, ::-1], (width, height))
    return cv2.imencode(".png", img)[1].tobytes()


def _wav(seconds: float) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    pcm = (0.2 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()
    buf = BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return buf.getvalue()


def _config(avatar_id: str, **audio):
    from ditto_client.v1 import avatar_pb2, common_pb2

    fmt = common_pb2.AudioFormat(sample_format=common_pb2.SAMPLE_FORMAT_FLOAT32LE, sample_rate_hz=48000, channels=2)
    return avatar_pb2.SessionConfig(avatar_id=avatar_id, audio_format=fmt, idle_policy=avatar_pb2.IDLE_POLICY_FREEZE,
                                    output=common_pb2.OutputOptions(encoding=common_pb2.FRAME_ENCODING_RAW_RGB,
                                                                    paste_back=True))


async def _bombs(server) -> dict:
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

    out: dict = {}
    async with channel(server.address) as ch:
        stub = avatar_pb2_grpc.AvatarStub(ch)
        avatar_id = (await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=_portrait()),
                                               metadata=AUTH)).avatar_id

        async def register(media: bytes, name: str, metadata=AUTH):
            return await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=media, filename=name),
                                             metadata=metadata, timeout=300)

        async def render(audio: bytes, name: str):
            return [m async for m in stub.Render(avatar_pb2.RenderRequest(avatar_id=avatar_id, audio=audio,
                                                                          audio_filename=name), metadata=AUTH)]

        # inputs are made first, so the time measured is the server's
        png20, png30, png15 = huge_png(20000, 20000), huge_png(30000, 30000), huge_png(15000, 15000, colour=True)
        video = static_video(750)
        flac, flac_no_length, body = silent_flac(7200), silent_flac(7200, strip_length=True), b"\1" * 30_000_000
        cases = {
            "png_20000x20000": lambda: register(png20, "a.png"),
            "png_30000x30000": lambda: register(png30, "a.png"),
            "png_15000x15000_named_bomb.mp4": lambda: register(png15, "bomb.mp4"),
            "h264_750_frames_1280x720": lambda: register(video, "a.mp4"),
            "flac_2h_silence_length_in_header": lambda: render(flac, "a.flac"),
            "flac_2h_silence_no_length": lambda: render(flac_no_length, "a.flac"),
            "10_unauthenticated_30MB_uploads": lambda: asyncio.gather(*(register(
                body, "a.png", (("x-api-key", "wrong"),)) for _ in range(10)), return_exceptions=True),
        }
        for name, make in cases.items():
            out[name] = await _cost(server.pid, name, make)
    return out


async def _cost(pid: int, name: str, make) -> dict:
    """The answer to `make()` (a call, or a gather of calls), the seconds it took and what it cost process `pid`."""
    t0 = time.monotonic()
    with measure(pid) as mem:
        try:
            reply = await make()
            code: object = "OK"
            if isinstance(reply, list) and reply and isinstance(reply[0], BaseException):
                code = sorted({r.code().name for r in reply if isinstance(r, grpc.aio.AioRpcError)})
        except grpc.aio.AioRpcError as err:
            code = err.code().name
    result = {"answer": code, "seconds": round(time.monotonic() - t0, 2),
              "peak_growth_mb": round(mem.peak_growth, 1), "retained_mb": round(mem.retained, 1)}
    print(name, result, flush=True)
    return result


async def _admitted(stub, avatar_id: str) -> bool:
    from ditto_client.v1 import avatar_pb2

    call = stub.Converse(metadata=AUTH)
    await call.write(avatar_pb2.ConverseRequest(config=_config(avatar_id)))
    first = await call.read()
    call.cancel()
    return first.WhichOneof("kind") == "started"


async def _reclaim(server) -> dict:
    """Seconds from a client leaving to its one-session tenant being admitted again."""
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

    out = {}
    async with channel(server.address) as ch:
        stub = avatar_pb2_grpc.AvatarStub(ch)
        avatar_id = (await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=_portrait()),
                                               metadata=AUTH)).avatar_id
        call = stub.Render(avatar_pb2.RenderRequest(avatar_id=avatar_id, audio=_wav(8), audio_filename="a.wav"),
                           metadata=AUTH)
        await call.read()
        call.cancel()
        t0 = time.monotonic()
        while not await _admitted(stub, avatar_id) and time.monotonic() - t0 < 120:
            await asyncio.sleep(0.05)
        out["cancelled_render_s"] = round(time.monotonic() - t0, 2)
    # a Converse whose client vanishes (its channel closed without a word)
    async with channel(server.address) as ch:
        stub = avatar_pb2_grpc.AvatarStub(ch)
        call = stub.Converse(metadata=AUTH)
        await call.write(avatar_pb2.ConverseRequest(config=_config(avatar_id)))
        await call.read()
    t0 = time.monotonic()
    async with channel(server.address) as ch:
        stub = avatar_pb2_grpc.AvatarStub(ch)
        while not await _admitted(stub, avatar_id) and time.monotonic() - t0 < 120:
            await asyncio.sleep(0.05)
    out["abandoned_converse_s"] = round(time.monotonic() - t0, 2)
    return out


async def _non_reading(address: str, pid: int, seconds: float, metadata=AUTH, size=(640, 480),
                       warm: bool = False) -> dict:
    """A client that pushes 48 kHz stereo audio and reads nothing after SessionStarted; RSS of `pid` each second.
    `warm`: a session that reads everything goes first, so the stages' working memory at this size is in the
    baseline and the growth is what the non-reading client holds."""
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

    second = (np.random.default_rng(0).standard_normal((48000, 2)) * 0.1).astype("<f4").tobytes()
    async with channel(address) as ch:
        stub = avatar_pb2_grpc.AvatarStub(ch)
        avatar_id = (await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=_portrait(*size)),
                                               metadata=metadata)).avatar_id
        if warm:
            reads = stub.Converse(iter([avatar_pb2.ConverseRequest(config=_config(avatar_id)),
                                        avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=second)),
                                        avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio())]),
                                  metadata=metadata)
            async for _ in reads:
                pass
        rss0 = rss_mb(pid)
        call = stub.Converse(metadata=metadata)
        await call.write(avatar_pb2.ConverseRequest(config=_config(avatar_id)))
        read_ahead_ms = (await call.read()).started.audio_read_ahead_ms

        async def push() -> None:
            while True:
                await call.write(avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=second)))

        pusher = asyncio.create_task(push())
        samples = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(1.0)
            samples.append(round(rss_mb(pid) - rss0, 1))
        pusher.cancel()
        call.cancel()
    return {"seconds": seconds, "frame": f"{size[0]}x{size[1]} RAW_RGB", "read_ahead_ms": read_ahead_ms,
            "rss_start_mb": round(rss0, 1), "growth_mb_each_s": samples, "max_growth_mb": max(samples)}


def run(out_dir: Path) -> dict:
    seconds = float(os.environ.get("DITTO_BENCH_NONREADING_S", "60"))
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        keys = tmp / "tenants.json"
        from services.orchestrator.tenants import hash_key

        keys.write_text(json.dumps({"tenants": [{"id": "bench", "api_key_sha256": hash_key(KEY), "max_sessions": 1,
                                                 "session_minutes": 6000}]}))
        env = {"DITTO_API_KEYS_FILE": str(keys), "DITTO_MODEL__CACHE_DIR": str(tmp / "cache"),
               "DITTO_TELEMETRY__LOG_LEVEL": "warning"}
        with ditto_serve(tmp, env) as server:
            result["bombs"] = asyncio.run(_bombs(server))
            result["quota_reclaim_s"] = asyncio.run(_reclaim(server))
            result["non_reading_client_embedded"] = asyncio.run(_non_reading(server.address, server.pid, seconds))
        result["non_reading_client_distributed_orchestrator"] = _distributed_non_reading(tmp, seconds)
        with ditto_serve(tmp, _isolation_env(tmp)) as server:
            result["isolation"] = asyncio.run(_isolation(server))
            raw720 = {"bounded_in_bytes": asyncio.run(_non_reading(
                server.address, server.pid, seconds / 2, MALLORY, (1280, 720), warm=True))}
        # the same client against a server whose credits count seconds only (the window before it was bounded in
        # bytes too), in the same run
        with ditto_serve(tmp, {**_isolation_env(tmp), "DITTO_OUTGOING_BUFFER_MB": "100000"}) as server:
            raw720["window_in_seconds_only"] = asyncio.run(_non_reading(
                server.address, server.pid, seconds / 2, MALLORY, (1280, 720), warm=True))
        result["isolation"]["non_reading_client_720p"] = raw720
    return result


MALLORY, ALICE = (("x-api-key", "bench-mallory"),), (("x-api-key", "bench-alice"),)
ISOLATION = {"decode_memory_mb": 256, "max_image_pixels": 100_000_000, "upload_body_timeout_s": 10,
             "mallory_max_uploads": 2}


def _isolation_env(tmp: Path) -> dict[str, str]:
    """Two tenants; the helpers' test-only fault hook on (this is a test bench); a small decode memory limit with
    a large pixel limit, so a picture inside the pixel limit can still pass the memory limit."""
    from services.orchestrator.tenants import hash_key

    keys = tmp / "isolation-tenants.json"
    keys.write_text(json.dumps({"tenants": [
        {"id": "mallory", "api_key_sha256": hash_key("bench-mallory"), "max_uploads": ISOLATION["mallory_max_uploads"]},
        {"id": "alice", "api_key_sha256": hash_key("bench-alice")}]}))
    return {"DITTO_API_KEYS_FILE": str(keys), "DITTO_MODEL__CACHE_DIR": str(tmp / "cache-isolation"),
            "DITTO_TELEMETRY__LOG_LEVEL": "warning", "DITTO_TEST_DECODER_FAULTS": "1",
            "DITTO_DECODE__MAX_MEMORY_MB": str(ISOLATION["decode_memory_mb"]),
            "DITTO_MEDIA__MAX_IMAGE_PIXELS": str(ISOLATION["max_image_pixels"]),
            "DITTO_UPLOAD_BODY_TIMEOUT_S": str(ISOLATION["upload_body_timeout_s"])}


async def _isolation(server) -> dict:
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

    out: dict = {"settings": dict(ISOLATION)}
    async with channel(server.address) as ch:
        stub = avatar_pb2_grpc.AvatarStub(ch)

        async def register(media: bytes, name: str = "a.png", metadata=MALLORY):
            return await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=media, filename=name),
                                             metadata=metadata, timeout=300)

        avatar_id = (await register(_portrait())).avatar_id

        async def render(audio: bytes, name: str = "a"):
            return [m async for m in stub.Render(avatar_pb2.RenderRequest(avatar_id=avatar_id, audio=audio,
                                                                          audio_filename=name), metadata=MALLORY)]

        async def measured(name: str, make) -> None:
            out[name] = await _cost(server.pid, name, make)

        await render(wav_without_layout(1, 16000, 1.0))  # warm: the models' working memory is not a case's cost
        helpers_before = decoder_helpers(server.pid)
        wav8, flac192 = wav_without_layout(8, 16000, 1.0), encoded_audio("flac", "flac", "6.1", 192000, 2.0)
        await measured("render_1s_8ch_16kHz_wav", lambda: render(wav8))  # killed the server before
        await measured("render_2s_7ch_192kHz_flac", lambda: render(flac192))  # UNKNOWN before (AAC above 96 kHz)
        await measured("decoder_abort_register", lambda: register(decoder_fault("abort")))
        await measured("decoder_abort_render", lambda: render(decoder_fault("abort")))
        await measured("png_100MP_past_the_decode_memory_limit", lambda: register(huge_png(10000, 10000)))
        huge_id = "a" * (4 * 1024 * 1024)
        await measured("get_avatar_4MiB_id", lambda: stub.GetAvatar(avatar_pb2.GetAvatarRequest(avatar_id=huge_id),
                                                                     metadata=MALLORY))
        out["decoder_helpers"] = {"before": len(helpers_before), "after": len(decoder_helpers(server.pid)),
                                  "replaced": len(helpers_before - decoder_helpers(server.pid)),
                                  "server_alive": server.popen.poll() is None}
        out["flac_590s_7ch_192kHz_silence_no_length"] = await _decode_cost(stub, server)
        out["jpegs_64x64_with_15.5MB_colour_profile"] = await _profile_jpegs(register, server, 20)
    out["uploads_without_body"] = await _stalled_uploads(server)
    return out


async def _decode_cost(stub, server) -> dict:
    """A 590 s FLAC of silence, 7 channels at 192 kHz, length stripped (+9.6 GB and 89 s of decoding before), sent
    to Render for an avatar that does not exist: the job decodes the file, then finds no avatar (NOT_FOUND), so
    the time and the server's peak are the decode's alone (what comes back to the server: 16 kHz mono and the AAC
    track)."""
    from ditto_client.v1 import avatar_pb2

    flac = silent_flac(590, rate=192000, strip_length=True, layout="6.1")
    result = await _cost(server.pid, "flac_590s", lambda: _drain(stub.Render(avatar_pb2.RenderRequest(
        avatar_id="0" * 32, audio=flac, audio_filename="s.flac"), metadata=MALLORY)))
    return {"file_kb": round(len(flac) / 1024), **result}


async def _drain(call) -> None:
    async for _ in call:
        pass


async def _profile_jpegs(register, server, n: int) -> dict:
    """`n` different 64x64 JPEGs, each with a 15.5 MB colour profile (2.85 s and 17.8 MB of server memory each, kept
    30 days, before): what the server keeps (the in-memory store holds the normalised copies) and the time each."""
    from ditto.media.pool import InProcess

    jpegs = [jpeg_with_icc_profile(80, 80, 15_500_000, seed) for seed in range(n)]
    times = []
    with measure(server.pid) as mem:
        for jpeg in jpegs:
            t0 = time.monotonic()
            await register(jpeg, "p.jpg")
            times.append(time.monotonic() - t0)
    stored = len(InProcess().run("normalise", jpegs[0]).media)  # the server's own function: the copy it keeps
    result = {"registered": n, "upload_mb_each": round(len(jpegs[0]) / 2**20, 1),
              "stored_kb_each": round(stored / 1024, 1), "seconds_each_median": round(sorted(times)[n // 2], 2),
              "server_peak_growth_mb": round(mem.peak_growth, 1)}
    print("jpegs", result, flush=True)
    return result


async def _stalled_uploads(server) -> dict:
    """Mallory opens four RegisterAvatar calls that send headers and never a body (its share: two slots); how
    alice fares meanwhile, and when the stalled calls end."""
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

    never = asyncio.Event()

    async def no_body():
        await never.wait()
        yield avatar_pb2.RegisterAvatarRequest()

    async with channel(server.address) as ch:
        stalled_call = ch.stream_unary("/ditto.v1.Avatar/RegisterAvatar",
                                       request_serializer=avatar_pb2.RegisterAvatarRequest.SerializeToString,
                                       response_deserializer=avatar_pb2.RegisterAvatarResponse.FromString)
        t0 = time.monotonic()
        ending = [asyncio.create_task(_ended(stalled_call(no_body(), metadata=MALLORY), t0)) for _ in range(4)]
        while sum(t.done() for t in ending) < 2 and time.monotonic() - t0 < 60:  # beyond the share: refused
            await asyncio.sleep(0.05)
        a0 = time.monotonic()
        await avatar_pb2_grpc.AvatarStub(ch).RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=_portrait()),
                                                            metadata=ALICE, timeout=300)
        alice_s = time.monotonic() - a0
        ends = sorted(await asyncio.gather(*ending), key=lambda e: e[1])
    result = {"mallory_calls": [{"answer": code, "ended_after_s": s} for code, s in ends],
              "alice_register_s_meanwhile": round(alice_s, 2)}
    print("stalled", result, flush=True)
    return result


async def _ended(call, t0: float) -> tuple[str, float]:
    try:
        await call
        code = "OK"
    except grpc.aio.AioRpcError as err:
        code = err.code().name
    return code, round(time.monotonic() - t0, 2)


def _distributed_non_reading(tmp: Path, seconds: float) -> dict:
    """The same client against the distributed stack (three workers and the orchestrator over Redis); the
    orchestrator process's memory."""
    from ditto_app.cluster import LocalCluster

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    cluster = LocalCluster(redis_url=url, prefix=f"ditto-bench-{uuid.uuid4().hex[:8]}", slots=4,
                           env={"DITTO_TELEMETRY__LOG_LEVEL": "warning"}, log_dir=tmp / "cluster")
    try:
        cluster.start(timeout=300)
        pid = cluster.procs["orchestrator"].popen.pid
        return asyncio.run(_non_reading(cluster.address, pid, seconds, metadata=()))
    except Exception as err:  # the embedded numbers stand on their own
        return {"error": f"{type(err).__name__}: {err}"[:500]}
    finally:
        cluster.stop()
        cluster.purge()
