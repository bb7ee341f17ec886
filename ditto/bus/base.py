"""The bus contract: ordered per-slot streams with one consumer group each, leases, atomic commits.

Every stage has S slots. A slot is a stream (`ditto.keys.Keys.slot_stream`) read by one consumer group (the stage
name). A worker may read a slot only while it holds the slot's lease (a key with a TTL, renewed by heartbeat).
When a worker dies its leases expire; the next holder claims the dead worker's pending entries before reading
new ones, so every session's entries are processed in order by one worker at a time.

`commit` is the one write path of a worker: it appends the outputs downstream, stores session state, and
acknowledges (and deletes) the inputs -- and it does nothing if the worker no longer holds the lease. On one Redis
that is one atomic step; on a Redis Cluster the outputs live in other hash slots, so it is one atomic step per slot,
outputs first and the checkpoint + acknowledgement + lease check last, each step idempotent (markers name the last
input applied), so a commit cut in the middle and redone never applies anything twice. An entry is processed
completely or redone, and a redelivered entry is recognised by (session, epoch, seq) in the stored checkpoint. Only
acknowledged entries are ever deleted; nothing is trimmed unprocessed.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from ditto.keys import Keys
from ditto_client.v1 import bus_pb2


class BusError(RuntimeError):
    """The bus is unreachable or answered an error."""


class LeaseLost(BusError):
    """A commit or renewal was refused because another worker holds the lease now."""


@dataclass(frozen=True)
class StageSlots:
    """Where admission looks for one stage's capacity: `held_key`, the live-member set of slots a worker holds, and
    `load_key`, the live-member set of placements (members `"<slot>:<session>"`)."""

    stage: str
    held_key: str
    load_key: str
    preference: tuple[int, ...] = ()  # slots to try first, in order (placement's choice); else the least loaded


@dataclass(frozen=True)
class AdmissionRequest:
    """One session asking in: the tenant's live sessions below `max_sessions`, its used seconds below `max_seconds`
    (0 = no limit) and, per stage, a held slot with fewer than `per_slot` placements (least loaded first)."""

    session_id: str
    sessions_key: str
    max_sessions: int
    used_key: str
    max_seconds: float
    stages: tuple[StageSlots, ...]
    slots: int
    per_slot: int
    ttl_ms: int


@dataclass(frozen=True)
class Admission:
    """The answer. `refused` is "" (admitted), "sessions" or "seconds" (tenant quota), "no_worker" or "full"
    (capacity, with `stage`); `count` is the tenant's open sessions, or the stage's held slots when full."""

    refused: str = ""
    stage: str = ""
    count: int = 0
    slots: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Reservation:
    """The answer of `Bus.reserve`. `refused` is "" (held), "count" or "weight" (the set is full); `count` and
    `weight` are the set's totals after the call (before it, when refused); `existed`: the member was held already
    and was only refreshed."""

    refused: str = ""
    count: int = 0
    weight: int = 0
    existed: bool = False


@dataclass(frozen=True)
class Delivery:
    stream: str
    entry_id: str
    entry: bus_pb2.StreamEntry
    deliveries: int = 1  # > 1 when the entry was claimed from a worker that did not finish it


@dataclass
class Commit:
    """One atomic step: outputs appended, state written (None deletes), inputs acknowledged and deleted."""

    outputs: list[tuple[str, bus_pb2.StreamEntry]] = field(default_factory=list)
    state: dict[str, bytes | None] = field(default_factory=dict)
    acks: list[tuple[str, str]] = field(default_factory=list)  # (stream, entry_id)
    # Output streams that must not outlive their reader (a replica's frames stream): if the stream has no TTL when
    # the commit appends to it (it was gone and the append created it again), it gets this one (milliseconds).
    output_ttl_ms: dict[str, int] = field(default_factory=dict)
    # The input this commit completes, (session id, "<epoch>-<seq>" of the input entry): with it, the outputs are
    # appended and the state is written at most once per input (markers beside each stream name the last input
    # applied), so a commit redone after a failure in the middle -- or a step retried after a connection reset --
    # never applies twice. A stage applies a session's entries in (epoch, seq) order, which is not always the order
    # of their stream ids (an entry that came late is applied before the later ones that came first), so the marker
    # compares (epoch, seq), written like a stream id.
    input: tuple[str, str] | None = None


class Bus(abc.ABC):
    """One interface, two implementations: `RedisBus` (Redis Streams) and `MemoryBus` (one process)."""

    def __init__(self, prefix: str = "ditto", state_ttl_s: int = 3600) -> None:
        self.prefix = prefix
        self.keys = Keys(prefix)  # every key name (ditto.keys)
        self.state_ttl_s = state_ttl_s

    # ---- streams ----
    @abc.abstractmethod
    async def ensure_group(self, stream: str, group: str) -> None:
        """Create the stream and its consumer group if missing (reading from the beginning)."""

    @abc.abstractmethod
    async def publish(self, stream: str, entry: bus_pb2.StreamEntry) -> str:
        """Append an entry; returns its id."""

    @abc.abstractmethod
    async def read(self, group: str, consumer: str, streams: Sequence[str], count: int = 64,
                   block_ms: int = 0) -> list[Delivery]:
        """New entries (never delivered to the group) from the given streams, oldest first per stream, at most
        `count` from each stream.
        Blocks up to block_ms when there are none (0 = don't block)."""

    @abc.abstractmethod
    async def claim(self, stream: str, group: str, consumer: str, min_idle_ms: int = 0,
                    count: int = 256) -> list[Delivery]:
        """Take over pending entries (delivered but not acknowledged) idle at least min_idle_ms, oldest first."""

    @abc.abstractmethod
    async def commit(self, group: str, commit: Commit, lease: tuple[str, str] | None = None) -> None:
        """Apply a Commit (atomically per hash slot, see the module's doc). With `lease=(lease_key, owner)`, only if
        owner still holds it (else LeaseLost, and nothing of the commit is applied)."""

    @abc.abstractmethod
    async def pending_count(self, stream: str, group: str) -> int:
        """Entries delivered to the group and not yet acknowledged."""

    @abc.abstractmethod
    async def backlog(self, stream: str, group: str) -> int:
        """Entries not yet acknowledged by the group: pending plus never delivered (the stream's lag)."""

    @abc.abstractmethod
    async def stream_length(self, stream: str) -> int:
        ...

    @abc.abstractmethod
    async def oldest_entry(self, stream: str) -> bus_pb2.StreamEntry | None:
        """The first entry still in the stream, i.e. the oldest work not yet done (None when it is empty)."""

    @abc.abstractmethod
    async def delete_stream(self, stream: str) -> None:
        ...

    # ---- leases ----
    @abc.abstractmethod
    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take the lease if free (or already ours). True when we hold it now."""

    @abc.abstractmethod
    async def renew_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Extend our lease; False when it is no longer ours."""

    @abc.abstractmethod
    async def release_lease(self, key: str, owner: str) -> bool:
        ...

    @abc.abstractmethod
    async def lease_owner(self, key: str) -> str | None:
        ...

    # ---- state ----
    @abc.abstractmethod
    async def get_state(self, key: str) -> bytes | None:
        ...

    @abc.abstractmethod
    async def set_state(self, key: str, value: bytes | None, ttl_s: int | None = None) -> None:
        ...

    @abc.abstractmethod
    async def incr(self, key: str, amount: int = 1, ttl_s: int | None = None) -> int:
        """Atomic counter (quotas, session counts)."""

    @abc.abstractmethod
    async def scan_keys(self, pattern: str) -> list[str]:
        """Live lease and state keys matching a glob pattern. Its cost grows with every key in the store: for tools
        and tests only, never on a request path or in a worker loop (use the live-member sets below)."""

    # ---- live-member sets: presence records whose cost does not grow with unrelated keys ----
    # A set of members, each with its own expiry (a sorted set scored by expiry time on Redis, server clock). The
    # set itself expires with its last member.
    @abc.abstractmethod
    async def touch_member(self, key: str, member: str, ttl_ms: int) -> None:
        """Add `member` or extend its life to now + ttl_ms."""

    @abc.abstractmethod
    async def remove_member(self, key: str, member: str) -> None:
        ...

    @abc.abstractmethod
    async def live_members(self, key: str) -> list[str]:
        """Members not yet expired, sorted (expired ones are dropped on the way)."""

    @abc.abstractmethod
    async def reap_members(self, key: str) -> list[str]:
        """Remove and return the expired members, sorted (what a dead process left behind)."""

    @abc.abstractmethod
    async def expire_stream(self, stream: str, ttl_ms: int) -> bool:
        """Give a stream a TTL (refreshed by calling again). False when the stream does not exist."""

    # ---- weighted sets with a cap (a tenant's stored avatars: how many, and their bytes) ----
    @abc.abstractmethod
    async def reserve(self, key: str, member: str, weight: int, max_count: int, max_weight: int,
                      ttl_ms: int) -> Reservation:
        """In one atomic step: drop the expired members of `key`; refresh `member` if it is held (its weight and
        expiry), else add it only if the set then holds at most `max_count` members weighing at most `max_weight`
        in all. One key per call, so it runs on one Redis Cluster node."""

    @abc.abstractmethod
    async def unreserve(self, key: str, member: str) -> None:
        ...

    @abc.abstractmethod
    async def admit(self, request: AdmissionRequest) -> Admission:
        """Quota check and placement in one atomic step: when admitted, the session is already counted in
        `sessions_key` and placed in every stage's `load_key` (members live `ttl_ms`), so N simultaneous requests
        for a tenant limited to M < N admit exactly M."""

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass
