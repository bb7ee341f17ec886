"""A real Ditto service for the adapters (the whole `ditto serve` stack on a loopback port: tiny profile, synthetic
weights), an avatar registered on it, and speech to send."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_helpers import embedded_service, portrait_png  # noqa: E402


@dataclass
class DittoServer:
    address: str
    avatar_id: str
    width: int
    height: int


@pytest.fixture
async def ditto_server():
    from ditto_client import AsyncAvatarClient

    async with embedded_service() as (stub, _):
        async with AsyncAvatarClient(stub.address) as client:
            avatar = await client.register_avatar(portrait_png())
        yield DittoServer(stub.address, avatar.avatar_id, avatar.width, avatar.height)
