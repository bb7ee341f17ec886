"""The runtime loop every stage worker runs: lease slots, claim what a dead worker left, read, batch across
sessions, process, commit atomically, checkpoint, and hand slots over on shutdown.

A stage plugs in a `StageHandler`: it gets a batch of `WorkItem`s (at most one per session, so a batched forward
serves many sessions at once) and returns one `WorkResult` per item. The runtime owns everything else:
- ordering: a session's entries are handled strictly in stream order, one round per entry;
- idempotency: the per-session `StageCheckpoint` (epoch, next input seq, next output seq, stage state) is written in
  the same atomic commit as the outputs and the acknowledgement, so a redelivered entry is recognised and skipped;
- epochs: entries older than the session's current epoch (an interrupt happened) are dropped unprocessed;
- leases: a commit is refused if the slot's lease moved to another worker (then this worker lets the slot go);
- balance: live workers of a stage announce themselves and each holds about slots / workers slots;
- nothing stranded: pending entries (a dead holder's, or ones this worker left after a transient bus error) are
  claimed until none is left, when a slot is acquired and again every `reclaim_every_s`;
- no gap: a session's entries are applied in sequence (per epoch, seq 0, 1, 2...). When one is missing (its handler
  hit a transient bus error, or it has not arrived), the session's later entries stay pending and are retried in
  order; a missing entry that does not come within `gap_timeout_s`, or one that keeps failing `max_retries` times,
  ends the session with a clear status instead of going past it.
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

from ditto import codec, telemetry
from ditto.bus.base import Bus, BusError, Commit, Delivery, LeaseLost
from ditto.config import BusSettings
from ditto_client.v1 import bus_pb2, common_pb2

log = telemetry.get_logger("ditto.worker")
TOP_UP_BATCHES = 4  # one _handle call takes in new entries while it works, up to this many reads' worth

_processed = telemetry.counter("ditto_stage_entries_total", "Stream entries handled", ("stage", "outcome"))
_batch = telemetry.histogram("ditto_stage_batch_size", "Sessions per batched forward", ("stage",),
                             buckets=(1, 2, 4, 8, 16, 32, 64))
_latency = telemetry.histogram("ditto_stage_latency_seconds", "Entry creation to stage commit", ("stage",))
_forward = telemetry.histogram("ditto_stage_forward_seconds", "One batched handler call: the model forward over the "
                               "batch's sessions and the stage's own work around it", ("stage",),
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
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


@dataclass
class WorkerSettings:
    slots: int = 64
    lease_ttl_ms: int = 3000
    block_ms: int = 200
    batch_entries: int = 64
    rebalance_every_s: float = 1.0
    reclaim_every_s: float = 1.0    # how often held slots are checked for pending entries nobody is working on
    claim_batch: int = 256          # entries taken per claim call (claiming repeats until none is pending)
    retry_after_s: float = 0.2      # first retry of an entry whose handler hit a bus error (doubles each time)
    max_retries: int = 6            # then the session ends with UNAVAILABLE instead of waiting forever
    gap_timeout_s: float = 10.0     # a missing sequence number waited for this long ends the session (DATA_LOSS)
    frames_ttl_ms: int = 60_000     # TTL given to an output stream to an orchestrator if the append recreated it

    @classmethod
    def from_bus(cls, bus: BusSettings, **overrides: Any) -> WorkerSettings:
        """The worker's settings from the process's typed bus settings (DITTO_BUS__*)."""
        values: dict[str, Any] = {"slots": bus.slots, "lease_ttl_ms": bus.lease_ttl_ms, "block_ms": bus.block_ms,
                                  "reclaim_every_s": bus.reclaim_every_s, "max_retries": bus.max_retries,
                                  "gap_timeout_s": bus.gap_timeout_s}
        values.update(overrides)
        return cls(**values)


@dataclass
class _Blocked:
    """A session whose next entry could not be applied: its later entries stay pending until `retry_at`."""

    slot: int
    retry_at: float


_POISONED_SEQ = 1 << 62  # next_seq of a session this stage ended: every later entry of the epoch is stale


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
        self._last_reclaim = 0.0
        self._blocked: dict[str, _Blocked] = {}
        self._retries: dict[tuple[str, int, int], int] = {}  # (session, epoch, seq) -> handler bus errors so far
        self._gaps: dict[str, tuple[int, int, float]] = {}  # session -> (epoch, missing seq, first seen)
        self.processed = 0
        self._last_active: dict[int, float] = {}  # slot -> when it last had work (the idlest slots are handed over)
        self._reported: set[int] = set()  # slots whose backlog this worker exports (ditto_stream_pending_entries)

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
    async def _announce(self) -> None:
        await self.bus.touch_member(self.bus.keys.workers(self.stage), self.owner, self.s.lease_ttl_ms)

    async def _live_workers(self) -> int:
        # One member per live worker, renewed with the slot leases: the cost does not grow with other keys.
        return max(len(await self.bus.live_members(self.bus.keys.workers(self.stage))), 1)

    async def _mark_held(self, slot: int) -> None:
        await self.bus.touch_member(self.bus.keys.held_slots(self.stage), str(slot), self.s.lease_ttl_ms)

    async def _let_go(self, slot: int) -> None:
        self.held.discard(slot)
        for sid in [sid for sid, b in self._blocked.items() if b.slot == slot]:
            del self._blocked[sid]  # the slot's next holder claims those entries
        await self.bus.remove_member(self.bus.keys.held_slots(self.stage), str(slot))
        await self.bus.release_lease(self.bus.keys.lease(self.stage, slot), self.owner)

    async def _rebalance(self) -> list[int]:
        """Acquire free slots up to this worker's share; give back surplus. Returns newly acquired slots."""
        now = time.monotonic()
        if now - self._last_rebalance < self.s.rebalance_every_s and self.held:
            return []
        self._last_rebalance = now
        await self._announce()
        share = math.ceil(self.s.slots / await self._live_workers())
        acquired: list[int] = []
        order = list(range(self.s.slots))
        random.shuffle(order)
        for slot in order:
            if len(self.held) >= share:
                break
            if slot in self.held:
                continue
            if await self.bus.acquire_lease(self.bus.keys.lease(self.stage, slot), self.owner, self.s.lease_ttl_ms):
                self.held.add(slot)
                acquired.append(slot)
                await self._mark_held(slot)
        while len(self.held) > share:
            # Hand over the slot that has been idle longest (never used first): its sessions, if any, move with it,
            # so giving back idle slots keeps the sessions already placed here where they are.
            await self._let_go(min(self.held, key=lambda k: (self._last_active.get(k, float("-inf")), -k)))
        _slots.labels(self.stage).set(len(self.held))
        return acquired

    async def _heartbeat(self) -> None:
        interval = self.s.lease_ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._announce()
                for slot in list(self.held):
                    if not await self.bus.renew_lease(self.bus.keys.lease(self.stage, slot), self.owner,
                                                      self.s.lease_ttl_ms):
                        log.warning("lost slot lease", stage=self.stage, slot=slot)
                        self.held.discard(slot)
                        continue
                    await self._mark_held(slot)
                    backlog = await self.bus.backlog(self.bus.keys.slot_stream(self.stage, slot), self.stage)
                    _pending.labels(self.stage, str(slot)).set(backlog)
                self._forget_backlogs(keep=self.held)
            except BusError as err:
                log.warning("heartbeat failed", stage=self.stage, error=str(err))

    def _forget_backlogs(self, keep: set[int]) -> None:
        """Stop reporting the backlog of slots this worker no longer holds: their next holder reports it, and a stale
        value here would count twice in the stage's sum."""
        for slot in self._reported - keep:
            try:
                _pending.remove(self.stage, str(slot))
            except KeyError:
                pass
        self._reported = set(keep)

    async def _release_all(self) -> None:
        for slot in list(self.held):
            try:
                await self._let_go(slot)
            except BusError:
                pass
        self.held.clear()
        self._forget_backlogs(keep=set())
        try:
            await self.bus.remove_member(self.bus.keys.workers(self.stage), self.owner)
        except BusError:
            pass
        _slots.labels(self.stage).set(0)

    # ---- work ----
    def _slot_of(self, stream: str) -> int:
        return self.bus.keys.slot_of(stream)

    async def _step(self) -> None:
        for slot in await self._rebalance():
            # Whatever the previous holder had read but not committed is ours now, before anything newer.
            await self._reclaim(slot, check_first=False)
        now = time.monotonic()
        retry_due = any(b.retry_at <= now for b in self._blocked.values())
        if retry_due or now - self._last_reclaim >= self.s.reclaim_every_s:
            # Between steps this worker has nothing in flight, so whatever is pending in a slot it holds is stranded:
            # left by a handler's transient bus error, held back behind a gap, or missed by an earlier claim.
            self._last_reclaim = now
            for slot in sorted(self.held):
                await self._reclaim(slot)
            for sid in [sid for sid, b in self._blocked.items() if b.retry_at <= now]:
                del self._blocked[sid]  # due but nothing of it was pending any more (acknowledged elsewhere)
        if not self.held:
            await asyncio.sleep(self.s.block_ms / 1000)
            return
        streams = [self.bus.keys.slot_stream(self.stage, k) for k in sorted(self.held)]
        deliveries = await self.bus.read(self.stage, self.owner, streams, count=self.s.batch_entries,
                                         block_ms=self.s.block_ms)
        if deliveries:
            await self._handle(deliveries)

    async def _reclaim(self, slot: int, check_first: bool = True) -> None:
        """Claim the slot's pending entries, oldest first, until none is left (or the rest must wait for a retry)."""
        stream = self.bus.keys.slot_stream(self.stage, slot)
        total = 0
        for _ in range(64):  # bounded: 64 x claim_batch entries per call; the next check takes the rest
            if slot not in self.held or (check_first and await self.bus.pending_count(stream, self.stage) == 0):
                break
            claimed = await self.bus.claim(stream, self.stage, self.owner, min_idle_ms=0, count=self.s.claim_batch)
            if not claimed:
                break
            now = time.monotonic()
            sessions = {d.entry.session_id for d in claimed}
            for sid in sessions:
                if sid in self._blocked and self._blocked[sid].retry_at <= now:
                    del self._blocked[sid]  # its stuck entry is first in `claimed`: retry it, in order
            total += len(claimed)
            await self._handle(claimed)
            if len(claimed) < self.s.claim_batch or any(sid in self._blocked for sid in sessions):
                break
            check_first = True
        if total:
            log.info("claimed pending entries", stage=self.stage, slot=slot, count=total)

    def _block(self, sid: str, slot: int, delay_s: float) -> None:
        self._blocked[sid] = _Blocked(slot, time.monotonic() + delay_s)

    async def _handle(self, deliveries: list[Delivery]) -> None:
        by_session: dict[str, list[Delivery]] = {}
        for d in deliveries:
            by_session.setdefault(d.entry.session_id, []).append(d)
        checkpoints: dict[str, bus_pb2.StageCheckpoint] = {}
        floors: dict[str, int] = {}
        for sid, ds in by_session.items():
            checkpoints[sid], floors[sid] = await self._session_marks(sid, self._slot_of(ds[0].stream))
        queues = {sid: list(ds) for sid, ds in by_session.items()}
        handled = 0
        while any(queues.values()):  # batch by batch, each taking the next entry of every session (round robin)
            items: list[WorkItem] = []
            for sid, q in queues.items():
                if sid in self._blocked:
                    q.clear()  # left pending behind the session's stuck entry; retried in order by _reclaim
                    continue
                while q:
                    d = q[0]
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
                        q.pop(0)
                        await self._ack_only(d)
                        continue
                    expected = self._expected_seq(cp, e)
                    if expected is not None and e.seq > expected:
                        # A gap: the entry before this one is not here. If it arrived late in this same batch,
                        # take it first; else hold the session back, never apply a later entry past it.
                        late = next((i for i, x in enumerate(q) if x.entry.epoch == e.epoch
                                     and x.entry.seq == expected), None)
                        if late is None:
                            await self._on_gap(d, e.epoch, expected)
                            q.clear()
                            break
                        d = q.pop(late)
                        e = d.entry
                    else:
                        q.pop(0)
                    self._last_active[self._slot_of(d.stream)] = time.monotonic()
                    items.append(WorkItem(d, cp.state if cp.ByteSize() else None, e.epoch > cp.epoch))
                    break
            if not items:
                continue
            _batch.labels(self.stage).observe(len(items))
            results: list[WorkResult | None]
            try:
                with _forward.labels(self.stage).time():
                    results = list(await self.handler.process(items))
            except BusError as err:
                # Transient (Redis away or failing over): nothing of the batch is committed. Each item alone again,
                # so only the sessions whose entry still fails wait (and retry it later, in order, with their later
                # entries pending behind it); the others of the batch go on.
                log.warning("handler lost the bus; retrying the batch one session at a time", stage=self.stage,
                            error=str(err))
                results = await self._one_by_one(items)
            except Exception as err:  # a bug or a bad entry must not take the worker down, nor stall a session
                log.exception("handler failed; retrying the batch one session at a time", stage=self.stage)
                if self._on_error:
                    self._on_error(err)
                results = await self._one_by_one(items)
            for item, result in zip(items, results, strict=True):
                if result is None:  # a transient bus error on this one: it waits for its retry
                    queues[item.entry.session_id].clear()
                    continue
                await self._commit(item, result, checkpoints)
            handled += len(items)
            if any(queues.values()) and handled < TOP_UP_BATCHES * self.s.batch_entries and self.held:
                # A backlog is still queued: let entries that arrived meanwhile (a session that just started) into
                # the next batches instead of behind the whole backlog. Bounded, so rebalancing and reclaims still
                # get their turn between steps.
                streams = [self.bus.keys.slot_stream(self.stage, k) for k in sorted(self.held)]
                for d in await self.bus.read(self.stage, self.owner, streams, count=self.s.batch_entries,
                                             block_ms=0):
                    sid = d.entry.session_id
                    if sid not in checkpoints:
                        checkpoints[sid], floors[sid] = await self._session_marks(sid, self._slot_of(d.stream))
                    queues.setdefault(sid, []).append(d)

    async def _session_marks(self, sid: str, slot: int) -> tuple[bus_pb2.StageCheckpoint, int]:
        """The session's checkpoint at this stage (kept on the tag of the slot it is placed on) and the
        orchestrator's epoch floor for it."""
        raw = await self.bus.get_state(self.bus.keys.checkpoint(self.stage, slot, sid))
        cp = bus_pb2.StageCheckpoint()
        if raw:
            cp.ParseFromString(raw)
        floor = await self.bus.get_state(self.bus.keys.epoch(sid))
        return cp, int(floor) if floor else 0

    @staticmethod
    def _expected_seq(cp: bus_pb2.StageCheckpoint, e: bus_pb2.StreamEntry) -> int | None:
        """The sequence number this session's next entry must have here; None when there is nothing to check
        against (no checkpoint yet, or the START that creates it)."""
        if cp.ByteSize() == 0 or e.kind == bus_pb2.ENTRY_KIND_START:
            return None
        return cp.next_seq if e.epoch == cp.epoch else 0

    async def _on_gap(self, d: Delivery, epoch: int, missing: int) -> None:
        sid = d.entry.session_id
        slot = self._slot_of(d.stream)
        now = time.monotonic()
        seen = self._gaps.get(sid)
        if seen is None or seen[:2] != (epoch, missing):
            seen = (epoch, missing, now)
            self._gaps[sid] = seen
            log.warning("sequence gap; holding the session's later entries back", stage=self.stage, session=sid,
                        epoch=epoch, missing=missing, got=d.entry.seq)
        if now - seen[2] < self.s.gap_timeout_s:
            self._block(sid, slot, self.s.retry_after_s)
            return
        del self._gaps[sid]
        await self._end_session(d, grpc.StatusCode.DATA_LOSS,
                                f"the {self.stage} stage never received entry {missing} of this session (epoch "
                                f"{epoch}; it got {d.entry.seq} instead) within {self.s.gap_timeout_s:g} s; "
                                "start a new session")

    async def _on_bus_error(self, item: WorkItem, err: BusError) -> None:
        e = item.entry
        key = (e.session_id, e.epoch, e.seq)
        tries = self._retries[key] = self._retries.get(key, 0) + 1
        if tries <= self.s.max_retries:
            self._block(e.session_id, self._slot_of(item.delivery.stream),
                        min(5.0, self.s.retry_after_s * 2 ** (tries - 1)))
            return
        del self._retries[key]
        await self._end_session(item.delivery, grpc.StatusCode.UNAVAILABLE,
                                f"the {self.stage} stage could not reach the session store for this session's entry "
                                f"{e.seq} after {tries} tries ({err}); start a new session")

    async def _end_session(self, d: Delivery, code: grpc.StatusCode, message: str) -> None:
        """Stop a session here with a status the client gets (via the frames stream), in one commit that also marks
        every later entry of its epoch stale, so nothing is ever applied past the entry that could not be."""
        e = d.entry
        log.error("ending a session", stage=self.stage, session=e.session_id, code=code.name, reason=message)
        status = common_pb2.Status(code=code.value[0], message=message)
        error = bus_pb2.StreamEntry(session_id=e.session_id, epoch=e.epoch, seq=0, kind=bus_pb2.ENTRY_KIND_ERROR,
                                    meta=status.SerializeToString(), tenant_id=e.tenant_id,
                                    created_unix_ms=int(time.time() * 1000))
        frames = e.route.get("frames", "frames")
        cp = bus_pb2.StageCheckpoint(epoch=e.epoch, next_seq=_POISONED_SEQ)
        slot = self._slot_of(d.stream)
        # No `input`: an earlier, cut-off commit of this same entry may have left an append marker, and the error
        # must reach the client whatever the markers say (a second ERROR entry is harmless: the first ends it).
        commit = Commit(outputs=[(frames, error)], acks=[(d.stream, d.entry_id)],
                        state={self.bus.keys.checkpoint(self.stage, slot, e.session_id): cp.SerializeToString()},
                        output_ttl_ms={frames: self.s.frames_ttl_ms})
        try:
            await self.bus.commit(self.stage, commit, lease=(self.bus.keys.lease(self.stage, slot), self.owner))
        except LeaseLost:
            self.held.discard(slot)
            return
        self._blocked.pop(e.session_id, None)
        _processed.labels(self.stage, "session_ended").inc()

    async def _one_by_one(self, items: list[WorkItem]) -> list[WorkResult | None]:
        """After a batch failed: each item alone, so one poisoned session ends (with INTERNAL and the reason)
        instead of its entry staying pending forever -- and the other sessions of the batch go on. None for an item
        whose handler hit a transient bus error: it is retried in order later."""
        results: list[WorkResult | None] = []
        for item in items:
            try:
                results.extend(await self.handler.process([item]))
            except BusError as err:
                await self._on_bus_error(item, err)
                results.append(None)
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
                                  lease=(self.bus.keys.lease(self.stage, slot), self.owner))
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
        # `input` makes the commit idempotent: redone after a failure half-way (on a Redis Cluster its outputs and its
        # checkpoint are separate steps), nothing is appended or written twice.
        commit = Commit(acks=[(item.delivery.stream, item.delivery.entry_id)],
                        input=(e.session_id, item.delivery.entry_id))
        now_ms = int(time.time() * 1000)
        for out in result.outputs:
            stream = e.route.get(out.target, out.target)
            msg = bus_pb2.StreamEntry(session_id=e.session_id, epoch=e.epoch, seq=new.out_seq, kind=out.kind,
                                      meta=out.meta, tenant_id=e.tenant_id, created_unix_ms=e.created_unix_ms or now_ms)
            msg.route.update(e.route)
            msg.trace_context.update(trace_context or e.trace_context)
            msg.tensors.extend(codec.named(out.tensors))
            commit.outputs.append((stream, msg))
            if out.target == "frames":
                commit.output_ttl_ms[stream] = self.s.frames_ttl_ms
            new.out_seq += 1
        new.next_seq = e.seq + 1
        if result.state is not None:
            new.state = result.state
        slot = self._slot_of(item.delivery.stream)
        key = self.bus.keys.checkpoint(self.stage, slot, e.session_id)
        commit.state[key] = None if result.close else new.SerializeToString()
        try:
            await self.bus.commit(self.stage, commit, lease=(self.bus.keys.lease(self.stage, slot), self.owner))
        except LeaseLost:
            log.warning("lease lost before commit; the new holder redoes the entry", stage=self.stage, slot=slot)
            self.held.discard(slot)
            return
        checkpoints[e.session_id] = new if not result.close else bus_pb2.StageCheckpoint()
        self._retries.pop((e.session_id, e.epoch, e.seq), None)
        self._gaps.pop(e.session_id, None)
        self.processed += 1
        log.debug("entry processed", stage=self.stage, session=e.session_id, epoch=e.epoch, seq=e.seq,
                  outputs=len(commit.outputs))
        _processed.labels(self.stage, "done").inc()
        if e.created_unix_ms:
            age = max(0.0, (now_ms - e.created_unix_ms) / 1000)
            _latency.labels(self.stage).observe(age)
            _stream_lag.labels(self.stage).set(age)
