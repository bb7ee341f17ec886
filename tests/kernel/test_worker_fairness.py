"""Fair service inside one worker, on both buses: each batch takes the next entry of every session that has one, so a
session with a backlog cannot hold back one that arrives later; and a worker that gives slots to a newcomer gives
the idle ones, so the sessions it serves stay on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from sum_stage import STAGE, RunningSum
from test_bus_contract import _wait_for, entry

from ditto.bus import Bus
from ditto.bus.worker import SlotWorker, WorkerSettings, WorkItem, WorkResult


class Recording(RunningSum):
    """RunningSum that records which sessions each batch served and, after its first batch, lets a second session
    speak: its entries arrive while the first session's backlog is being worked off."""

    def __init__(self, bus: Bus, late_stream: str, out: str) -> None:
        super().__init__()
        self.bus, self.late_stream, self.out = bus, late_stream, out
        self.batches: list[list[str]] = []

    async def process(self, items: Sequence[WorkItem]) -> list[WorkResult]:
        self.batches.append([it.entry.session_id for it in items])
        if len(self.batches) == 1:
            for seq in range(3):
                await self.bus.publish(self.late_stream, entry("late", seq, 1, out_stream=self.out))
        return await super().process(items)


async def test_a_late_session_is_served_in_the_next_batches_not_after_a_backlog(bus):
    out = bus.keys.key("out")
    backlog, late = bus.keys.slot_stream(STAGE, 0), bus.keys.slot_stream(STAGE, 1)
    for s in (backlog, late):
        await bus.ensure_group(s, STAGE)
    for seq in range(30):
        await bus.publish(backlog, entry("busy", seq, 1, out_stream=out))
    handler = Recording(bus, late, out)
    worker = SlotWorker(bus, handler, "w1", WorkerSettings(slots=2, lease_ttl_ms=5000, block_ms=20))
    task = asyncio.create_task(worker.run())
    await _wait_for(bus, out, 33, 20)
    await worker.stop()
    await task
    late_batches = [i for i, b in enumerate(handler.batches) if "late" in b]
    assert late_batches == [1, 2, 3], f"the late session waited behind the backlog: batches {handler.batches}"
    assert all(b.count("busy") == 1 for b in handler.batches), "one entry per session per batch"


async def test_a_joining_worker_gets_the_idle_slots_and_busy_ones_stay(bus):
    out = bus.keys.key("out")
    settings = WorkerSettings(slots=4, lease_ttl_ms=5000, block_ms=20, rebalance_every_s=0.05)
    first = SlotWorker(bus, RunningSum(), "w1", settings)
    tasks = [asyncio.create_task(first.run())]
    deadline = time.monotonic() + 20
    while len(first.held) < 4:
        assert time.monotonic() < deadline, f"a lone worker should take every slot, holds {first.held}"
        await asyncio.sleep(0.02)
    busy = bus.keys.slot_stream(STAGE, 3)  # the highest slot: the one handed over first when recency is ignored
    await bus.ensure_group(busy, STAGE)
    for seq in range(3):
        await bus.publish(busy, entry("placed", seq, 1, out_stream=out))
    await _wait_for(bus, out, 3, 20)
    second = SlotWorker(bus, RunningSum(), "w2", settings)
    tasks.append(asyncio.create_task(second.run()))
    while not (len(first.held) == 2 and len(second.held) == 2):
        assert time.monotonic() < deadline, f"slots not shared: {first.held} / {second.held}"
        await asyncio.sleep(0.02)
    held_first = set(first.held)
    await second.stop()
    await first.stop()
    await asyncio.gather(*tasks)
    assert 3 in held_first, f"the slot with a session moved to the newcomer: w1 kept {held_first}"
