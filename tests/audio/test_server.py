"""The AudioEncoder gRPC service on loopback with a real ONNX Runtime backend: streamed features equal the direct
encoder's, concurrent sessions share batches, bad audio ends only its own call with INVALID_ARGUMENT, an overloaded
batcher refuses a call with RESOURCE_EXHAUSTED and serves on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import grpc
import numpy as np
import pytest

from ditto import codec, rpc
from ditto.stage_runtime import MicroBatcher
from ditto_client.v1 import audio_encoder_pb2, audio_encoder_pb2_grpc, common_pb2
from services.audio_encoder import server
from services.audio_encoder.encoder import StreamingEncoder
from services.audio_encoder.formats import InputFormat
from services.audio_encoder.hubert import OnnxHubert
from services.audio_encoder.session_stage import AudioEncoderStage


@pytest.fixture(scope="module")
def backend(tiny_onnx_batched) -> OnnxHubert:
    return OnnxHubert(tiny_onnx_batched, threads=1)


def _pcm(seconds: float, rate: int, seed: int) -> bytes:
    return (3000 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype("<i2").tobytes()


def _requests(fmt: common_pb2.AudioFormat, data: bytes, chunk: int, end: bool = True, extra: list | None = None):
    yield audio_encoder_pb2.EncodeRequest(config=audio_encoder_pb2.EncodeConfig(format=fmt))
    for i in range(0, len(data), chunk):
        yield audio_encoder_pb2.EncodeRequest(audio=data[i:i + chunk])
    yield from extra or []
    if end:
        yield audio_encoder_pb2.EncodeRequest(end=common_pb2.EndOfStream())


async def _collect(stub, requests):
    started, chunks, final = None, [], None
    async for resp in stub.Encode(requests):
        kind = resp.WhichOneof("event")
        if kind == "started":
            started = resp.started
        elif kind == "features":
            chunks.append((resp.features.first_frame, codec.from_proto(resp.features.features)))
        else:
            final = resp.final
    return started, chunks, final


async def test_encode_streams_features_and_batches_sessions(backend):
    running, batcher = await server.start(backend, max_wait_ms=50)
    try:
        async with grpc.aio.insecure_channel(running.address, options=rpc.channel_options()) as channel:
            stub = audio_encoder_pb2_grpc.AudioEncoderStub(channel)
            fmt = common_pb2.AudioFormat(sample_format=common_pb2.SAMPLE_FORMAT_PCM_S16LE, sample_rate_hz=22050,
                                         channels=1)
            datas = [_pcm(1.5, 22050, seed) for seed in range(3)]
            results = await asyncio.gather(*[_collect(stub, _requests(fmt, d, 4410 * 2)) for d in datas])
        for data, (started, chunks, final) in zip(datas, results, strict=True):
            assert (started.feature_dim, started.fps, started.backend) == (1024, 25, backend.name)
            assert final.code == 0
            frames = [f for f, _ in chunks]
            assert frames == sorted(frames) and frames[0] == 0
            got = np.concatenate([c for _, c in chunks])
            enc = StreamingEncoder(backend, InputFormat("pcm_s16le", 22050, 1))
            ref = np.concatenate([enc.push(data), enc.end()])
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, atol=1e-5)
        assert max(batcher.batch_sizes) > 1  # windows of different sessions ran together
    finally:
        await batcher.close()
        await running.stop(None)


async def test_bad_audio_is_invalid_argument_and_server_goes_on(backend):
    running, batcher = await server.start(backend)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = audio_encoder_pb2_grpc.AudioEncoderStub(channel)
            stereo = common_pb2.AudioFormat(sample_format=common_pb2.SAMPLE_FORMAT_PCM_S16LE, sample_rate_hz=16000,
                                            channels=2)
            bad = audio_encoder_pb2.EncodeRequest(audio=b"\x00" * 6)  # 1.5 stereo frames
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _collect(stub, _requests(stereo, _pcm(0.5, 32000, 0), 3200, extra=[bad]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "whole number" in err.value.details()

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _collect(stub, _requests(common_pb2.AudioFormat(sample_rate_hz=1000), b"", 1))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "rate" in err.value.details()

            no_config = iter([audio_encoder_pb2.EncodeRequest(audio=b"\x00\x00")])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _collect(stub, no_config)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "EncodeConfig" in err.value.details()

            # the server still serves: unset format fields mean PCM16 / 16 kHz / mono
            started, chunks, final = await _collect(stub, _requests(common_pb2.AudioFormat(), _pcm(0.4, 16000, 1),
                                                                    1000))
            assert final.code == 0 and sum(len(c) for _, c in chunks) == 5 * 3
    finally:
        await batcher.close()
        await running.stop(None)


async def test_a_full_batcher_refuses_a_call_with_resource_exhausted_and_serves_the_others(backend):
    """The stage's batcher holds at most `max_queued` chunks waiting: while a step runs and two chunks wait, a fourth
    call is refused at once (with a retry-after-ms trailer), and the three admitted calls and later ones complete.
    (Two waiting, not one: once the gate opens, each admitted call's end-of-audio flush joins the queue too.)"""
    stage = AudioEncoderStage(backend)
    entered, gate = threading.Event(), threading.Event()

    def gated_step(batch):  # the real step, held until the test has filled the queue behind it
        entered.set()
        assert gate.wait(30), "the test never opened the gate"
        return stage.step(batch)

    batcher = MicroBatcher(gated_step, stage.label, max_batch=1, max_wait_ms=0, max_queued=2)
    running = await rpc.start_server([server.service(stage, batcher)], "127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = audio_encoder_pb2_grpc.AudioEncoderStub(channel)
            fmt = common_pb2.AudioFormat()
            async def admit(k: int, filled: Callable[[], bool]) -> asyncio.Task:
                # one call at a time: two chunks queued before the batcher takes the first would refuse the second
                task = asyncio.create_task(_collect(stub, _requests(fmt, _pcm(0.4, 16000, k), 12800)))
                deadline = asyncio.get_running_loop().time() + 60
                while not filled():
                    assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
                    assert asyncio.get_running_loop().time() < deadline, f"call {k} never reached the batcher"
                    await asyncio.sleep(0.005)
                return task

            admitted = [await admit(0, entered.is_set), await admit(1, lambda: batcher.waiting == 1),
                        await admit(2, lambda: batcher.waiting == 2)]
            call = stub.Encode(_requests(fmt, _pcm(0.4, 16000, 9), 12800))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in err.value.details()
            assert ("retry-after-ms", "100") in tuple(err.value.trailing_metadata() or ())
            gate.set()
            for task in admitted:
                _, chunks, final = await task
                assert final.code == 0 and sum(len(c) for _, c in chunks) == 5 * 3
            _, chunks, final = await _collect(stub, _requests(fmt, _pcm(0.4, 16000, 3), 1000))
            assert final.code == 0 and sum(len(c) for _, c in chunks) == 5 * 3
    finally:
        gate.set()
        await batcher.close()
        await running.stop(None)
