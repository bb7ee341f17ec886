"""One contract, two buses: every test here runs on the in-memory bus and on a real Redis server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sum_stage import STAGE, RunningSum

from ditto import codec
from ditto.bus import Bus, Commit, LeaseLost, RedisBus
from ditto.bus.worker import SlotWorker, WorkerSettings
from ditto_client.v1 import bus_pb2

HERE = Path(__file__).parent


def entry(session: str, seq: int, x: int = 0, epoch: int = 0, out_stream: str = "") -> bus_pb2.StreamEntry:
    e = bus_pb2.StreamEntry(session_id=session, epoch=epoch, seq=seq, kind=bus_pb2.ENTRY_KIND_DATA,
                            created_unix_ms=int(time.time() * 1000))
    e.tensors.extend(codec.named({"x": np.array(x, dtype=np.int64)}))
    if out_stream:
        e.route["out"] = out_stream
    return e


async def test_read_preserves_order_per_stream_and_session(bus):
    s = bus.keys.slot_stream("stage", 0)
    await bus.ensure_group(s, "stage")
    for i in range(20):
        await bus.publish(s, entry(f"sess{i % 3}", i // 3, x=i))
    got = []
    while True:
        batch = await bus.read("stage", "c1", [s], count=7)
        if not batch:
            break
        got.extend(batch)
    assert [int(codec.unnamed(d.entry.tensors)["x"]) for d in got] == list(range(20))
    for sess in ("sess0", "sess1", "sess2"):
        seqs = [d.entry.seq for d in got if d.entry.session_id == sess]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))


async def test_read_blocks_until_publish(bus):
    s = bus.keys.slot_stream("stage", 1)
    await bus.ensure_group(s, "stage")
    assert await bus.read("stage", "c1", [s], block_ms=50) == []

    async def later():
        await asyncio.sleep(0.1)
        await bus.publish(s, entry("a", 0, 5))

    task = asyncio.create_task(later())
    t0 = time.monotonic()
    got = await bus.read("stage", "c1", [s], block_ms=60_000)
    await task
    # woken by the publish, not by the end of the 60 s block
    assert len(got) == 1 and time.monotonic() - t0 < 50


async def test_commit_is_atomic_and_trims_only_acknowledged(bus):
    s, out = bus.keys.slot_stream("stage", 0), bus.keys.slot_stream("next", 0)
    await bus.ensure_group(s, "stage")
    assert await bus.oldest_entry(s) is None
    for i in range(3):
        await bus.publish(s, entry("a", i, i))
    got = await bus.read("stage", "c1", [s], count=10)
    assert await bus.pending_count(s, "stage") == 3
    assert (await bus.oldest_entry(s)).seq == 0
    await bus.commit("stage", Commit(outputs=[(out, entry("a", 0, 10))], state={"k": b"v"},
                                     acks=[(s, got[0].entry_id)]))
    assert await bus.stream_length(s) == 2  # the acknowledged entry is gone, the two unacknowledged stay
    assert (await bus.oldest_entry(s)).seq == 1  # the oldest work not yet done
    assert await bus.pending_count(s, "stage") == 2
    assert await bus.backlog(s, "stage") == 2
    assert await bus.stream_length(out) == 1
    assert await bus.get_state("k") == b"v"


async def test_commit_refused_without_lease_writes_nothing(bus):
    s, out = bus.keys.slot_stream("stage", 0), bus.keys.slot_stream("next", 0)
    lease = bus.keys.lease("stage", 0)
    await bus.ensure_group(s, "stage")
    await bus.publish(s, entry("a", 0, 1))
    got = await bus.read("stage", "c1", [s])
    assert await bus.acquire_lease(lease, "other", 5000)
    with pytest.raises(LeaseLost):
        await bus.commit("stage", Commit(outputs=[(out, entry("a", 0))], state={"k2": b"x"},
                                         acks=[(s, got[0].entry_id)]), lease=(lease, "me"))
    assert await bus.stream_length(out) == 0
    assert await bus.get_state("k2") is None
    assert await bus.pending_count(s, "stage") == 1


async def test_leases_are_exclusive_renewable_and_expire(bus):
    key = bus.keys.lease("stage", 3)
    assert await bus.acquire_lease(key, "a", 300)
    assert not await bus.acquire_lease(key, "b", 300)
    assert await bus.renew_lease(key, "a", 300)
    assert not await bus.renew_lease(key, "b", 300)
    assert await bus.lease_owner(key) == "a"
    await _wait_until(lambda: _is_none(bus.lease_owner(key)), 10, "the lease never expired")
    assert await bus.acquire_lease(key, "b", 300)
    assert not await bus.release_lease(key, "a")
    assert await bus.release_lease(key, "b")


async def test_claim_takes_over_pending_entries_of_a_dead_consumer(bus):
    s = bus.keys.slot_stream("stage", 0)
    await bus.ensure_group(s, "stage")
    for i in range(4):
        await bus.publish(s, entry("a", i, i))
    first = await bus.read("stage", "dead", [s], count=4)
    assert len(first) == 4
    assert await bus.claim(s, "stage", "alive", min_idle_ms=60_000) == []
    claimed = await bus.claim(s, "stage", "alive", min_idle_ms=0)
    assert [d.entry.seq for d in claimed] == [0, 1, 2, 3]
    assert all(d.deliveries >= 2 for d in claimed)
    assert await bus.read("stage", "alive", [s]) == []  # nothing new: claimed entries are not redelivered as new


def _outputs(bus_stream_entries: list[bus_pb2.StreamEntry]) -> dict[str, list[tuple[int, int, int]]]:
    per: dict[str, list[tuple[int, int, int]]] = {}
    for e in bus_stream_entries:
        t = codec.unnamed(e.tensors)
        per.setdefault(e.session_id, []).append((e.seq, int(t["x"]), int(t["sum"])))
    return per


async def _drain(bus: Bus, stream: str) -> list[bus_pb2.StreamEntry]:
    await bus.ensure_group(stream, "reader")
    out = []
    while True:
        got = await bus.read("reader", "r", [stream], count=500)
        if not got:
            return out
        out.extend(d.entry for d in got)


def _check_sums(per: dict[str, list[tuple[int, int, int]]], expected: dict[str, list[int]]) -> None:
    for sess, xs in expected.items():
        rows = per.get(sess, [])
        assert [r[0] for r in rows] == list(range(len(xs))), f"{sess}: output seqs {[r[0] for r in rows]}"
        assert [r[1] for r in rows] == xs, f"{sess}: inputs out of order or lost"
        assert [r[2] for r in rows] == list(np.cumsum(xs)), f"{sess}: an entry was applied twice or skipped"


async def _publish_sessions(bus: Bus, slots: int, n: int, out: str) -> dict[str, list[int]]:
    expected: dict[str, list[int]] = {}
    for sess_idx in range(3):
        sess = f"s{sess_idx}"
        slot = sess_idx % slots
        xs = [int(v) for v in np.random.default_rng(sess_idx).integers(1, 100, n)]
        expected[sess] = xs
        stream = bus.keys.slot_stream(STAGE, slot)
        await bus.ensure_group(stream, STAGE)
        for seq, x in enumerate(xs):
            await bus.publish(stream, entry(sess, seq, x, out_stream=out))
    return expected


async def _is_none(value) -> bool:
    return await value is None


async def _wait_until(cond, timeout: float, what: str) -> None:
    """Poll an async condition until it holds (a wait on the condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def _wait_consumed(bus: Bus, *streams: str, timeout: float = 20) -> None:
    """Until every entry of the input streams is handled (a commit deletes its input): nothing more can come out."""
    async def empty() -> bool:
        return all([await bus.stream_length(s) == 0 for s in streams])
    await _wait_until(empty, timeout, f"entries left unhandled in {streams}")


async def _wait_for(bus: Bus, stream: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await bus.stream_length(stream) < n:
        assert time.monotonic() < deadline, f"only {await bus.stream_length(stream)} of {n} outputs in {timeout}s"
        await asyncio.sleep(0.05)


async def test_worker_processes_sessions_in_order_batched(bus):
    out = bus.keys.key("out")
    expected = await _publish_sessions(bus, 2, 15, out)
    handler = RunningSum()
    worker = SlotWorker(bus, handler, "w1", WorkerSettings(slots=2, lease_ttl_ms=1000, block_ms=20))
    task = asyncio.create_task(worker.run())
    await _wait_for(bus, out, 45, 20)
    await worker.stop()
    await task
    _check_sums(_outputs(await _drain(bus, out)), expected)
    assert max(handler.batch_sizes) > 1, "sessions were never batched together"
    for slot in range(2):
        assert await bus.lease_owner(bus.keys.lease(STAGE, slot)) is None, "graceful stop must release slots"
        assert await bus.stream_length(bus.keys.slot_stream(STAGE, slot)) == 0


async def test_redelivered_and_stale_entries_are_skipped(bus):
    out = bus.keys.key("out")
    stream = bus.keys.slot_stream(STAGE, 0)
    await bus.ensure_group(stream, STAGE)
    for seq, x in enumerate([1, 2, 3]):
        await bus.publish(stream, entry("s", seq, x, out_stream=out))
    await bus.publish(stream, entry("s", 1, 50, out_stream=out))  # a duplicate of seq 1: must not count twice
    await bus.publish(stream, entry("s", 0, 7, epoch=1, out_stream=out))  # new epoch starts at seq 0
    await bus.publish(stream, entry("s", 3, 1000, epoch=0, out_stream=out))  # stale epoch: dropped
    worker = SlotWorker(bus, RunningSum(), "w1", WorkerSettings(slots=1, lease_ttl_ms=1000, block_ms=20))
    task = asyncio.create_task(worker.run())
    await _wait_for(bus, out, 4, 10)
    await _wait_consumed(bus, stream)
    await worker.stop()
    await task
    rows = [(e.epoch, e.seq, int(codec.unnamed(e.tensors)["sum"])) for e in await _drain(bus, out)]
    assert rows == [(0, 0, 1), (0, 1, 3), (0, 2, 6), (1, 0, 13)]
    assert await bus.stream_length(stream) == 0


async def test_orchestrator_epoch_floor_drops_stale_work(bus):
    out = bus.keys.key("out")
    stream = bus.keys.slot_stream(STAGE, 0)
    await bus.ensure_group(stream, STAGE)
    await bus.set_state(bus.keys.epoch("s"), b"2")
    await bus.publish(stream, entry("s", 0, 5, epoch=1, out_stream=out))
    await bus.publish(stream, entry("s", 0, 9, epoch=2, out_stream=out))
    worker = SlotWorker(bus, RunningSum(), "w1", WorkerSettings(slots=1, lease_ttl_ms=1000, block_ms=20))
    task = asyncio.create_task(worker.run())
    await _wait_for(bus, out, 1, 10)
    await _wait_consumed(bus, stream)
    await worker.stop()
    await task
    rows = [(e.epoch, int(codec.unnamed(e.tensors)["sum"])) for e in await _drain(bus, out)]
    assert rows == [(2, 9)]


async def test_two_workers_share_slots(bus):
    out = bus.keys.key("out")
    expected = await _publish_sessions(bus, 4, 10, out)
    settings = WorkerSettings(slots=4, lease_ttl_ms=1000, block_ms=20, rebalance_every_s=0.1)
    w1, w2 = SlotWorker(bus, RunningSum(0.005), "w1", settings), SlotWorker(bus, RunningSum(0.005), "w2", settings)
    tasks = [asyncio.create_task(w1.run()), asyncio.create_task(w2.run())]
    await _wait_for(bus, out, 30, 20)

    async def both_hold() -> bool:
        return bool(w1.held) and bool(w2.held)
    await _wait_until(both_hold, 20, f"slots never shared: {set(w1.held)} / {set(w2.held)}")
    held = (set(w1.held), set(w2.held))
    await w1.stop()
    await w2.stop()
    await asyncio.gather(*tasks)
    assert held[0] and held[1] and not (held[0] & held[1]), f"slots not shared: {held}"
    _check_sums(_outputs(await _drain(bus, out)), expected)


async def test_consumer_lost_mid_work_another_completes(bus, unique_prefix):
    """A worker dies with entries read and not committed: a real process killed with SIGKILL on Redis, an abandoned
    task on the in-memory bus. The next lease holder claims its pending entries; nothing is lost or applied twice."""
    out = bus.keys.key("out")
    n = 40
    expected = await _publish_sessions(bus, 2, n, out)
    ttl = 600
    if isinstance(bus, RedisBus):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parents[1]), str(HERE)]))
        proc = subprocess.Popen([sys.executable, str(HERE / "sum_worker_proc.py"), "--redis", bus.url, "--prefix",
                                 bus.prefix, "--owner", "victim", "--slots", "2", "--ttl-ms", str(ttl), "--delay",
                                 "0.03"], env=env)
        try:
            await _wait_for(bus, out, 20, 60)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    else:
        victim = SlotWorker(bus, RunningSum(0.03), "victim",
                            WorkerSettings(slots=2, lease_ttl_ms=ttl, block_ms=20, batch_entries=4))
        task = asyncio.create_task(victim.run())
        await _wait_for(bus, out, 20, 30)
        # Abandon it the hard way: no graceful stop, its leases are left to expire, read entries stay pending.
        victim._release_all = _noop  # type: ignore[method-assign]
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        assert await bus.lease_owner(bus.keys.lease(STAGE, 0)) == "victim"
    done_at_kill = await bus.stream_length(out)
    assert done_at_kill < 3 * n, "the victim finished everything before it was killed; the test proves nothing"
    rescuer = SlotWorker(bus, RunningSum(), "rescuer", WorkerSettings(slots=2, lease_ttl_ms=ttl, block_ms=20))
    task = asyncio.create_task(rescuer.run())
    await _wait_for(bus, out, 3 * n, 30)
    await _wait_consumed(bus, *[bus.keys.slot_stream(STAGE, k) for k in range(2)])
    await rescuer.stop()
    await task
    _check_sums(_outputs(await _drain(bus, out)), expected)


