"""Faults on the Ditto side never crash the agent: a wrong API key, the server ending the session. (An unreachable
server and an unknown avatar: test_livekit_adapter.py, test_pipecat_adapter.py.) In every case the adapter logs one
clear error and the speech still comes out, without video."""

from __future__ import annotations

import asyncio

from agent_speech import pieces, speech_24k
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd
from serving_helpers import embedded_service, portrait_png, tenants_file
from test_pipecat_adapter import Bot, wait_until

from ditto_client import AsyncAvatarClient
from integrations.core import AvatarBridge, BridgeOptions
from integrations.livekit import DittoVideoGenerator
from integrations.pipecat import DittoVideoService
from services.orchestrator.tenants import TenantDirectory

RATE = 24000


async def _collect(gen: DittoVideoGenerator, out: list) -> None:
    async for item in gen:
        out.append(item)


async def test_wrong_api_key_leaves_the_livekit_agent_talking(tmp_path, caplog):
    keys = tenants_file(tmp_path / "keys.json", {"acme": {"key": "acme-key"}})
    async with embedded_service(tenants=TenantDirectory.from_file(keys)) as (stub, _):
        async with AsyncAvatarClient(stub.address, api_key="acme-key") as client:
            avatar = await client.register_avatar(portrait_png())
        gen = DittoVideoGenerator(AvatarBridge(BridgeOptions(stub.address, avatar.avatar_id,
                                                             api_key="not-the-key")))
        assert not await gen.bridge.start()
        assert "refused the API key" in gen.bridge.error and "not-the-key" not in gen.bridge.error
        out: list = []
        consumer = asyncio.create_task(_collect(gen, out))
        speech = speech_24k(0.4)
        for p in pieces(speech):
            await gen.push_audio(rtc.AudioFrame(p, RATE, 1, len(p) // 2))
        await gen.push_audio(AudioSegmentEnd())
        await wait_until(lambda: out and isinstance(out[-1], AudioSegmentEnd), 30)
        await gen.aclose()
        await consumer
    assert b"".join(bytes(i.data) for i in out if isinstance(i, rtc.AudioFrame)) == speech
    assert not any(isinstance(i, rtc.VideoFrame) for i in out)


async def test_server_ending_the_session_leaves_the_pipecat_bot_talking():
    async with embedded_service(max_duration_s=1) as (stub, _):
        async with AsyncAvatarClient(stub.address) as client:
            avatar = await client.register_avatar(portrait_png())
        service = DittoVideoService(address=stub.address, avatar_id=avatar.avatar_id)
        async with Bot(service) as bot:
            await wait_until(lambda: service.bridge is not None and service.bridge.error, 120)
            assert "DEADLINE_EXCEEDED" in service.bridge.error and "maximum duration" in service.bridge.error
            speech = speech_24k(0.4, seed=9)
            await bot.say(speech)
            from pipecat.frames.frames import TTSAudioRawFrame

            await wait_until(lambda: b"".join(f.audio for f in bot.sink.of(TTSAudioRawFrame)).endswith(speech), 30)
