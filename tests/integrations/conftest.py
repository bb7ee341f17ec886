"""A real Ditto service for the adapters (the whole `ditto serve` stack on a loopback port: tiny profile, synthetic
weights), an avatar registered on it, and speech to send."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_helpers import embedded_service, portrait_png, speech_pcm16  # noqa: E402


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


def speech_24k(seconds: float, seed: int = 0) -> bytes:
    """Voice-like PCM16 mono at 24 kHz, the rate LiveKit and most TTS engines hand out."""
    pcm16k = np.frombuffer(speech_pcm16(seconds, seed=seed), "<i2")
    return soxr.resample(pcm16k, 16000, 24000).astype("<i2").tobytes()


def pieces(pcm: bytes, ms: int = 100, rate: int = 24000) -> list[bytes]:
    step = rate * ms // 1000 * 2
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]