async def _noop() -> None:
    return None


# ---- live-member sets, stream TTLs, atomic admission: the same contract on both buses ----

async def test_live_members_expire_one_by_one_and_can_be_reaped(bus):
    key = bus.keys.key("members")
    await bus.touch_member(key, "short", 150)
    await bus.touch_member(key, "long", 60_000)
    assert await bus.live_members(key) == ["long", "short"]
    deadline = time.monotonic() + 5
    while "short" in await bus.live_members(key):
        assert time.monotonic() < deadline, "a member outlived its TTL"
        await asyncio.sleep(0.05)
    assert await bus.live_members(key) == ["long"]
    await bus.touch_member(key, "dead", 1)
    await asyncio.sleep(0.05)
    assert await bus.reap_members(key) == ["dead"]
    assert await bus.reap_members(key) == []
    await bus.remove_member(key, "long")
    assert await bus.live_members(key) == []


async def test_stream_ttl_removes_a_stream_and_commit_gives_a_recreated_stream_one(bus):
    s = bus.keys.key("frames", "replica")
    assert not await bus.expire_stream(s, 1000), "no stream yet: nothing to expire"
    await bus.ensure_group(s, "g")
    await bus.publish(s, entry("a", 0))
    assert await bus.expire_stream(s, 150)
    deadline = time.monotonic() + 5
    while await bus.stream_length(s):
        assert time.monotonic() < deadline, "the stream outlived its TTL"
        await asyncio.sleep(0.05)
    # A producer appending to the expired stream creates it again; with output_ttl_ms it does not live forever.
    await bus.commit("stage", Commit(outputs=[(s, entry("a", 1))], output_ttl_ms={s: 150}))
    assert await bus.stream_length(s) == 1
    deadline = time.monotonic() + 5
    while await bus.stream_length(s):
        assert time.monotonic() < deadline, "a stream recreated by a commit has no TTL"
        await asyncio.sleep(0.05)


