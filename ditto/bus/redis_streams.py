"""The bus on Redis Streams: XADD / XREADGROUP / XAUTOCLAIM, leases as keys with TTL, commits as one Lua script."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from ditto.bus.base import Admission, AdmissionRequest, Bus, BusError, Commit, Delivery, LeaseLost, Reservation
from ditto.redaction import redact, redact_url, remember_url
from ditto_client.v1 import bus_pb2

_FIELD = b"e"

# KEYS: [lease?] + output streams + state keys + ack streams.
# ARGV: owner, n_out, n_state, n_ack, ttl, has_lease, then (payload, ttl_ms if none) per output, (flag, value) per
# state, (group, id) per ack.
_COMMIT = """
local owner = ARGV[1]
local n_out, n_state, n_ack = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local k, a = 1, 7
if ARGV[6] == '1' then
  if redis.call('GET', KEYS[1]) ~= owner then return redis.error_reply('LEASE_LOST') end
  k = 2
end
for i = 1, n_out do
  redis.call('XADD', KEYS[k], '*', 'e', ARGV[a])
  local out_ttl = tonumber(ARGV[a + 1])
  if out_ttl > 0 and redis.call('PTTL', KEYS[k]) == -1 then redis.call('PEXPIRE', KEYS[k], out_ttl) end
  k = k + 1; a = a + 2
end
for i = 1, n_state do
  if ARGV[a] == '1' then redis.call('SET', KEYS[k], ARGV[a + 1], 'EX', ttl) else redis.call('DEL', KEYS[k]) end
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


