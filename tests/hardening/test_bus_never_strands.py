"""The bus never strands an entry: every test runs the real slot-worker runtime on the in-memory bus and on a real
Redis server. A stranded entry shows up as a wrong running sum, a missing output, or a pending count above 0."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
from sum_stage import STAGE, RunningSum

from ditto import codec
from ditto.bus import Bus, BusError
from ditto.bus.worker import SlotWorker, WorkerSettings
from ditto_client.v1 import bus_pb2, common_pb2

FAST = {"lease_ttl_ms": 1000, "block_ms": 20, "reclaim_every_s": 0.2, "retry_after_s": 0.05}


def entry(session: str, seq: int, x: int, out: str, frames: str) -> bus_pb2.StreamEntry:
    e = bus_pb2.StreamEntry(session_id=session, seq=seq, kind=bus_pb2.ENTRY_KIND_DATA,
                            created_unix_ms=int(time.time() * 1000))
    e.tensors.extend(codec.named({"x": np.array(x, dtype=np.int64)}))
    e.route["out"] = out
    e.route["frames"] = frames
    return e


class Run:
    """A stage worker over one slot, its input stream, the outputs and the error entries it wrote."""

    def __init__(self, bus: Bus, handler, **settings) -> None:
        self.bus = bus
        self.stream = bus.keys.slot_stream(STAGE, 0)
        self.out = bus.keys.key("out")
        self.frames = bus.keys.key("frames")
        self.worker = SlotWorker(bus, handler, "w1", WorkerSettings(slots=1, **{**FAST, **settings}))
        self.task: asyncio.Task | None = None

    async def publish(self, session: str, seq: int, x: int) -> None:
        await self.bus.ensure_group(self.stream, STAGE)
        await self.bus.publish(self.stream, entry(session, seq, x, self.out, self.frames))

    def start(self) -> Run:
        self.task = asyncio.create_task(self.worker.run())
        return self

    async def stop(self) -> None:
        await self.worker.stop()
        assert self.task is not None
        await self.task

    async def entries(self, stream: str) -> list[bus_pb2.StreamEntry]:
        await self.bus.ensure_group(stream, "reader")
        out = []
        while got := await self.bus.read("reader", "r", [stream], count=500):
            out.extend(d.entry for d in got)
        return out

    async def wait_outputs(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while await self.bus.stream_length(self.out) < n:
            assert time.monotonic() < deadline, f"{await self.bus.stream_length(self.out)} of {n} outputs"
            await asyncio.sleep(0.02)

    async def wait_drained(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while await self.bus.stream_length(self.stream):
            assert time.monotonic() < deadline, (f"{await self.bus.stream_length(self.stream)} entries left in the "
                                                 f"slot, {await self.bus.pending_count(self.stream, STAGE)} pending")
            await asyncio.sleep(0.02)


def sums(outputs: list[bus_pb2.StreamEntry]) -> dict[str, list[tuple[int, int]]]:
    per: dict[str, list[tuple[int, int]]] = {}
    for e in outputs:
        t = codec.unnamed(e.tensors)
        per.setdefault(e.session_id, []).append((int(t["x"]), int(t["sum"])))
    return per


def expect(xs: list[int]) -> list[tuple[int, int]]:
    return list(zip(xs, (int(v) for v in np.cumsum(xs)), strict=True))


async def test_every_pending_entry_of_a_dead_worker_is_done_not_only_the_first_256(bus):
    run = Run(bus, RunningSum())
    xs = {f"s{k}": list(range(1 + k, 101 + k)) for k in range(3)}  # 300 entries
    for i in range(100):
        for sid, v in xs.items():
            await run.publish(sid, i, v[i])
    dead = await bus.read(STAGE, "dead-worker", [run.stream], count=1000)  # read, never committed: all pending
    assert len(dead) == 300 and await bus.pending_count(run.stream, STAGE) == 300
    run.start()
    await run.wait_outputs(300)
    await run.wait_drained()
    await run.stop()
    assert await bus.pending_count(run.stream, STAGE) == 0
    assert sums(await run.entries(run.out)) == {sid: expect(v) for sid, v in xs.items()}


async def test_pending_entries_are_rechecked_while_the_slot_is_held(bus):
    """Entries stranded after the holder acquired the slot (here: read by a consumer that vanished) are found by
    the periodic check, not only when a slot changes hands."""
    run = Run(bus, RunningSum()).start()
    await run.publish("a", 0, 1)
    await run.wait_outputs(1)
    await run.publish("b", 0, 5)
    await run.publish("b", 1, 6)
    # a consumer that read them and vanished: the entries are pending, never new again for the holder's reads
    ghost = []
    deadline = time.monotonic() + 10
    while len(ghost) < 2 and time.monotonic() < deadline:
        ghost += await bus.read(STAGE, "ghost", [run.stream], count=10)
    assert len(ghost) == 2 or await bus.stream_length(run.out) == 3  # the holder may have been quicker: no harm
    await run.wait_outputs(3)
    await run.wait_drained()
    await run.stop()
    assert sums(await run.entries(run.out))["b"] == expect([5, 6])


class FlakyBus(RunningSum):
    """RunningSum whose handler hits a transient bus error on chosen (session, seq) entries, `times` times each."""

    def __init__(self, fail: set[tuple[str, int]], times: int) -> None:
        super().__init__()
        self.fail = {k: times for k in fail}

    async def process(self, items):
        for it in items:
            key = (it.entry.session_id, it.entry.seq)
            if self.fail.get(key, 0) > 0:
                self.fail[key] -= 1
                raise BusError("Redis at redis://***@127.0.0.1:6379/0: Connection reset by peer")
        return await super().process(items)


async def test_a_transient_bus_error_is_retried_in_order_never_skipped(bus):
    run = Run(bus, FlakyBus({("a", 3)}, times=2)).start()
    xs = {"a": [1, 2, 3, 4, 5, 6, 7, 8], "b": [10, 20, 30, 40, 50, 60, 70, 80]}
    for i in range(8):
        for sid, v in xs.items():
            await run.publish(sid, i, v[i])
    await run.wait_outputs(16)
    await run.wait_drained()
    await run.stop()
    assert sums(await run.entries(run.out)) == {sid: expect(v) for sid, v in xs.items()}
    assert await bus.pending_count(run.stream, STAGE) == 0


async def test_a_bus_error_that_persists_ends_the_session_with_unavailable_and_never_goes_past_it(bus):
    run = Run(bus, FlakyBus({("a", 2)}, times=1000), max_retries=2).start()
    for i in range(5):
        await run.publish("a", i, i + 1)
        await run.publish("b", i, 10 * (i + 1))
    await run.wait_outputs(2 + 5)
    await run.wait_drained()
    await run.stop()
    got = sums(await run.entries(run.out))
    assert got["a"] == expect([1, 2]), "an entry after the failing one was applied"
    assert got["b"] == expect([10, 20, 30, 40, 50])
    errors = [e for e in await run.entries(run.frames) if e.kind == bus_pb2.ENTRY_KIND_ERROR]
    assert [e.session_id for e in errors] == ["a"]
    status = common_pb2.Status.FromString(errors[0].meta)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "entry 2" in status.message and "start a new session" in status.message
    assert await bus.pending_count(run.stream, STAGE) == 0


async def test_a_gap_in_sequence_numbers_waits_for_the_missing_entry_and_applies_it_first(bus):
    run = Run(bus, RunningSum()).start()
    for seq, x in ((0, 1), (1, 2), (3, 4), (4, 5)):  # 2 is late
        await run.publish("a", seq, x)
    await run.wait_outputs(2)
    deadline = time.monotonic() + 5
    while await bus.stream_length(run.stream) > 2:  # the worker saw 3 and 4 and holds them back
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert await bus.stream_length(run.out) == 2, "an entry past the gap was applied"
    await run.publish("a", 2, 3)
    await run.wait_outputs(5)
    await run.wait_drained()
    await run.stop()
    assert sums(await run.entries(run.out))["a"] == expect([1, 2, 3, 4, 5])


async def test_a_gap_that_never_fills_ends_the_session_with_data_loss(bus):
    run = Run(bus, RunningSum(), gap_timeout_s=0.5).start()
    for seq, x in ((0, 1), (1, 2), (3, 4), (4, 5)):
        await run.publish("a", seq, x)
    await run.publish("b", 0, 7)
    await run.wait_drained()
    await run.stop()
    got = sums(await run.entries(run.out))
    assert got == {"a": expect([1, 2]), "b": expect([7])}
    errors = [e for e in await run.entries(run.frames) if e.kind == bus_pb2.ENTRY_KIND_ERROR]
    assert len(errors) == 1
    status = common_pb2.Status.FromString(errors[0].meta)
    assert status.code == grpc.StatusCode.DATA_LOSS.value[0] and "never received entry 2" in status.message
    assert await bus.pending_count(run.stream, STAGE) == 0