def _admission(bus, session: str, max_sessions: int = 2, per_slot: int = 4):
    from ditto.bus.base import AdmissionRequest, StageSlots

    stages = tuple(StageSlots(st, bus.keys.held_slots(st), bus.keys.placements(st)) for st in ("a", "b"))
    return AdmissionRequest(session, bus.keys.tenant_sessions("t"), max_sessions, bus.keys.tenant_seconds_used("t"),
                            0, stages, 4, per_slot, 5000)


async def test_admit_is_atomic_quota_and_placement_least_loaded(bus):
    for st in ("a", "b"):
        for slot in (0, 1):
            await bus.touch_member(bus.keys.held_slots(st), str(slot), 60_000)
    results = await asyncio.gather(*(bus.admit(_admission(bus, f"s{i}")) for i in range(10)))
    admitted = [r for r in results if not r.refused]
    assert len(admitted) == 2, f"{len(admitted)} of 10 simultaneous requests admitted for a limit of 2"
    assert all(r.refused == "sessions" and r.count == 2 for r in results if r.refused)
    # least loaded first: the two sessions went to different slots of each stage
    assert {r.slots["a"] for r in admitted} == {0, 1} and {r.slots["b"] for r in admitted} == {0, 1}
    assert sorted(await bus.live_members(bus.keys.tenant_sessions("t"))) == sorted(
        f"s{i}" for i, r in enumerate(results) if not r.refused)


