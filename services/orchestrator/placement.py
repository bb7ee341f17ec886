"""Placement and admission: each session gets one slot per stage, on a slot a live worker holds, least loaded
first. A slot serves at most `sessions_per_slot` sessions; when no slot has room the session is refused with
RESOURCE_EXHAUSTED and a retry hint. Placements are presence keys with a TTL refreshed by the session."""

from __future__ import annotations

import random
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


class Placer:
    def __init__(self, bus: Bus, slots: int, sessions_per_slot: int) -> None:
        self.bus = bus
        self.slots = slots
        self.sessions_per_slot = sessions_per_slot

    def _key(self, stage: str, slot: int | str, session_id: str) -> str:
        return self.bus.key("placement", stage, str(slot), session_id)

    async def held_slots(self, stage: str) -> list[int]:
        keys = await self.bus.scan_keys(self.bus.key(stage, "lease", "*"))
        return sorted(int(k.rsplit(":", 1)[1]) for k in keys if int(k.rsplit(":", 1)[1]) < self.slots)

    async def load(self, stage: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for k in await self.bus.scan_keys(self.bus.key("placement", stage, "*")):
            slot = int(k.split(":")[-2])
            counts[slot] = counts.get(slot, 0) + 1
        return counts

    async def missing_stages(self) -> list[str]:
        """The stages no live worker serves now (no slot of theirs is held): sessions cannot start until it is []."""
        return [stage for stage in STAGES if not await self.held_slots(stage)]

    async def place(self, session_id: str) -> Placement:
        chosen: dict[str, int] = {}
        for stage in STAGES:
            held = await self.held_slots(stage)
            if not held:
                raise NoCapacity(f"no {stage} worker is running; start one (ditto worker --stage {stage})", 2000)
            load = await self.load(stage)
            free = [s for s in held if load.get(s, 0) < self.sessions_per_slot]
            if not free:
                raise NoCapacity(f"all {len(held)} {stage} slots are full ({self.sessions_per_slot} sessions each); "
                                 "retry later or add workers", 1000)
            least = min(load.get(s, 0) for s in free)
            chosen[stage] = random.choice([s for s in free if load.get(s, 0) == least])
        placement = Placement(chosen)
        await self.touch(session_id, placement)
        return placement

    async def touch(self, session_id: str, placement: Placement) -> None:
        for stage, slot in placement.slots.items():
            await self.bus.set_state(self._key(stage, slot, session_id), b"1", PLACEMENT_TTL_S)

    async def release(self, session_id: str, placement: Placement) -> None:
        for stage, slot in placement.slots.items():
            await self.bus.set_state(self._key(stage, slot, session_id), None)
