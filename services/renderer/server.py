"""The `ditto.v1.Renderer` gRPC service: avatar registration and streaming rendering.

RegisterAvatar: media bytes + crop options -> avatar id, size, and the motion info tensors the motion stage
needs (`ditto.codec` named tensors).

RenderFrames (bidirectional stream): a `RenderConfig` first (avatar, output options), then `KeypointFrames` with
x_source / x_driving [n, 21, 3] float32, then `EndOfStream`. For each frame the renderer stitches the driving
keypoints (`models.stitch`), warps and decodes (`models.warp_decode`), pastes back into the source frame and
encodes; the answer is one `RenderedFrame` per input frame, then a final `Status`.

Bad input is answered with a gRPC status and a message that says what to fix (INVALID_ARGUMENT for malformed
requests, NOT_FOUND for an unknown avatar, FAILED_PRECONDITION when the stream does not start with a config); the
server keeps serving other calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import numpy as np

from ditto import codec, rpc
from ditto.stage_runtime import MicroBatcher, run_for_call
from ditto_client.v1 import common_pb2, renderer_pb2, renderer_pb2_grpc

from .avatar.framing import FaceReport
from .avatar.register import (
    MediaError,
    NoFaceError,
)
from .core import RenderBatcher, RendererCore, RenderInput, RenderSession, crop_settings
from .encode import EncodeError

log = logging.getLogger(__name__)


def registration_response(core: RendererCore, request: renderer_pb2.RegisterSourceRequest
                          ) -> renderer_pb2.RegisterSourceResponse:
    """Register the request's media with `core`; raises ValueError (MediaError, NoFaceError) on bad input."""
    avatar, known = core.register(request.media, request.filename or None, crop_settings(request.crop),
                                  request.tenant_id)
    info = common_pb2.AvatarMotionInfo(avatar_id=avatar.avatar_id, tensors=codec.named(avatar.motion_info()),
                                       is_video=avatar.is_video)
    return renderer_pb2.RegisterSourceResponse(
        avatar_id=avatar.avatar_id, width=avatar.width, height=avatar.height, source_frames=avatar.num_frames,
        motion_info=info, already_registered=known, face=face_report(avatar.report))


def face_report(report: FaceReport | None) -> common_pb2.FaceReport:
    """What registration found, as the wire's `FaceReport` (empty for an avatar cached before reports existed)."""
    if report is None:
        return common_pb2.FaceReport()
    msg = common_pb2.FaceReport(
        face_models=report.face_models, models=report.models, faces_found=report.faces_found,
        crop=common_pb2.CropSquare(center_x=report.crop_center[0], center_y=report.crop_center[1],
                                   size=report.crop_size, rotation_deg=report.crop_rotation_deg),
        eye_open=list(report.eye_open or ()), person_matte=report.person_matte, warnings=report.warnings)
    if report.face_box is not None:
        x0, y0, x1, y1 = report.face_box
        msg.face_box.CopyFrom(common_pb2.CropBox(x0=x0, y0=y0, x1=x1, y1=y1))
    return msg


