"""A Pipecat bot with a Ditto face: the `DittoVideoService` goes right after the TTS.

    pip install 'ditto-service[pipecat]' && pip install --no-deps pipecat-ai==1.14.0
    ditto serve &
    DITTO_AVATAR_ID=... python examples/pipecat_bot.py

As written it runs without any cloud service: a line of "TTS" audio (a tone, 24 kHz) goes through the face and the
video frames and synchronized audio land in a sink that counts them. Swap the source for your transport's input,
STT, LLM and TTS, and the sink for your transport's output (Daily, LiveKit, WebRTC) to get a talking bot.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
from pipecat.frames.frames import (
    EndFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner

from integrations.pipecat import DittoVideoService


class CountingOutput(FrameProcessor):
    """Stands in for transport.output(): counts what a viewer would see and hear."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0
        self.audio_s = 0.0

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            self.images += 1
        elif isinstance(frame, TTSAudioRawFrame):
            self.audio_s += frame.num_frames / frame.sample_rate
        await self.push_frame(frame, direction)


async def main() -> None:
    output = CountingOutput()
    # the three lines that add the face: the service, placed after the TTS, before the transport's output
    face = DittoVideoService(address=os.environ.get("DITTO_ADDRESS", "127.0.0.1:50051"),
                             avatar_id=os.environ["DITTO_AVATAR_ID"], api_key=os.environ.get("DITTO_API_KEY"))
    pipeline = Pipeline([face, output])  # real bot: [transport.input(), stt, user_ctx, llm, tts, face,
    #                                                 transport.output(), assistant_ctx]
    worker = PipelineWorker(pipeline, params=PipelineParams())
    rate = 24000
    t = np.arange(2 * rate) / rate
    tone = (0.2 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * 32767).astype("<i2")
    frames = [TTSStartedFrame()]
    frames += [TTSAudioRawFrame(audio=tone[i:i + rate // 10].tobytes(), sample_rate=rate, num_channels=1)
               for i in range(0, len(tone), rate // 10)]
    frames += [TTSStoppedFrame(), EndFrame()]  # EndFrame lets the last speech play out, then closes the session


    @worker.event_handler("on_pipeline_started")
    async def speak(worker, frame):  # a real bot's TTS produces these when the LLM answers
        await worker.queue_frames(frames)

    runner = WorkerRunner()
    await runner.add_workers(worker)
    await runner.run()
    print(f"video frames: {output.images}, speech delivered with them: {output.audio_s:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
