"""Placement and admission: each session gets one slot per stage. Per stage the session goes to the live worker with
the fewest sessions (a worker is the owner of the slot leases it holds), then to that worker's least-loaded slot.
Picking the worker first is what spreads sessions evenly: picking the least-loaded *slot* with random ties puts
sessions on workers in proportion to luck (3 to 1 over two workers is common). A worker that has just joined holds
no sessions, so new sessions go to it first; sessions already placed keep their slot (workers hand over their
idlest slots when they rebalance, see ditto.bus.worker). Ties are broken by name and slot number.

The order of preference is computed here from a snapshot; the choice itself happens inside `Bus.admit`, atomically
with the tenant's quota check: the first preferred slot that is still held and has room (else the least-loaded held
slot). A slot serves at most `sessions_per_slot` sessions; when no slot has room the session is refused with
RESOURCE_EXHAUSTED and a retry hint. Placements are live members with a TTL refreshed by the session."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from ditto import pipeline
from ditto.bus import Bus
from ditto.bus.base import Admission, AdmissionRequest, StageSlots
from services.orchestrator.errors import ApiError

PLACEMENT_TTL_S = 15


class NoCapacity(ApiError):
    """No live worker, or no room, for a stage: RESOURCE_EXHAUSTED, to retry after `retry_after_ms`."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{message} (retry after {retry_after_ms} ms)",
                         retry_after_ms)


@dataclass
class Placement:
    slots: dict[str, int]

    def route(self, bus: Bus, frames_stream: str) -> dict[str, str]:
        r = {stage: bus.keys.slot_stream(stage, slot) for stage, slot in self.slots.items()}
        r["frames"] = frames_stream
        return r


def slot_preference(owners: dict[int, str], load: dict[int, int], sessions_per_slot: int) -> list[int]:
    """The slots with room, best first: workers by their number of sessions (then name), each worker's slots by
    their load (then number). `owners` maps each held slot to the worker holding it; `load` counts the sessions per
    slot. Pure, so the rule is testable without any process."""
    per_worker: dict[str, int] = {}
    for slot, owner in owners.items():
        per_worker[owner] = per_worker.get(owner, 0) + load.get(slot, 0)
    free = [slot for slot in owners if load.get(slot, 0) < sessions_per_slot]
    return sorted(free, key=lambda s: (per_worker[owners[s]], owners[s], load.get(s, 0), s))


def choose_slot(owners: dict[int, str], load: dict[int, int], sessions_per_slot: int) -> int | None:
    """The slot for a new session (the first of `slot_preference`), None when every held slot is full."""
    preference = slot_preference(owners, load, sessions_per_slot)
    return preference[0] if preference else None


class Placer:
    """Placements live in one live-member set per stage (`Keys.placements`, members `"<slot>:<session>"`) and the
    slots workers hold in another (`Keys.held_slots`), all under the admission hash tag (ditto.keys): admission reads
    those sets and the slots' leases, so its cost does not grow with unrelated keys in the store."""

    def __init__(self, bus: Bus, slots: int, sessions_per_slot: int) -> None:
        self.bus = bus
        self.slots = slots
        self.sessions_per_slot = sessions_per_slot
        self._lock = asyncio.Lock()  # one admission at a time through this placer (see `admit`)

    def load_key(self, stage: str) -> str:
        return self.bus.keys.placements(stage)

    async def stage_slots(self) -> tuple[StageSlots, ...]:
        """Where admission looks for each stage's capacity (every stage of the pipeline), with the preferred slots
        in order."""
        out = []
        for stage in pipeline.active().names:
            held = await self.held_slots(stage)
            owners = await self.slot_owners(stage, held)
            preference = slot_preference(owners, await self.load(stage), self.sessions_per_slot)
            out.append(StageSlots(stage, self.bus.keys.held_slots(stage), self.load_key(stage), tuple(preference)))
        return tuple(out)

    async def slot_owners(self, stage: str, held: list[int] | None = None) -> dict[int, str]:
        """Held slots and the worker holding each (the lease's value is the worker's id)."""
        owners: dict[int, str] = {}
        for slot in held if held is not None else await self.held_slots(stage):
            owner = await self.bus.lease_owner(self.bus.keys.lease(stage, slot))
            if owner is not None:
                owners[slot] = owner
        return owners

    async def held_slots(self, stage: str) -> list[int]:
        members = await self.bus.live_members(self.bus.keys.held_slots(stage))
        return sorted(int(m) for m in members if int(m) < self.slots)

    async def live_workers(self, stage: str) -> list[str]:
        """The ids of the stage's running workers (their presence on the bus, renewed with their leases)."""
        return await self.bus.live_members(self.bus.keys.workers(stage))

    async def load(self, stage: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for m in await self.bus.live_members(self.load_key(stage)):
            slot = int(m.split(":", 1)[0])
            counts[slot] = counts.get(slot, 0) + 1
        return counts

    async def admit(self, session_id: str, *, sessions_key: str, max_sessions: int, used_key: str,
                    max_seconds: float, ttl_ms: int) -> Admission:
        """One atomic admission (quota and one slot per stage, see `Bus.admit`). Admissions through this placer
        take turns, so sessions admitted at the same moment each see the placements before theirs and spread."""
        async with self._lock:
            return await self.bus.admit(AdmissionRequest(
                session_id=session_id, sessions_key=sessions_key, max_sessions=max_sessions, used_key=used_key,
                max_seconds=max_seconds, stages=await self.stage_slots(), slots=self.slots,
                per_slot=self.sessions_per_slot, ttl_ms=ttl_ms))

    async def place(self, session_id: str) -> Placement:
        """Capacity only, no tenant quota (what the quota-free callers and the placement tests use); raises
        NoCapacity with a retry hint when a stage has no worker or no room."""
        admission = await self.admit(session_id, sessions_key=self.bus.keys.unmetered_sessions(), max_sessions=1 << 30,
                                     used_key=self.bus.keys.unmetered_seconds_used(), max_seconds=0,
                                     ttl_ms=PLACEMENT_TTL_S * 1000)
        if admission.refused:
            raise self.refusal(admission)
        return Placement(admission.slots)

    def refusal(self, admission: Admission) -> NoCapacity:
        stage = admission.stage
        if admission.refused == "no_worker":
            return NoCapacity(f"no {stage} worker is running; start one (ditto worker --stage {stage})", 2000)
        return NoCapacity(f"all {admission.count} {stage} slots are full ({self.sessions_per_slot} sessions each); "
                          "retry later or add workers", 1000)

    async def touch(self, session_id: str, placement: Placement) -> None:
        for stage, slot in placement.slots.items():
            await self.bus.touch_member(self.load_key(stage), f"{slot}:{session_id}", PLACEMENT_TTL_S * 1000)

    async def release(self, session_id: str, placement: Placement) -> None:
        for stage, slot in placement.slots.items():
            await self.bus.remove_member(self.load_key(stage), f"{slot}:{session_id}")
