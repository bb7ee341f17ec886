"""Fixtures of the hardening tests: both buses (in memory, and a real Redis under a private prefix), private
redis-server processes for tests that kill Redis or count its commands."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))  # the RunningSum test stage
sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_processes import PrivateRedis  # noqa: E402


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    r = PrivateRedis()
    try:
        yield r
    finally:
        r.stop()
