"""The motion generator as a `ditto.stage_runtime.SessionStage`: features of many sessions -> MotionDiT windows in
one batched forward -> controlled keypoints for the renderer.

A session is a `LiveMotion`: the `MotionSession` (window buffers, conditioning frame, blink schedule, control
timeline) plus the last keypoints it sent, checkpointed after every entry so a worker that takes over resumes with
identical frames. On INTERRUPT the face eases from the last frame sent back to the source pose over `REST_FRAMES`
frames, then a fresh stream starts (the orchestrator feeds idle silence or new speech).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from ditto import codec, pipeline
from ditto.bus.worker import Output
from ditto.pipeline import REST_FRAMES
from ditto.stage_runtime import forward
from ditto_client.v1 import bus_pb2, common_pb2
from services.motion_generator.generator import AvatarMotion, KeypointBatch, MotionGenerator, MotionSession
from services.motion_generator.protocol import avatar_from_proto, controls_from_proto, settings_from_proto


@dataclass
class LiveMotion:
    session: MotionSession
    spec: bus_pb2.SessionSpec | None = None  # the bus session's spec (None: a Generate call)
    offset: int = 0                          # frame index of the session's frame 0 within the epoch
    last_xs: np.ndarray | None = None
    last_xd: np.ndarray | None = None


@dataclass
class MotionInput:
    """One session's part of a step (its features are pushed already): run every window that is ready."""

    idle: bool = False
    end: bool = False  # the audio ended: run the last window and flush the remaining real frames


def synthetic_motion_range() -> np.ndarray:
    """[2, 265] bounds that keep motion from generated (synthetic) weights near a plausible face: small scale
    change, pose logits of a few units, small translation and expression. Real checkpoints need no clamp."""
    lo = np.empty(265, np.float32)
    lo[0:1], lo[1:199], lo[199:202], lo[202:265] = -0.05, -3.0, -0.03, -0.02
    return np.stack([lo, -lo])


def ease_to_rest(x_s: np.ndarray, x_last: np.ndarray, n: int) -> np.ndarray:
    """n frames from x_last to x_s with a smoothstep ease: [n, 21, 3]."""
    t = (np.arange(1, n + 1, dtype=np.float32) / n)[:, None, None]
    w = t * t * (3 - 2 * t)
    return (x_last[None] + (x_s[None] - x_last[None]) * w).astype(np.float32)


