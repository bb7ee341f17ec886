"""The bus on Redis Streams: XADD / XREADGROUP / XAUTOCLAIM, leases as keys with TTL, commits as Lua scripts.

The same URL may name one Redis or any node of a Redis Cluster: the mode is detected when the bus connects. On a
cluster every script's keys are in one hash slot (the key names of ditto.keys are designed for it), a worker reads
each of its slot streams with its own XREADGROUP, and a commit runs as one script per hash slot it touches.
"""

from __future__ import annotations

import asyncio
import random
from asyncio import FIRST_COMPLETED
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis as redis_sync
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import ExponentialBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ditto.bus.base import Admission, AdmissionRequest, Bus, BusError, Commit, Delivery, LeaseLost, Reservation
from ditto.keys import APPEND_MARKER, APPLIED_MARKER, beside
from ditto.redaction import redact, redact_url, remember_url
from ditto_client.v1 import bus_pb2

_FIELD = b"e"

# One commit step: every key in one hash slot (on one Redis: all of them). KEYS: [lease?] + (stream, append marker)
# per output stream + [applied marker?] + state keys + ack streams. ARGV: owner, has_lease, state ttl, input id ('' =
# none), n_out, n_state, n_ack, has_applied, then per output stream (n entries, ttl_ms if none, entries...), (flag,
# value) per state key, (group, id) per ack.
# A marker holds the id of the last input whose outputs (or checkpoint) this step applied for the session: a step
# for an input at or before it is a replay (a retry after a connection reset, or the redo of a commit cut in the
# middle) and is skipped, so nothing is appended or written twice. Acks are idempotent by themselves.
_COMMIT = """
local owner, has_lease, ttl, input = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local n_out, n_state, n_ack, has_applied = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local k, a = 1, 9
local function done(marker)
  if input == '' then return false end
  local last = redis.call('GET', marker)
  if not last then return false end
  local im, is = string.match(input, '^(%d+)-(%d+)$')
  local lm, ls = string.match(last, '^(%d+)-(%d+)$')
  im, is, lm, ls = tonumber(im), tonumber(is), tonumber(lm), tonumber(ls)
  return im < lm or (im == lm and is <= ls)
end
if has_lease == '1' then
  if redis.call('GET', KEYS[1]) ~= owner then return redis.error_reply('LEASE_LOST') end
  k = 2
end
for i = 1, n_out do
  local stream, marker = KEYS[k], KEYS[k + 1]
  local n, out_ttl = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  if not done(marker) then
    for j = 0, n - 1 do redis.call('XADD', stream, '*', 'e', ARGV[a + j]) end
    if out_ttl > 0 and redis.call('PTTL', stream) == -1 then redis.call('PEXPIRE', stream, out_ttl) end
    if input ~= '' then redis.call('SET', marker, input, 'EX', ttl) end
  end
  a = a + n; k = k + 2
end
local write_state = true
if has_applied == '1' then
  if done(KEYS[k]) then write_state = false else redis.call('SET', KEYS[k], input, 'EX', ttl) end
  k = k + 1
end
for i = 1, n_state do
  if write_state then
    if ARGV[a] == '1' then redis.call('SET', KEYS[k], ARGV[a + 1], 'EX', ttl) else redis.call('DEL', KEYS[k]) end
  end
  k = k + 1; a = a + 2
end
for i = 1, n_ack do
  redis.call('XACK', KEYS[k], ARGV[a], ARGV[a + 1])
  redis.call('XDEL', KEYS[k], ARGV[a + 1])
  k = k + 1; a = a + 2
end
return 1
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end
"""

