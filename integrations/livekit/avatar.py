"""Agent side: `DittoAvatarSession`, an `AvatarSession` in the style of LiveKit's avatar plugins.

    avatar = DittoAvatarSession(avatar_id="...", dispatcher_url="http://127.0.0.1:8089")
    await avatar.start(session, room=ctx.room)
"""

from __future__ import annotations

import os

import aiohttp
from livekit import rtc
from livekit.agents import AgentSession, get_job_context
from livekit.agents.voice.avatar import AvatarSession, DataStreamAudioOutput

from ditto import telemetry
from integrations.livekit.token import mint_avatar_token

log = telemetry.get_logger("ditto.integrations.livekit")


class DittoAvatarSession(AvatarSession):
    """Starts a Ditto avatar worker for this room and sends the agent's speech to it.

    If the worker cannot be started (dispatcher down, refused, no LiveKit keys), it logs why and leaves the agent's
    audio output as it was: the agent goes on talking, without a face.
    """

    def __init__(self, *, avatar_id: str | None = None, dispatcher_url: str | None = None,
                 dispatch_secret: str | None = None, avatar_identity: str = "ditto-avatar",
                 avatar_name: str = "Ditto avatar", sample_rate: int = 24000, livekit_url: str | None = None,
                 api_key: str | None = None, api_secret: str | None = None, timeout_s: float = 10.0) -> None:
        super().__init__()
        self.avatar_id = avatar_id or os.environ.get("DITTO_AVATAR_ID")
        self.dispatcher_url = (dispatcher_url or os.environ.get("DITTO_LIVEKIT_DISPATCHER_URL")
                               or "http://127.0.0.1:8089").rstrip("/")
        self._dispatch_secret = dispatch_secret or os.environ.get("DITTO_LIVEKIT_DISPATCH_SECRET")
        self._identity = avatar_identity
        self._name = avatar_name
        self.sample_rate = sample_rate
        self._livekit_url = livekit_url or os.environ.get("LIVEKIT_URL")
        self._api_key = api_key or os.environ.get("LIVEKIT_API_KEY")
        self._api_secret = api_secret or os.environ.get("LIVEKIT_API_SECRET")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.face = False
        self.error: str | None = None

    @property
    def avatar_identity(self) -> str:
        return self._identity

    @property
    def provider(self) -> str:
        return "ditto"

    async def start(self, agent_session: AgentSession, room: rtc.Room) -> None:
        await super().start(agent_session, room)
        try:
            job = get_job_context(required=False)
            agent_identity = job.local_participant_identity if job is not None else room.local_participant.identity
            if not self._livekit_url:
                raise ValueError("no LiveKit URL: pass livekit_url or set LIVEKIT_URL")
            token = mint_avatar_token(api_key=self._api_key or "", api_secret=self._api_secret or "",
                                      room_name=room.name, avatar_identity=self._identity,
                                      agent_identity=agent_identity, name=self._name)
            body = {"livekit_url": self._livekit_url, "token": token, "room_name": room.name,
                    "agent_identity": agent_identity, "avatar_identity": self._identity,
                    "sample_rate": self.sample_rate}
            if self.avatar_id:
                body["avatar_id"] = self.avatar_id
            headers = {"Authorization": f"Bearer {self._dispatch_secret}"} if self._dispatch_secret else {}
            async with aiohttp.ClientSession(timeout=self._timeout) as http, \
                    http.post(f"{self.dispatcher_url}/v1/sessions", json=body, headers=headers) as resp:
                if resp.status != 202:
                    raise RuntimeError(f"the Ditto dispatcher at {self.dispatcher_url} answered {resp.status}: "
                                       f"{(await resp.text())[:300]}")
        except Exception as err:
            self.error = str(err)
            log.error("no avatar for this agent session; the agent goes on with audio only", reason=str(err),
                      room=room.name)
            return
        agent_session.output.replace_audio_tail(DataStreamAudioOutput(
            room, destination_identity=self._identity, sample_rate=self.sample_rate,
            wait_remote_track=rtc.TrackKind.KIND_VIDEO))
        self.face = True
        log.info("avatar requested", room=room.name, avatar=self.avatar_id, identity=self._identity)
