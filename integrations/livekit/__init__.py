"""A face for LiveKit Agents, following `livekit.agents.voice.avatar`'s contract (needs `pip install '.[livekit]'`).

Agent side: `DittoAvatarSession` mints the avatar participant's token, asks our dispatcher (`ditto livekit-worker`)
for a worker in the room, and routes the agent's speech to it over the `lk.audio_stream` byte stream. Worker side:
`run_avatar_worker` joins the room, turns the speech into one Converse session (`DittoVideoGenerator`) and publishes
synchronized video and audio with LiveKit's `AvatarRunner`.
"""

from integrations.livekit.avatar import DittoAvatarSession
from integrations.livekit.token import AVATAR_KIND, mint_avatar_token
from integrations.livekit.video import DittoVideoGenerator
from integrations.livekit.worker import run_avatar_worker

__all__ = ["AVATAR_KIND", "DittoAvatarSession", "DittoVideoGenerator", "mint_avatar_token", "run_avatar_worker"]
