"""Channel options every client and server of the service uses: message size caps and keep-alive."""

from __future__ import annotations

from pathlib import Path
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


def tls_credentials(root_cert: bytes | str | Path | None = None, client_cert: bytes | str | Path | None = None,
                    client_key: bytes | str | Path | None = None) -> Any:
    """Channel credentials for a server on TLS: `root_cert` is the CA to trust (PEM bytes or a file; None = the
    system roots); `client_cert` + `client_key` when the server asks for a client certificate (mutual TLS)."""
    import grpc

    def pem(v: bytes | str | Path | None) -> bytes | None:
        return None if v is None else v if isinstance(v, bytes) else Path(v).read_bytes()

    if (client_cert is None) != (client_key is None):
        raise ValueError("give both client_cert and client_key, or neither")
    return grpc.ssl_channel_credentials(pem(root_cert), pem(client_key), pem(client_cert))
