"""Client of the Ditto talking-head service: `AvatarClient` (blocking), `AsyncAvatarClient` (asyncio), and the
generated stubs in `ditto_client.v1`. Depends on grpcio and protobuf only."""

from ditto_client.channel import DEFAULT_MAX_MESSAGE, channel_options, tls_credentials
from ditto_client.sdk import (
    EMOTIONS,
    AsyncAvatarClient,
    AvatarClient,
    ConverseStream,
    emotion_control,
    session_config,
)
from ditto_client.status import status_code

__all__ = ["DEFAULT_MAX_MESSAGE", "EMOTIONS", "AsyncAvatarClient", "AvatarClient", "ConverseStream",
           "channel_options", "emotion_control", "session_config", "status_code", "tls_credentials"]
