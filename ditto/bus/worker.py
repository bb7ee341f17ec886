"""The runtime loop every stage worker runs: lease slots, claim what a dead worker left, read, batch across
sessions, process, commit atomically, checkpoint, and hand slots over on shutdown.

A stage plugs in a `StageHandler`: it gets a batch of `WorkItem`s (at most one per session, so a batched forward
serves many sessions at once) and returns one `WorkResult` per item. The runtime owns everything else:
- ordering: a session's entries are handled strictly in stream order, one round per entry;
- idempotency: the per-session `StageCheckpoint` (epoch, next input seq, next output seq, stage state) is written in
  the same atomic commit as the outputs and the acknowledgement, so a redelivered entry is recognised and skipped;
- epochs: entries older than the session's current epoch (an interrupt happened) are dropped unprocessed;
- leases: a commit is refused if the slot's lease moved to another worker (then this worker lets the slot go);
- balance: live workers of a stage announce themselves and each holds about slots / workers slots.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from ditto_client.v1 import bus_pb2, common_pb2

from ditto import codec, telemetry
from ditto.bus.base import Bus, BusError, Commit, Delivery, LeaseLost

log = telemetry.get_logger("ditto.worker")

_processed = telemetry.counter("ditto_stage_entries_total", "Stream entries handled", ("stage", "outcome"))
_batch = telemetry.histogram("ditto_stage_batch_size", "Sessions per batched forward", ("stage",),
                             buckets=(1, 2, 4, 8, 16, 32, 64))
_latency = telemetry.histogram("ditto_stage_latency_seconds", "Entry creation to stage commit", ("stage",))
_slots = telemetry.gauge("ditto_stage_slots_held", "Slots leased by this worker", ("stage",))
_pending = telemetry.gauge("ditto_stream_pending_entries", "Entries not yet done in a slot stream (backlog)",
                           ("stage", "slot"))
_stream_lag = telemetry.gauge("ditto_stream_lag_seconds", "Age of the newest entry this worker committed",
                              ("stage",))


@dataclass
class WorkItem:
    delivery: Delivery
    state: bytes | None  # the stage's checkpointed session state (None before the first entry)
    new_epoch: bool      # first entry of a newer epoch: an interrupt happened

    @property
    def entry(self) -> bus_pb2.StreamEntry:
        return self.delivery.entry


@dataclass
class Output:
    target: str  # a route key of the entry ("motion_generator", "renderer", "frames") or a full stream name
    kind: bus_pb2.EntryKind = bus_pb2.ENTRY_KIND_DATA
    tensors: dict[str, Any] = field(default_factory=dict)
    meta: bytes = b""


@dataclass
class WorkResult:
    outputs: list[Output] = field(default_factory=list)
    state: bytes | None = None
    close: bool = False  # session over at this stage: delete its checkpoint


class StageHandler(Protocol):
    stage: str

    async def process(self, items: Sequence[WorkItem]) -> list[WorkResult]:
        ...


def epoch_key(bus: Bus, session_id: str) -> str:
    """The session's current epoch, written by the orchestrator on interrupt; older entries are stale."""
    return bus.key("session", session_id, "epoch")


@dataclass
class WorkerSettings:
    slots: int = 64
    lease_ttl_ms: int = 3000
    block_ms: int = 200
    batch_entries: int = 64
    rebalance_every_s: float = 1.0


