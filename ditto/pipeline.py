"""The pipeline: which stages a session's entries pass through, in which order, and what each one reads and writes.

Everything that lists stages derives from `active()` (normally `PIPELINE`): the `ditto worker --stage` choices, the
stage factories `ditto_app.stages` must provide, placement (one slot per stage), routing (a stage sends its outputs
to the stage after it, the last one to the orchestrator's frames stream, the orchestrator publishes audio to the
first), the `stage` label of the stage metrics, the local stacks and the generated KEDA ScaledObjects. Adding a stage
is one `StageSpec` here (and its factory, see docs/architecture.md "Adding a stage").

It also holds the frame timeline numbers every layer of the service shares (the client package keeps its own public
copies in `ditto_client.timeline`; a test checks that they agree).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from google.protobuf.message import Message

from ditto_client.v1 import bus_pb2, common_pb2

FPS = 25          # video frames per second of session audio: one frame per 40 ms, everywhere in the service
REST_FRAMES = 8   # frames the motion stage sends after an interrupt, easing back to rest (320 ms) before new speech
FRAMES = "frames"  # the route key of the orchestrator's stream: the last stage's frames, END and errors go there


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline. `name` is its bus name: the infix of its slot streams, its consumer group, the
    key of its checkpoints, its route key, its `--stage` choice and the `stage` label of its metrics."""

    name: str
    consumes: type[Message]              # the meta of the DATA entries it reads
    consumes_tensors: tuple[str, ...]    # the tensors of those entries
    produces: type[Message]              # the meta of the DATA entries it writes
    produces_tensors: tuple[str, ...]
    cache_folder: str                    # its ONNX exports and TensorRT engines: `<cache_dir>/<cache_folder>`

    @property
    def deployment(self) -> str:
        """Its Kubernetes Deployment (and ScaledObject) name: Kubernetes names allow no underscore."""
        return self.name.replace("_", "-")


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[StageSpec, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        if not names or len(set(names)) != len(names) or FRAMES in names:
            raise ValueError(f"a pipeline needs at least one stage, unique names, none called {FRAMES!r}: {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @property
    def first(self) -> StageSpec:
        """Where the orchestrator publishes a session's audio and control entries."""
        return self.stages[0]

    @property
    def last(self) -> StageSpec:
        """The stage whose outputs (frames) go to the orchestrator's frames stream."""
        return self.stages[-1]

    def spec(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise ValueError(f"unknown stage {name!r}; one of {', '.join(self.names)}")

    def next_of(self, name: str) -> str:
        """The route key `name`'s outputs go to: the next stage's name, or FRAMES after the last stage."""
        i = self.names.index(self.spec(name).name)
        return self.stages[i + 1].name if i + 1 < len(self.stages) else FRAMES

    def inserted(self, spec: StageSpec, after: str) -> Pipeline:
        """This pipeline with `spec` right after stage `after`."""
        i = self.names.index(self.spec(after).name)
        return Pipeline((*self.stages[:i + 1], spec, *self.stages[i + 1:]))


PIPELINE = Pipeline((
    StageSpec("audio_encoder", bus_pb2.AudioMeta, ("pcm",), common_pb2.FeatureChunk, ("features",), "audio"),
    StageSpec("motion_generator", common_pb2.FeatureChunk, ("features",), common_pb2.KeypointFrames,
              ("x_s", "x_d", "source_index"), "motion"),
    StageSpec("renderer", common_pb2.KeypointFrames, ("x_s", "x_d", "source_index"), bus_pb2.FrameMeta, ("frame",),
              "renderer"),
))

_active = PIPELINE


def active() -> Pipeline:
    """The pipeline in effect: `PIPELINE`, unless `use` put another one in place (tests of an extra stage)."""
    return _active


@contextmanager
def use(pipeline: Pipeline) -> Iterator[Pipeline]:
    """Run the block with `pipeline` in effect in this process (stages built, workers started and CLI parsers made
    inside it follow it); the previous one comes back after."""
    global _active
    previous, _active = _active, pipeline
    try:
        yield pipeline
    finally:
        _active = previous
