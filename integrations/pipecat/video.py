"""`DittoVideoService`: a Pipecat frame processor that turns the TTS's speech into the avatar's video.

    pipeline = Pipeline([transport.input(), stt, context_aggregator.user(), llm, tts,
                         DittoVideoService(address="127.0.0.1:50051", avatar_id="..."),
                         transport.output(), context_aggregator.assistant()])

It takes the `TTSAudioRawFrame`s, streams them into one Converse session and pushes downstream, in presentation
order, an `OutputImageRawFrame` per 40 ms and the same speech as `TTSAudioRawFrame`s cut to go with each frame (so
the transport plays each 40 ms of voice with the image that shows it). Between utterances the face stays alive
(images without audio). `InterruptionFrame` / `UserStartedSpeakingFrame` interrupt the session and drop what is
queued. `StartFrame` opens the session, `EndFrame` lets the last speech play out and closes it, `CancelFrame`
closes it at once. If the Ditto service is unreachable or fails, the error is logged and the speech passes through
unchanged: the bot keeps talking, without a face.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    UserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from integrations.core import AudioOut, AvatarBridge, BridgeOptions, VideoOut

FRAME_NS = 40_000_000  # one video frame, in Pipecat's nanosecond timestamps


class DittoVideoService(FrameProcessor):
    def __init__(self, *, address: str, avatar_id: str, api_key: str | None = None, emotion: Any = None,
                 seed: int = 0, jpeg: bool = True, idle_lead_s: float | None = None,
                 idle_after_s: float | None = None, end_stall_s: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._options = BridgeOptions(address=address, avatar_id=avatar_id, api_key=api_key, emotion=emotion,
                                      seed=seed, jpeg=jpeg)
        if idle_lead_s is not None:
            self._options.idle_lead_s = idle_lead_s
        if idle_after_s is not None:
            self._options.idle_after_s = idle_after_s
        self._end_stall_s = end_stall_s  # at EndFrame, wait for the last speech unless frames stop coming
        self._bridge: AvatarBridge | None = None
        self._out_task: asyncio.Task | None = None

    @property
    def bridge(self) -> AvatarBridge | None:
        return self._bridge

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        bridge = self._bridge
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._open()
        elif isinstance(frame, EndFrame):
            if bridge is not None:
                await bridge.drain(self._end_stall_s)
            await self._close()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._close()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM and bridge is not None:
            await bridge.push_audio(frame.audio, frame.sample_rate, frame.num_channels)  # comes back out in sync
        elif isinstance(frame, TTSStoppedFrame) and bridge is not None:
            await bridge.end_segment()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (InterruptionFrame, UserStartedSpeakingFrame)):
            if bridge is not None:
                await bridge.interrupt()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _open(self) -> None:
        if self._bridge is not None:
            return
        self._bridge = AvatarBridge(self._options)
        await self._bridge.start()  # logs and passes audio through when there is no face
        self._out_task = self.create_task(self._forward(self._bridge), "ditto-video-out")

    async def _close(self) -> None:
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            await bridge.aclose()
        if self._out_task is not None:
            await self.cancel_task(self._out_task)
            self._out_task = None

    async def _forward(self, bridge: AvatarBridge) -> None:
        async for item in bridge:
            if isinstance(item, VideoOut):
                image = OutputImageRawFrame(image=item.rgb.tobytes(), size=(item.width, item.height), format="RGB")
                image.pts = item.index * FRAME_NS
                image.metadata["ditto_frame_index"] = item.index
                image.metadata["ditto_speech"] = item.speech
                await self.push_frame(image)
            elif isinstance(item, AudioOut):
                await self.push_frame(TTSAudioRawFrame(audio=item.pcm, sample_rate=item.sample_rate,
                                                       num_channels=item.channels))

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close()
