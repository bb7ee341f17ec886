"""A LiveKit voice agent with a Ditto face. Copy it, fill in your STT/LLM/TTS, run it like any LiveKit agent:

    pip install 'ditto-service[livekit]' livekit-plugins-openai livekit-plugins-silero
    ditto serve &                                           # the Ditto service (or point at yours)
    ditto livekit-worker --avatar AVATAR_ID &               # starts the avatar worker for each room
    LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... python examples/livekit_agent.py dev

The avatar id comes from registering a portrait once: `AvatarClient(address).register_avatar("me.jpg").avatar_id`.
Not run against a LiveKit server on the machine this was written on (none can run there); the avatar side's pieces
are tested against a real Ditto service in tests/integrations/.
"""

from __future__ import annotations

import os

from livekit.agents import Agent, AgentSession, JobContext, WorkerOptions, cli

from integrations.livekit import DittoAvatarSession


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    session = AgentSession(
        # your pipeline, e.g. stt=openai.STT(), llm=openai.LLM(), tts=openai.TTS(), vad=silero.VAD.load()
    )
    # the three lines that add the face:
    avatar = DittoAvatarSession(avatar_id=os.environ["DITTO_AVATAR_ID"],
                                dispatcher_url=os.environ.get("DITTO_LIVEKIT_DISPATCHER_URL", "http://127.0.0.1:8089"))
    await avatar.start(session, room=ctx.room)
    await session.start(agent=Agent(instructions="You are a friendly assistant with a face."), room=ctx.room)


if __name__ == "__main__":
    cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint))