async def test_admit_refuses_without_a_worker_or_room_and_writes_nothing(bus):
    r = await bus.admit(_admission(bus, "x"))
    assert (r.refused, r.stage) == ("no_worker", "a")
    for st in ("a", "b"):
        await bus.touch_member(bus.keys.held_slots(st), "0", 60_000)
    await bus.touch_member(bus.keys.placements("b"), "0:other", 60_000)
    r = await bus.admit(_admission(bus, "y", max_sessions=5, per_slot=1))
    assert (r.refused, r.stage, r.count) == ("full", "b", 1)
    assert await bus.live_members(bus.keys.tenant_sessions("t")) == []
    assert await bus.live_members(bus.keys.placements("a")) == []


# ---- commits are idempotent; blocking reads never outlive the client's socket timeout ----

async def test_a_replayed_or_half_done_commit_applies_once(bus):
    """A commit redone (a retry after a connection reset, or the redo of a commit cut between its per-slot steps on a
    Redis Cluster) appends nothing twice and never writes an older checkpoint over a newer one."""
    s, out = bus.keys.slot_stream("stage", 0), bus.keys.slot_stream("next", 5)
    lease = bus.keys.lease("stage", 0)
    state = bus.keys.checkpoint("stage", 0, "a")
    await bus.ensure_group(s, "stage")
    for i in range(2):
        await bus.publish(s, entry("a", i, i))
    got = await bus.read("stage", "w", [s], count=2)
    assert await bus.acquire_lease(lease, "w", 5000)

    def commit_of(d, value: bytes) -> Commit:
        return Commit(outputs=[(out, entry("a", d.entry.seq, 10 + d.entry.seq))], state={state: value},
                      acks=[(s, d.entry_id)], input=("a", d.entry_id))

    # cut after its outputs: only the output step of the first commit happened ...
    await bus.commit("stage", Commit(outputs=commit_of(got[0], b"").outputs, input=("a", got[0].entry_id)))
    await bus.commit("stage", commit_of(got[0], b"cp0"), lease=(lease, "w"))  # ... then the whole commit, redone
    assert await bus.stream_length(out) == 1, "a redone commit appended its outputs again"
    await bus.commit("stage", commit_of(got[1], b"cp1"), lease=(lease, "w"))
    await bus.commit("stage", commit_of(got[0], b"cp0"), lease=(lease, "w"))  # an old commit replayed late
    assert await bus.get_state(state) == b"cp1", "a replayed commit wrote an older checkpoint over a newer one"
    assert [e.seq for e in await _drain(bus, out)] == [0, 1]
    assert await bus.stream_length(s) == 0 and await bus.pending_count(s, "stage") == 0


