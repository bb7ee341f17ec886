"""Every RPC of the public API says a refusal the same way: the status code, the message, the `retry-after-ms`
trailer when the refusal is to be retried, and for Converse (whose protocol ends with a status message) a FinalStatus
carrying the same code and message. The orchestrator runs alone on loopback over a Redis of this test, with no stage
worker: the refusals are the real ones (a bad key, an over-long id, no capacity, Redis gone)."""

from __future__ import annotations

import contextlib
import io
import json
import wave
from dataclasses import dataclass

import cv2
import grpc
import numpy as np
import pytest
from redis_processes import PrivateRedis

from ditto import rpc
from ditto.bus import RedisBus
from ditto.config import load_settings
from ditto_client.status import retry_hint_ms
from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc, common_pb2, renderer_pb2
from services.orchestrator.avatars import GrpcRegistrar
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.service import AvatarService, Orchestrator, public_interceptors
from services.orchestrator.tenants import TenantDirectory, hash_key

KEY = "key-of-acme"
GOOD = (("x-api-key", KEY),)
AVATAR = "a" * 32
PASSWORD = "redis-secret-of-this-test"


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    retry_after_ms: int | None
    final: common_pb2.Status | None = None  # Converse's FinalStatus, when it sent one


def wav_bytes(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        t = np.arange(int(seconds * rate)) / rate
        w.writeframes((0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def png_bytes() -> bytes:
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:48, 16:48] = (40, 120, 200)
    return cv2.imencode(".png", img)[1].tobytes()


def converse_config(avatar_id: str) -> avatar_pb2.SessionConfig:
    return avatar_pb2.SessionConfig(
        avatar_id=avatar_id, idle_policy=avatar_pb2.IDLE_POLICY_FREEZE,
        audio_format=common_pb2.AudioFormat(sample_format=common_pb2.SAMPLE_FORMAT_PCM_S16LE, sample_rate_hz=16000,
                                            channels=1))


async def call(stub, method: str, request, metadata) -> Outcome:
    """One call of `method`; what the client learns of its end."""
    if method == "Converse":
        async def stream():
            yield avatar_pb2.ConverseRequest(config=request)
            yield avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio())

        c = stub.Converse(stream(), metadata=metadata, timeout=60)
        messages = []
        try:
            async for m in c:
                messages.append(m)
        except grpc.aio.AioRpcError:
            pass
        finals = [m.final.status for m in messages if m.WhichOneof("kind") == "final"]
        return Outcome(await c.code(), await c.details() or "", retry_hint_ms(await c.trailing_metadata()),
                       finals[-1] if finals else None)
    try:
        if method == "Render":
            [m async for m in stub.Render(request, metadata=metadata, timeout=60)]
        else:
            await getattr(stub, method)(request, metadata=metadata, timeout=60)
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code(), err.details() or "", retry_hint_ms(err.trailing_metadata()))
    return Outcome(grpc.StatusCode.OK, "", None)


def requests_for(avatar_id: str = AVATAR, session_id: str = "s" * 32, filename: str = "face.png") -> dict:
    return {
        "RegisterAvatar": avatar_pb2.RegisterAvatarRequest(media=png_bytes(), filename=filename),
        "GetAvatar": avatar_pb2.GetAvatarRequest(avatar_id=avatar_id),
        "DeleteAvatar": avatar_pb2.GetAvatarRequest(avatar_id=avatar_id),
        "GetSession": avatar_pb2.GetSessionRequest(session_id=session_id),
        "Converse": converse_config(avatar_id),
        "Render": avatar_pb2.RenderRequest(avatar_id=avatar_id, audio=wav_bytes(), audio_filename="a.wav"),
    }


