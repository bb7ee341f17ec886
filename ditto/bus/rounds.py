"""Round formation: which of the entries a stage worker has read go into its next batched forward.

This is the one scheduler of a stage. `SlotWorker` does the bus I/O (reads, claims, acknowledgements, commits,
leases) and hands what it read to a `RoundScheduler`; the scheduler decides, round by round:
- one entry per session per round, in the session's stream order (a session's entries are applied one after the
  other, each on the state the previous one left);
- at most `max_batch` sessions per round, the stage's one batch bound: the model stage's batcher runs a round as one
  forward, so `max_batch` bounds every forward;
- fairness: sessions left out of a full round go first in the next one, so equal sessions advance at the same pace
  however many there are, and a session that starts while another works off a backlog is served in the next round;
- which entries are stale (an older epoch, or a sequence number already applied: acknowledge, don't apply) and which
  session has a gap (its next entry is missing: hold it back, never apply a later one past it);
- when to let newly arrived entries in (`wants_top_up`): while a backlog is worked off, a bounded number of times,
  so a session that just started is not queued behind the whole backlog and the worker still returns to its leases.

The scheduler does no I/O and holds no lock; it lives for one `SlotWorker._handle` call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ditto.bus.base import Delivery
from ditto_client.v1 import bus_pb2

DEFAULT_MAX_BATCH = 16


@dataclass
class WorkItem:
    delivery: Delivery
    state: bytes | None  # the stage's checkpointed session state (None before the first entry)
    new_epoch: bool      # first entry of a newer epoch: an interrupt happened

    @property
    def entry(self) -> bus_pb2.StreamEntry:
        return self.delivery.entry


@dataclass
class Gap:
    """A session's next entry is not among those read: `delivery` came, `missing` (of `epoch`) did not."""

    delivery: Delivery
    epoch: int
    missing: int


@dataclass
class Round:
    items: list[WorkItem] = field(default_factory=list)   # at most one per session, at most max_batch
    stale: list[Delivery] = field(default_factory=list)   # to acknowledge without applying
    gaps: list[Gap] = field(default_factory=list)         # sessions to hold back


@dataclass
class _Session:
    checkpoint: bus_pb2.StageCheckpoint
    floor: int  # the orchestrator's epoch floor: entries of older epochs are stale
    queue: list[Delivery] = field(default_factory=list)
    rounds: int = 0  # rounds this session had an entry in


def expected_seq(cp: bus_pb2.StageCheckpoint, e: bus_pb2.StreamEntry) -> int | None:
    """The sequence number this session's next entry must have here; None when there is nothing to check against (no
    checkpoint yet, or the START that creates it)."""
    if cp.ByteSize() == 0 or e.kind == bus_pb2.ENTRY_KIND_START:
        return None
    return cp.next_seq if e.epoch == cp.epoch else 0


def is_stale(cp: bus_pb2.StageCheckpoint, floor: int, e: bus_pb2.StreamEntry) -> bool:
    # START is never stale: it creates the session's state here, which the later epochs of an interrupt that came
    # before this stage saw START still need (else "lost this session's state").
    return e.kind != bus_pb2.ENTRY_KIND_START and (
        e.epoch < max(cp.epoch, floor) or (e.epoch == cp.epoch and e.seq < cp.next_seq and cp.ByteSize() > 0))


class RoundScheduler:
    """Rounds over the entries of many sessions; see the module docstring."""

    def __init__(self, max_batch: int = DEFAULT_MAX_BATCH, top_up_entries: int = 256) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.top_up_entries = top_up_entries  # stop letting new entries in after this many were scheduled
        self.scheduled = 0
        self._sessions: dict[str, _Session] = {}  # in arrival order

    # ---- what the worker read ----
    def unknown_sessions(self, deliveries: Iterable[Delivery]) -> list[str]:
        """Sessions among `deliveries` whose checkpoint the worker must read before `add`."""
        return list(dict.fromkeys(d.entry.session_id for d in deliveries
                                  if d.entry.session_id not in self._sessions))

    def add(self, deliveries: Iterable[Delivery],
            marks: dict[str, tuple[bus_pb2.StageCheckpoint, int]] | None = None) -> None:
        """Queue `deliveries` (stream order); `marks` gives (checkpoint, epoch floor) of the sessions new here."""
        for d in deliveries:
            sid = d.entry.session_id
            if sid not in self._sessions:
                cp, floor = (marks or {}).get(sid, (bus_pb2.StageCheckpoint(), 0))
                self._sessions[sid] = _Session(cp, floor)
            self._sessions[sid].queue.append(d)

    @property
    def pending(self) -> bool:
        return any(s.queue for s in self._sessions.values())

    def wants_top_up(self) -> bool:
        """Whether the worker should read entries that arrived meanwhile before the next round."""
        return self.pending and self.scheduled < self.top_up_entries

    # ---- rounds ----
    def next_round(self, blocked: Callable[[str], bool], held: Callable[[str], bool]) -> Round:
        """The next round. `blocked(session)`: the session waits for a retry (its queue is dropped: the entries stay
        pending on the bus and are claimed again in order); `held(stream)`: the worker still holds the stream's slot
        (else the entries are dropped: the slot's new holder claims them)."""
        r = Round()
        # the least served first (ties: in arrival order): who waited goes first, and a session that arrives late
        # is in the next round
        for sid, s in sorted(self._sessions.items(), key=lambda kv: kv[1].rounds):
            if len(r.items) >= self.max_batch:
                break
            if blocked(sid):
                s.queue.clear()
                continue
            item = self._next_of(s, r, held)
            if item is not None:
                r.items.append(item)
                s.rounds += 1
        self.scheduled += len(r.items)
        return r

    def _next_of(self, s: _Session, r: Round, held: Callable[[str], bool]) -> WorkItem | None:
        cp = s.checkpoint
        while s.queue:
            d = s.queue[0]
            e = d.entry
            if d.stream and not held(d.stream):
                s.queue.clear()
                return None
            if is_stale(cp, s.floor, e):
                r.stale.append(s.queue.pop(0))
                continue
            expected = expected_seq(cp, e)
            if expected is not None and e.seq > expected:
                # the entry before this one: if it arrived late among those read, it goes first; else the session
                # is held back
                late = next((i for i, x in enumerate(s.queue) if x.entry.epoch == e.epoch
                             and x.entry.seq == expected), None)
                if late is None:
                    r.gaps.append(Gap(d, e.epoch, expected))
                    s.queue.clear()
                    return None
                d = s.queue.pop(late)
                e = d.entry
            else:
                s.queue.pop(0)
            return WorkItem(d, cp.state if cp.ByteSize() else None, e.epoch > cp.epoch)
        return None

    # ---- what became of a round ----
    def checkpoint(self, session_id: str) -> bus_pb2.StageCheckpoint:
        return self._sessions[session_id].checkpoint

    def committed(self, session_id: str, checkpoint: bus_pb2.StageCheckpoint) -> None:
        """The session's entry was committed with this checkpoint (empty: the session closed here)."""
        self._sessions[session_id].checkpoint = checkpoint

    def drop(self, session_id: str) -> None:
        """Forget what is queued of the session (its entry failed transiently: the rest stays pending on the bus)."""
        self._sessions[session_id].queue.clear()
