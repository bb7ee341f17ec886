"""`ditto status`: what a distributed deployment is running right now, read from Redis and the services' gRPC health.

Per stage: the live workers, the slots each holds and the sessions placed on them (its load against
`sessions_per_slot`), the addresses the stage serves on with their health, the entries waiting in the stage's slot
streams (pending) and how long the oldest of them has waited (lag). Then the open sessions per tenant and the live
orchestrator replicas. Every key is read through the helpers that write it (the bus's names, the worker's presence
sets, the placer's and the quotas' keys), never spelled out here, so this command follows the service when they move.

Tenants are found with one SCAN over the tenants' session sets: a tool's cost, never on a request path.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field

from ditto import pipeline
from ditto.bus import Bus
from services.orchestrator.placement import Placer
from services.orchestrator.tenants import Quotas

HEALTH_TIMEOUT_S = 1.0


@dataclass
class WorkerStatus:
    worker: str
    slots: list[int]
    sessions: int
    capacity: int  # sessions its slots can take (slots x sessions_per_slot)

    @property
    def load(self) -> float:
        return self.sessions / self.capacity if self.capacity else 0.0


@dataclass
class StageStatus:
    stage: str
    workers: list[WorkerStatus]
    slots_held: int
    slots: int
    sessions: int
    pending: int                # entries in the stage's slot streams not yet done
    lag_s: float | None         # age of the oldest of them (None: nothing waits)
    addresses: dict[str, str]   # gRPC address -> health (SERVING, NOT_SERVING, UNAVAILABLE, ...)


@dataclass
class Snapshot:
    at_unix_s: float
    redis: str
    prefix: str
    sessions_per_slot: int
    stages: list[StageStatus]
    tenants: dict[str, int]     # open sessions per tenant
    orchestrators: list[str]    # live replica ids
    server: dict[str, str] = field(default_factory=dict)  # orchestrator address -> health, when asked for

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


async def health(address: str, timeout_s: float = HEALTH_TIMEOUT_S) -> str:
    """The overall gRPC health of a server ("SERVING", "NOT_SERVING", or the error's status name)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                     timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def _stage(bus: Bus, placer: Placer, stage: str, slots: int, now_ms: int) -> StageStatus:
    held = await placer.held_slots(stage)
    owners = await placer.slot_owners(stage, held)
    load = await placer.load(stage)
    by_worker: dict[str, list[int]] = {w: [] for w in await placer.live_workers(stage)}
    for slot, owner in sorted(owners.items()):
        by_worker.setdefault(owner, []).append(slot)
    workers = [WorkerStatus(w, s, sum(load.get(k, 0) for k in s), len(s) * placer.sessions_per_slot)
               for w, s in sorted(by_worker.items())]
    pending, oldest_ms = 0, None
    for k in range(slots):  # every slot, held or not: work on a slot nobody holds is work that waits
        stream = bus.keys.slot_stream(stage, k)
        waiting = await bus.backlog(stream, stage)
        if waiting:
            pending += waiting
            first = await bus.oldest_entry(stream)
            if first is not None and first.created_unix_ms:
                oldest_ms = min(oldest_ms or first.created_unix_ms, first.created_unix_ms)
    addresses = await bus.live_members(bus.keys.addresses(stage))
    states = await asyncio.gather(*(health(a) for a in addresses))
    return StageStatus(stage, workers, len(held), slots, sum(load.values()), pending,
                       max(0.0, (now_ms - oldest_ms) / 1000) if oldest_ms else None, dict(zip(addresses, states,
                                                                                               strict=True)))


async def snapshot(bus: Bus, slots: int, sessions_per_slot: int, redis_shown: str,
                   server: str | None = None) -> Snapshot:
    """Everything `ditto status` shows, from the bus's store (and the orchestrator's health when `server` is given)."""
    placer = Placer(bus, slots, sessions_per_slot)
    quotas = Quotas(bus)
    now_ms = int(time.time() * 1000)
    stages = [await _stage(bus, placer, stage, slots, now_ms) for stage in pipeline.active().names]
    pattern = quotas.sessions_key("*")
    head, tail = pattern.split("*", 1)
    tenants = {}
    for key in sorted(await bus.scan_keys(pattern)):
        tenant = key[len(head):len(key) - len(tail)]
        if n := len(await quotas.active(tenant)):
            tenants[tenant] = n
    return Snapshot(now_ms / 1000, redis_shown, bus.prefix, sessions_per_slot, stages, tenants,
                    await bus.live_members(bus.keys.replicas()), {server: await health(server)} if server else {})


def _slot_ranges(slots: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    out: list[str] = []
    for k in slots:
        if out and int(out[-1].rsplit("-", 1)[-1]) == k - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{k}"
        else:
            out.append(str(k))
    return ",".join(out)


def render(s: Snapshot) -> str:
    """The snapshot as a terminal page."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.at_unix_s))
    lines = [f"ditto status  {when}  Redis {s.redis}  prefix {s.prefix}  {s.sessions_per_slot} sessions per slot"]
    orch = ", ".join(s.orchestrators) or "none"
    lines.append(f"orchestrators: {len(s.orchestrators)} live ({orch})"
                 + "".join(f"  {a} {h}" for a, h in s.server.items()))
    lines.append("")
    lines.append(f"{'stage':<18}{'workers':>8}{'slots held':>12}{'sessions':>10}{'pending':>9}{'lag':>9}")
    for st in s.stages:
        lag = "-" if st.lag_s is None else f"{st.lag_s:.1f} s"
        flag = "   << no live worker" if not st.workers else ""
        lines.append(f"{st.stage:<18}{len(st.workers):>8}{f'{st.slots_held}/{st.slots}':>12}{st.sessions:>10}"
                     f"{st.pending:>9}{lag:>9}{flag}")
        for w in st.workers:
            lines.append(f"    worker {w.worker}: slots {_slot_ranges(w.slots) or '-'} ({len(w.slots)}), "
                         f"sessions {w.sessions}/{w.capacity} ({w.load:.0%})")
        for address, state in st.addresses.items():
            lines.append(f"    grpc {address}: {state}")
    lines.append("")
    if s.tenants:
        lines.append("sessions per tenant: " + ", ".join(f"{t} {n}" for t, n in s.tenants.items()))
    else:
        lines.append("sessions per tenant: none open")
    return "\n".join(lines)