# Live-member sets: a sorted set scored by expiry time (the server's clock, so hosts need not agree on time); the
# key itself lives as long as its longest-lived member.
_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"
_TOUCH = _NOW + """
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""
_LIVE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
_REAP = _NOW + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
return dead
"""
# KEYS: sessions, used, then (held, load) per stage. ARGV: session, max_sessions, max_seconds, slots, per_slot,
# ttl_ms, seed, then per stage its preferred slots ("3,0,5"; the first held one with room wins). Returns
# {"", slot...} when admitted, else {reason, stage index, count}.
_ADMIT = _NOW + """
local sid, max_sessions, max_seconds = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local slots, per_slot, ttl, seed = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local n = (#KEYS - 2) / 2
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local active = redis.call('ZCARD', KEYS[1])
if active >= max_sessions then return {'sessions', '0', tostring(active)} end
if max_seconds > 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= max_seconds then return {'seconds', '0', tostring(used)} end
end
local chosen = {}
for i = 1, n do
  local held_key, load_key = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  redis.call('ZREMRANGEBYSCORE', held_key, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', load_key, '-inf', now)
  local held = {}
  for _, m in ipairs(redis.call('ZRANGE', held_key, 0, -1)) do
    if tonumber(m) < slots then table.insert(held, tonumber(m)) end
  end
  if #held == 0 then return {'no_worker', tostring(i), '0'} end
  local load = {}
  for _, m in ipairs(redis.call('ZRANGE', load_key, 0, -1)) do
    local slot = tonumber(string.match(m, '^(%d+):'))
    if slot then load[slot] = (load[slot] or 0) + 1 end
  end
  table.sort(held)
  local is_held = {}
  for _, slot in ipairs(held) do is_held[slot] = true end
  for s in string.gmatch(ARGV[7 + i] or '', '%d+') do
    local k = tonumber(s)
    if is_held[k] and (load[k] or 0) < per_slot then chosen[i] = k; break end
  end
  if chosen[i] == nil then
    local least, ties = nil, {}
    for _, slot in ipairs(held) do
      local l = load[slot] or 0
      if l < per_slot then
        if least == nil or l < least then least = l; ties = {slot} elseif l == least then table.insert(ties, slot) end
      end
    end
    if least == nil then return {'full', tostring(i), tostring(#held)} end
    chosen[i] = ties[(seed % #ties) + 1]
  end
end
local function add(key, member)
  redis.call('ZADD', key, now + ttl, member)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
add(KEYS[1], sid)
local out = {''}
for i = 1, n do
  add(KEYS[2 + 2 * i], chosen[i] .. ':' .. sid)
  table.insert(out, tostring(chosen[i]))
end
return out
"""


# Weighted sets: members "<member>:<weight>" in a sorted set scored by expiry. KEYS: the set. ARGV: member, weight,
# max_count, max_weight, ttl_ms. Returns {refused, count, weight, existed}.
_RESERVE = _NOW + """
local member, weight = ARGV[1], tonumber(ARGV[2])
local max_count, max_weight, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count, total, existing = 0, 0, nil
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local id, w = string.match(m, '^(.*):(%d+)$')
  if id == member then existing = m elseif id then count = count + 1; total = total + tonumber(w) end
end
if existing == nil then
  if count + 1 > max_count then return {'count', count, total, 0} end
  if total + weight > max_weight then return {'weight', count, total, 0} end
else
  redis.call('ZREM', KEYS[1], existing)
end
redis.call('ZADD', KEYS[1], now + ttl, member .. ':' .. weight)
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {'', count + 1, total + weight, existing and 1 or 0}
"""
_UNRESERVE = """
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.match(m, '^(.*):%d+$') == ARGV[1] then redis.call('ZREM', KEYS[1], m) end
end
return 1
"""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# Every client gets a socket timeout, and every blocking read's BLOCK stays well below it: redis-py sends a command
# whose reply timed out again, and a `>` read sent again can move entries into the pending list that no one sees
# (they would wait for a reclaim). `RedisBus.read` clamps BLOCK to half the timeout.
SOCKET_TIMEOUT_S = 5.0
# Connection resets and timeouts are retried a few times with a short backoff (a failover takes ~1-2 node timeouts);
# what still fails surfaces as BusError, which the callers retry with their own, longer, bounded backoff.
_RETRIES = 3


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), _RETRIES)


def is_cluster_sync(url: str, socket_timeout: float = SOCKET_TIMEOUT_S) -> bool:
    """Whether the Redis at `url` is a node of a Redis Cluster (`INFO cluster`: cluster_enabled:1)."""
    probe = redis_sync.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=socket_timeout)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    finally:
        probe.close()


