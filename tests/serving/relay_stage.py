"""A test-only stage for a changed pipeline: it relays the motion stage's keypoints to the renderer unchanged and
counts them. `extra_stage()` puts it between the motion generator and the renderer (the kernel's pipeline and the
application's factory registry, the two places a real stage is added) for the duration of a block."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from ditto import codec, pipeline
from ditto.bus.worker import Output
from ditto.pipeline import PIPELINE, StageSpec
from ditto.stage_runtime import SessionStageHandler, forward
from ditto_app.stages import FACTORIES, BuiltStage, StageContext, StageFactory
from ditto_client.v1 import bus_pb2, common_pb2

NAME = "relay"
SPEC = StageSpec(NAME, common_pb2.KeypointFrames, ("x_s", "x_d", "source_index"), common_pb2.KeypointFrames,
                 ("x_s", "x_d", "source_index"), "relay")


class RelayStage:
    """A SessionStage with nothing to keep per session (its state is a constant) whose step returns each entry."""

    name = NAME
    label = "relay stage"
    input_errors: tuple[type[Exception], ...] = (ValueError,)
    input_error_code = grpc.StatusCode.INVALID_ARGUMENT
    max_batch = 16

    def __init__(self) -> None:
        self.next = pipeline.active().next_of(self.name)
        self.passthrough: str | None = self.next
        self.frames_relayed = 0  # over all sessions

    def step(self, batch: Sequence[tuple[int, bus_pb2.StreamEntry]]) -> list[bus_pb2.StreamEntry]:
        return [entry for _, entry in batch]

    async def open(self, spec: bus_pb2.SessionSpec, entry: bus_pb2.StreamEntry) -> tuple[int, list[Output]]:
        return 1, [forward(entry, self.next)]

    async def restore(self, state: bytes) -> int:
        return int(state)

    def state(self, session: int) -> bytes:
        return str(session).encode()

    def data(self, session: int, entry: bus_pb2.StreamEntry) -> bus_pb2.StreamEntry:
        return entry

    def end(self, session: int, entry: bus_pb2.StreamEntry) -> bus_pb2.StreamEntry:
        return entry

    def emit(self, session: int, entry: bus_pb2.StreamEntry, step_input: bus_pb2.StreamEntry,
             result: bus_pb2.StreamEntry) -> list[Output]:
        if result.kind == bus_pb2.ENTRY_KIND_DATA:
            self.frames_relayed += len(codec.unnamed(result.tensors)["x_d"])
        return [forward(result, self.next)]

    def control(self, session: int, entry: bus_pb2.StreamEntry) -> list[Output]:
        return [forward(entry, self.next)]

    async def interrupt(self, session: int, entry: bus_pb2.StreamEntry) -> tuple[int, list[Output]]:
        return session, [forward(entry, self.next)]


def _load(weights_dir: Path, profile: str, device: str, backend: str, cache: Path | None) -> Any:
    return None  # no networks


def _build(models: Any, ctx: StageContext) -> BuiltStage:
    relay = RelayStage()
    return BuiltStage(relay.name, SessionStageHandler(relay))


@contextmanager
def extra_stage() -> Iterator[pipeline.Pipeline]:
    """The pipeline with the relay between the motion generator and the renderer, and its factory registered."""
    FACTORIES[NAME] = StageFactory(_load, _build)
    try:
        with pipeline.use(PIPELINE.inserted(SPEC, after="motion_generator")) as changed:
            yield changed
    finally:
        del FACTORIES[NAME]
