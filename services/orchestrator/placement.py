"""Placement and admission: each session gets one slot per stage, on a slot a live worker holds, least loaded
first. A slot serves at most `sessions_per_slot` sessions; when no slot has room the session is refused with
RESOURCE_EXHAUSTED and a retry hint. Placements are live members with a TTL refreshed by the session."""

from __future__ import annotations

from dataclasses import dataclass

from ditto.bus import Bus
from ditto.bus.base import Admission, StageSlots
from ditto.bus.worker import held_slots_key

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


class Placer:
    """Placements live in one live-member set per stage (`<prefix>:placement:<stage>`, members `"<slot>:<session>"`)
    and the slots workers hold in another (`<prefix>:<stage>:held`): admission reads those two sets, so its cost does
    not grow with unrelated keys in the store. The choice itself happens inside `Bus.admit`, atomically with the
    tenant's quota check."""

    def __init__(self, bus: Bus, slots: int, sessions_per_slot: int) -> None:
        self.bus = bus
        self.slots = slots
        self.sessions_per_slot = sessions_per_slot

    def load_key(self, stage: str) -> str:
        return self.bus.key("placement", stage)

    def stage_slots(self) -> tuple[StageSlots, ...]:
        return tuple(StageSlots(stage, held_slots_key(self.bus, stage), self.load_key(stage)) for stage in STAGES)

    async def held_slots(self, stage: str) -> list[int]:
        members = await self.bus.live_members(held_slots_key(self.bus, stage))
        return sorted(int(m) for m in members if int(m) < self.slots)

    async def load(self, stage: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for m in await self.bus.live_members(self.load_key(stage)):
            slot = int(m.split(":", 1)[0])
            counts[slot] = counts.get(slot, 0) + 1
        return counts

    async def missing_stages(self) -> list[str]:
        """The stages no live worker serves now (no slot of theirs is held): sessions cannot start until it is []."""
        return [stage for stage in STAGES if not await self.held_slots(stage)]

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
