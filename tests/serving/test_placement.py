"""Placement on real Redis state: sessions spread evenly over the live workers of each stage, a worker that joins
gets the new sessions first, placed sessions stay where they are, and admission refuses when every slot is full."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from ditto.bus import RedisBus
from ditto.pipeline import PIPELINE
from services.orchestrator.placement import NoCapacity, Placer, choose_slot

SLOTS = 8
TTL_MS = 60_000  # leases written by the test stand still: nothing renews them, nothing should expire mid-test


@pytest.fixture
async def bus(redis_url, unique_prefix):
    b = RedisBus(redis_url, unique_prefix)
    yield b
    await b.purge()
    await b.close()


async def hold(bus: RedisBus, owner: str, slots: range, stages=PIPELINE.names) -> None:
    """What a live worker leaves in Redis: one lease per slot it holds, with its id as the value, and the slot in
    the stage's live-member set of held slots."""
    for stage in stages:
        for slot in slots:
            assert await bus.acquire_lease(bus.keys.lease(stage, slot), owner, TTL_MS)
            await bus.touch_member(bus.keys.held_slots(stage), str(slot), TTL_MS)


async def per_worker(bus: RedisBus, placer: Placer, stage: str) -> Counter:
    owners = await placer.slot_owners(stage)
    load = await placer.load(stage)
    counts: Counter = Counter()
    for slot, n in load.items():
        counts[owners[slot]] += n
    return counts


def test_choose_slot_picks_the_least_loaded_worker_then_its_least_loaded_slot():
    owners = {0: "a", 1: "a", 2: "a", 3: "b", 4: "b"}
    # Slot-wise 2 (a) and 4 (b) tie at zero, but worker a carries 3 sessions and b 1: b, then its empty slot 4.
    assert choose_slot(owners, {0: 2, 1: 1, 3: 1}, 4) == 4
    assert choose_slot(owners, {0: 1, 3: 1}, 4) == 1  # equal workers: by name, then the emptiest slot
    # b carries more sessions than a but only a has room: a full worker is never chosen.
    assert choose_slot(owners, {0: 3, 1: 3, 2: 3, 3: 4, 4: 4}, 4) == 0
    assert choose_slot(owners, {0: 1, 1: 1, 2: 1, 3: 4, 4: 3}, 4) == 0  # a: 3 sessions, b: 7
    assert choose_slot(owners, {0: 4, 1: 4, 2: 4, 3: 1, 4: 1}, 4) == 3  # a is full
    assert choose_slot(owners, {s: 4 for s in owners}, 4) is None
    assert choose_slot({}, {}, 4) is None


async def test_sessions_spread_evenly_over_two_workers(bus):
    await hold(bus, "worker-a", range(0, 4))
    await hold(bus, "worker-b", range(4, 8))
    placer = Placer(bus, SLOTS, sessions_per_slot=4)
    for i in range(8):
        await placer.place(f"s{i}")
    for stage in PIPELINE.names:
        assert await per_worker(bus, placer, stage) == Counter({"worker-a": 4, "worker-b": 4}), stage
        assert sorted((await placer.load(stage)).values()) == [1] * 8, f"{stage}: every slot gets one first"


async def test_sessions_admitted_at_once_still_spread_evenly(bus):
    await hold(bus, "worker-a", range(0, 4))
    await hold(bus, "worker-b", range(4, 8))
    placer = Placer(bus, SLOTS, sessions_per_slot=4)
    placements = await asyncio.gather(*(placer.place(f"s{i}") for i in range(6)))
    for stage in PIPELINE.names:
        assert await per_worker(bus, placer, stage) == Counter({"worker-a": 3, "worker-b": 3}), stage
    assert len({p.slots["renderer"] for p in placements}) == 6


async def test_a_worker_that_joins_gets_new_sessions_and_placed_ones_stay(bus):
    await hold(bus, "worker-a", range(0, 4))
    placer = Placer(bus, SLOTS, sessions_per_slot=4)
    before = {f"old{i}": await placer.place(f"old{i}") for i in range(4)}
    await hold(bus, "worker-b", range(4, 8))  # joins with slots nobody held (a keeps the slots its sessions use)
    after = [await placer.place(f"new{i}") for i in range(6)]
    for stage in PIPELINE.names:
        owners = await placer.slot_owners(stage)
        # The first 4 new sessions all go to the newcomer, then the two workers alternate.
        assert [owners[p.slots[stage]] for p in after] == ["worker-b"] * 4 + ["worker-a", "worker-b"], stage
        load = await placer.load(stage)
        for p in before.values():
            assert owners[p.slots[stage]] == "worker-a" and load[p.slots[stage]] >= 1  # still there


async def test_released_sessions_free_their_worker(bus):
    await hold(bus, "worker-a", range(0, 4))
    await hold(bus, "worker-b", range(4, 8))
    placer = Placer(bus, SLOTS, sessions_per_slot=4)
    first = [await placer.place(f"s{i}") for i in range(4)]
    owners = await placer.slot_owners("renderer")
    on_a = [p for p in first if owners[p.slots["renderer"]] == "worker-a"]
    for p, sid in zip(first, [f"s{i}" for i in range(4)], strict=True):
        if p in on_a:
            await placer.release(sid, p)
    nxt = [await placer.place(f"t{i}") for i in range(2)]
    assert all(owners[p.slots["renderer"]] == "worker-a" for p in nxt)


async def test_full_and_missing_workers_are_refused_with_a_hint(bus):
    placer = Placer(bus, SLOTS, sessions_per_slot=1)
    with pytest.raises(NoCapacity, match="no audio_encoder worker is running") as err:
        await placer.place("s")
    assert err.value.retry_after_ms > 0
    await hold(bus, "worker-a", range(0, 2))
    for i in range(2):
        await placer.place(f"s{i}")
    with pytest.raises(NoCapacity, match="slots are full") as err:
        await placer.place("s-over")
    assert err.value.retry_after_ms > 0
