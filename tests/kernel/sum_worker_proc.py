"""Runs the RunningSum stage as its own process on a Redis bus, until killed."""

from __future__ import annotations

import argparse
import asyncio

from sum_stage import RunningSum

from ditto.bus import RedisBus
from ditto.bus.worker import SlotWorker, WorkerSettings


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--redis", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--owner", required=True)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--ttl-ms", type=int, default=600)
    p.add_argument("--delay", type=float, default=0.02)
    a = p.parse_args()
    bus = RedisBus(a.redis, a.prefix)
    worker = SlotWorker(bus, RunningSum(a.delay), a.owner,
                        WorkerSettings(slots=a.slots, lease_ttl_ms=a.ttl_ms, block_ms=50, batch_entries=4))
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
