"""The avatar participant's LiveKit access token."""

from __future__ import annotations

import datetime
from typing import Final, Literal

from livekit import api
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF

# the avatar worker joins as an agent participant, as LiveKit's avatar plugins do
AVATAR_KIND: Final[Literal["agent"]] = "agent"


def mint_avatar_token(*, api_key: str, api_secret: str, room_name: str, avatar_identity: str,
                      agent_identity: str, name: str | None = None,
                      ttl: datetime.timedelta = datetime.timedelta(hours=6)) -> str:
    """A JWT that lets the avatar join `room_name` as `avatar_identity` and publish for `agent_identity`.

    `lk.publish_on_behalf` tells the agent's room I/O and clients that the avatar's tracks are the agent's.
    """
    if not api_key or not api_secret:
        raise ValueError("minting an avatar token needs the LiveKit API key and secret (LIVEKIT_API_KEY, "
                         "LIVEKIT_API_SECRET)")
    return (api.AccessToken(api_key, api_secret)
            .with_identity(avatar_identity)
            .with_name(name or avatar_identity)
            .with_kind(AVATAR_KIND)
            .with_ttl(ttl)
            .with_grants(api.VideoGrants(room_join=True, room=room_name, can_publish=True, can_subscribe=True))
            .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: agent_identity})
            .to_jwt())
