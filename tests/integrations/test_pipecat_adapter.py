"""Pipecat adapter in a real Pipecat pipeline (PipelineWorker + WorkerRunner, our service between the frames we
queue and a recording sink) against a real Ditto service."""

from __future__ import annotations

import asyncio
import time

import pytest
from agent_speech import pieces, speech_24k
from pipecat.frames.frames import (
    EndFrame,
    InterruptionFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from ditto_client import AsyncAvatarClient
from ditto_client.v1 import avatar_pb2
from integrations.pipecat import DittoVideoService

RATE = 24000
FRAME_S = 0.04


class Sink(FrameProcessor):
    """Records every frame that reaches the end of the pipeline, with the time it arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[float, object]] = []

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append((time.monotonic(), frame))
        await self.push_frame(frame, direction)

    def of(self, kind) -> list:
        return [f for _, f in self.frames if isinstance(f, kind)]

    def speech_images(self) -> int:
        return sum(1 for f in self.of(OutputImageRawFrame) if f.metadata.get("ditto_speech"))


class Bot:
    """A pipeline of [DittoVideoService, Sink] run by Pipecat's own runner."""

    def __init__(self, service: DittoVideoService) -> None:
        self.service = service
        self.sink = Sink()
        self.worker = PipelineWorker(Pipeline([service, self.sink]), cancel_on_idle_timeout=False,
                                     params=PipelineParams())
        self.started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker, frame):
            self.started.set()

    async def __aenter__(self) -> Bot:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self.run = asyncio.create_task(runner.run())
        await asyncio.wait_for(self.started.wait(), 60)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self.run, 300)

    async def say(self, pcm: bytes) -> None:
        await self.worker.queue_frame(TTSStartedFrame())
        for p in pieces(pcm):
            await self.worker.queue_frame(TTSAudioRawFrame(audio=p, sample_rate=RATE, num_channels=1))
        await self.worker.queue_frame(TTSStoppedFrame())


async def wait_until(cond, timeout: float = 240.0) -> None:
    async def poll():
        while not cond():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


async def test_pipeline_gets_frames_at_25fps_with_aligned_audio(ditto_server):
    speech = speech_24k(2.0, seed=3)
    async with Bot(DittoVideoService(address=ditto_server.address, avatar_id=ditto_server.avatar_id, seed=7)) as bot:
        await bot.say(speech)
        await wait_until(lambda: b"".join(f.audio for f in bot.sink.of(TTSAudioRawFrame)) == speech)
        n = len(bot.sink.frames)
        await wait_until(lambda: sum(isinstance(f, OutputImageRawFrame) for _, f in bot.sink.frames[n:]) >= 5)
    frames = [f for _, f in bot.sink.frames]
    images = [f for f in frames if isinstance(f, OutputImageRawFrame)]
    assert {(i.size, i.format) for i in images} == {((ditto_server.width, ditto_server.height), "RGB")}
    assert all(len(i.image) == ditto_server.width * ditto_server.height * 3 for i in images)
    # one image per 40 ms of the session's timeline: consecutive indices, pts 40 ms apart (25 fps)
    indices = [i.metadata["ditto_frame_index"] for i in images]
    assert indices == list(range(indices[0], indices[0] + len(indices)))
    assert all(b.pts - a.pts == 40_000_000 for a, b in zip(images, images[1:], strict=False))
    # the speech comes back whole, each 40 ms right after the image that shows it
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert b"".join(a.audio for a in audio) == speech
    for k, f in enumerate(frames):
        if isinstance(f, TTSAudioRawFrame):
            assert isinstance(frames[k - 1], OutputImageRawFrame) and frames[k - 1].metadata["ditto_speech"]
            assert f.num_frames <= RATE * FRAME_S
    assert bot.sink.speech_images() == 50  # 2 s at 25 fps
    # the TTS's control frames still pass
    assert bot.sink.of(TTSStartedFrame) and bot.sink.of(TTSStoppedFrame)


@pytest.mark.parametrize("seconds", [3.0, 30.0], ids=["short_answer", "long_answer_at_once"])
async def test_interruption_stops_the_old_speech_within_one_frame(ditto_server, seconds):
    """Barge-in, also behind a long answer the TTS hands over at once (the interrupt must not queue behind it)."""
    speech = speech_24k(seconds, seed=4)
    async with Bot(DittoVideoService(address=ditto_server.address, avatar_id=ditto_server.avatar_id, seed=7)) as bot:
        await bot.say(speech)
        await wait_until(lambda: bot.sink.speech_images() >= 10)
        await bot.worker.queue_frame(InterruptionFrame())
        await wait_until(lambda: bot.sink.of(InterruptionFrame))
        t_interrupt = next(t for t, f in bot.sink.frames if isinstance(f, InterruptionFrame))
        n = len(bot.sink.frames)
        await wait_until(lambda: sum(isinstance(f, OutputImageRawFrame) for _, f in bot.sink.frames[n:]) >= 10)
        # what the server has read of the session by now: the speech up to its read-ahead before the interrupt, and
        # the idle feed since; not the rest of a long answer that was handed over at once
        async with AsyncAvatarClient(ditto_server.address) as client:
            info = await client.stub.GetSession(avatar_pb2.GetSessionRequest(session_id=bot.service.bridge.session_id))
        assert info.audio_seconds < (10 if seconds > 10 else seconds + 5), info.audio_seconds
    late = [t - t_interrupt for t, f in bot.sink.frames
            if t > t_interrupt and (isinstance(f, TTSAudioRawFrame)
                                    or (isinstance(f, OutputImageRawFrame) and f.metadata["ditto_speech"]))]
    assert all(dt <= FRAME_S for dt in late), late
    played = b"".join(f.audio for f in bot.sink.of(TTSAudioRawFrame))
    assert 0 < len(played) < len(speech) and speech.startswith(played)
    # the face goes on (easing to rest, then idle) after the interruption
    after = [f for t, f in bot.sink.frames if t > t_interrupt and isinstance(f, OutputImageRawFrame)]
    assert len(after) >= 10 and not any(f.metadata["ditto_speech"] for f in after)


@pytest.mark.parametrize("fault", ["unreachable", "unknown_avatar"])
async def test_pipeline_without_a_face_keeps_talking(ditto_server, fault):
    address = "127.0.0.1:9" if fault == "unreachable" else ditto_server.address
    avatar = "no-such-avatar" if fault == "unknown_avatar" else ditto_server.avatar_id
    speech = speech_24k(0.6, seed=5)
    service = DittoVideoService(address=address, avatar_id=avatar)
    async with Bot(service) as bot:
        await bot.say(speech)
        await wait_until(lambda: b"".join(f.audio for f in bot.sink.of(TTSAudioRawFrame)) == speech, 30)
        error = service.bridge.error
    assert not bot.sink.of(OutputImageRawFrame)
    expected = "cannot reach the Ditto server" if fault == "unreachable" else "is not registered"
    assert expected in error
