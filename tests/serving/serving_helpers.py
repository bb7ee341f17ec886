"""Inputs and small helpers for the serving tests: a portrait, speech-like audio, an in-process service."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import cv2
import grpc
import numpy as np

from ditto import rpc
from ditto.bus import MemoryBus
from ditto.config import load_settings
from ditto_app.stack import EmbeddedStack
from ditto_app.synthetic import ensure_synthetic
from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc, common_pb2
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.service import AvatarService, public_interceptors
from services.orchestrator.tenants import TenantDirectory, hash_key


def portrait_png(size: tuple[int, int] = (160, 128)) -> bytes:
    from skimage import data

    img = cv2.resize(data.astronaut()[:, :, ::-1], size)
    return cv2.imencode(".png", img)[1].tobytes()


def speech_pcm16(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    """A voice-like signal (harmonics under a syllable envelope), PCM16 mono."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)))
    voice = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((130, 260, 650, 1100)))
    return (np.clip(0.25 * env * voice, -1, 1) * 32767).astype("<i2").tobytes()


def chunks(data: bytes, ms: int = 200, rate: int = 16000, width: int = 2) -> list[bytes]:
    step = rate * ms // 1000 * width
    return [data[i:i + step] for i in range(0, len(data), step)]


def config(avatar_id: str, **kw) -> avatar_pb2.SessionConfig:
    c = avatar_pb2.SessionConfig(
        avatar_id=avatar_id,
        audio_format=common_pb2.AudioFormat(sample_format=common_pb2.SAMPLE_FORMAT_PCM_S16LE, sample_rate_hz=16000,
                                            channels=1),
        output=common_pb2.OutputOptions(encoding=common_pb2.FRAME_ENCODING_RAW_RGB, paste_back=True),
        idle_policy=avatar_pb2.IDLE_POLICY_FREEZE, seed=7)
    for k, v in kw.items():
        if isinstance(v, int | float | str) and not isinstance(v, bool):
            setattr(c, k, v)
        else:
            getattr(c, k).CopyFrom(v)
    return c


def requests(cfg: avatar_pb2.SessionConfig, audio: list[bytes], end: bool = True, extra=()):
    out = [avatar_pb2.ConverseRequest(config=cfg)]
    out += [avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=c)) for c in audio]
    out += list(extra)
    if end:
        out.append(avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio()))
    return out


async def collect(stub, reqs, metadata=(), pace_s: float = 0.0) -> tuple[list, grpc.StatusCode, str]:
    """Run a Converse call; returns (responses, final gRPC code, details)."""

    async def gen():
        for r in reqs:
            if pace_s and r.WhichOneof("kind") == "audio":
                await asyncio.sleep(pace_s)
            yield r

    call = stub.Converse(gen(), metadata=metadata)
    out = []
    try:
        async for msg in call:
            out.append(msg)
    except grpc.aio.AioRpcError as err:
        return out, err.code(), err.details() or ""
    return out, await call.code(), await call.details() or ""


def frames_of(responses) -> list[avatar_pb2.VideoFrame]:
    return [r.frame for r in responses if r.WhichOneof("kind") == "frame"]


def tenants_file(path: Path, tenants: dict[str, dict]) -> Path:
    """tenants: id -> {"key": ..., quotas...}; writes the hashed file."""
    doc = {"tenants": [{"id": tid, "api_key_sha256": hash_key(t["key"]),
                        **{k: v for k, v in t.items() if k != "key"}} for tid, t in tenants.items()]}
    path.write_text(json.dumps(doc))
    return path


@contextlib.asynccontextmanager
async def embedded_service(tenants: TenantDirectory | None = None, bus: MemoryBus | None = None, **settings):
    """The whole service in this process (in-memory bus, or `bus`), served on a loopback port."""
    weights = ensure_synthetic("tiny")
    s = load_settings(OrchestratorSettings, **settings)
    assert isinstance(s, OrchestratorSettings)
    s.bus.slots = 4
    stack = EmbeddedStack(weights, "tiny", s, "cpu", "torch", tenants=tenants, bus=bus or MemoryBus())
    orch = await stack.start()
    service = rpc.Service(avatar_pb2_grpc.add_AvatarServicer_to_server, AvatarService(orch),
                          rpc.service_name(avatar_pb2, "Avatar"))
    interceptors = public_interceptors(orch)
    server = await rpc.start_server([service], interceptors=interceptors)
    channel = grpc.aio.insecure_channel(server.address, options=rpc.channel_options())
    stub = avatar_pb2_grpc.AvatarStub(channel)
    stub.address = server.address  # type: ignore[attr-defined] - for tests that open their own client
    stub.stack = stack  # type: ignore[attr-defined] - for tests that look at a stage's state
    stub.guard = interceptors[0]  # type: ignore[attr-defined] - for tests that count upload slots
    try:
        yield stub, orch
    finally:
        await channel.close()
        await server.stop(1)
        await stack.stop()
