"""Helpers of the hardening tests: the whole service in this process on a loopback gRPC port, over the bus a test
chooses (in memory, or a real Redis), with real stage code (tiny profile, synthetic weights), the real orchestrator
and gRPC server; and the hostile inputs and memory readings of `tools.hostile`. tests/serving is put on the import
path (its `serving_helpers` run an in-process service)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import grpc

from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_helpers import config, portrait_png, speech_pcm16, tenants_file  # noqa: E402,F401

from ditto import rpc  # noqa: E402
from ditto.bus import Bus  # noqa: E402
from ditto.config import load_settings  # noqa: E402
from ditto_app.stack import EmbeddedStack  # noqa: E402
from ditto_app.synthetic import ensure_synthetic  # noqa: E402
from services.orchestrator.config import OrchestratorSettings  # noqa: E402
from services.orchestrator.service import AvatarService  # noqa: E402
from services.orchestrator.tenants import TenantDirectory  # noqa: E402
from tools.hostile import (  # noqa: E402,F401
    MB,
    MemoryReading,
    channel,
    ditto_serve,
    huge_png,
    measure,
    peak_mb,
    reset_peak,
    rss_mb,
    silent_flac,
    static_video,
)


@contextlib.asynccontextmanager
async def service_over(bus: Bus, tenants: TenantDirectory | None = None, slots: int = 4, **settings):
    weights = ensure_synthetic("tiny")
    s = load_settings(OrchestratorSettings, **settings)
    assert isinstance(s, OrchestratorSettings)
    s.bus.slots = slots
    stack = EmbeddedStack(weights, "tiny", s, "cpu", "torch", tenants=tenants, bus=bus)
    orch = await stack.start()
    service = rpc.Service(avatar_pb2_grpc.add_AvatarServicer_to_server, AvatarService(orch),
                          rpc.service_name(avatar_pb2, "Avatar"))
    server = await rpc.start_server([service])
    client_channel = grpc.aio.insecure_channel(server.address, options=rpc.channel_options())
    try:
        yield avatar_pb2_grpc.AvatarStub(client_channel), orch
    finally:
        await client_channel.close()
        await server.stop(1)
        await stack.stop()


async def register(address: str, media: bytes, filename: str = "", metadata=()) -> avatar_pb2.RegisterAvatarResponse:
    """RegisterAvatar on the server at `address`, over a channel of its own."""
    async with channel(address) as ch:
        return await avatar_pb2_grpc.AvatarStub(ch).RegisterAvatar(
            avatar_pb2.RegisterAvatarRequest(media=media, filename=filename), metadata=metadata, timeout=120)