def sync_client(url: str, socket_timeout: float = SOCKET_TIMEOUT_S,
                **kwargs: Any) -> redis_sync.Redis | redis_sync.RedisCluster:
    """A blocking client for tools and tests: a `RedisCluster` when `url` names any node of a cluster, else a plain
    client. Raises redis' ConnectionError when nothing answers."""
    common: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": socket_timeout, **kwargs}
    if is_cluster_sync(url, socket_timeout):
        return redis_sync.RedisCluster.from_url(url, **common)
    return redis_sync.Redis.from_url(url, **common)


async def connect(url: str, socket_timeout: float = SOCKET_TIMEOUT_S) -> aioredis.Redis | AsyncRedisCluster:
    """The client for `url`: redis-py's asyncio `RedisCluster` when the node answers `INFO cluster` with
    cluster_enabled:1 (any node will do: the client discovers the others and follows MOVED/ASK), else a plain
    client. Both retry connection errors a few times (bounded backoff)."""
    probe = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=socket_timeout,
                                    health_check_interval=10, retry=_retry(),
                                    retry_on_error=[RedisConnectionError, RedisTimeoutError])
    try:
        cluster = bool((await probe.info("cluster")).get("cluster_enabled"))
    except BaseException:
        await probe.aclose()
        raise
    if not cluster:
        return probe
    await probe.aclose()
    # RedisCluster refreshes its map of slots to nodes on MOVED and on connection errors (a promoted replica), and
    # retries the command (up to the Retry's count); its Script objects load a script again on NOSCRIPT (a new
    # primary starts with an empty script cache).
    return AsyncRedisCluster.from_url(url, socket_connect_timeout=2, socket_timeout=socket_timeout,
                                      retry=_retry())


@dataclass
class _Step:
    """The part of a commit in one hash slot: executed as one script."""

    outputs: dict[str, list[bytes]] = field(default_factory=dict)
    state: dict[str, bytes | None] = field(default_factory=dict)
    acks: list[tuple[str, str]] = field(default_factory=list)
    lease: bool = False


