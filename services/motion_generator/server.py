"""The `ditto.v1.MotionGenerator` gRPC service: audio features in, keypoint frames out.

Protocol of `Generate` (protos/ditto/v1/motion_generator.proto): the client sends a `MotionConfig` first (the avatar's
motion info, emotion, overall controls, steps, overlap, seed), then `FeatureChunk`s ([n,1024], `first_frame` counting
from the session start, contiguous), `TimedControl`s at any time, and `EndOfStream`. The server answers
`GenerateStarted`, `KeypointFrames` whenever frames become final (x_d before the stitching network), and a final OK
`Status` after the end. Bad input ends that call with INVALID_ARGUMENT and a message; every other call goes on.

All concurrent calls share one model: a `SessionBatcher` runs the windows that are ready in different sessions as one
batched forward per diffusion step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
from ditto_client.v1 import common_pb2, motion_generator_pb2, motion_generator_pb2_grpc

from ditto import codec, rpc
from services.motion_generator.generator import KeypointBatch, MotionGenerator, MotionSession
from services.motion_generator.protocol import avatar_from_proto, controls_from_proto, settings_from_proto


class SessionBatcher:
    """Callers await `run(session)`; one task gathers the sessions with a ready window (waiting at most
    `max_wait_ms` for more) and steps them together with `MotionGenerator.step_many`, off the event loop."""

    def __init__(self, generator: MotionGenerator, max_wait_ms: float = 5.0) -> None:
        self.generator, self.max_wait = generator, max_wait_ms / 1000.0
        self._queue: asyncio.Queue[tuple[MotionSession, asyncio.Future[KeypointBatch]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batch_sizes: list[int] = []

    async def run(self, session: MotionSession) -> KeypointBatch:
        """Run every window the session can run now; the frames that became final."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._loop())
        parts = []
        first = session.next_frame
        while session.stream.next_window() is not None:
            fut: asyncio.Future[KeypointBatch] = loop.create_future()
            await self._queue.put((session, fut))
            parts.append(await fut)
        return KeypointBatch.concat(parts, first)

    async def _loop(self) -> None:
        while True:
            items = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self.max_wait
            while len(items) < self.generator.max_batch:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            sessions = [s for s, _ in items]
            self.batch_sizes.append(len(sessions))
            try:
                out = await asyncio.to_thread(self.generator.step_many, sessions)
            except Exception as err:  # a model failure fails these calls, not the server
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for (_, fut), batch in zip(items, out, strict=True):
                if not fut.done():
                    fut.set_result(batch)


def frames_message(batch: KeypointBatch, idle: bool = False) -> motion_generator_pb2.GenerateResponse:
    msg = common_pb2.KeypointFrames(first_frame=batch.first_frame, idle=idle,
                                    source_frame_index=[int(i) for i in batch.source_index])
    codec.to_proto(batch.x_s.astype(np.float32), msg.x_source)
    codec.to_proto(batch.x_d.astype(np.float32), msg.x_driving)
    return motion_generator_pb2.GenerateResponse(frames=msg)


class MotionGeneratorService(motion_generator_pb2_grpc.MotionGeneratorServicer):
    def __init__(self, generator: MotionGenerator, batcher: SessionBatcher) -> None:
        self.generator, self.batcher = generator, batcher

    async def Generate(self, request_iterator: AsyncIterator[motion_generator_pb2.GenerateRequest],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[motion_generator_pb2.GenerateResponse]:
        session: MotionSession | None = None
        received = 0
        async for req in request_iterator:
            kind = req.WhichOneof("event")
            try:
                if kind == "config":
                    if session is not None:
                        raise ValueError("a second MotionConfig; send the config once, first")
                    c = req.config
                    if not c.HasField("avatar") or not c.avatar.tensors:
                        raise ValueError("MotionConfig.avatar is empty: send the avatar's motion info "
                                         "(scale, pitch, yaw, roll, t, exp, kp, eye_open, eye_ball)")
                    settings = settings_from_proto(c.sampling_steps, c.overlap, c.seed, c.emotion, c.controls)
                    session = self.generator.session(avatar_from_proto(c.avatar), settings, c.avatar.avatar_id)
                    yield motion_generator_pb2.GenerateResponse(started=motion_generator_pb2.GenerateStarted(
                        look_ahead_frames=session.look_ahead_frames, backend=self.generator.backend.name))
                    continue
                if session is None:
                    raise ValueError(f"the first message must be a MotionConfig, got {kind}")
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
                    batch = await self.batcher.run(session)
                    if len(batch):
                        yield frames_message(batch, req.features.idle)
                elif kind == "control":
                    tc = req.control
                    ctrl = controls_from_proto(tc.controls)
                    session.control(ctrl, int(tc.start_frame), int(tc.end_frame) or None)
                elif kind == "end":
                    session.stream.end()
                    batch = await self.batcher.run(session)
                    batch = KeypointBatch.concat([batch, session.flush()], batch.first_frame)
                    if len(batch):
                        yield frames_message(batch)
                    yield motion_generator_pb2.GenerateResponse(final=common_pb2.Status(code=0, message="OK"))
                    return
                else:
                    raise ValueError("empty GenerateRequest (set one of config, features, control, end)")
            except (ValueError, codec.CodecError) as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"motion generator: {err}")
        if session is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "motion generator: no MotionConfig received")


async def start(generator: MotionGenerator, host: str = "127.0.0.1", port: int = 0,
                max_wait_ms: float = 5.0) -> tuple[rpc.RunningServer, SessionBatcher]:
    batcher = SessionBatcher(generator, max_wait_ms)
    service = MotionGeneratorService(generator, batcher)
    running = await rpc.start_server([rpc.Service(motion_generator_pb2_grpc.add_MotionGeneratorServicer_to_server,
                                                  service, rpc.service_name(motion_generator_pb2, "MotionGenerator"))],
                                     host, port)
    return running, batcher
