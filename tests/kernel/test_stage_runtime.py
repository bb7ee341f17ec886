"""The kernel's stage runtime (`ditto.stage_runtime`) with a small real stage on the in-memory bus and the real slot
worker: sessions run through one batched step and keep their state across entries and workers; a lost checkpoint,
bad input and a stage fault each end only their own session with the right status; the micro-batcher is bounded,
refuses a call at once when full (the bus waits instead), never splits a bus round and batches calls with rounds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from ditto import codec, telemetry
from ditto.bus import MemoryBus
from ditto.bus.worker import Output, SlotWorker, WorkerSettings
from ditto.stage_runtime import (
    FRAMES,
    BatcherClosed,
    BatcherFull,
    MicroBatcher,
    SessionStageHandler,
    forward,
)
from ditto_client.v1 import bus_pb2, common_pb2

STAGE = "adder"
POISON = 666  # an input the step cannot handle: a fault of the stage, not of the session's input


@dataclass
class Total:
    value: int = 0
    scale: int = 1


class AdderStage:
    """A session keeps a running total; DATA adds x * scale (in the batched step), CONTROL sets the scale, INTERRUPT
    starts from zero, END sends the total. A negative x is bad input."""

    name = STAGE
    label = "adder"
    passthrough = "next"
    input_errors: tuple[type[Exception], ...] = (ValueError,)
    input_error_code = grpc.StatusCode.INVALID_ARGUMENT
    max_batch = 8

    def __init__(self) -> None:
        self.restored = 0

    def step(self, batch: Sequence[tuple[Total, int | None]]) -> list[int]:
        if any(x == POISON for _, x in batch):
            raise RuntimeError("the adder cannot add 666")
        for total, x in batch:
            total.value += (x or 0) * total.scale
        return [total.value for total, _ in batch]

    async def open(self, spec, entry):
        return Total(), [forward(entry, "next")]

    async def restore(self, state: bytes) -> Total:
        self.restored += 1
        value, scale = (int(v) for v in state.decode().split(","))
        return Total(value, scale)

    def state(self, session: Total) -> bytes:
        return f"{session.value},{session.scale}".encode()

    def data(self, session: Total, entry) -> int:
        x = int(codec.unnamed(entry.tensors)["x"])
        if x < 0:
            raise ValueError(f"x must be >= 0, got {x}")
        return x

    def end(self, session: Total, entry) -> None:
        return None

    def emit(self, session: Total, entry, step_input, result: int) -> list[Output]:
        out = [Output("next", bus_pb2.ENTRY_KIND_DATA, {"total": np.array(result)})]
        if step_input is None:
            out.append(forward(entry, "next"))
        return out

    def control(self, session: Total, entry) -> list[Output]:
        session.scale = int(codec.unnamed(entry.tensors)["scale"])
        return []

    async def interrupt(self, session: Total, entry):
        return Total(scale=session.scale), [forward(entry, "next")]


def _entry(session: str, seq: int, kind: int, epoch: int = 0, **tensors: int) -> bus_pb2.StreamEntry:
    e = bus_pb2.StreamEntry(session_id=session, epoch=epoch, seq=seq, kind=kind,
                            created_unix_ms=int(time.time() * 1000))
    e.tensors.extend(codec.named({k: np.array(v, np.int64) for k, v in tensors.items()}))
    e.route["next"] = "test:next"
    e.route[FRAMES] = "test:frames"
    return e


def _session(name: str, xs: list[int], start: bool = True, end: bool = True) -> list[bus_pb2.StreamEntry]:
    entries = [_entry(name, 0, bus_pb2.ENTRY_KIND_START)] if start else []
    entries += [_entry(name, len(entries) + i, bus_pb2.ENTRY_KIND_DATA, x=x) for i, x in enumerate(xs)]
    if end:
        entries.append(_entry(name, len(entries), bus_pb2.ENTRY_KIND_END))
    return entries


async def _run(entries: list[bus_pb2.StreamEntry], outputs: int, cached_sessions: int = 64,
               stage: AdderStage | None = None, rounds: list[list[str]] | None = None
               ) -> tuple[dict[str, list], dict[str, list], SessionStageHandler]:
    """Publish the entries to one slot, run a slot worker until `outputs` entries came out (next + frames), and
    return what each session sent to the next stage and to the orchestrator. `rounds` collects the sessions of each
    round the worker hands the handler."""
    bus = MemoryBus("test")
    stage = stage or AdderStage()
    handler = SessionStageHandler(stage, MicroBatcher(stage.step, stage.label, max_batch=stage.max_batch),
                                  cached_sessions=cached_sessions)
    if rounds is not None:
        process = handler.process

        async def recording(items):
            rounds.append([item.entry.session_id for item in items])
            return await process(items)

        handler.process = recording  # type: ignore[method-assign]
    stream = bus.keys.slot_stream(STAGE, 0)
    await bus.ensure_group(stream, STAGE)
    for e in entries:
        await bus.publish(stream, e)
    worker = SlotWorker(bus, handler, "w1", WorkerSettings(slots=1, lease_ttl_ms=1000, block_ms=20))
    task = asyncio.create_task(worker.run())
    deadline = time.monotonic() + 20
    while await bus.stream_length("test:next") + await bus.stream_length("test:frames") < outputs:
        assert time.monotonic() < deadline, "the stage did not answer in time"
        await asyncio.sleep(0.01)
    await worker.stop()
    await task
    await handler.batcher.close()
    sent: dict[str, dict[str, list]] = {"test:next": {}, "test:frames": {}}
    for name, per in sent.items():
        await bus.ensure_group(name, "reader")
        for d in await bus.read("reader", "r", [name], count=1000):
            per.setdefault(d.entry.session_id, []).append(d.entry)
    await bus.close()
    return sent["test:next"], sent["test:frames"], handler


def _totals(entries: list[bus_pb2.StreamEntry]) -> list[int]:
    return [int(codec.unnamed(e.tensors)["total"]) for e in entries if e.kind == bus_pb2.ENTRY_KIND_DATA]


def _status(entry: bus_pb2.StreamEntry) -> common_pb2.Status:
    assert entry.kind == bus_pb2.ENTRY_KIND_ERROR
    return common_pb2.Status.FromString(entry.meta)


async def test_sessions_share_batched_steps_and_keep_their_state():
    xs = {f"s{k}": [int(v) for v in np.random.default_rng(k).integers(1, 50, 6)] for k in range(4)}
    entries = []
    for name, x in xs.items():
        session = _session(name, x)
        if name == "s0":  # a CONTROL after its second DATA doubles what it adds from then on
            session.insert(3, _entry(name, 0, bus_pb2.ENTRY_KIND_CONTROL, scale=2))
            for seq, e in enumerate(session):
                e.seq = seq
        entries += session
    stage = AdderStage()
    nxt, frames, handler = await _run(entries, sum(len(x) + 3 for x in xs.values()), stage=stage)
    assert not frames, f"no session should have failed: {frames}"
    for name, x in xs.items():
        scale = [1, 1] + [2] * (len(x) - 2) if name == "s0" else [1] * len(x)
        kinds = [e.kind for e in nxt[name]]
        assert kinds[0] == bus_pb2.ENTRY_KIND_START and kinds[-1] == bus_pb2.ENTRY_KIND_END
        expected = list(np.cumsum(np.array(x) * scale))
        assert _totals(nxt[name]) == expected + [expected[-1]], name
    assert max(handler.batcher.batch_sizes) > 1, "sessions never shared a step"
    assert stage.restored == 0, "a session this worker kept live was rebuilt from its checkpoint"
    assert len(handler.cache) == 4  # END does not close; CLOSE would


async def test_more_sessions_than_max_batch_share_bounded_forwards_fairly_and_the_metric_counts_forwards():
    """12 sessions, a stage whose max_batch is 8 (AdderStage): no round holds more than 8 sessions and no forward
    more than 8 items; every session gets the same service (after each round, the entries applied per session differ
    by at most one); ditto_stage_batch_size counts the items of each forward only (START never reaches the model)."""
    xs = {f"s{k:02d}": [k + 1] * 4 for k in range(12)}
    entries = [e for name, x in xs.items() for e in _session(name, x)]
    stage = AdderStage()

    def metric(name: str) -> float:
        return telemetry.REGISTRY.get_sample_value(f"ditto_stage_batch_size_{name}", {"stage": stage.label}) or 0.0

    count0, sum0 = metric("count"), metric("sum")
    rounds: list[list[str]] = []
    nxt, frames, handler = await _run(entries, sum(len(x) + 3 for x in xs.values()), stage=stage, rounds=rounds)
    assert not frames
    assert all(_totals(nxt[name]) == list(np.cumsum(x)) + [sum(x)] for name, x in xs.items())
    assert max(len(r) for r in rounds) == 8 and all(len(set(r)) == len(r) for r in rounds), rounds
    served = dict.fromkeys(xs, 0)
    for r in rounds:
        for name in r:
            served[name] += 1
        assert max(served.values()) - min(served.values()) <= 1, f"unfair rounds: {rounds}"
    assert max(handler.batcher.batch_sizes) <= 8
    # 12 sessions x (4 DATA + END) model items, in as many forwards as the batcher ran
    assert metric("count") - count0 == len(handler.batcher.batch_sizes)
    assert metric("sum") - sum0 == 12 * 5


async def test_close_forgets_the_session_and_a_bounded_cache_restores_from_checkpoints():
    entries = []
    for i in range(5):  # interleaved: with room for one live session every entry of the other is restored
        entries += [_entry("a", i, bus_pb2.ENTRY_KIND_START if i == 0 else bus_pb2.ENTRY_KIND_DATA, x=i),
                    _entry("b", i, bus_pb2.ENTRY_KIND_START if i == 0 else bus_pb2.ENTRY_KIND_DATA, x=10 * i)]
    entries += [_entry("a", 5, bus_pb2.ENTRY_KIND_CLOSE), _entry("b", 5, bus_pb2.ENTRY_KIND_CLOSE)]
    stage = AdderStage()
    nxt, frames, handler = await _run(entries, 2 * (1 + 4 + 1), cached_sessions=1, stage=stage)
    assert not frames
    assert _totals(nxt["a"]) == [1, 3, 6, 10] and _totals(nxt["b"]) == [10, 30, 60, 100]
    assert nxt["a"][-1].kind == bus_pb2.ENTRY_KIND_CLOSE
    assert stage.restored > 0 and len(handler.cache) == 0


async def test_a_lost_checkpoint_ends_the_session_with_aborted():
    entries = _session("lost", [1, 2], start=False) + [_entry("closing", 0, bus_pb2.ENTRY_KIND_CLOSE)]
    entries += _session("fine", [4])
    nxt, frames, _ = await _run(entries, 3 + 4)
    for entry in frames["lost"]:  # each orphan entry is answered (the orchestrator ends the session at the first)
        st = _status(entry)
        assert st.code == grpc.StatusCode.ABORTED.value[0]
        assert st.message == "the adder lost this session's state; start a new session"
    assert len(frames["lost"]) == 3 and "lost" not in nxt
    assert "closing" not in frames and "closing" not in nxt  # a CLOSE without state ends quietly
    assert _totals(nxt["fine"]) == [4, 4]


async def test_bad_input_ends_only_that_session():
    entries = _session("bad", [3, -1, 5]) + _session("good", [1, 2, 3])
    nxt, frames, _ = await _run(entries, 2 + 3 + 6)
    st = _status(frames["bad"][0])
    assert st.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and st.message == "adder: x must be >= 0, got -1"
    assert _totals(nxt["bad"]) == [3]
    assert _totals(nxt["good"]) == [1, 3, 6, 6] and "good" not in frames


async def test_a_stage_fault_ends_its_session_with_internal_and_the_others_go_on():
    entries = _session("poisoned", [2, POISON, 1]) + _session("healthy", [1, 1, 1])
    stage = AdderStage()
    nxt, frames, _ = await _run(entries, 2 + 3 + 6, stage=stage)
    st = _status(frames["poisoned"][0])
    assert st.code == grpc.StatusCode.INTERNAL.value[0] and "cannot add 666" in st.message
    assert _totals(nxt["poisoned"]) == [2]
    # the failed round is redone one session at a time from the checkpoints, so nothing is applied twice
    assert _totals(nxt["healthy"]) == [1, 2, 3, 3] and "healthy" not in frames


# ---- the micro-batcher -------------------------------------------------------------------------------------------

class GatedStep:
    """A batched step that waits for the test to open its gate, so the test can fill the queue behind it."""

    def __init__(self) -> None:
        self.entered, self.gate = threading.Event(), threading.Event()
        self.calls: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self.calls.append(list(items))
        return [2 * x for x in items]


async def _until(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.005)


async def test_batcher_refuses_calls_when_full_lets_the_bus_wait_and_serves_on():
    step = GatedStep()
    batcher = MicroBatcher(step, "doubler", max_batch=4, max_wait_ms=0, max_queued=2)
    first = asyncio.create_task(batcher.run(1))
    await _until(step.entered.is_set, "the first step runs")
    queued = [asyncio.create_task(batcher.run(x)) for x in (2, 3)]
    await _until(lambda: batcher.waiting == 2, "the queue is full")
    with pytest.raises(BatcherFull, match="2 requests waiting"):
        await batcher.run(4)
    group = asyncio.create_task(batcher.run_group([5, 6]))  # the bus is not refused: it waits for room
    await asyncio.sleep(0)
    assert not group.done()
    step.gate.set()
    assert await first == 2 and [await q for q in queued] == [4, 6] and await group == [10, 12]
    assert await batcher.run(7) == 14  # and it goes on serving
    assert batcher.waiting == 0
    await batcher.close()
    with pytest.raises(BatcherClosed):
        await batcher.run(8)


async def test_a_bus_round_runs_at_once_calls_join_it_and_no_step_passes_max_batch():
    step = GatedStep()
    step.gate.set()
    batcher = MicroBatcher(step, "doubler", max_batch=3, max_wait_ms=200)
    call = asyncio.create_task(batcher.run(1))   # waits up to 200 ms for company
    await asyncio.sleep(0)
    assert await batcher.run_group([10, 20]) == [20, 40]  # joins the call's step and starts it at once
    assert await call == 2
    assert await batcher.run_group(list(range(5))) == [0, 2, 4, 6, 8]  # larger than max_batch: cut, in order
    assert step.calls == [[1, 10, 20], [0, 1, 2], [3, 4]]
    await batcher.close()


async def test_a_failed_step_fails_only_its_callers():
    def step(items: list[int]) -> list[int]:
        if POISON in items:
            raise RuntimeError("poisoned step")
        return items

    batcher = MicroBatcher(step, "identity", max_batch=1, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="poisoned"):
        await batcher.run(POISON)
    assert await batcher.run(3) == 3
    await batcher.close()