class RendererServicer(renderer_pb2_grpc.RendererServicer):
    def __init__(self, core: RendererCore, batcher: RenderBatcher):
        self.core, self.batcher = core, batcher

    async def RegisterAvatar(self, request: renderer_pb2.RegisterSourceRequest,  # noqa: N802 (gRPC name)
                             context: grpc.aio.ServicerContext) -> renderer_pb2.RegisterSourceResponse:
        try:
            return await asyncio.to_thread(registration_response, self.core, request)
        except (MediaError, NoFaceError, ValueError) as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            raise  # unreachable: abort raises

    async def ForgetAvatar(self, request: renderer_pb2.ForgetAvatarRequest,  # noqa: N802 (gRPC name)
                           context: grpc.aio.ServicerContext) -> renderer_pb2.ForgetAvatarResponse:
        held = await asyncio.to_thread(self.core.forget, request.avatar_id)
        return renderer_pb2.ForgetAvatarResponse(held=held)

    async def RenderFrames(self, request_iterator: AsyncIterator[renderer_pb2.RenderFramesRequest],  # noqa: N802
                           context: grpc.aio.ServicerContext) -> AsyncIterator[renderer_pb2.RenderFramesResponse]:
        session: RenderSession | None = None
        async for request in request_iterator:
            kind = request.WhichOneof("event")
            if kind == "config":
                if session is not None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "RenderConfig may be sent only once, "
                                        "as the first message of the stream")
                session = await self._open(request.config, context)
            elif session is None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"the first message must be a RenderConfig, got {kind or 'an empty message'}")
            elif kind == "keypoints":
                x_s, x_d, index = await self._check_keypoints(session, request.keypoints, context)
                try:
                    rendered = await run_for_call(self.batcher, (session, RenderInput(x_s, x_d, index)), context)
                except ValueError as err:
                    rendered = EncodeError(str(err))
                if isinstance(rendered, EncodeError):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot render these keypoints: {rendered}")
                    raise rendered
                for i, data in enumerate(rendered.frames):
                    yield renderer_pb2.RenderFramesResponse(frame=renderer_pb2.RenderedFrame(
                        index=request.keypoints.first_frame + i, data=data, width=rendered.width,
                        height=rendered.height, encoding=int(session.encoder.encoding)))  # type: ignore[arg-type]
            elif kind == "end":
                break
        if session is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the stream ended before any RenderConfig")
            return
        await run_for_call(self.batcher, (session, RenderInput(None)), context)
        yield renderer_pb2.RenderFramesResponse(final=common_pb2.Status(
            code=0, message=f"rendered {session.frames_out} frames"))

    async def _open(self, config: renderer_pb2.RenderConfig, context: grpc.aio.ServicerContext) -> RenderSession:
        if not config.avatar_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "RenderConfig.avatar_id is empty")
        avatar = await asyncio.to_thread(self.core.avatar, config.avatar_id)
        if avatar is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown avatar '{config.avatar_id}': register it with RegisterAvatar first")
        assert avatar is not None
        try:
            return self.core.open(avatar, config.output)
        except (ValueError, EncodeError) as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad output options: {err}")
            raise

    async def _check_keypoints(self, session: RenderSession, kp: common_pb2.KeypointFrames,
                               context: grpc.aio.ServicerContext) -> tuple[np.ndarray, np.ndarray, list[int]]:
        num_kp = int(getattr(self.core.models, "num_kp", 21))
        try:
            x_s = codec.from_proto(kp.x_source)
            x_d = codec.from_proto(kp.x_driving)
        except codec.CodecError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"keypoint tensor unreadable: {err}")
            raise
        for name, arr in (("x_source", x_s), ("x_driving", x_d)):
            if arr.ndim != 3 or arr.shape[1:] != (num_kp, 3) or arr.shape[0] == 0:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"{name} must have shape [n, {num_kp}, 3] with n >= 1, got {list(arr.shape)}")
            if arr.dtype.kind != "f":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be float32, got {arr.dtype}")
            if not np.isfinite(arr).all():
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} contains NaN or infinity")
        if x_s.shape[0] != x_d.shape[0]:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"x_source has {x_s.shape[0]} frames but x_driving has {x_d.shape[0]}")
        n, avatar = x_d.shape[0], session.avatar
        if kp.source_frame_index:
            index = [int(i) for i in kp.source_frame_index]
            if len(index) != n or min(index) < 0 or max(index) >= avatar.num_frames:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"source_frame_index needs {n} entries within 0..{avatar.num_frames - 1}")
        else:
            index = [avatar.source_index(kp.first_frame + i) for i in range(n)]
        return x_s.astype(np.float32), x_d.astype(np.float32), index


def service(core: RendererCore, batcher: RenderBatcher) -> rpc.Service:
    return rpc.Service(renderer_pb2_grpc.add_RendererServicer_to_server, RendererServicer(core, batcher),
                       rpc.service_name(renderer_pb2, "Renderer"))


async def serve(core: RendererCore, host: str = "127.0.0.1", port: int = 0,
                max_message_bytes: int = rpc.DEFAULT_MAX_MESSAGE) -> rpc.RunningServer:
    """Start the Renderer service with health checking and reflection."""
    batcher: RenderBatcher = MicroBatcher(core.step, "renderer", core.max_batch, stage="renderer")
    return await rpc.start_server([service(core, batcher)], host, port, max_message_bytes)