class MotionStage:
    name = "motion_generator"
    label = "motion stage"
    input_errors: tuple[type[Exception], ...] = (ValueError, KeyError)
    input_error_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, generator: MotionGenerator, v_min_max: np.ndarray | None = None) -> None:
        self.generator = generator
        self.max_batch = generator.max_batch
        self.v_min_max = v_min_max  # per-dimension clamp of generated motion [2, 265] (None = none)
        self.next = pipeline.active().next_of(self.name)  # the renderer, as ditto.pipeline has it
        self.passthrough: str | None = self.next

    def new_session(self, avatar: AvatarMotion, steps: int, overlap: int, seed: int,
                    emotion: common_pb2.EmotionControl, controls: common_pb2.MotionControls,
                    prefill: np.ndarray | None = None, session_id: str = "") -> MotionSession:
        settings = settings_from_proto(steps, overlap, seed, emotion, controls)
        settings.v_min_max = self.v_min_max
        settings.prefill = prefill
        return self.generator.session(avatar, settings, session_id)

    def step(self, batch: Sequence[tuple[LiveMotion, MotionInput]]) -> list[KeypointBatch]:
        frames = self.generator.run([live.session for live, _ in batch])
        return [KeypointBatch.concat([b, live.session.flush()], b.first_frame) if x.end else b
                for (live, x), b in zip(batch, frames, strict=True)]

    # ---- the bus ----
    def _live(self, spec: bus_pb2.SessionSpec, offset: int = 0, last_xs: Any = None, last_xd: Any = None,
              prefill: np.ndarray | None = None) -> LiveMotion:
        session = self.new_session(avatar_from_proto(spec.avatar), spec.sampling_steps, spec.overlap, spec.seed,
                                   spec.emotion, spec.controls, prefill)
        return LiveMotion(session, spec, offset, last_xs, last_xd)

    async def open(self, spec: bus_pb2.SessionSpec, entry: bus_pb2.StreamEntry) -> tuple[LiveMotion, list[Output]]:
        live = self._live(spec, prefill=codec.unnamed(entry.tensors).get("prefill"))
        return live, [forward(entry, self.next, with_tensors=False)]

    async def restore(self, state: bytes) -> LiveMotion:
        st = codec.unpack(state)
        spec = bus_pb2.SessionSpec()
        spec.ParseFromString(bytes(st.pop("spec")))
        live = self._live(spec, int(st.pop("offset")), st.pop("last_xs", None), st.pop("last_xd", None))
        live.session.load_state_dict({k[8:]: v for k, v in st.items() if k.startswith("session.")})
        return live

    def state(self, session: LiveMotion) -> bytes:
        assert session.spec is not None, "only bus sessions are checkpointed"
        st: dict[str, Any] = {f"session.{k}": v for k, v in session.session.state_dict().items()}
        st["spec"] = np.frombuffer(session.spec.SerializeToString(), np.uint8)
        st["offset"] = session.offset
        if session.last_xd is not None:
            st["last_xs"], st["last_xd"] = session.last_xs, session.last_xd
        return codec.pack(st)

    def data(self, session: LiveMotion, entry: bus_pb2.StreamEntry) -> MotionInput:
        chunk = common_pb2.FeatureChunk()
        chunk.ParseFromString(entry.meta)
        session.session.stream.push(np.asarray(codec.unnamed(entry.tensors)["features"], np.float32))
        return MotionInput(idle=chunk.idle)

    def end(self, session: LiveMotion, entry: bus_pb2.StreamEntry) -> MotionInput:
        session.session.stream.end()
        return MotionInput(end=True)

    def emit(self, session: LiveMotion, entry: bus_pb2.StreamEntry, step_input: MotionInput,
             result: KeypointBatch) -> list[Output]:
        outputs = self._frames(session, result, step_input.idle)
        if step_input.end:
            outputs.append(forward(entry, self.next))
        return outputs

    def control(self, session: LiveMotion, entry: bus_pb2.StreamEntry) -> list[Output]:
        spec = bus_pb2.ControlSpec()
        spec.ParseFromString(entry.meta)
        if spec.has_overall:
            session.session.control(controls_from_proto(spec.overall))
        for tc in spec.timed:
            start = max(0, tc.start_frame - session.offset)
            end = (tc.end_frame - session.offset) if tc.end_frame else None
            session.session.control(controls_from_proto(tc.controls), start, end)
        return []

    async def interrupt(self, session: LiveMotion, entry: bus_pb2.StreamEntry) -> tuple[LiveMotion, list[Output]]:
        outputs = [forward(entry, self.next, with_tensors=False)]
        n = 0
        rest = None
        if session.last_xd is not None:
            # x_s is the source's own keypoints for that frame: the face at rest
            x_s = np.asarray(session.last_xs, np.float32)
            rest = ease_to_rest(x_s, session.last_xd, REST_FRAMES)
            meta = common_pb2.KeypointFrames(first_frame=0, idle=True)
            outputs.append(Output(self.next, bus_pb2.ENTRY_KIND_DATA,
                                  {"x_s": np.repeat(x_s[None], REST_FRAMES, 0), "x_d": rest,
                                   "source_index": np.zeros(REST_FRAMES, np.int64)}, meta.SerializeToString()))
            n = REST_FRAMES
        assert session.spec is not None
        fresh = self._live(session.spec, offset=n, last_xs=session.last_xs, last_xd=None if rest is None else rest[-1],
                           prefill=codec.unnamed(entry.tensors).get("prefill"))
        return fresh, outputs

    def _frames(self, live: LiveMotion, batch: KeypointBatch, idle: bool) -> list[Output]:
        if not len(batch):
            return []
        live.last_xs, live.last_xd = batch.x_s[-1].copy(), batch.x_d[-1].copy()
        meta = common_pb2.KeypointFrames(first_frame=live.offset + batch.first_frame, idle=idle)
        return [Output(self.next, bus_pb2.ENTRY_KIND_DATA,
                       {"x_s": batch.x_s.astype(np.float32), "x_d": batch.x_d.astype(np.float32),
                        "source_index": batch.source_index.astype(np.int64)}, meta.SerializeToString())]
