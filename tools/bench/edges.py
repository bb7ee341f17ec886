"""Reliability benchmark of the service's edges (`make bench`, part `edges`): what each memory/CPU bomb costs a
`ditto serve` process (peak and retained memory, answer, time), how long a cancelled or abandoned session holds its
tenant's quota, and the orchestrator's memory over time while a client reads no frames (embedded, and the
distributed stack's orchestrator over Redis).

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

from tools.hostile import channel, ditto_serve, huge_png, measure, rss_mb, silent_flac, static_video

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
        png20, png30, video = huge_png(20000, 20000), huge_png(30000, 30000), static_video(750)
        flac, flac_no_length, body = silent_flac(7200), silent_flac(7200, strip_length=True), b"\1" * 30_000_000
        cases = {
            "png_20000x20000": lambda: register(png20, "a.png"),
            "png_30000x30000": lambda: register(png30, "a.png"),
            "h264_750_frames_1280x720": lambda: register(video, "a.mp4"),
            "flac_2h_silence_length_in_header": lambda: render(flac, "a.flac"),
            "flac_2h_silence_no_length": lambda: render(flac_no_length, "a.flac"),
            "10_unauthenticated_30MB_uploads": lambda: asyncio.gather(*(register(
                body, "a.png", (("x-api-key", "wrong"),)) for _ in range(10)), return_exceptions=True),
        }
        for name, make in cases.items():
            t0 = time.monotonic()
            with measure(server.pid) as mem:
                try:
                    reply = await make()
                    code: object
                    if isinstance(reply, list) and reply and isinstance(reply[0], BaseException):
                        code = sorted({r.code().name for r in reply if isinstance(r, grpc.aio.AioRpcError)})
                    else:
                        code = "OK"
                except grpc.aio.AioRpcError as err:
                    code = err.code().name
            out[name] = {"answer": code, "seconds": round(time.monotonic() - t0, 2),
                         "peak_growth_mb": round(mem.peak_growth, 1), "retained_mb": round(mem.retained, 1)}
            print(name, out[name], flush=True)
    return out


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


async def _non_reading(address: str, pid: int, seconds: float, metadata=AUTH) -> dict:
    """A client that pushes 48 kHz stereo audio and reads nothing after SessionStarted; RSS of `pid` each second."""
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

    async with channel(address) as ch:
        stub = avatar_pb2_grpc.AvatarStub(ch)
        avatar_id = (await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=_portrait(640, 480)),
                                               metadata=metadata)).avatar_id
        rss0 = rss_mb(pid)
        call = stub.Converse(metadata=metadata)
        await call.write(avatar_pb2.ConverseRequest(config=_config(avatar_id)))
        await call.read()
        second = (np.random.default_rng(0).standard_normal((48000, 2)) * 0.1).astype("<f4").tobytes()

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
    return {"seconds": seconds, "rss_start_mb": round(rss0, 1), "growth_mb_each_s": samples,
            "max_growth_mb": max(samples)}


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
    return result


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
