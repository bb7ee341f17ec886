"""The model side of every stage (audio encoder, motion generator, renderer), written once; the bus side is
`ditto.bus.worker` (`SlotWorker`).

A stage is its model core plus an adapter to one contract, `SessionStage`: open a session from the START entry's
spec or restore it from checkpoint bytes, turn a DATA or END entry into an input for one batched step over many
sessions, apply a CONTROL, start over on an INTERRUPT, and write the session back to bytes. Around that contract
this module provides:

- `MicroBatcher`: gathers the step inputs that many callers submit at about the same time and runs the stage's
  blocking `step` once for all of them, off the event loop, never on more than `max_batch` items (the stage's one
  batch bound, which also bounds the bus rounds `ditto.bus.rounds` forms). Its queue is bounded: a gRPC call that
  finds it full is refused at once (`BatcherFull` -> RESOURCE_EXHAUSTED, see `run_for_call`); the bus waits for room
  instead. `ditto_stage_batch_size` counts the items of each step.
- `SessionStageHandler`: the bus handler given to `ditto.bus.worker.SlotWorker`. It dispatches each entry by kind,
  keeps recently used sessions in a bounded cache (so a session is rebuilt from its checkpoint only when another
  worker took it over or it fell out of the cache), runs the DATA and END entries of a round through the batcher as
  one group, and saves every session's state after its entry.
- the error path: a lost checkpoint, or input the stage rejects, ends that session with an ERROR entry to the
  orchestrator; anything else is a fault of the stage and goes to `SlotWorker`, which retries the round one session
  at a time and ends the failing one with INTERNAL.

The per-stage gRPC streaming services (`AudioEncoder.Encode`, `MotionGenerator.Generate`, `Renderer.RenderFrames`)
drive the same stage objects through the same batcher, so a gRPC call and a bus session share forwards.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import cachetools
import grpc

from ditto import codec, telemetry
from ditto.bus.base import BusError
from ditto.bus.worker import Output, WorkItem, WorkResult
from ditto.pipeline import FRAMES
from ditto_client.v1 import bus_pb2, common_pb2

log = telemetry.get_logger("ditto.stage_runtime")

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
SessionT = TypeVar("SessionT")
InputT = TypeVar("InputT")

RETRY_AFTER_MS = 100         # what a refused gRPC call is told to wait before trying again
DEFAULT_MAX_QUEUED = 256     # step submissions waiting for a batch; more are refused (gRPC) or wait (bus)
DEFAULT_CACHED_SESSIONS = 1024

_batch_size = telemetry.histogram("ditto_stage_batch_size", "Items in one batched forward of a stage's model (one "
                                  "per session or gRPC call in it)", ("stage",), buckets=(1, 2, 4, 8, 16, 32, 64))


# ---- entries -----------------------------------------------------------------------------------------------------

def session_spec(entry: bus_pb2.StreamEntry) -> bus_pb2.SessionSpec:
    """The SessionSpec a START (or the orchestrator's INTERRUPT) entry carries as its meta."""
    spec = bus_pb2.SessionSpec()
    spec.ParseFromString(entry.meta)
    return spec


def forward(entry: bus_pb2.StreamEntry, target: str, with_tensors: bool = True) -> Output:
    """The same entry (kind, meta and, unless told otherwise, tensors) to `target`."""
    return Output(target, entry.kind, dict(codec.unnamed(entry.tensors)) if with_tensors else {}, entry.meta)


def session_error(code: grpc.StatusCode, message: str) -> Output:
    """An ERROR entry for the orchestrator: it ends the session with this status and message."""
    status = common_pb2.Status(code=code.value[0], message=message)
    return Output(FRAMES, bus_pb2.ENTRY_KIND_ERROR, {}, status.SerializeToString())


# ---- the contract ------------------------------------------------------------------------------------------------

class SessionStage(Protocol[SessionT, InputT, ResultT]):
    """What a model stage implements. `SessionT` is one live session, `InputT` what one entry (or one gRPC message)
    gives the batched step, `ResultT` what the step gives back for it. Hooks run on the event loop and must be
    cheap; the model work belongs in `step`, which runs in a worker thread."""

    name: str                # the stage's bus name: its streams, checkpoints and the route key others send to
    label: str               # how messages to a client name this stage ("motion stage")
    passthrough: str | None  # the next stage (ditto.pipeline), where CLOSE and unknown kinds go on (None: kept)
    input_errors: tuple[type[Exception], ...]  # what a session's bad input raises: that session ends, others go on
    input_error_code: grpc.StatusCode          # the status such a session ends with
    max_batch: int           # sessions in one forward at most: the stage's one batch bound (rounds and batcher)

    def step(self, batch: Sequence[tuple[SessionT, InputT]]) -> list[ResultT]:
        """One batched forward over many sessions' inputs (blocking): one result per item, in order. A failure that
        belongs to one session only is returned as its result (and raised by `emit`), not raised here."""
        ...

    async def open(self, spec: bus_pb2.SessionSpec, entry: bus_pb2.StreamEntry) -> tuple[SessionT, list[Output]]:
        """START: a new session, and what goes on to the next stage."""
        ...

    async def restore(self, state: bytes) -> SessionT:
        """The session as `state` left it (bytes from `state`, maybe written by another worker)."""
        ...

    def state(self, session: SessionT) -> bytes:
        """The session's checkpoint: everything `restore` needs."""
        ...

    def data(self, session: SessionT, entry: bus_pb2.StreamEntry) -> InputT:
        """A DATA entry -> the session's input to the next step."""
        ...

    def end(self, session: SessionT, entry: bus_pb2.StreamEntry) -> InputT:
        """END (no more input) -> the session's last step input."""
        ...

    def emit(self, session: SessionT, entry: bus_pb2.StreamEntry, step_input: InputT, result: ResultT
             ) -> list[Output]:
        """What a DATA or END entry's step result sends on."""
        ...

    def control(self, session: SessionT, entry: bus_pb2.StreamEntry) -> list[Output]:
        """A CONTROL entry: apply it, or pass it on."""
        ...

    async def interrupt(self, session: SessionT, entry: bus_pb2.StreamEntry) -> tuple[SessionT, list[Output]]:
        """INTERRUPT: the session that goes on from here (the old input dropped), and what goes on."""
        ...


# ---- the micro-batcher -------------------------------------------------------------------------------------------

class BatcherFull(Exception):
    """The batcher's queue is full: the stage is overloaded; retry shortly or elsewhere."""


class BatcherClosed(Exception):
    """The batcher was closed: the stage is shutting down."""


@dataclass
class _Submission(Generic[ItemT, ResultT]):
    items: list[ItemT]
    future: asyncio.Future[list[ResultT]]
    urgent: bool  # run as soon as the step is free: the caller batched already (a bus round)


class MicroBatcher(Generic[ItemT, ResultT]):
    """Dynamic batching for a blocking batched function: callers await `run(item)` (one item, may wait up to
    `max_wait_ms` for company) or `run_group(items)` (items batched already, run at once: a group of up to
    `max_batch` items is one step, a larger one is cut into steps of `max_batch`); one task gathers up to `max_batch`
    items and calls `step(items)` once, in a worker thread, then hands each caller its results. A step that raises
    fails the callers of that step only. At most `max_queued` submissions wait. `stage` labels the batch-size
    metric (the stage's bus name; `name` is how messages name it)."""

    def __init__(self, step: Callable[[list[ItemT]], list[ResultT]], name: str, max_batch: int = 16,
                 max_wait_ms: float = 5.0, max_queued: int = DEFAULT_MAX_QUEUED, stage: str | None = None) -> None:
        if max_batch < 1 or max_queued < 1:
            raise ValueError(f"max_batch and max_queued must be >= 1, got {max_batch} and {max_queued}")
        self.step, self.name = step, name
        self._batch_size = _batch_size.labels(stage or name)
        self.max_batch, self.max_wait, self.max_queued = max_batch, max_wait_ms / 1000.0, max_queued
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)  # items per step, recent ones
        self._queue: asyncio.Queue[_Submission[ItemT, ResultT]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._carry: _Submission[ItemT, ResultT] | None = None  # taken from the queue, first of the next step
        self._closed = False

    async def run(self, item: ItemT) -> ResultT:
        """One item's result. Raises BatcherFull at once when `max_queued` submissions are waiting."""
        return (await self._submit([item], urgent=False, wait_for_room=False))[0]

    async def run_group(self, items: Sequence[ItemT]) -> list[ResultT]:
        """Results of items batched already, run now (waits for room in the queue rather than failing): one step
        when they fit `max_batch`, else consecutive steps of `max_batch`."""
        parts = [list(items[i:i + self.max_batch]) for i in range(0, len(items), self.max_batch)]
        results: list[ResultT] = []
        for part in parts:
            results += await self._submit(part, urgent=True, wait_for_room=True)
        return results

    @property
    def waiting(self) -> int:
        """Submissions queued for a step (at most `max_queued`)."""
        return (self._queue.qsize() if self._queue is not None else 0) + (1 if self._carry else 0)

    async def close(self) -> None:
        """Stop: callers still waiting get BatcherClosed; later calls too."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        pending = [self._carry] if self._carry else []
        self._carry = None
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for sub in pending:
            if not sub.future.done():
                sub.future.set_exception(BatcherClosed(f"the {self.name} is shutting down"))

    # ---- inside ----
    def _ensure_running(self) -> asyncio.Queue[_Submission[ItemT, ResultT]]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:  # first use, or used from a new event loop (tests)
            self._queue, self._loop, self._task, self._carry = asyncio.Queue(self.max_queued), loop, None, None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(self._queue), name=f"batcher:{self.name}")
        return self._queue

    async def _submit(self, items: list[ItemT], urgent: bool, wait_for_room: bool) -> list[ResultT]:
        if self._closed:
            raise BatcherClosed(f"the {self.name} is shutting down")
        queue = self._ensure_running()
        sub: _Submission[ItemT, ResultT] = _Submission(items, asyncio.get_running_loop().create_future(), urgent)
        if wait_for_room:
            await queue.put(sub)
        else:
            try:
                queue.put_nowait(sub)
            except asyncio.QueueFull:
                raise BatcherFull(f"the {self.name} has {self.max_queued} requests waiting; retry in "
                                  f"{RETRY_AFTER_MS} ms or use another replica") from None
        return await sub.future

    async def _gather(self, queue: asyncio.Queue[_Submission[ItemT, ResultT]]) -> list[_Submission]:
        loop = asyncio.get_running_loop()
        first, self._carry = self._carry or await queue.get(), None
        batch, count = [first], len(first.items)
        deadline = loop.time() + (0.0 if first.urgent else self.max_wait)
        while count < self.max_batch:
            try:
                sub = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    sub = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if sub.future.done():  # its caller went away (a cancelled call): nothing to compute
                continue
            if count + len(sub.items) > self.max_batch:
                self._carry = sub  # a group (at most max_batch) is never split: it opens the next step
                break
            batch.append(sub)
            count += len(sub.items)
            if sub.urgent:
                deadline = loop.time()
        return [s for s in batch if not s.future.done()]

    async def _run(self, queue: asyncio.Queue[_Submission[ItemT, ResultT]]) -> None:
        while True:
            batch = await self._gather(queue)
            if not batch:
                continue
            items = [item for sub in batch for item in sub.items]
            self.batch_sizes.append(len(items))
            self._batch_size.observe(len(items))
            try:
                results = await asyncio.to_thread(self.step, items)
                if len(results) != len(items):
                    raise RuntimeError(f"the {self.name}'s step gave {len(results)} results for {len(items)} items")
            except Exception as err:  # fails the callers of this step, not the batcher
                for sub in batch:
                    if not sub.future.done():
                        sub.future.set_exception(err)
                continue
            pos = 0
            for sub in batch:
                if not sub.future.done():
                    sub.future.set_result(results[pos:pos + len(sub.items)])
                pos += len(sub.items)


async def run_for_call(batcher: MicroBatcher[ItemT, ResultT], item: ItemT,
                       context: grpc.aio.ServicerContext) -> ResultT:
    """`batcher.run(item)` for a gRPC call: a full queue ends the call with RESOURCE_EXHAUSTED (and a
    `retry-after-ms` trailer), a closed one with UNAVAILABLE."""
    try:
        return await batcher.run(item)
    except BatcherFull as err:
        context.set_trailing_metadata((("retry-after-ms", str(RETRY_AFTER_MS)),))
        await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
    except BatcherClosed as err:
        await _abort(context, grpc.StatusCode.UNAVAILABLE, f"{err}; reconnect to another replica")


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


# ---- the bus handler ---------------------------------------------------------------------------------------------

class SessionCache(Generic[SessionT]):
    """Live sessions by id, each with a fingerprint of the checkpoint it was saved as: a session is reused only
    when the checkpoint the bus hands back is that one (else another worker moved it on, or a commit failed, and
    it is restored from the bytes). A session is taken out while an entry works on it, so a round that fails
    half-way leaves nothing half-applied behind. Least recently used sessions fall out beyond `maxsize`."""

    def __init__(self, maxsize: int = DEFAULT_CACHED_SESSIONS) -> None:
        self._sessions: cachetools.LRUCache[str, tuple[int, Any]] = cachetools.LRUCache(maxsize)

    def take(self, session_id: str, state: bytes) -> SessionT | None:
        cached = self._sessions.pop(session_id, None)
        return cached[1] if cached is not None and cached[0] == hash(state) else None

    def keep(self, session_id: str, state: bytes, session: SessionT) -> None:
        self._sessions[session_id] = (hash(state), session)

    def forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def peek(self, session_id: str) -> SessionT | None:
        """The cached session, left in place (None while an entry works on it, or when not cached)."""
        cached = self._sessions.get(session_id)
        return None if cached is None else cached[1]

    def __len__(self) -> int:
        return len(self._sessions)


class SessionStageHandler(Generic[SessionT, InputT, ResultT]):
    """The bus handler of any `SessionStage` (what `SlotWorker` runs): one round of entries, at most one per
    session, in; one `WorkResult` per entry out, with the session's new checkpoint."""

    def __init__(self, session_stage: SessionStage[SessionT, InputT, ResultT],
                 batcher: MicroBatcher[tuple[SessionT, InputT], ResultT] | None = None, *,
                 cached_sessions: int = DEFAULT_CACHED_SESSIONS) -> None:
        self.session_stage = session_stage
        self.stage = session_stage.name  # what SlotWorker names streams and checkpoints by
        # the stage's gRPC services take this batcher too, so calls and bus sessions share steps
        self.batcher = batcher or MicroBatcher(session_stage.step, session_stage.label, session_stage.max_batch,
                                               stage=session_stage.name)
        self.cache: SessionCache[SessionT] = SessionCache(cached_sessions)

    @property
    def max_batch(self) -> int:
        """Sessions per round at most (`ditto.bus.rounds`): the batcher's bound, so a round is one forward."""
        return self.batcher.max_batch

    async def process(self, items: Sequence[WorkItem]) -> list[WorkResult]:
        results = [WorkResult() for _ in items]
        live: dict[int, SessionT] = {}
        steps: list[tuple[int, InputT]] = []
        for i, item in enumerate(items):
            try:
                session, wanted = await self._entry(item, results[i])
            except self.session_stage.input_errors as err:
                self._reject(results[i], err)
                continue
            if session is not None:
                live[i] = session
            if wanted:
                steps.append((i, wanted[0]))
        if steps:
            try:
                outcomes = await self.batcher.run_group([(live[i], x) for i, x in steps])
            except BatcherClosed as err:  # shutting down: leave the entries pending for the slot's next holder
                raise BusError(str(err)) from err
            for (i, step_input), outcome in zip(steps, outcomes, strict=True):
                try:
                    results[i].outputs.extend(self.session_stage.emit(live[i], items[i].entry, step_input, outcome))
                except self.session_stage.input_errors as err:
                    self._reject(results[i], err)
                    del live[i]
        for i, session in live.items():
            if not results[i].close:
                state = self.session_stage.state(session)
                results[i].state = state
                self.cache.keep(items[i].entry.session_id, state, session)
        return results

    async def _entry(self, item: WorkItem, result: WorkResult) -> tuple[SessionT | None, tuple[InputT, ...]]:
        """Dispatch one entry: the session it leaves live (None: none), and its step input (empty: no step)."""
        stage, entry = self.session_stage, item.entry
        if entry.kind == bus_pb2.ENTRY_KIND_START:
            session, outputs = await stage.open(session_spec(entry), entry)
            result.outputs.extend(outputs)
            return session, ()
        if not item.state:
            # START never seen here, or its checkpoint expired: the session cannot go on at this stage
            if entry.kind != bus_pb2.ENTRY_KIND_CLOSE:
                result.outputs.append(session_error(
                    grpc.StatusCode.ABORTED, f"the {stage.label} lost this session's state; start a new session"))
            result.close = True
            return None, ()
        if entry.kind == bus_pb2.ENTRY_KIND_CLOSE:
            self.cache.forget(entry.session_id)
            if stage.passthrough:
                result.outputs.append(forward(entry, stage.passthrough))
            result.close = True
            return None, ()
        cached = self.cache.take(entry.session_id, item.state)
        session = cached if cached is not None else await stage.restore(item.state)
        if entry.kind == bus_pb2.ENTRY_KIND_DATA:
            return session, (stage.data(session, entry),)
        if entry.kind == bus_pb2.ENTRY_KIND_END:
            return session, (stage.end(session, entry),)
        if entry.kind == bus_pb2.ENTRY_KIND_INTERRUPT:
            session, outputs = await stage.interrupt(session, entry)
            result.outputs.extend(outputs)
        elif entry.kind == bus_pb2.ENTRY_KIND_CONTROL:
            result.outputs.extend(stage.control(session, entry))
        elif stage.passthrough:  # a kind newer than this stage: on, in order
            result.outputs.append(forward(entry, stage.passthrough))
        return session, ()

    def _reject(self, result: WorkResult, err: Exception) -> None:
        """The session's input was bad: end it with the stage's status and a message naming the stage."""
        result.outputs.append(session_error(self.session_stage.input_error_code, f"{self.session_stage.label}: {err}"))
        result.close = True
