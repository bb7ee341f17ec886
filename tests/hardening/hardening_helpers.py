"""Helpers of the hardening tests: the hostile inputs and memory readings of `tools.hostile`, and tests/serving on
the import path (its `serving_helpers` run an in-process service)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from tools.hostile import (  # noqa: E402
    MB,
    MemoryReading,
    ServerProcess,
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

__all__ = ["MB", "MemoryReading", "ServerProcess", "channel", "ditto_serve", "huge_png", "measure", "peak_mb",
           "reset_peak", "rss_mb", "silent_flac", "static_video"]
