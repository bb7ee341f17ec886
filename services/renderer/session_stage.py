"""The renderer as a `ditto.stage_runtime.SessionStage`: keypoints of many sessions -> one batched stitch + warp +
decode -> paste-back and encoding per session -> frames to the orchestrator.

A session is a `RenderSession`; its checkpoint is only the session spec and a frame counter. The heavy per-avatar
tensors live in the core's avatar cache and are rebuilt from the avatar's source media (kept on the bus by the
orchestrator, `ditto.keys.Keys.avatar_source`) on a miss, so any worker can take a session over. A new worker starts
a fresh H.264 stream with a key frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import grpc
import numpy as np

from ditto import codec, pipeline
from ditto.bus import Bus
from ditto.bus.worker import Output
from ditto.pipeline import FRAMES
from ditto.stage_runtime import forward
from ditto_client.v1 import bus_pb2, common_pb2, renderer_pb2
from services.renderer.avatar.register import Avatar, MediaError, NoFaceError
from services.renderer.core import (
    RenderedFrames,
    RendererCore,
    RenderInput,
    RenderResult,
    RenderSession,
    crop_settings,
)


class RendererStage:
    name = "renderer"
    label = "renderer"
    input_errors: tuple[type[Exception], ...] = (LookupError, ValueError, MediaError, NoFaceError)
    input_error_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, core: RendererCore, bus: Bus) -> None:
        self.core = core
        self.max_batch = core.max_batch
        self.bus = bus  # where the orchestrator keeps each avatar's source media
        # where frames go: the orchestrator's frames stream (FRAMES) while the renderer is the last stage
        self.next = pipeline.active().next_of(self.name)
        # the last stage keeps CLOSE and kinds it does not know: nothing after it consumes them
        self.passthrough: str | None = None if self.next == FRAMES else self.next

    def step(self, batch: Sequence[tuple[RenderSession, RenderInput]]) -> list[RenderResult]:
        return self.core.step(batch)

    # ---- the bus ----
    async def _avatar(self, spec: bus_pb2.SessionSpec) -> Avatar | None:
        avatar = await asyncio.to_thread(self.core.avatar, spec.avatar_id)
        if avatar is not None:
            return avatar
        raw = await self.bus.get_state(self.bus.keys.avatar_source(spec.tenant_id, spec.avatar_id))
        if raw is None:
            return None
        req = renderer_pb2.RegisterSourceRequest()
        req.ParseFromString(raw)
        avatar, _ = await asyncio.to_thread(self.core.register, req.media, req.filename or None,
                                            crop_settings(req.crop), req.tenant_id)
        return avatar

    async def _session(self, spec: bus_pb2.SessionSpec, frames: int) -> RenderSession:
        avatar = await self._avatar(spec)
        if avatar is None:
            raise LookupError(f"avatar '{spec.avatar_id}' is unknown to the renderer; register it again")
        session = self.core.open(avatar, spec.output)
        session.spec, session.frames_out = spec, frames
        return session

    async def open(self, spec: bus_pb2.SessionSpec, entry: bus_pb2.StreamEntry) -> tuple[RenderSession, list[Output]]:
        return await self._session(spec, 0), []

    async def restore(self, state: bytes) -> RenderSession:
        st = codec.unpack(state)
        spec = bus_pb2.SessionSpec()
        spec.ParseFromString(bytes(st["spec"]))
        return await self._session(spec, int(st["frames"]))

    def state(self, session: RenderSession) -> bytes:
        assert session.spec is not None, "only bus sessions are checkpointed"
        return codec.pack({"spec": np.frombuffer(session.spec.SerializeToString(), np.uint8),
                           "frames": session.frames_out})

    def data(self, session: RenderSession, entry: bus_pb2.StreamEntry) -> RenderInput:
        meta = common_pb2.KeypointFrames()
        meta.ParseFromString(entry.meta)
        t = codec.unnamed(entry.tensors)
        x_s, x_d = np.asarray(t["x_s"], np.float32), np.asarray(t["x_d"], np.float32)
        src = [int(v) for v in t["source_index"]]
        if x_s.shape != x_d.shape or len(src) != len(x_d) or max(src, default=0) >= session.avatar.num_frames:
            raise ValueError(f"keypoints {x_s.shape} / {x_d.shape} / {len(src)} source indices disagree")
        return RenderInput(x_s, x_d, src, meta.first_frame, meta.idle)

    def end(self, session: RenderSession, entry: bus_pb2.StreamEntry) -> RenderInput:
        return RenderInput(None)

    def emit(self, session: RenderSession, entry: bus_pb2.StreamEntry, step_input: RenderInput,
             result: RenderResult) -> list[Output]:
        if not isinstance(result, RenderedFrames):
            raise result
        if step_input.x_s is None:
            return [forward(entry, self.next)]
        encoding = cast(common_pb2.FrameEncoding, int(session.encoder.encoding))
        outputs = []
        for k, data in enumerate(result.frames):
            fm = bus_pb2.FrameMeta(index=step_input.first_frame + k, width=result.width, height=result.height,
                                   encoding=encoding, idle=step_input.idle)
            outputs.append(Output(self.next, bus_pb2.ENTRY_KIND_DATA, {"frame": np.frombuffer(data, np.uint8)},
                                  fm.SerializeToString()))
        return outputs

    def control(self, session: RenderSession, entry: bus_pb2.StreamEntry) -> list[Output]:
        return []  # the motion stage applied it

    async def interrupt(self, session: RenderSession, entry: bus_pb2.StreamEntry
                        ) -> tuple[RenderSession, list[Output]]:
        # the new epoch counts from 0; a new encoder starts with a key frame
        assert session.spec is not None, "only bus sessions are interrupted"
        fresh = self.core.open(session.avatar, session.spec.output)
        fresh.spec = session.spec
        # tells the orchestrator the interrupted epochs' entries have all passed (it returns their credits)
        return fresh, [Output(self.next, bus_pb2.ENTRY_KIND_INTERRUPT, {}, b"")]
