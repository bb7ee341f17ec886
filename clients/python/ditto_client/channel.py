"""Channel options every client and server of the service uses: message size caps and keep-alive."""

from __future__ import annotations

from typing import Any

# The largest message either side accepts (avatar media and Render audio travel in one message).
DEFAULT_MAX_MESSAGE = 32 * 1024 * 1024


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