@contextlib.asynccontextmanager
async def orchestrator_alone(redis_url: str, tmp_path):
    """The orchestrator of a distributed stack, served on loopback, with no stage worker and no renderer."""
    keys = tmp_path / "tenants.json"
    keys.write_text(json.dumps({"tenants": [{"id": "acme", "api_key_sha256": hash_key(KEY)}]}))
    settings = load_settings(OrchestratorSettings)
    assert isinstance(settings, OrchestratorSettings)
    bus = RedisBus(redis_url, "api-errors", settings.bus.state_ttl_s)
    orch = Orchestrator(settings, bus, GrpcRegistrar(bus), TenantDirectory.from_file(keys))
    await orch.start()
    service = rpc.Service(avatar_pb2_grpc.add_AvatarServicer_to_server, AvatarService(orch),
                          rpc.service_name(avatar_pb2, "Avatar"))
    server = await rpc.start_server([service], interceptors=public_interceptors(orch))
    channel = grpc.aio.insecure_channel(server.address, options=rpc.channel_options())
    try:
        yield avatar_pb2_grpc.AvatarStub(channel), orch
    finally:
        await channel.close()
        await server.stop(1)
        await orch.stop()


@pytest.fixture
def redis_of_this_test():
    r = PrivateRedis(password=PASSWORD)
    try:
        yield r
    finally:
        r.stop()


def assert_converse_says_it_in_band(out: Outcome) -> None:
    assert out.final is not None, "Converse ends a refusal with a FinalStatus message"
    assert (out.final.code, out.final.message) == (out.code.value[0], out.details)


async def test_every_rpc_refuses_the_same_way(redis_of_this_test, tmp_path):
    async with orchestrator_alone(redis_of_this_test.url, tmp_path) as (stub, orch):
        # a key the server does not know: the same status and message from every RPC (the upload guard answers
        # RegisterAvatar and Render before their bodies are read, the handlers the others)
        outs = {m: await call(stub, m, r, (("x-api-key", "not-a-key"),)) for m, r in requests_for().items()}
        assert {(o.code, o.details, o.retry_after_ms) for o in outs.values()} == \
            {(grpc.StatusCode.UNAUTHENTICATED, "unknown API key", None)}, outs
        assert_converse_says_it_in_band(outs["Converse"])

        # an id longer than any the service hands out: INVALID_ARGUMENT naming the field, from every RPC
        long = "x" * 500
        outs = {m: await call(stub, m, r, GOOD)
                for m, r in requests_for(avatar_id=long, session_id=long, filename="f" * 300).items()}
        for method, out in outs.items():
            assert out.code == grpc.StatusCode.INVALID_ARGUMENT, (method, out)
            assert "characters" in out.details and out.retry_after_ms is None, (method, out)
        assert_converse_says_it_in_band(outs["Converse"])

        # a registered avatar, and no stage worker: both RPCs that start a session are refused with the same hint
        info = renderer_pb2.RegisterSourceResponse(avatar_id=AVATAR, width=64, height=64, source_frames=1)
        await orch.bus.set_state(orch.bus.keys.avatar_info("acme", AVATAR), info.SerializeToString(), 600)
        reqs = requests_for()
        outs = {m: await call(stub, m, reqs[m], GOOD) for m in ("Converse", "Render")}
        assert outs["Converse"].code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "no audio_encoder worker is running" in outs["Converse"].details
        assert outs["Converse"].retry_after_ms == 2000
        assert (outs["Render"].code, outs["Render"].details, outs["Render"].retry_after_ms) == \
            (outs["Converse"].code, outs["Converse"].details, outs["Converse"].retry_after_ms)
        assert_converse_says_it_in_band(outs["Converse"])

        # Redis goes away: every RPC that needs it says which store is unavailable and to retry, never the password
        redis_of_this_test.stop()
        outs = {m: await call(stub, m, r, GOOD) for m, r in requests_for().items()}
        for method in ("RegisterAvatar", "GetAvatar", "DeleteAvatar", "Converse", "Render"):
            out = outs[method]
            store = "avatar store" if "Avatar" in method else "session store"
            assert out.code == grpc.StatusCode.UNAVAILABLE, (method, out)
            assert out.details.startswith(f"{store} (Redis) unavailable"), (method, out)
            assert out.details.endswith("retry in a few seconds") and PASSWORD not in out.details, (method, out)
        assert outs["GetSession"].code == grpc.StatusCode.NOT_FOUND  # sessions live in the replica, not in Redis
        assert_converse_says_it_in_band(outs["Converse"])
