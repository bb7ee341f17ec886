"""A face for LiveKit Agents, following `livekit.agents.voice.avatar`'s contract (needs `pip install '.[livekit]'`).

Agent side: `DittoAvatarSession` mints the avatar participant's token, asks our dispatcher (`ditto livekit-worker`)
for a worker in the room, and routes the agent's speech to it over the `lk.audio_stream` byte stream. Worker side:
`run_avatar_worker` joins the room, turns the speech into one Converse session (`DittoVideoGenerator`) and publishes
synchronized video and audio with LiveKit's `AvatarRunner`.

The names are loaded on first use, so `integrations.livekit.cli` (and `ditto --help`) imports without the extra.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DittoAvatarSession": "integrations.livekit.avatar",
    "AVATAR_KIND": "integrations.livekit.token",
    "mint_avatar_token": "integrations.livekit.token",
    "DittoVideoGenerator": "integrations.livekit.video",
    "run_avatar_worker": "integrations.livekit.worker",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'integrations.livekit' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
