"""The bus side of a stage worker: lease slots, read and claim entries, commit atomically, checkpoint, and hand
slots over on shutdown. The model side (sessions, the batched step) is `ditto.stage_runtime`; which entries go into
a round is `ditto.bus.rounds`.

A stage plugs in a `StageHandler`: it gets a round of `WorkItem`s (at most one per session and at most its
`max_batch`, so a batched forward serves many sessions at once) and returns one `WorkResult` per item. This module
owns the rest:
- idempotency: the per-session `StageCheckpoint` (epoch, next input seq, next output seq, stage state) is written in
  the same atomic commit as the outputs and the acknowledgement, so a redelivered entry is recognised and skipped;
- leases: a commit is refused if the slot's lease moved to another worker (then this worker lets the slot go);
- balance: live workers of a stage announce themselves and each holds about slots / workers slots;
- nothing stranded: pending entries (a dead holder's, or ones this worker left after a transient bus error) are
  claimed until none is left, when a slot is acquired and again every `reclaim_every_s`;
- no gap: when a session's next entry is missing (its handler hit a transient bus error, or it has not arrived), the
  session's later entries stay pending and are retried in order; a missing entry that does not come within
  `gap_timeout_s`, or one that keeps failing `max_retries` times, ends the session with a clear status instead of
  going past it.
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
from ditto.bus.retry import backoff_s
from ditto.bus.rounds import DEFAULT_MAX_BATCH, Gap, RoundScheduler, WorkItem
from ditto.config import BusSettings
from ditto_client.v1 import bus_pb2, common_pb2

log = telemetry.get_logger("ditto.worker")
TOP_UP_READS = 4  # one _handle call takes in new entries while it works, up to this many reads' worth

_processed = telemetry.counter("ditto_stage_entries_total", "Stream entries handled", ("stage", "outcome"))
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

    @property
    def max_batch(self) -> int:
        """Sessions per round at most: the stage's one batch bound."""
        ...

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
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    await self._step()
                    failures = 0
                except BusError as err:
                    # Redis away (restarting, failing over, frozen): back off, bounded, and go on where the loop
                    # was; a Redis that came back empty is rebuilt by the loop itself (groups on NOGROUP, leases by
                    # rebalancing, presence by the heartbeat)
                    failures += 1
                    if failures == 1:
                        log.warning("bus error; retrying", stage=self.stage, error=str(err))
                    await asyncio.sleep(backoff_s(failures))
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
        rounds = RoundScheduler(getattr(self.handler, "max_batch", DEFAULT_MAX_BATCH),
                                top_up_entries=TOP_UP_READS * self.s.batch_entries)
        await self._admit(rounds, deliveries)
        while rounds.pending:
            r = rounds.next_round(blocked=self._blocked.__contains__,
                                  held=lambda stream: self._slot_of(stream) in self.held)
            for d in r.stale:
                await self._ack_only(d)
            for gap in r.gaps:
                await self._on_gap(gap)
            if r.items:
                now = time.monotonic()
                for item in r.items:
                    self._last_active[self._slot_of(item.delivery.stream)] = now
                for item, result in zip(r.items, await self._process(r.items), strict=True):
                    sid = item.entry.session_id
                    if result is None:  # a transient bus error on this one: it waits for its retry
                        rounds.drop(sid)
                        continue
                    committed = await self._commit(item, result, rounds.checkpoint(sid))
                    if committed is not None:
                        rounds.committed(sid, committed)
            if rounds.wants_top_up() and self.held:
                # A backlog is still queued: let entries that arrived meanwhile (a session that just started) into
                # the next rounds instead of behind the whole backlog. Bounded, so rebalancing and reclaims still
                # get their turn between steps.
                streams = [self.bus.keys.slot_stream(self.stage, k) for k in sorted(self.held)]
                await self._admit(rounds, await self.bus.read(self.stage, self.owner, streams,
                                                              count=self.s.batch_entries, block_ms=0))

    async def _admit(self, rounds: RoundScheduler, deliveries: list[Delivery]) -> None:
        """Hand read entries to the scheduler, with the checkpoints of the sessions it has not seen."""
        slot_of = {d.entry.session_id: self._slot_of(d.stream) for d in reversed(deliveries)}
        marks = {sid: await self._session_marks(sid, slot_of[sid]) for sid in rounds.unknown_sessions(deliveries)}
        rounds.add(deliveries, marks)

    async def _process(self, items: list[WorkItem]) -> list[WorkResult | None]:
        """The handler's results for one round (None for an item whose handler hit a transient bus error)."""
        try:
            with _forward.labels(self.stage).time():
                return list(await self.handler.process(items))
        except BusError as err:
            # Transient (Redis away or failing over): nothing of the round is committed. Each item alone again, so
            # only the sessions whose entry still fails wait (and retry it later, in order, with their later entries
            # pending behind it); the others of the round go on.
            log.warning("handler lost the bus; retrying the round one session at a time", stage=self.stage,
                        error=str(err))
        except Exception as err:  # a bug or a bad entry must not take the worker down, nor stall a session
            log.exception("handler failed; retrying the round one session at a time", stage=self.stage)
            if self._on_error:
                self._on_error(err)
        return await self._one_by_one(items)

    async def _session_marks(self, sid: str, slot: int) -> tuple[bus_pb2.StageCheckpoint, int]:
        """The session's checkpoint at this stage (kept on the tag of the slot it is placed on) and the
        orchestrator's epoch floor for it."""
        raw = await self.bus.get_state(self.bus.keys.checkpoint(self.stage, slot, sid))
        cp = bus_pb2.StageCheckpoint()
        if raw:
            cp.ParseFromString(raw)
        floor = await self.bus.get_state(self.bus.keys.epoch(sid))
        return cp, int(floor) if floor else 0

    async def _on_gap(self, gap: Gap) -> None:
        d, epoch, missing = gap.delivery, gap.epoch, gap.missing
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
                      checkpoint: bus_pb2.StageCheckpoint) -> bus_pb2.StageCheckpoint | None:
        """Commit the entry's outputs and the session's next checkpoint; returns that checkpoint (empty when the
        session closed here), or None when the slot's lease was lost (the new holder redoes the entry)."""
        e = item.entry
        # One span per entry, child of the span that produced it (the context travels inside the entry), so one
        # chunk's trace follows it through every process; its context goes on into the outputs.
        with telemetry.tracer("ditto.worker").start_as_current_span(
                f"{self.stage}.process", context=telemetry.extract(e.trace_context),
                attributes={"session": e.session_id, "epoch": e.epoch, "seq": e.seq, "kind": e.kind}):
            trace_context = telemetry.inject()
            return await self._commit_traced(item, result, checkpoint, trace_context)

    async def _commit_traced(self, item: WorkItem, result: WorkResult, cp: bus_pb2.StageCheckpoint,
                             trace_context: dict[str, str]) -> bus_pb2.StageCheckpoint | None:
        e = item.entry
        new = bus_pb2.StageCheckpoint()
        new.CopyFrom(cp)
        if item.new_epoch or cp.ByteSize() == 0:
            new.epoch, new.next_seq, new.out_seq = e.epoch, 0, 0
        # `input` makes the commit idempotent: redone after a failure half-way (on a Redis Cluster its outputs and its
        # checkpoint are separate steps), nothing is appended or written twice.
        commit = Commit(acks=[(item.delivery.stream, item.delivery.entry_id)],
                        input=(e.session_id, f"{e.epoch}-{e.seq}"))
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
            return None
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
        return new if not result.close else bus_pb2.StageCheckpoint()
