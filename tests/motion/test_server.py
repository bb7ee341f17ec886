"""The MotionGenerator gRPC service on loopback: streamed frames equal a direct session's, concurrent calls share
batched forwards, bad input ends only its own call with INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from ditto import codec, rpc
from ditto_client.v1 import common_pb2, motion_generator_pb2, motion_generator_pb2_grpc
from services.motion_generator import server
from services.motion_generator.generator import KeypointBatch, SessionSettings
from tests.motion.helpers import avatar, features, tiny_generator


def _config(seed: int) -> motion_generator_pb2.GenerateRequest:
    av = avatar()
    arrays = dict(av.info, eye_open=av.eye_open, eye_ball=av.eye_ball)
    info = common_pb2.AvatarMotionInfo(avatar_id="a1", tensors=codec.named(arrays), is_video=False)
    cfg = motion_generator_pb2.MotionConfig(avatar=info, sampling_steps=10, overlap=70, seed=seed,
                                            emotion=common_pb2.EmotionControl(labels=[common_pb2.EMOTION_HAPPY]))
    return motion_generator_pb2.GenerateRequest(config=cfg)


def _requests(seed: int, feats: np.ndarray, chunk: int = 13):
    yield _config(seed)
    yield motion_generator_pb2.GenerateRequest(control=common_pb2.TimedControl(
        start_frame=5, end_frame=15, controls=common_pb2.MotionControls(delta_yaw=8.0)))
    for i in range(0, len(feats), chunk):
        fc = common_pb2.FeatureChunk(first_frame=i)
        codec.to_proto(feats[i:i + chunk], fc.features)
        yield motion_generator_pb2.GenerateRequest(features=fc)
    yield motion_generator_pb2.GenerateRequest(end=common_pb2.EndOfStream())


async def _collect(stub, requests):
    started, frames, final = None, [], None
    async for resp in stub.Generate(requests):
        kind = resp.WhichOneof("event")
        if kind == "started":
            started = resp.started
        elif kind == "frames":
            frames.append((resp.frames.first_frame, codec.from_proto(resp.frames.x_driving)))
        else:
            final = resp.final
    return started, frames, final


def _direct(seed: int, feats: np.ndarray) -> KeypointBatch:
    s = tiny_generator().session(avatar(), SessionSettings(seed=seed, emotion=3))
    s.control({"delta_yaw": 8.0}, 5, 15)
    return KeypointBatch.concat([s.push(feats), s.end()], 0)


async def test_generate_streams_frames_and_batches_sessions() -> None:
    running, batcher = await server.start(tiny_generator(), max_wait_ms=30)
    try:
        async with grpc.aio.insecure_channel(running.address, options=rpc.channel_options()) as channel:
            stub = motion_generator_pb2_grpc.MotionGeneratorStub(channel)
            feats = [features(57, seed=s) for s in (1, 2, 3)]
            calls = [_collect(stub, _requests(s, f)) for s, f in zip((1, 2, 3), feats, strict=True)]
            results = await asyncio.gather(*calls)
    finally:
        await running.stop(0)
    for seed, f, (started, frames, final) in zip((1, 2, 3), feats, results, strict=True):
        assert started is not None and started.look_ahead_frames == 19 and started.backend == "torch"
        assert final is not None and final.code == 0
        firsts = [ff for ff, _ in frames]
        x_d = np.concatenate([x for _, x in frames])
        assert firsts[0] == 0 and len(x_d) == 57
        assert all(b == a + len(x) for (a, x), b in zip(frames, firsts[1:], strict=False))
        np.testing.assert_allclose(x_d, _direct(seed, f).x_d, rtol=1e-4, atol=1e-4)
    assert max(batcher.batch_sizes) > 1                              # concurrent calls shared forwards


@pytest.mark.parametrize("bad,needle", [
    ("no_config", "first message must be a MotionConfig"),
    ("shape", "float32 [n, 1024]"),
    ("gap", "contiguous"),
    ("control", "63 values"),
])
async def test_bad_input_gets_invalid_argument(bad: str, needle: str) -> None:
    running, _ = await server.start(tiny_generator())

    def reqs():
        if bad != "no_config":
            yield _config(0)
        fc = common_pb2.FeatureChunk(first_frame=7 if bad == "gap" else 0)
        codec.to_proto(np.zeros((5, 1000 if bad == "shape" else 1024), np.float32), fc.features)
        if bad == "control":
            yield motion_generator_pb2.GenerateRequest(control=common_pb2.TimedControl(
                start_frame=0, controls=common_pb2.MotionControls(delta_exp=[0.1] * 5)))
        yield motion_generator_pb2.GenerateRequest(features=fc)

    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = motion_generator_pb2_grpc.MotionGeneratorStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _collect(stub, reqs())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in err.value.details()
            # the server goes on serving good calls
            _, frames, final = await _collect(stub, _requests(4, features(12, seed=4)))
            assert final.code == 0 and sum(len(x) for _, x in frames) == 12
    finally:
        await running.stop(0)
