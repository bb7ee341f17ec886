"""The bus between stages: Redis Streams across processes, or in memory inside one."""

from ditto.bus.base import (
    Admission,
    AdmissionRequest,
    Bus,
    BusError,
    Commit,
    Delivery,
    LeaseLost,
    Reservation,
    StageSlots,
)
from ditto.bus.memory import MemoryBus
from ditto.bus.redis_streams import RedisBus
from ditto.config import BusSettings


def make_bus(settings: BusSettings) -> Bus:
    if settings.kind == "redis":
        return RedisBus(settings.redis_url, settings.prefix, settings.state_ttl_s)
    return MemoryBus(settings.prefix, settings.state_ttl_s)


__all__ = ["Admission", "AdmissionRequest", "Bus", "BusError", "Commit", "Delivery", "LeaseLost", "MemoryBus",
           "RedisBus", "Reservation", "StageSlots", "make_bus"]
