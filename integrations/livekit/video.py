"""`VideoGenerator` of LiveKit's avatar contract over an `AvatarBridge`: audio frames in, video frames, the speech
delayed to match them, and segment ends out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, VideoGenerator

from integrations.core import AudioOut, AvatarBridge, SegmentEnd, VideoOut


class DittoVideoGenerator(VideoGenerator):
    """What `AvatarRunner` drives: `push_audio`, `clear_buffer`, and an async iterator of what to publish.

    `AvatarRunner` counts the playback position from the audio frames this yields, so audio leaves only with the
    frame that shows it: the position it reports in `lk.playback_finished` is what the user has seen and heard.
    """

    def __init__(self, bridge: AvatarBridge) -> None:
        self.bridge = bridge

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            await self.bridge.end_segment()
            return
        await self.bridge.push_audio(frame.data.tobytes(), frame.sample_rate, frame.num_channels)

    async def clear_buffer(self) -> None:
        await self.bridge.interrupt()

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        async for item in self.bridge:
            if isinstance(item, VideoOut):
                yield rtc.VideoFrame(item.width, item.height, rtc.VideoBufferType.RGB24, item.rgb.tobytes())
            elif isinstance(item, AudioOut):
                yield rtc.AudioFrame(item.pcm, item.sample_rate, item.channels, item.samples)
            elif isinstance(item, SegmentEnd):
                yield AudioSegmentEnd()

    async def aclose(self) -> None:
        await self.bridge.aclose()