class RedisBus(Bus):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "ditto", state_ttl_s: int = 3600,
                 client: aioredis.Redis | None = None) -> None:
        super().__init__(prefix, state_ttl_s)
        remember_url(url)
        self.url = redact_url(url)  # the only form of the URL this object keeps for messages
        self.r = client or aioredis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=10)
        self._commit = self.r.register_script(_COMMIT)
        self._renew = self.r.register_script(_RENEW)
        self._release = self.r.register_script(_RELEASE)
        self._touch = self.r.register_script(_TOUCH)
        self._live = self.r.register_script(_LIVE)
        self._reap = self.r.register_script(_REAP)
        self._admit = self.r.register_script(_ADMIT)
        self._reserve = self.r.register_script(_RESERVE)
        self._unreserve = self.r.register_script(_UNRESERVE)
        self._groups: set[tuple[str, str]] = set()

    def _error(self, err: BaseException) -> BusError:
        return BusError(redact(f"Redis at {self.url}: {err}"))

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except RedisError as err:
            raise self._error(err) from err

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except RedisError:
            return False

    async def ensure_group(self, stream: str, group: str) -> None:
        if (stream, group) in self._groups:
            return
        try:
            await self.r.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise BusError(redact(f"cannot create group {group} on {stream}: {err}")) from err
        except RedisError as err:
            raise self._error(err) from err
        self._groups.add((stream, group))

    async def publish(self, stream: str, entry: bus_pb2.StreamEntry) -> str:
        return _s(await self._call(self.r.xadd(stream, {_FIELD: entry.SerializeToString()})))

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

    async def read(self, group: str, consumer: str, streams: Sequence[str], count: int = 64,
                   block_ms: int = 0) -> list[Delivery]:
        if not streams:
            return []
        for s in streams:
            await self.ensure_group(s, group)
        try:
            res = await self.r.xreadgroup(group, consumer, {s: ">" for s in streams}, count=count,
                                          block=block_ms if block_ms > 0 else None)
        except ResponseError as err:
            if "NOGROUP" in str(err):  # stream deleted under us: recreate on the next call
                self._groups.clear()
                return []
            raise self._error(err) from err
        except RedisError as err:
            raise self._error(err) from err
        out: list[Delivery] = []
        rows: Any = res or []
        for stream, items in rows:
            out.extend(self._parse(_s(stream), items, 1))
        return out

    async def claim(self, stream: str, group: str, consumer: str, min_idle_ms: int = 0,
                    count: int = 256) -> list[Delivery]:
        await self.ensure_group(stream, group)
        out: list[Delivery] = []
        start = "0-0"
        while True:
            try:
                res = await self._call(self.r.xautoclaim(stream, group, consumer, min_idle_ms, start, count=count))
            except BusError as err:
                if "NOGROUP" not in str(err):
                    raise
                # The stream is gone (Redis restarted empty, or the stream was deleted): nothing is pending, and
                # the remembered groups are stale, so they are created again on the next call.
                self._groups.clear()
                return out
            start = _s(res[0])
            out.extend(self._parse(stream, res[1], 2))
            if start == "0-0" or len(out) >= count:
                return out

    async def commit(self, group: str, commit: Commit, lease: tuple[str, str] | None = None) -> None:
        keys: list[str] = []
        argv: list[bytes | str | int] = []
        if lease:
            keys.append(lease[0])
        for stream, entry in commit.outputs:
            keys.append(stream)
            argv.extend([entry.SerializeToString(), commit.output_ttl_ms.get(stream, 0)])
        for key, value in commit.state.items():
            keys.append(key)
            argv.extend([b"1", value] if value is not None else [b"0", b""])
        for stream, entry_id in commit.acks:
            keys.append(stream)
            argv.extend([group, entry_id])
        owner = lease[1] if lease else ""
        head: list[bytes | str | int] = [owner, len(commit.outputs), len(commit.state), len(commit.acks),
                                         self.state_ttl_s, "1" if lease else "0"]
        try:
            await self._commit(keys=keys, args=head + argv)
        except ResponseError as err:
            if "LEASE_LOST" in str(err):
                raise LeaseLost(f"lease {lease[0] if lease else ''} is no longer held by {owner}") from err
            raise self._error(err) from err
        except RedisError as err:
            raise self._error(err) from err

    async def pending_count(self, stream: str, group: str) -> int:
        try:
            info = await self.r.xpending(stream, group)
        except ResponseError:
            return 0
        except RedisError as err:
            raise self._error(err) from err
        return int(info["pending"])

    async def backlog(self, stream: str, group: str) -> int:
        # Acknowledged entries are deleted at once, so what the stream holds is exactly what is not yet done.
        return await self.stream_length(stream)

    async def stream_length(self, stream: str) -> int:
        return int(await self._call(self.r.xlen(stream)))

    async def oldest_entry(self, stream: str) -> bus_pb2.StreamEntry | None:
        found = self._parse(stream, await self._call(self.r.xrange(stream, count=1)), 0)
        return found[0].entry if found else None

    async def delete_stream(self, stream: str) -> None:
        await self._call(self.r.delete(stream))
        self._groups = {g for g in self._groups if g[0] != stream}

    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        if await self._call(self.r.set(key, owner, nx=True, px=ttl_ms)):
            return True
        return await self.renew_lease(key, owner, ttl_ms)

    async def renew_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._call(self._renew(keys=[key], args=[owner, ttl_ms])))

    async def release_lease(self, key: str, owner: str) -> bool:
        return bool(await self._call(self._release(keys=[key], args=[owner])))

    async def lease_owner(self, key: str) -> str | None:
        v = await self._call(self.r.get(key))
        return _s(v) if v is not None else None

    async def scan_keys(self, pattern: str) -> list[str]:
        try:
            return [_s(k) async for k in self.r.scan_iter(match=pattern, count=500)]
        except RedisError as err:
            raise self._error(err) from err

    async def touch_member(self, key: str, member: str, ttl_ms: int) -> None:
        await self._call(self._touch(keys=[key], args=[member, ttl_ms]))

    async def remove_member(self, key: str, member: str) -> None:
        await self._call(self.r.zrem(key, member))

    async def live_members(self, key: str) -> list[str]:
        return sorted(_s(m) for m in await self._call(self._live(keys=[key])))

    async def reap_members(self, key: str) -> list[str]:
        return sorted(_s(m) for m in await self._call(self._reap(keys=[key])))

    async def expire_stream(self, stream: str, ttl_ms: int) -> bool:
        return bool(await self._call(self.r.pexpire(stream, ttl_ms)))

    async def reserve(self, key: str, member: str, weight: int, max_count: int, max_weight: int,
                      ttl_ms: int) -> Reservation:
        res = [_s(v) for v in await self._call(self._reserve(keys=[key], args=[member, weight, max_count,
                                                                                max_weight, ttl_ms]))]
        return Reservation(res[0], int(res[1]), int(res[2]), res[3] == "1")

    async def unreserve(self, key: str, member: str) -> None:
        await self._call(self._unreserve(keys=[key], args=[member]))

    async def admit(self, request: AdmissionRequest) -> Admission:
        r = request
        keys = [r.sessions_key, r.used_key]
        for st in r.stages:
            keys += [st.held_key, st.load_key]
        args: list[str | int | float] = [r.session_id, r.max_sessions, r.max_seconds, r.slots, r.per_slot, r.ttl_ms,
                                         random.randrange(1 << 30)]
        args += [",".join(str(k) for k in st.preference) for st in r.stages]
        res = [_s(v) for v in await self._call(self._admit(keys=keys, args=args))]
        if res[0]:
            stage = r.stages[int(res[1]) - 1].stage if int(res[1]) > 0 else ""
            return Admission(res[0], stage, int(res[2]))
        return Admission(slots={st.stage: int(v) for st, v in zip(r.stages, res[1:], strict=True)})

    async def get_state(self, key: str) -> bytes | None:
        return await self._call(self.r.get(key))

    async def set_state(self, key: str, value: bytes | None, ttl_s: int | None = None) -> None:
        if value is None:
            await self._call(self.r.delete(key))
        else:
            await self._call(self.r.set(key, value, ex=ttl_s or self.state_ttl_s))

    async def incr(self, key: str, amount: int = 1, ttl_s: int | None = None) -> int:
        async with self.r.pipeline(transaction=True) as p:
            p.incrby(key, amount)
            if ttl_s:
                p.expire(key, ttl_s)
            res = await self._call(p.execute())
        return int(res[0])

    async def close(self) -> None:
        await self.r.aclose()
