"""The voice-agent bridge hands out each frame with the speech that drove it, also after an interrupt: checked against
what went over the wire (a recording proxy between the bridge and a real Ditto service)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from converse_recorder import BURST_RMS, converse_recorder, frame_rms, tone_bursts  # noqa: E402

from integrations.core import AudioOut, AvatarBridge, BridgeOptions, SegmentEnd, VideoOut  # noqa: E402

RATE = 24000  # what TTS engines hand out


async def wait_until(cond, timeout: float = 240.0) -> None:
    async def poll():
        while not cond():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


async def say(bridge: AvatarBridge, pcm: np.ndarray) -> None:
    data = pcm.astype("<i2").tobytes()
    step = RATE // 10 * 2  # 100 ms pieces
    for i in range(0, len(data), step):
        await bridge.push_audio(data[i:i + step], RATE)
    await bridge.end_segment()


async def test_after_an_interrupt_each_frame_comes_with_the_speech_that_drove_it(ditto_server):
    items: list[VideoOut | AudioOut | SegmentEnd] = []

    def speech_frames() -> int:
        return sum(isinstance(i, VideoOut) and i.speech for i in items)

    async with converse_recorder(ditto_server.address) as proxy:
        bridge = AvatarBridge(BridgeOptions(proxy.address, ditto_server.avatar_id, seed=7))
        assert await bridge.start()

        async def consume():
            async for item in bridge:
                items.append(item)

        consumer = asyncio.create_task(consume())
        try:
            await say(bridge, tone_bursts(3.0, RATE, seed=1))
            await wait_until(lambda: speech_frames() >= 12)
            await bridge.interrupt()
            cut = len(items)
            await say(bridge, tone_bursts(1.6, RATE, seed=2))
            await wait_until(lambda: any(isinstance(i, SegmentEnd) for i in items[cut:]))
        finally:
            await bridge.aclose()
            await consumer
    (record,) = proxy.calls
    by_index = {f.index: f for f in record.frames()}
    shown: list[tuple[VideoOut, list[AudioOut]]] = []
    for item in items:
        if isinstance(item, VideoOut):
            shown.append((item, []))
        elif isinstance(item, AudioOut):
            shown[-1][1].append(item)
    checked = rest = 0
    wrong = []
    for video, audio in shown:
        frame = by_index[video.index]
        want = record.audio_of(frame)
        pcm = np.frombuffer(b"".join(a.pcm for a in audio), "<i2")
        if want is None:  # easing back to rest: no speech goes with it
            assert not audio and frame.epoch == 1
            rest += 1
            continue
        got_rms, want_rms = frame_rms(pcm, RATE), frame_rms(want, 16000)
        checked += frame.epoch == 1 and want_rms > BURST_RMS / 2
        if abs(got_rms - want_rms) > 0.2 * BURST_RMS:
            wrong.append((frame.epoch, frame.index, round(want_rms), round(got_rms)))
    assert rest == 8 and checked >= 8
    assert not wrong, f"frames handed out with speech other than what drove them (epoch, index, rms wanted, rms " \
                      f"handed out): {wrong}"
