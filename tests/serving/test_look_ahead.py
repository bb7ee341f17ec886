"""`SessionStarted.audio_look_ahead_ms`: computed from the session's overlap and the audio encoder's windowing, and
true of the frames that come out. Checked three ways: the kernel's constants against the stages' own; the real
windowing (audio encoder WindowStream + motion MotionStream) fed 1 ms at a time makes each frame exactly when the
formula says; and the served session announces the value, makes no frame before that much audio has been sent at
realtime pace, and makes its first frame from exactly that much audio."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from serving_helpers import chunks, config, embedded_service, portrait_png, speech_pcm16

from ditto import look_ahead
from ditto_client.v1 import avatar_pb2
from services.audio_encoder import windows
from services.motion_generator import streaming


def test_constants_are_the_stages_own():
    assert look_ahead.MOTION_WINDOW == streaming.SEQ
    assert look_ahead.FRAME_MS * windows.SAMPLE_RATE // 1000 == windows.FRAME_SAMPLES
    assert look_ahead.ENCODER_FEATURES_PER_WINDOW == windows.FRAMES_PER_WINDOW
    # The first window (features 0..4) ends WINDOW - FRONT_PAD samples into the audio: 285 ms = 5 frames + 85 ms.
    first_window_ms = (windows.WINDOW - windows.FRONT_PAD) * 1000 // windows.SAMPLE_RATE
    assert look_ahead.ENCODER_RIGHT_CONTEXT_MS == first_window_ms - windows.FRAMES_PER_WINDOW * look_ahead.FRAME_MS


def frame_ready_ms(overlap: int, seconds: float) -> dict[int, int]:
    """Audio milliseconds after which each frame is final, from the real windowing fed 1 ms of audio at a time."""
    ws = windows.WindowStream()
    ms = streaming.MotionStream(streaming.StreamParams(overlap=overlap), np.zeros(streaming.MOTION_DIM, np.float32),
                                feature_dim=4)
    ready: dict[int, int] = {}
    step = windows.SAMPLE_RATE // 1000
    for t in range(1, int(seconds * 1000) + 1):
        n = len(ws.push(np.zeros(step, np.float32)))
        if n:
            ms.push(np.zeros((n * windows.FRAMES_PER_WINDOW, 4), np.float32))
        while (w := ms.next_window()) is not None:
            first, frames = ms.complete(w, np.zeros((streaming.SEQ, streaming.MOTION_DIM), np.float32))
            for f in range(first, first + len(frames)):
                ready[f] = t
    return ready


@pytest.mark.parametrize("overlap", [10, 40, 60, 64, 70, 75, 79])
def test_every_frame_is_made_exactly_when_the_formula_says(overlap):
    windows_run = 12  # the pattern repeats every 5 windows
    ready = frame_ready_ms(overlap, 1 + windows_run * (streaming.SEQ - overlap) * look_ahead.FRAME_MS / 1000)
    assert sorted(ready) == list(range(len(ready))) and len(ready) >= 10 * (streaming.SEQ - overlap), len(ready)
    assert {f: look_ahead.audio_needed_ms(f, overlap) for f in ready} == ready
    assert max(ready[f] - f * look_ahead.FRAME_MS for f in ready) == look_ahead.audio_look_ahead_ms(overlap)


def test_the_default_overlap_needs_885_ms():
    assert look_ahead.audio_look_ahead_ms(70) == 885


@pytest.mark.parametrize("overlap", [70, 60])
async def test_served_sessions_announce_the_value_and_frames_keep_to_it(overlap):
    chunk_ms = 40
    announced = look_ahead.audio_look_ahead_ms(overlap)
    pcm = chunks(speech_pcm16(3.0), ms=chunk_ms)
    async with embedded_service() as (stub, orch):
        avatar = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png(), filename="p.png"))

        # 1. Realtime-paced audio: frame 0 never comes before `announced` ms of audio have been sent.
        sent_ms = 0
        first_frame_at_ms: list[int] = []

        async def paced():
            nonlocal sent_ms
            yield avatar_pb2.ConverseRequest(config=config(avatar.avatar_id, overlap=overlap))
            t0 = time.monotonic()
            for i, c in enumerate(pcm):
                await asyncio.sleep(max(0.0, t0 + i * chunk_ms / 1000 - time.monotonic()))
                sent_ms += chunk_ms
                yield avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=c))
            yield avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio())

        call = stub.Converse(paced())
        started = None
        async for msg in call:
            kind = msg.WhichOneof("kind")
            if kind == "started":
                started = msg.started
            elif kind == "frame" and not first_frame_at_ms:
                first_frame_at_ms.append(sent_ms)
        assert await call.code() == grpc.StatusCode.OK
        assert started is not None and started.audio_look_ahead_ms == announced
        assert first_frame_at_ms and first_frame_at_ms[0] >= announced, (
            f"frame 0 came after {first_frame_at_ms} ms of audio, before the announced {announced} ms")

        # 2. Exactly `announced` ms of audio (rounded up to whole chunks), then nothing more (FREEZE idle policy, no
        # end of audio): frame 0 still comes, so the announced value is enough.
        n_chunks = -(-announced // chunk_ms)
        queue: asyncio.Queue = asyncio.Queue()
        for r in [avatar_pb2.ConverseRequest(config=config(avatar.avatar_id, overlap=overlap))] + [
                avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=c)) for c in pcm[:n_chunks]]:
            queue.put_nowait(r)

        async def held_open():
            while (r := await queue.get()) is not None:
                yield r

        call = stub.Converse(held_open())
        async for msg in call:
            if msg.WhichOneof("kind") == "frame":
                assert msg.frame.index == 0
                break
        else:
            pytest.fail("the session ended without a frame")
        call.cancel()