class RedisBus(Bus):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "ditto", state_ttl_s: int = 3600,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        super().__init__(prefix, state_ttl_s)
        remember_url(url)
        self._url = url  # never shown: messages use `self.url`
        self.url = redact_url(url)  # the only form of the URL this object keeps for messages
        self.socket_timeout_s = socket_timeout_s
        self.max_block_ms = max(1, int(socket_timeout_s * 1000 / 2))
        self._r: aioredis.Redis | AsyncRedisCluster | None = None
        self._connecting = asyncio.Lock()
        self._scripts: dict[str, Any] = {}
        self._groups: set[tuple[str, str]] = set()
        # On a cluster, one XREADGROUP per stream (the streams are in different hash slots); a blocking one still in
        # flight when `read` returns is kept and its entries are returned by the next call, never dropped.
        self._inflight: dict[tuple[str, str, str], asyncio.Task] = {}

    # ---- connection ----
    async def client(self) -> aioredis.Redis | AsyncRedisCluster:
        """The connected client; cluster mode is detected on first use (and again after a failed attempt)."""
        if self._r is None:
            async with self._connecting:
                if self._r is None:
                    try:
                        self._r = await connect(self._url, self.socket_timeout_s)
                    except RedisError as err:
                        raise self._error(err) from err
        return self._r

    @property
    def cluster(self) -> bool:
        return isinstance(self._r, AsyncRedisCluster)

    async def _script(self, name: str) -> Any:
        if name not in self._scripts:
            self._scripts[name] = (await self.client()).register_script(_SCRIPTS[name])
        return self._scripts[name]

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await (await self._script(name))(keys=keys, args=args)

    def _error(self, err: BaseException) -> BusError:
        return BusError(redact(f"Redis at {self.url}: {err}"))

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except RedisError as err:
            raise self._error(err) from err

    async def _do(self, method: str, *args: Any, **kwargs: Any) -> Any:
        r = await self.client()
        return await self._call(getattr(r, method)(*args, **kwargs))

    async def ping(self) -> bool:
        try:
            return bool(await (await self.client()).ping())
        except (RedisError, BusError):
            return False

    # ---- streams ----
    async def ensure_group(self, stream: str, group: str) -> None:
        if (stream, group) in self._groups:
            return
        r = await self.client()
        try:
            await r.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise BusError(redact(f"cannot create group {group} on {stream}: {err}")) from err
        except RedisError as err:
            raise self._error(err) from err
        self._groups.add((stream, group))

    async def publish(self, stream: str, entry: bus_pb2.StreamEntry) -> str:
        return _s(await self._do("xadd", stream, {_FIELD: entry.SerializeToString()}))

    @staticmethod
    def _parse(stream: str, items: Any, deliveries: int) -> list[Delivery]:
        out = []
        for entry_id, fields in items:
            if not fields:  # deleted while pending
                continue
            msg = bus_pb2.StreamEntry()
            msg.ParseFromString(fields[_FIELD])
            out.append(Delivery(stream, _s(entry_id), msg, deliveries))
        return out

    def _nogroup(self) -> None:
        """A stream was deleted under us (or Redis came back empty): recreate the groups on the next call."""
        self._groups.clear()

    async def read(self, group: str, consumer: str, streams: Sequence[str], count: int = 64,
                   block_ms: int = 0) -> list[Delivery]:
        if not streams:
            return []
        for s in streams:
            await self.ensure_group(s, group)
        block = min(block_ms, self.max_block_ms) if block_ms > 0 else 0  # below the socket timeout, always
        r = await self.client()
        if isinstance(r, AsyncRedisCluster):
            return await self._read_each(r, group, consumer, streams, count, block)
        try:
            res = await r.xreadgroup(group, consumer, {s: ">" for s in streams}, count=count, block=block or None)
        except ResponseError as err:
            if "NOGROUP" in str(err):
                self._nogroup()
                return []
            raise self._error(err) from err
        except RedisError as err:
            raise self._error(err) from err
        out: list[Delivery] = []
        rows: Any = res or []
        for stream, items in rows:
            out.extend(self._parse(_s(stream), items, 1))
        return out

    async def _read_each(self, r: AsyncRedisCluster, group: str, consumer: str, streams: Sequence[str], count: int,
                         block: int) -> list[Delivery]:
        """The cluster's read: one XREADGROUP per stream, all at once; returns as soon as one has entries (or all
        blocked `block` ms). Reads still blocked stay in flight and are collected by the next call: cancelling one
        could lose the reply of a read the server already answered (its entries would sit in the pending list)."""
        async def one(stream: str) -> list[Delivery]:
            res: Any = await r.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block or None)
            out: list[Delivery] = []
            for name, items in res or []:
                out.extend(self._parse(_s(name), items, 1))
            return out

        fresh: list[asyncio.Task] = []
        mine: list[asyncio.Task] = []
        for s in streams:
            key = (group, consumer, s)
            task = self._inflight.get(key)
            if task is None:
                task = self._inflight[key] = asyncio.ensure_future(one(s))
                fresh.append(task)
            mine.append(task)
        if block == 0:
            if fresh:
                await asyncio.wait(fresh)  # the non-blocking reads answer at once
        elif not any(t.done() for t in mine):
            await asyncio.wait(mine, timeout=block / 1000 + self.socket_timeout_s, return_when=FIRST_COMPLETED)
        out: list[Delivery] = []
        error: BaseException | None = None
        wanted = set(streams)
        for key, task in list(self._inflight.items()):
            if key[:2] != (group, consumer) or not task.done():
                continue
            del self._inflight[key]
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is None:
                if key[2] in wanted:  # else the slot moved away: its next holder claims what this read took
                    out.extend(task.result())
            elif isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                self._nogroup()
            else:
                error = exc
        if error is not None and not out:
            raise self._error(error) if isinstance(error, RedisError) else error
        return out

    async def claim(self, stream: str, group: str, consumer: str, min_idle_ms: int = 0,
                    count: int = 256) -> list[Delivery]:
        await self.ensure_group(stream, group)
        out: list[Delivery] = []
        start = "0-0"
        while True:
            try:
                res = await self._do("xautoclaim", stream, group, consumer, min_idle_ms, start, count=count)
            except BusError as err:
                if "NOGROUP" not in str(err):
                    raise
                # The stream is gone (Redis restarted empty, or the stream was deleted): nothing is pending, and
                # the remembered groups are stale, so they are created again on the next call.
                self._nogroup()
                return out
            start = _s(res[0])
            out.extend(self._parse(stream, res[1], 2))
            if start == "0-0" or len(out) >= count:
                return out

    def _slot(self, key: str) -> int:
        """The key's hash slot on a cluster; on one Redis every key is in one place (0)."""
        return key_slot(key.encode()) if self.cluster else 0

    def _steps(self, group: str, commit: Commit, lease: tuple[str, str] | None) -> tuple[list[_Step], _Step | None]:
        """The commit cut into one step per hash slot: (the steps without the lease, the last step). The last step
        is the lease's slot (or the first acknowledged stream's): it checks the lease and writes the checkpoint."""
        steps: dict[int, _Step] = {}

        def step(key: str) -> _Step:
            return steps.setdefault(self._slot(key), _Step())

        last_key = lease[0] if lease else (commit.acks[0][0] if commit.acks else None)
        if last_key is not None:
            step(last_key).lease = lease is not None
        for stream, entry in commit.outputs:
            step(stream).outputs.setdefault(stream, []).append(entry.SerializeToString())
        for key, value in commit.state.items():
            step(key).state[key] = value
        for ack in commit.acks:
            step(ack[0]).acks.append(ack)
        last = steps.pop(self._slot(last_key)) if last_key is not None else None
        return list(steps.values()), last

    async def _apply(self, group: str, commit: Commit, step: _Step, lease: tuple[str, str] | None) -> None:
        sid, input_id = commit.input or ("", "")
        keys: list[str] = []
        argv: list[bytes | str | int] = []
        if step.lease and lease:
            keys.append(lease[0])
        for stream, payloads in step.outputs.items():
            keys += [stream, beside(stream, APPEND_MARKER, group, sid)]
            argv += [len(payloads), commit.output_ttl_ms.get(stream, 0), *payloads]
        applied = bool(input_id and step.acks and step.state)
        if applied:
            keys.append(beside(step.acks[0][0], APPLIED_MARKER, group, sid))
        for key, value in step.state.items():
            keys.append(key)
            argv += [b"1", value] if value is not None else [b"0", b""]
        for stream, entry_id in step.acks:
            keys.append(stream)
            argv += [group, entry_id]
        owner = lease[1] if lease else ""
        head: list[bytes | str | int] = [owner, "1" if step.lease and lease else "0", self.state_ttl_s, input_id,
                                         len(step.outputs), len(step.state), len(step.acks), "1" if applied else "0"]
        try:
            await self._run("commit", keys, head + argv)
        except ResponseError as err:
            if "LEASE_LOST" in str(err):
                raise LeaseLost(f"lease {lease[0] if lease else ''} is no longer held by {owner}") from err
            raise self._error(err) from err
        except RedisError as err:
            raise self._error(err) from err

    async def commit(self, group: str, commit: Commit, lease: tuple[str, str] | None = None) -> None:
        first, last = self._steps(group, commit, lease)
        if first and lease and await self.lease_owner(lease[0]) != lease[1]:
            # Checked again, atomically, by the last step; this only spares appending outputs for a lost slot.
            raise LeaseLost(f"lease {lease[0]} is no longer held by {lease[1]}")
        for step in first:  # outputs first: a commit cut here is redone by whoever holds the slot, markers skip these
            await self._apply(group, commit, step, None)
        if last is not None:
            await self._apply(group, commit, last, lease)

    async def pending_count(self, stream: str, group: str) -> int:
        r = await self.client()
        try:
            info = await r.xpending(stream, group)
        except ResponseError:
            return 0
        except RedisError as err:
            raise self._error(err) from err
        return int(info["pending"])

    async def backlog(self, stream: str, group: str) -> int:
        # Acknowledged entries are deleted at once, so what the stream holds is exactly what is not yet done.
        return await self.stream_length(stream)

    async def stream_length(self, stream: str) -> int:
        return int(await self._do("xlen", stream))

    async def oldest_entry(self, stream: str) -> bus_pb2.StreamEntry | None:
        found = self._parse(stream, await self._do("xrange", stream, count=1), 0)
        return found[0].entry if found else None

    async def delete_stream(self, stream: str) -> None:
        await self._do("delete", stream)
        self._groups = {g for g in self._groups if g[0] != stream}

    # ---- leases ----
    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        if await self._do("set", key, owner, nx=True, px=ttl_ms):
            return True
        return await self.renew_lease(key, owner, ttl_ms)

    async def renew_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._call(self._run("renew", [key], [owner, ttl_ms])))

    async def release_lease(self, key: str, owner: str) -> bool:
        return bool(await self._call(self._run("release", [key], [owner])))

    async def lease_owner(self, key: str) -> str | None:
        v = await self._do("get", key)
        return _s(v) if v is not None else None

    async def scan_keys(self, pattern: str) -> list[str]:
        # On a cluster, redis-py's scan_iter walks every primary.
        r = await self.client()
        try:
            return [_s(k) async for k in r.scan_iter(match=pattern, count=500)]
        except RedisError as err:
            raise self._error(err) from err

    async def purge(self) -> int:
        """Delete every key under this bus's prefix, on every primary (tests and tools; never on a request path).
        Returns how many were deleted."""
        found: set[str] = set()
        for pattern in self.keys.patterns():
            found.update(await self.scan_keys(pattern))
        for key in found:  # one at a time: on a cluster the keys are in many slots
            await self._do("delete", key)
        return len(found)

    # ---- live-member sets ----
    async def touch_member(self, key: str, member: str, ttl_ms: int) -> None:
        await self._call(self._run("touch", [key], [member, ttl_ms]))

    async def remove_member(self, key: str, member: str) -> None:
        await self._do("zrem", key, member)

    async def live_members(self, key: str) -> list[str]:
        return sorted(_s(m) for m in await self._call(self._run("live", [key], [])))

    async def reap_members(self, key: str) -> list[str]:
        return sorted(_s(m) for m in await self._call(self._run("reap", [key], [])))

    async def expire_stream(self, stream: str, ttl_ms: int) -> bool:
        return bool(await self._do("pexpire", stream, ttl_ms))

    async def reserve(self, key: str, member: str, weight: int, max_count: int, max_weight: int,
                      ttl_ms: int) -> Reservation:
        res = [_s(v) for v in await self._call(self._run("reserve", [key], [member, weight, max_count, max_weight,
                                                                             ttl_ms]))]
        return Reservation(res[0], int(res[1]), int(res[2]), res[3] == "1")

    async def unreserve(self, key: str, member: str) -> None:
        await self._call(self._run("unreserve", [key], [member]))

    async def admit(self, request: AdmissionRequest) -> Admission:
        # Every key here shares the admission hash tag (ditto.keys), so on a cluster this is one script on one node.
        r = request
        keys = [r.sessions_key, r.used_key]
        for st in r.stages:
            keys += [st.held_key, st.load_key]
        args: list[str | int | float] = [r.session_id, r.max_sessions, r.max_seconds, r.slots, r.per_slot, r.ttl_ms,
                                         random.randrange(1 << 30)]
        args += [",".join(str(k) for k in st.preference) for st in r.stages]
        res = [_s(v) for v in await self._call(self._run("admit", keys, args))]
        if res[0]:
            stage = r.stages[int(res[1]) - 1].stage if int(res[1]) > 0 else ""
            return Admission(res[0], stage, int(res[2]))
        return Admission(slots={st.stage: int(v) for st, v in zip(r.stages, res[1:], strict=True)})

    # ---- state ----
    async def get_state(self, key: str) -> bytes | None:
        return await self._do("get", key)

    async def set_state(self, key: str, value: bytes | None, ttl_s: int | None = None) -> None:
        if value is None:
            await self._do("delete", key)
        else:
            await self._do("set", key, value, ex=ttl_s or self.state_ttl_s)

    async def incr(self, key: str, amount: int = 1, ttl_s: int | None = None) -> int:
        # One key, so the transaction is in one slot on a cluster too.
        r = await self.client()
        async with r.pipeline(transaction=True) as p:
            p.incrby(key, amount)
            if ttl_s:
                p.expire(key, ttl_s)
            res = await self._call(p.execute())
        return int(res[0])

    async def close(self) -> None:
        for task in self._inflight.values():
            task.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        self._inflight.clear()
        if self._r is not None:
            await self._r.aclose()
            self._r = None


_SCRIPTS = {"commit": _COMMIT, "renew": _RENEW, "release": _RELEASE, "touch": _TOUCH, "live": _LIVE, "reap": _REAP,
            "admit": _ADMIT, "reserve": _RESERVE, "unreserve": _UNRESERVE}