async def test_a_blocking_read_returns_before_the_socket_timeout(bus):
    """redis-py sends a read whose reply timed out again, and a `>` read sent again can move entries into the pending
    list unseen: so a read asked to block longer than the socket timeout blocks less, returns empty, and leaves
    nothing pending."""
    if not isinstance(bus, RedisBus):
        pytest.skip("no socket: the in-memory bus blocks exactly as long as asked")
    short = RedisBus(bus._url, bus.prefix, socket_timeout_s=1.0)
    try:
        assert short.max_block_ms < 1000
        s = short.keys.slot_stream("stage", 2)
        await short.ensure_group(s, "stage")
        t0 = time.monotonic()
        assert await short.read("stage", "c", [s, short.keys.slot_stream("stage", 3)], block_ms=60_000) == []
        # asked for 60 s, it returns (empty, without a socket timeout in between): far sooner, however loaded the
        # machine is
        assert time.monotonic() - t0 < 20, "the read blocked as long as asked, past the socket timeout"
        await short.publish(s, entry("a", 0))
        got: list = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:  # a loaded machine may answer after one capped block
            got = await short.read("stage", "c", [s], block_ms=60_000)
        assert [d.entry.session_id for d in got] == ["a"]
        assert await short.pending_count(s, "stage") == 1  # exactly the entry delivered, nothing unseen
    finally:
        await short.close()