class SlotWorker:
    def __init__(self, bus: Bus, handler: StageHandler, owner: str, settings: WorkerSettings | None = None,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.bus = bus
        self.handler = handler
        self.stage = handler.stage
        self.owner = owner
        self.s = settings or WorkerSettings()
        self.held: set[int] = set()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._on_error = on_error
        self._last_rebalance = 0.0
        self.processed = 0
        # Entries read but not yet handled, kept to the next batch: each batch takes one entry per session, so a
        # session with a backlog cannot hold back the others (round robin across sessions, batch by batch).
        self._ready: list[Delivery] = []
        self._last_active: dict[int, float] = {}  # slot -> when it last had work (the idlest slots are handed over)

    # ---- lifecycle ----
    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            while not self._stopping.is_set():
                try:
                    await self._step()
                except BusError as err:
                    log.warning("bus error; retrying", stage=self.stage, error=str(err))
                    await asyncio.sleep(0.5)
        finally:
            heartbeat.cancel()
            await self._release_all()
            self._stopped.set()

    async def stop(self) -> None:
        """Graceful: finish the batch in flight, commit it, release every slot so others take over at once."""
        self._stopping.set()
        await self._stopped.wait()

    # ---- slots ----
    def _worker_key(self) -> str:
        return self.bus.key(self.stage, "worker", self.owner)

    async def _live_workers(self) -> int:
        # Presence keys are leases too: one per live worker, renewed with the slot leases.
        return max(len(await self.bus.scan_keys(self.bus.key(self.stage, "worker", "*"))), 1)

    async def _rebalance(self) -> list[int]:
        """Acquire free slots up to this worker's share; give back surplus. Returns newly acquired slots."""
        now = time.monotonic()
        if now - self._last_rebalance < self.s.rebalance_every_s and self.held:
            return []
        self._last_rebalance = now
        await self.bus.acquire_lease(self._worker_key(), self.owner, self.s.lease_ttl_ms)
        share = math.ceil(self.s.slots / await self._live_workers())
        acquired: list[int] = []
        order = list(range(self.s.slots))
        random.shuffle(order)
        for slot in order:
            if len(self.held) >= share:
                break
            if slot in self.held:
                continue
            if await self.bus.acquire_lease(self.bus.lease_key(self.stage, slot), self.owner, self.s.lease_ttl_ms):
                self.held.add(slot)
                acquired.append(slot)
        while len(self.held) > share:
            # Hand over the slot that has been idle longest (never used first): its sessions, if any, move with it,
            # so giving back idle slots keeps the sessions already placed here where they are.
            slot = min(self.held, key=lambda k: (self._last_active.get(k, float("-inf")), -k))
            self.held.discard(slot)
            await self.bus.release_lease(self.bus.lease_key(self.stage, slot), self.owner)
        _slots.labels(self.stage).set(len(self.held))
        return acquired

    async def _heartbeat(self) -> None:
        interval = self.s.lease_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.bus.renew_lease(self._worker_key(), self.owner, self.s.lease_ttl_ms)
                for slot in list(self.held):
                    if not await self.bus.renew_lease(self.bus.lease_key(self.stage, slot), self.owner,
                                                      self.s.lease_ttl_ms):
                        log.warning("lost slot lease", stage=self.stage, slot=slot)
                        self.held.discard(slot)
                        continue
                    backlog = await self.bus.backlog(self.bus.slot_stream(self.stage, slot), self.stage)
                    _pending.labels(self.stage, str(slot)).set(backlog)
            except BusError as err:
                log.warning("heartbeat failed", stage=self.stage, error=str(err))

    async def _release_all(self) -> None:
        for slot in list(self.held):
            try:
                await self.bus.release_lease(self.bus.lease_key(self.stage, slot), self.owner)
            except BusError:
                pass
        self.held.clear()
        try:
            await self.bus.release_lease(self._worker_key(), self.owner)
        except BusError:
            pass
        _slots.labels(self.stage).set(0)

    # ---- work ----
    def _slot_of(self, stream: str) -> int:
        return int(stream.rsplit(":", 1)[1])

    async def _step(self) -> None:
        for slot in await self._rebalance():
            # Whatever the previous holder had read but not committed is ours now, before anything newer.
            stream = self.bus.slot_stream(self.stage, slot)
            claimed = await self.bus.claim(stream, self.stage, self.owner, min_idle_ms=0)
            if claimed:
                log.info("claimed pending entries", stage=self.stage, slot=slot, count=len(claimed))
                self._ready.extend(claimed)
        if not self.held:
            self._ready.clear()  # every slot went away: their new holders claim these entries
            await asyncio.sleep(self.s.block_ms / 1000)
            return
        if len(self._ready) < self.s.batch_entries:  # bounded: what is read ahead stays in Redis, not here
            streams = [self.bus.slot_stream(self.stage, k) for k in sorted(self.held)]
            self._ready += await self.bus.read(self.stage, self.owner, streams,
                                               count=self.s.batch_entries - len(self._ready),
                                               block_ms=0 if self._ready else self.s.block_ms)
        if self._ready:
            self._ready = await self._handle(self._ready)

    async def _handle(self, deliveries: list[Delivery]) -> list[Delivery]:
        """One batch: the next entry of every session that has one (stale entries are acknowledged on the way).
        Returns the entries left for the next batches, in order."""
        by_session: dict[str, list[Delivery]] = {}
        for d in deliveries:
            by_session.setdefault(d.entry.session_id, []).append(d)
        checkpoints: dict[str, bus_pb2.StageCheckpoint] = {}
        floors: dict[str, int] = {}
        for sid in by_session:
            raw = await self.bus.get_state(self.bus.state_key(self.stage, sid))
            cp = bus_pb2.StageCheckpoint()
            if raw:
                cp.ParseFromString(raw)
            checkpoints[sid] = cp
            floor = await self.bus.get_state(epoch_key(self.bus, sid))
            floors[sid] = int(floor) if floor else 0
        queues = {sid: list(ds) for sid, ds in by_session.items()}
        items: list[WorkItem] = []
        while not items and any(queues.values()):
            for sid, q in queues.items():
                while q:
                    d = q.pop(0)
                    cp = checkpoints[sid]
                    e = d.entry
                    if d.stream and self._slot_of(d.stream) not in self.held:
                        q.clear()  # slot moved away: its new holder will claim these
                        break
                    # START is never stale: it creates the session's state here, which the later epochs of an
                    # interrupt that came before this stage saw START still need (else "lost this session's state").
                    stale = e.kind != bus_pb2.ENTRY_KIND_START and (
                        e.epoch < max(cp.epoch, floors[sid])
                        or (e.epoch == cp.epoch and e.seq < cp.next_seq and cp.ByteSize() > 0))
                    if stale:
                        await self._ack_only(d)
                        continue
                    self._last_active[self._slot_of(d.stream)] = time.monotonic()
                    items.append(WorkItem(d, cp.state if cp.ByteSize() else None, e.epoch > cp.epoch))
                    break
        if not items:
            return []
        _batch.labels(self.stage).observe(len(items))
        try:
            results = await self.handler.process(items)
        except BusError:
            log.exception("handler lost the bus; entries left pending", stage=self.stage)
            # Left pending in the bus: this worker's slots are re-acquired and their entries claimed again.
            return [d for sid, q in queues.items() if sid not in {it.entry.session_id for it in items} for d in q]
        except Exception as err:  # a bug or a bad entry must not take the worker down, nor stall a session
            log.exception("handler failed; retrying the batch one session at a time", stage=self.stage)
            if self._on_error:
                self._on_error(err)
            results = await self._one_by_one(items)
        for item, result in zip(items, results, strict=True):
            await self._commit(item, result, checkpoints)
        return [d for q in queues.values() for d in q]

    async def _one_by_one(self, items: list[WorkItem]) -> list[WorkResult]:
        """After a batch failed: each item alone, so one poisoned session ends (with INTERNAL and the reason)
        instead of its entry staying pending forever -- and the other sessions of the batch go on."""
        results = []
        for item in items:
            try:
                results.extend(await self.handler.process([item]))
            except Exception as err:
                log.exception("handler failed on one session; ending it", stage=self.stage,
                              session=item.entry.session_id, seq=item.entry.seq)
                status = common_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0],
                                           message=f"the {self.stage} failed on this session's input: {err!r}")
                error = Output("frames", bus_pb2.ENTRY_KIND_ERROR, {}, status.SerializeToString())
                results.append(WorkResult([error], close=True))
        return results

    async def _ack_only(self, d: Delivery) -> None:
        slot = self._slot_of(d.stream)
        try:
            await self.bus.commit(self.stage, Commit(acks=[(d.stream, d.entry_id)]),
                                  lease=(self.bus.lease_key(self.stage, slot), self.owner))
            _processed.labels(self.stage, "skipped").inc()
        except LeaseLost:
            self.held.discard(slot)

    async def _commit(self, item: WorkItem, result: WorkResult,
                      checkpoints: dict[str, bus_pb2.StageCheckpoint]) -> None:
        e = item.entry
        # One span per entry, child of the span that produced it (the context travels inside the entry), so one
        # chunk's trace follows it through every process; its context goes on into the outputs.
        with telemetry.tracer("ditto.worker").start_as_current_span(
                f"{self.stage}.process", context=telemetry.extract(e.trace_context),
                attributes={"session": e.session_id, "epoch": e.epoch, "seq": e.seq, "kind": e.kind}):
            trace_context = telemetry.inject()
            await self._commit_traced(item, result, checkpoints, trace_context)

    async def _commit_traced(self, item: WorkItem, result: WorkResult,
                             checkpoints: dict[str, bus_pb2.StageCheckpoint], trace_context: dict[str, str]) -> None:
        e = item.entry
        cp = checkpoints[e.session_id]
        new = bus_pb2.StageCheckpoint()
        new.CopyFrom(cp)
        if item.new_epoch or cp.ByteSize() == 0:
            new.epoch, new.next_seq, new.out_seq = e.epoch, 0, 0
        commit = Commit(acks=[(item.delivery.stream, item.delivery.entry_id)])
        now_ms = int(time.time() * 1000)
        for out in result.outputs:
            stream = e.route.get(out.target, out.target)
            msg = bus_pb2.StreamEntry(session_id=e.session_id, epoch=e.epoch, seq=new.out_seq, kind=out.kind,
                                      meta=out.meta, tenant_id=e.tenant_id, created_unix_ms=e.created_unix_ms or now_ms)
            msg.route.update(e.route)
            msg.trace_context.update(trace_context or e.trace_context)
            msg.tensors.extend(codec.named(out.tensors))
            commit.outputs.append((stream, msg))
            new.out_seq += 1
        new.next_seq = e.seq + 1
        if result.state is not None:
            new.state = result.state
        key = self.bus.state_key(self.stage, e.session_id)
        commit.state[key] = None if result.close else new.SerializeToString()
        slot = self._slot_of(item.delivery.stream)
        try:
            await self.bus.commit(self.stage, commit, lease=(self.bus.lease_key(self.stage, slot), self.owner))
        except LeaseLost:
            log.warning("lease lost before commit; the new holder redoes the entry", stage=self.stage, slot=slot)
            self.held.discard(slot)
            return
        checkpoints[e.session_id] = new if not result.close else bus_pb2.StageCheckpoint()
        self.processed += 1
        log.debug("entry processed", stage=self.stage, session=e.session_id, epoch=e.epoch, seq=e.seq,
                  outputs=len(commit.outputs))
        _processed.labels(self.stage, "done").inc()
        if e.created_unix_ms:
            age = max(0.0, (now_ms - e.created_unix_ms) / 1000)
            _latency.labels(self.stage).observe(age)
            _stream_lag.labels(self.stage).set(age)
