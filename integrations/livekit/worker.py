"""The avatar worker for one room: join, receive the agent's speech, publish the face with `AvatarRunner`."""

from __future__ import annotations

import asyncio
import contextlib

from livekit import rtc
from livekit.agents.voice.avatar import AvatarOptions, AvatarRunner, DataStreamAudioReceiver

from ditto import telemetry
from ditto_client.timeline import FPS
from integrations.core import AvatarBridge, BridgeOptions
from integrations.livekit.video import DittoVideoGenerator

log = telemetry.get_logger("ditto.integrations.livekit")

FACELESS_SIZE = (512, 512)  # the video track's size when the service gave no face: nothing is ever drawn on it


async def run_avatar_worker(livekit_url: str, token: str, options: BridgeOptions, *, sample_rate: int = 24000,
                            agent_identity: str | None = None, connect_timeout_s: float = 20.0) -> None:
    """Serve one agent session until the agent leaves the room or the room closes. Returns, never raises, when
    the Ditto service fails (the runner then forwards the speech without video)."""
    room = rtc.Room()
    left = asyncio.Event()

    def on_participant_left(p: rtc.RemoteParticipant) -> None:
        if agent_identity is None or p.identity == agent_identity:
            left.set()

    room.on("participant_disconnected", on_participant_left)
    room.on("disconnected", lambda *_: left.set())
    await room.connect(livekit_url, token, rtc.RoomOptions(connect_timeout=connect_timeout_s))
    bridge = AvatarBridge(options)
    runner: AvatarRunner | None = None
    try:
        await bridge.start()
        width, height = (bridge.width, bridge.height) if bridge.face else FACELESS_SIZE
        runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room, sender_identity=agent_identity),
                              video_gen=DittoVideoGenerator(bridge),
                              options=AvatarOptions(video_width=width, video_height=height, video_fps=FPS,
                                                    audio_sample_rate=sample_rate, audio_channels=1))
        await runner.start()
        log.info("avatar worker joined", room=room.name, face=bridge.face)
        done = asyncio.create_task(runner.wait_for_complete())
        leave = asyncio.create_task(left.wait())
        await asyncio.wait({done, leave}, return_when=asyncio.FIRST_COMPLETED)
        for t in (done, leave):
            t.cancel()
    finally:
        if runner is not None:
            with contextlib.suppress(Exception):
                await runner.aclose()
        await bridge.aclose()
        with contextlib.suppress(Exception):
            await room.disconnect()
        log.info("avatar worker left", room=room.name)
