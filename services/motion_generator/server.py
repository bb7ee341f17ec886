"""The `ditto.v1.MotionGenerator` gRPC service: audio features in, keypoint frames out.

Protocol of `Generate` (protos/ditto/v1/motion_generator.proto): the client sends a `MotionConfig` first (the avatar's
motion info, emotion, overall controls, steps, overlap, seed), then `FeatureChunk`s ([n,1024], `first_frame` counting
from the session start, contiguous), `TimedControl`s at any time, and `EndOfStream`. The server answers
`GenerateStarted`, `KeypointFrames` whenever frames become final (x_d before the stitching network), and a final OK
`Status` after the end. Bad input ends that call with INVALID_ARGUMENT and a message; every other call goes on.

All concurrent calls and the bus sessions of this worker share one model: their windows go through the stage's
`ditto.stage_runtime.MicroBatcher`, so windows ready in different sessions run as one batched forward. When its queue
is full a call ends with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np

from ditto import codec, rpc
from ditto.stage_runtime import MicroBatcher, run_for_call
from ditto_client.v1 import common_pb2, motion_generator_pb2, motion_generator_pb2_grpc
from services.motion_generator.generator import KeypointBatch, MotionGenerator
from services.motion_generator.protocol import avatar_from_proto, controls_from_proto
from services.motion_generator.session_stage import LiveMotion, MotionInput, MotionStage

MotionBatcher = MicroBatcher[tuple[LiveMotion, MotionInput], KeypointBatch]


def frames_message(batch: KeypointBatch, idle: bool = False) -> motion_generator_pb2.GenerateResponse:
    msg = common_pb2.KeypointFrames(first_frame=batch.first_frame, idle=idle,
                                    source_frame_index=[int(i) for i in batch.source_index])
    codec.to_proto(batch.x_s.astype(np.float32), msg.x_source)
    codec.to_proto(batch.x_d.astype(np.float32), msg.x_driving)
    return motion_generator_pb2.GenerateResponse(frames=msg)


class MotionGeneratorService(motion_generator_pb2_grpc.MotionGeneratorServicer):
    def __init__(self, stage: MotionStage, batcher: MotionBatcher) -> None:
        self.stage, self.batcher = stage, batcher

    async def Generate(self, request_iterator: AsyncIterator[motion_generator_pb2.GenerateRequest],  # noqa: N802
                       context: grpc.aio.ServicerContext) -> AsyncIterator[motion_generator_pb2.GenerateResponse]:
        live: LiveMotion | None = None
        received = 0
        async for req in request_iterator:
            kind = req.WhichOneof("event")
            try:
                if kind == "config":
                    if live is not None:
                        raise ValueError("a second MotionConfig; send the config once, first")
                    c = req.config
                    if not c.HasField("avatar") or not c.avatar.tensors:
                        raise ValueError("MotionConfig.avatar is empty: send the avatar's motion info "
                                         "(scale, pitch, yaw, roll, t, exp, kp, eye_open, eye_ball)")
                    live = LiveMotion(self.stage.new_session(avatar_from_proto(c.avatar), c.sampling_steps,
                                                             c.overlap, c.seed, c.emotion, c.controls,
                                                             session_id=c.avatar.avatar_id))
                    yield motion_generator_pb2.GenerateResponse(started=motion_generator_pb2.GenerateStarted(
                        look_ahead_frames=live.session.look_ahead_frames,
                        backend=self.stage.generator.backend.name))
                    continue
                if live is None:
                    raise ValueError(f"the first message must be a MotionConfig, got {kind}")
                session = live.session
                if kind == "features":
                    if req.features.first_frame != received:
                        raise ValueError(f"feature chunk starts at frame {req.features.first_frame}, expected "
                                         f"{received} (chunks must be contiguous)")
                    feats = codec.from_proto(req.features.features)
                    if feats.ndim != 2 or feats.shape[1] != 1024 or feats.dtype != np.float32:
                        raise ValueError(f"features must be float32 [n, 1024], got {feats.dtype} {feats.shape}")
                    if not np.isfinite(feats).all():
                        raise ValueError("features contain NaN or infinite values")
                    received += len(feats)
                    session.stream.push(feats)
                    batch = await run_for_call(self.batcher, (live, MotionInput()), context)
                    if len(batch):
                        yield frames_message(batch, req.features.idle)
                elif kind == "control":
                    tc = req.control
                    ctrl = controls_from_proto(tc.controls)
                    session.control(ctrl, int(tc.start_frame), int(tc.end_frame) or None)
                elif kind == "end":
                    session.stream.end()
                    batch = await run_for_call(self.batcher, (live, MotionInput(end=True)), context)
                    if len(batch):
                        yield frames_message(batch)
                    yield motion_generator_pb2.GenerateResponse(final=common_pb2.Status(code=0, message="OK"))
                    return
                else:
                    raise ValueError("empty GenerateRequest (set one of config, features, control, end)")
            except (ValueError, codec.CodecError) as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"motion generator: {err}")
        if live is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "motion generator: no MotionConfig received")


def service(stage: MotionStage, batcher: MotionBatcher) -> rpc.Service:
    return rpc.Service(motion_generator_pb2_grpc.add_MotionGeneratorServicer_to_server, MotionGeneratorService(
        stage, batcher), rpc.service_name(motion_generator_pb2, "MotionGenerator"))


async def start(generator: MotionGenerator, host: str = "127.0.0.1", port: int = 0,
                max_wait_ms: float = 5.0) -> tuple[rpc.RunningServer, MotionBatcher]:
    stage = MotionStage(generator)
    batcher: MotionBatcher = MicroBatcher(stage.step, stage.label, stage.max_batch, max_wait_ms, stage=stage.name)
    return await rpc.start_server([service(stage, batcher)], host, port), batcher
