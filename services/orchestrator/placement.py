"""Placement and admission: each session gets one slot per stage. Per stage the session goes to the live worker with
the fewest sessions (a worker is the owner of the slot leases it holds), then to that worker's least-loaded slot.
Picking the worker first is what spreads sessions evenly: picking the least-loaded *slot* with random ties puts
sessions on workers in proportion to luck (3 to 1 over two workers is common). A worker that has just joined holds
no sessions, so new sessions go to it first; sessions already placed keep their slot (workers hand over their
emptiest slots when they rebalance, see ditto.bus.worker). Ties are broken by name and slot number, so placement is
deterministic for a given state. A slot serves at most `sessions_per_slot` sessions; when no slot has room the
session is refused with RESOURCE_EXHAUSTED and a retry hint. Placements are presence keys with a TTL refreshed by
the session."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ditto.bus import Bus

STAGES = ("audio_encoder", "motion_generator", "renderer")
PLACEMENT_TTL_S = 15


class NoCapacity(Exception):
    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


@dataclass
class Placement:
    slots: dict[str, int]

    def route(self, bus: Bus, frames_stream: str) -> dict[str, str]:
        r = {stage: bus.slot_stream(stage, slot) for stage, slot in self.slots.items()}
        r["frames"] = frames_stream
        return r


def choose_slot(owners: dict[int, str], load: dict[int, int], sessions_per_slot: int) -> int | None:
    """The slot for a new session: on the worker with the fewest sessions among those with a slot that has room,
    then that worker's least-loaded slot. `owners` maps each held slot to the worker holding it; `load` counts the
    sessions per slot. None when every held slot is full. Pure, so the rule is testable without any process."""
    per_worker: dict[str, int] = {}
    free: dict[str, list[int]] = {}
    for slot, owner in owners.items():
        n = load.get(slot, 0)
        per_worker[owner] = per_worker.get(owner, 0) + n
        if n < sessions_per_slot:
            free.setdefault(owner, []).append(slot)
    if not free:
        return None
    worker = min(free, key=lambda w: (per_worker[w], w))
    return min(free[worker], key=lambda s: (load.get(s, 0), s))


class Placer:
    def __init__(self, bus: Bus, slots: int, sessions_per_slot: int) -> None:
        self.bus = bus
        self.slots = slots
        self.sessions_per_slot = sessions_per_slot
        # Sessions admitted at the same moment must see each other's placement, or they all pick the same
        # least-loaded worker: one orchestrator places one session at a time.
        self._lock = asyncio.Lock()

    def _key(self, stage: str, slot: int | str, session_id: str) -> str:
        return self.bus.key("placement", stage, str(slot), session_id)

    async def slot_owners(self, stage: str) -> dict[int, str]:
        """Held slots and the worker holding each (the lease's value is the worker's id)."""
        owners: dict[int, str] = {}
        for slot in range(self.slots):
            owner = await self.bus.lease_owner(self.bus.lease_key(stage, slot))
            if owner is not None:
                owners[slot] = owner
        return owners

    async def held_slots(self, stage: str) -> list[int]:
        return sorted(await self.slot_owners(stage))

    async def load(self, stage: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for k in await self.bus.scan_keys(self.bus.key("placement", stage, "*")):
            slot = int(k.split(":")[-2])
            counts[slot] = counts.get(slot, 0) + 1
        return counts

    async def place(self, session_id: str) -> Placement:
        async with self._lock:
            return await self._place(session_id)

    async def _place(self, session_id: str) -> Placement:
        chosen: dict[str, int] = {}
        for stage in STAGES:
            owners = await self.slot_owners(stage)
            if not owners:
                raise NoCapacity(f"no {stage} worker is running; start one (ditto worker --stage {stage})", 2000)
            slot = choose_slot(owners, await self.load(stage), self.sessions_per_slot)
            if slot is None:
                raise NoCapacity(f"all {len(owners)} {stage} slots are full ({self.sessions_per_slot} sessions each); "
                                 "retry later or add workers", 1000)
            chosen[stage] = slot
        placement = Placement(chosen)
        await self.touch(session_id, placement)
        return placement

    async def touch(self, session_id: str, placement: Placement) -> None:
        for stage, slot in placement.slots.items():
            await self.bus.set_state(self._key(stage, slot, session_id), b"1", PLACEMENT_TTL_S)

    async def release(self, session_id: str, placement: Placement) -> None:
        for stage, slot in placement.slots.items():
            await self.bus.set_state(self._key(stage, slot, session_id), None)
