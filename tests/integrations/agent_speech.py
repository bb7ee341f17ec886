"""Speech as voice-agent frameworks hand it out, for the adapter tests (a module of its own: test modules import it,
never `conftest`, whose name other test folders share)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_helpers import speech_pcm16  # noqa: E402


def speech_24k(seconds: float, seed: int = 0) -> bytes:
    """Voice-like PCM16 mono at 24 kHz, the rate LiveKit and most TTS engines hand out."""
    pcm16k = np.frombuffer(speech_pcm16(seconds, seed=seed), "<i2")
    return soxr.resample(pcm16k, 16000, 24000).astype("<i2").tobytes()


def pieces(pcm: bytes, ms: int = 100, rate: int = 24000) -> list[bytes]:
    step = rate * ms // 1000 * 2
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]
