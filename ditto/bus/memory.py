"""The bus inside one process: the same contract as Redis Streams, on asyncio. The embedded default (`ditto render`,
`ditto serve`): no Redis needed, and the same stage code gives the same frames."""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ditto.bus.base import Admission, AdmissionRequest, Bus, Commit, Delivery, LeaseLost, Reservation
from ditto.keys import APPEND_MARKER, APPLIED_MARKER, beside
from ditto_client.v1 import bus_pb2


def _id(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-", 1)
    return int(ms), int(seq)


@dataclass
class _Pending:
    consumer: str
    delivered_at: float
    deliveries: int


@dataclass
class _Group:
    last_delivered: int = 0  # sequence number of the newest delivered entry
    pending: dict[str, _Pending] = field(default_factory=dict)


@dataclass
class _Stream:
    entries: OrderedDict[str, bytes] = field(default_factory=OrderedDict)  # id -> serialised entry
    seq_of: dict[str, int] = field(default_factory=dict)
    groups: dict[str, _Group] = field(default_factory=dict)
    expires_at: float | None = None  # monotonic deadline; None = no TTL


class MemoryBus(Bus):
    def __init__(self, prefix: str = "ditto", state_ttl_s: int = 3600) -> None:
        super().__init__(prefix, state_ttl_s)
        self._streams: dict[str, _Stream] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._state: dict[str, tuple[bytes, float]] = {}
        self._members: dict[str, dict[str, float]] = {}  # key -> member -> monotonic expiry
        self._weighted: dict[str, dict[str, tuple[int, float]]] = {}  # key -> member -> (weight, monotonic expiry)
        self._counter = itertools.count(1)
        self._last_ms = 0
        self._changed = asyncio.Condition()

    def _stream(self, name: str) -> _Stream:
        s = self._streams.get(name)
        if s is not None and s.expires_at is not None and s.expires_at <= time.monotonic():
            del self._streams[name]  # expired like a Redis key: entries and groups are gone
            s = None
        if s is None:
            s = self._streams[name] = _Stream()
        return s

    async def ensure_group(self, stream: str, group: str) -> None:
        self._stream(stream).groups.setdefault(group, _Group())

    def _append(self, stream: str, entry: bus_pb2.StreamEntry) -> str:
        seq = next(self._counter)
        self._last_ms = max(self._last_ms, int(time.time() * 1000))  # ids only grow, as on Redis (markers compare them)
        entry_id = f"{self._last_ms}-{seq}"
        s = self._stream(stream)
        # Entries are stored serialised, as on Redis, so no consumer can mutate another's copy.
        s.entries[entry_id] = entry.SerializeToString()
        s.seq_of[entry_id] = seq
        return entry_id

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def publish(self, stream: str, entry: bus_pb2.StreamEntry) -> str:
        entry_id = self._append(stream, entry)
        await self._notify()
        return entry_id

    @staticmethod
    def _delivery(stream: str, entry_id: str, raw: bytes, deliveries: int) -> Delivery:
        msg = bus_pb2.StreamEntry()
        msg.ParseFromString(raw)
        return Delivery(stream, entry_id, msg, deliveries)

    def _take_new(self, group: str, consumer: str, streams: Sequence[str], count: int) -> list[Delivery]:
        out: list[Delivery] = []
        now = time.monotonic()
        for name in streams:
            s = self._stream(name)
            g = s.groups.setdefault(group, _Group())
            for entry_id, raw in s.entries.items():
                if len(out) >= count:
                    return out
                seq = s.seq_of[entry_id]
                if seq <= g.last_delivered:
                    continue
                g.last_delivered = seq
                g.pending[entry_id] = _Pending(consumer, now, 1)
                out.append(self._delivery(name, entry_id, raw, 1))
        return out

    async def read(self, group: str, consumer: str, streams: Sequence[str], count: int = 64,
                   block_ms: int = 0) -> list[Delivery]:
        out = self._take_new(group, consumer, streams, count)
        if out or block_ms <= 0:
            return out
        deadline = time.monotonic() + block_ms / 1000
        async with self._changed:
            while True:
                out = self._take_new(group, consumer, streams, count)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass

    async def claim(self, stream: str, group: str, consumer: str, min_idle_ms: int = 0,
                    count: int = 256) -> list[Delivery]:
        s = self._stream(stream)
        g = s.groups.setdefault(group, _Group())
        now = time.monotonic()
        out: list[Delivery] = []
        for entry_id in sorted(g.pending, key=lambda i: s.seq_of.get(i, 0)):
            p = g.pending[entry_id]
            if (now - p.delivered_at) * 1000 < min_idle_ms:
                continue
            if entry_id not in s.entries:
                del g.pending[entry_id]
                continue
            p.consumer, p.delivered_at, p.deliveries = consumer, now, p.deliveries + 1
            out.append(self._delivery(stream, entry_id, s.entries[entry_id], p.deliveries))
            if len(out) >= count:
                break
        return out

    def _done(self, marker: str, input_id: str) -> bool:
        """Whether the marker names `input_id` or a later input (see `Commit.input`; "a-b" compares as numbers)."""
        held = self._state.get(marker)
        if held is None or held[1] <= time.monotonic():
            return False
        return _id(input_id) <= _id(held[0].decode())

    async def commit(self, group: str, commit: Commit, lease: tuple[str, str] | None = None) -> None:
        # No await before the last write: the whole commit happens in one step of the event loop (atomic). The
        # markers give a replayed commit the same effect as on Redis: applied once.
        if lease and self._lease_holder(lease[0]) != lease[1]:
            raise LeaseLost(f"lease {lease[0]} is no longer held by {lease[1]}")
        sid, input_id = commit.input or ("", "")
        expires = time.monotonic() + self.state_ttl_s
        skipped: set[str] = set()
        for stream in dict.fromkeys(s for s, _ in commit.outputs):
            marker = beside(stream, APPEND_MARKER, group, sid)
            if input_id and self._done(marker, input_id):
                skipped.add(stream)
            elif input_id:
                self._state[marker] = (input_id.encode(), expires)
        for stream, entry in commit.outputs:
            if stream in skipped:
                continue
            self._append(stream, entry)
            ttl_ms = commit.output_ttl_ms.get(stream)
            if ttl_ms and self._streams[stream].expires_at is None:
                self._streams[stream].expires_at = time.monotonic() + ttl_ms / 1000
        write_state = True
        if input_id and commit.acks and commit.state:
            applied = beside(commit.acks[0][0], APPLIED_MARKER, group, sid)
            write_state = not self._done(applied, input_id)
            if write_state:
                self._state[applied] = (input_id.encode(), expires)
        for key, value in commit.state.items():
            if not write_state:
                break
            if value is None:
                self._state.pop(key, None)
            else:
                self._state[key] = (value, expires)
        for stream, entry_id in commit.acks:
            s = self._stream(stream)
            g = s.groups.setdefault(group, _Group())
            if g.pending.pop(entry_id, None) is not None:
                s.entries.pop(entry_id, None)
                s.seq_of.pop(entry_id, None)
        await self._notify()

    async def pending_count(self, stream: str, group: str) -> int:
        g = self._stream(stream).groups.get(group)
        return len(g.pending) if g else 0

    async def backlog(self, stream: str, group: str) -> int:
        return len(self._stream(stream).entries)

    async def stream_length(self, stream: str) -> int:
        return len(self._stream(stream).entries)

    async def oldest_entry(self, stream: str) -> bus_pb2.StreamEntry | None:
        entries = self._stream(stream).entries
        if not entries:
            return None
        return bus_pb2.StreamEntry.FromString(next(iter(entries.values())))

    async def delete_stream(self, stream: str) -> None:
        self._streams.pop(stream, None)

    async def expire_stream(self, stream: str, ttl_ms: int) -> bool:
        s = self._streams.get(stream)
        if s is None or (s.expires_at is not None and s.expires_at <= time.monotonic()):
            self._streams.pop(stream, None)
            return False
        s.expires_at = time.monotonic() + ttl_ms / 1000
        return True

    # ---- live-member sets ----
    def _live(self, key: str) -> dict[str, float]:
        members = self._members.get(key, {})
        now = time.monotonic()
        for m in [m for m, exp in members.items() if exp <= now]:
            del members[m]
        return members

    async def touch_member(self, key: str, member: str, ttl_ms: int) -> None:
        self._members.setdefault(key, {})[member] = time.monotonic() + ttl_ms / 1000

    async def remove_member(self, key: str, member: str) -> None:
        self._members.get(key, {}).pop(member, None)

    async def live_members(self, key: str) -> list[str]:
        return sorted(self._live(key))

    async def reap_members(self, key: str) -> list[str]:
        members = self._members.get(key, {})
        now = time.monotonic()
        dead = sorted(m for m, exp in members.items() if exp <= now)
        for m in dead:
            del members[m]
        return dead

    async def reserve(self, key: str, member: str, weight: int, max_count: int, max_weight: int,
                      ttl_ms: int) -> Reservation:
        # no await inside: atomic on the event loop
        now = time.monotonic()
        held = {m: v for m, v in self._weighted.get(key, {}).items() if v[1] > now}
        existed = held.pop(member, None) is not None
        count, total = len(held), sum(w for w, _ in held.values())
        if not existed:
            if count + 1 > max_count:
                return Reservation("count", count, total)
            if total + weight > max_weight:
                return Reservation("weight", count, total)
        held[member] = (weight, now + ttl_ms / 1000)
        self._weighted[key] = held
        return Reservation("", count + 1, total + weight, existed)

    async def unreserve(self, key: str, member: str) -> None:
        self._weighted.get(key, {}).pop(member, None)

    async def admit(self, request: AdmissionRequest) -> Admission:
        # No await inside: the check and the writes happen in one step of the event loop, so it is atomic.
        r = request
        sessions = self._live(r.sessions_key)
        if len(sessions) >= r.max_sessions:
            return Admission("sessions", count=len(sessions))
        if r.max_seconds > 0:
            held_used = self._state.get(r.used_key)
            used = int(held_used[0]) if held_used and held_used[1] > time.monotonic() else 0
            if used >= r.max_seconds:
                return Admission("seconds", count=used)
        chosen: dict[str, int] = {}
        for st in r.stages:
            held = sorted(int(m) for m in self._live(st.held_key) if int(m) < r.slots)
            if not held:
                return Admission("no_worker", st.stage)
            load: dict[int, int] = {}
            for m in self._live(st.load_key):
                slot = int(m.split(":", 1)[0])
                load[slot] = load.get(slot, 0) + 1
            free = [k for k in held if load.get(k, 0) < r.per_slot]
            if not free:
                return Admission("full", st.stage, len(held))
            preferred = [k for k in st.preference if k in free]
            if preferred:
                chosen[st.stage] = preferred[0]
                continue
            least = min(load.get(k, 0) for k in free)
            chosen[st.stage] = random.choice([k for k in free if load.get(k, 0) == least])
        expiry = time.monotonic() + r.ttl_ms / 1000
        self._members.setdefault(r.sessions_key, {})[r.session_id] = expiry
        for st in r.stages:
            self._members.setdefault(st.load_key, {})[f"{chosen[st.stage]}:{r.session_id}"] = expiry
        return Admission(slots=chosen)

    def _lease_holder(self, key: str) -> str | None:
        held = self._leases.get(key)
        if held is None:
            return None
        if held[1] <= time.monotonic():
            del self._leases[key]
            return None
        return held[0]

    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        holder = self._lease_holder(key)
        if holder not in (None, owner):
            return False
        self._leases[key] = (owner, time.monotonic() + ttl_ms / 1000)
        return True

    async def renew_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        if self._lease_holder(key) != owner:
            return False
        self._leases[key] = (owner, time.monotonic() + ttl_ms / 1000)
        return True

    async def release_lease(self, key: str, owner: str) -> bool:
        if self._lease_holder(key) != owner:
            return False
        del self._leases[key]
        return True

    async def lease_owner(self, key: str) -> str | None:
        return self._lease_holder(key)

    async def scan_keys(self, pattern: str) -> list[str]:
        now = time.monotonic()
        live = [k for k, (_, exp) in self._leases.items() if exp > now]
        live += [k for k, (_, exp) in self._state.items() if exp > now]
        return [k for k in live if fnmatch.fnmatchcase(k, pattern)]

    async def get_state(self, key: str) -> bytes | None:
        held = self._state.get(key)
        if held is None or held[1] <= time.monotonic():
            self._state.pop(key, None)
            return None
        return held[0]

    async def set_state(self, key: str, value: bytes | None, ttl_s: int | None = None) -> None:
        if value is None:
            self._state.pop(key, None)
        else:
            self._state[key] = (value, time.monotonic() + (ttl_s or self.state_ttl_s))

    async def incr(self, key: str, amount: int = 1, ttl_s: int | None = None) -> int:
        current = int((await self.get_state(key)) or b"0") + amount
        await self.set_state(key, str(current).encode(), ttl_s)
        return current
