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
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from cachetools import LRUCache

from ditto import codec, rpc
from ditto.stage_runtime import MicroBatcher, run_for_call
from ditto_client.v1 import bus_pb2, common_pb2, renderer_pb2, renderer_pb2_grpc

from .avatar.crop import CropSettings
from .avatar.register import (
    Avatar,
    MediaError,
    MediaLimits,
    NoFaceError,
    load_cached,
    register_avatar,
    release_memory,
)
from .avatar.sessions import AuxModels
from .encode import EncodeError, Encoding, FrameEncoder, make_encoder
from .putback import Background, PasteOptions, PutBack

log = logging.getLogger(__name__)

CROP_SIZE = 512
RENDER_BATCH = 8  # frames per network call


def crop_settings(msg: common_pb2.CropOptions) -> CropSettings:
    """`CropOptions` -> `CropSettings`; unset fields keep the reference defaults."""
    d = CropSettings()
    box = None
    if msg.HasField("box"):
        b = msg.box
        if not (b.x1 > b.x0 and b.y1 > b.y0):
            raise ValueError(f"crop box must have x1 > x0 and y1 > y0, got ({b.x0}, {b.y0}, {b.x1}, {b.y1})")
        box = (b.x0, b.y0, b.x1, b.y1)
    scale = msg.scale if msg.HasField("scale") else d.scale
    if not 0.5 <= scale <= 10:
        raise ValueError(f"crop scale must be within 0.5..10, got {scale}")
    return CropSettings(
        scale=scale,
        vx_ratio=msg.vx_ratio if msg.HasField("vx_ratio") else d.vx_ratio,
        vy_ratio=msg.vy_ratio if msg.HasField("vy_ratio") else d.vy_ratio,
        rotate=msg.rotate if msg.HasField("rotate") else d.rotate,
        box=box,
        max_size=msg.max_size or d.max_size,
        max_frames=msg.max_frames,
    )


@dataclass
class RenderSession:
    """One rendered stream (a RenderFrames call or a bus session's epoch): its avatar, paste options and encoder."""

    avatar: Avatar
    paste: PasteOptions
    encoder: FrameEncoder
    width: int
    height: int
    frames_out: int = 0
    spec: bus_pb2.SessionSpec | None = None  # the bus session it renders (None: a RenderFrames call)


@dataclass
class RenderInput:
    """One session's part of a render step: keypoint frames, or (x_s None) the end of the stream."""

    x_s: np.ndarray | None
    x_d: np.ndarray | None = None
    source_index: list[int] = field(default_factory=list)
    first_frame: int = 0
    idle: bool = False


@dataclass
class RenderedFrames:
    """A render step's answer for one session: its encoded frames, in order."""

    frames: list[bytes]
    width: int = 0
    height: int = 0


# what a render step gives each session: its frames, or why they could not be encoded
RenderResult = RenderedFrames | EncodeError
RenderBatcher = MicroBatcher[tuple[RenderSession, RenderInput], RenderResult]


class RendererCore:
    """Registration and frame rendering without gRPC: what the servicer (and the embedded pipeline) calls."""

    def __init__(self, models: Any, aux: AuxModels | None = None, cache_dir: Path | None = None,
                 stitch: bool = True, max_avatars: int = 16, limits: MediaLimits | None = None,
                 max_concurrent_registrations: int = 2, cache_ttl_s: float = 24 * 3600):
        self.models = models
        self.aux = aux or AuxModels.none()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.stitch = stitch  # False when the keypoints arrive already stitched
        self.putback = PutBack()
        self._device_frames: Any = None  # gpu_post.DeviceFrames, made on the first GPU paste-back
        self.max_avatars = max_avatars
        self.limits = limits or MediaLimits()
        self.cache_ttl_s = cache_ttl_s
        self._avatars: LRUCache[str, Avatar] = LRUCache(max_avatars)   # the most recently used avatars
        # registrations run in worker threads; this bounds how many decode at once (each may take hundreds of MB)
        self._registering = threading.BoundedSemaphore(max_concurrent_registrations)
        self._last_sweep = 0.0

    # -- avatars ------------------------------------------------------------------------------------------------

    def register(self, media: bytes, filename: str | None, crop: CropSettings, tenant: str = "") -> tuple[Avatar, bool]:
        """(avatar, already_registered). Blocking: call it from a worker thread."""
        with self._registering:
            try:
                avatar = register_avatar(media, filename, crop, self.models, self.aux, self.cache_dir, tenant=tenant,
                                         limits=self.limits)
            finally:
                release_memory()
        known = avatar.avatar_id in self._avatars or avatar.cache_hit
        self._remember(avatar)
        self._touch(avatar.avatar_id)
        self.sweep_cache()
        return avatar, known

    def avatar(self, avatar_id: str) -> Avatar | None:
        avatar = self._avatars.get(avatar_id)
        if avatar is None and self.cache_dir is not None and _safe_id(avatar_id):
            avatar = load_cached(avatar_id, self.cache_dir, self.models, self.limits)
            if avatar is not None:
                self._remember(avatar)
        if avatar is not None:
            self._touch(avatar_id)
        return avatar

    def forget(self, avatar_id: str) -> bool:
        """Drop an avatar from memory and from the disk cache (uploaded media and derived features). True when
        this renderer held it."""
        held = self._avatars.pop(avatar_id, None) is not None
        if self.cache_dir is not None and _safe_id(avatar_id):
            folder = self.cache_dir / avatar_id
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                held = True
        return held

    def _touch(self, avatar_id: str) -> None:
        if self.cache_dir is not None and _safe_id(avatar_id):
            try:
                (self.cache_dir / avatar_id / "meta.json").touch()
            except OSError:
                pass

    def sweep_cache(self, now: float | None = None) -> int:
        """Delete disk cache entries unused for `cache_ttl_s` (a replica that missed a DeleteAvatar drops its copy
        within that time). Runs at most once a minute unless `now` is given; returns the entries removed."""
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return 0
        t = time.time() if now is None else now
        if now is None and t - self._last_sweep < 60:
            return 0
        self._last_sweep = t
        removed = 0
        for folder in self.cache_dir.iterdir():
            meta = folder / "meta.json"
            try:
                stale = folder.is_dir() and (not meta.exists() or t - meta.stat().st_mtime > self.cache_ttl_s)
            except OSError:
                continue
            if stale and folder.name not in self._avatars and not folder.name.endswith(".tmp"):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def _remember(self, avatar: Avatar) -> None:
        self._avatars[avatar.avatar_id] = avatar

    # -- rendering ----------------------------------------------------------------------------------------------

    def open(self, avatar: Avatar, output: common_pb2.OutputOptions) -> RenderSession:
        background = Background(output.background or Background.ORIGINAL)
        paste = PasteOptions(background=background, paste_back=output.paste_back)
        width, height = (avatar.width, avatar.height) if paste.paste_back else (CROP_SIZE, CROP_SIZE)
        encoding = output.encoding or Encoding.JPEG
        if background == Background.TRANSPARENT and encoding == Encoding.H264:
            raise ValueError("a transparent background needs RAW_RGB (RGBA) or JPEG (sent as PNG) frames; "
                             "H.264 has no alpha channel")
        if not 0 <= output.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1..100 (0 = default 90), got {output.jpeg_quality}")
        device = str(getattr(self.models, "device", "cpu"))
        return RenderSession(avatar, paste, make_encoder(encoding, width, height, output.jpeg_quality or 90,
                                                         device=device), width, height)

    def render(self, session: RenderSession, x_s: np.ndarray, x_d: np.ndarray,
               source_index: Iterable[int]) -> list[np.ndarray]:
        """Stitch, warp, decode and paste back a batch of one session; returns the output images (uint8)."""
        return self.render_many([(session, x_s, x_d, list(source_index))])[0]

    def render_many(self, jobs: Sequence[tuple[RenderSession, np.ndarray, np.ndarray, list[int]]]
                    ) -> list[list[Any]]:
        """Frames of several sessions through the networks together (batches of RENDER_BATCH), each pasted back
        into its own avatar. Returns the output images per job: uint8 numpy arrays, or CUDA tensors for a session
        whose encoder takes them (`device_frames`, JPEG on the GPU)."""
        import torch

        flat = [(j, k) for j, (_, _, x_d, _) in enumerate(jobs) for k in range(len(x_d))]
        out: list[list[Any]] = [[] for _ in jobs]
        models = self.models
        device = getattr(models, "device", "cpu")
        with torch.no_grad():
            for b in range(0, len(flat), RENDER_BATCH):
                part = flat[b:b + RENDER_BATCH]
                xs = torch.from_numpy(np.stack([jobs[j][1][k] for j, k in part]).astype(np.float32)).to(device)
                xd = torch.from_numpy(np.stack([jobs[j][2][k] for j, k in part]).astype(np.float32)).to(device)
                if self.stitch:
                    xd = models.stitch(xs, xd)
                f_s = torch.cat([jobs[j][0].avatar.f_s[jobs[j][3][k]] for j, k in part]).to(device)
                images = models.warp_decode(f_s, xs, xd)  # [B, 3, S, S] in [0, 1]
                # the reference hands paste-back the decoder output clipped to [0, 1] times 255, not rounded
                renders_dev = (images.clamp(0, 1) * 255).permute(0, 2, 3, 1).float()
                on_gpu = [self._gpu_paste(jobs[j][0], renders_dev.shape[1]) for j, _ in part]
                renders = None if all(on_gpu) else renders_dev.cpu().numpy()
                for n, (j, k) in enumerate(part):
                    session, src = jobs[j][0], jobs[j][3][k]
                    if on_gpu[n]:  # stays on the GPU for a GPU encoder
                        out[j].append(self._paste_on_device(session, src, renders_dev[n]))
                        continue
                    assert renders is not None
                    render = renders[n]
                    if render.shape[0] != CROP_SIZE:  # the tiny profile renders 256 px: bring it to crop size
                        render = cv2.resize(render, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR)
                    out[j].append(self.putback(session.avatar.frames[src], render, session.avatar.M_c2o[src],
                                               session.paste))
        return out

    def step(self, batch: Sequence[tuple[RenderSession, RenderInput]]) -> list[RenderResult]:
        """One render step over many sessions: their keypoint frames through the networks together, then each
        session's frames encoded (an encoding failure belongs to its session only); an end input flushes."""
        images = iter(self.render_many([(s, x.x_s, x.x_d, x.source_index) for s, x in batch
                                        if x.x_s is not None and x.x_d is not None]))
        out: list[RenderResult] = []
        for session, x in batch:
            if x.x_s is None:
                session.encoder.flush()
                out.append(RenderedFrames([]))
                continue
            imgs = next(images)
            try:
                frames = [session.encoder.encode(img) for img in imgs]
            except EncodeError as err:
                out.append(err)
                continue
            session.frames_out += len(frames)
            h, w = imgs[0].shape[:2] if imgs else (session.height, session.width)
            out.append(RenderedFrames(frames, w, h))
        return out

    def _gpu_paste(self, session: RenderSession, render_size: int) -> bool:
        """Paste back on the GPU when the frames stay there for a GPU encoder (a full-size render, the original
        background): the CPU then only sees JPEG bytes."""
        return (bool(getattr(session.encoder, "device_frames", False)) and session.paste.paste_back
                and session.paste.background == Background.ORIGINAL and render_size == CROP_SIZE)

    def _paste_on_device(self, session: RenderSession, src: int, render: Any) -> Any:
        from .gpu_post import DeviceFrames

        if self._device_frames is None:
            self._device_frames = DeviceFrames(render.device)
        avatar = session.avatar
        frame = self._device_frames.get(avatar.avatar_id, src, avatar.frames[src])
        return self.putback.blend_torch(frame, render, avatar.M_c2o[src])


def _safe_id(avatar_id: str) -> bool:
    return bool(avatar_id) and all(c.isalnum() for c in avatar_id)


def registration_response(core: RendererCore, request: renderer_pb2.RegisterSourceRequest
                          ) -> renderer_pb2.RegisterSourceResponse:
    """Register the request's media with `core`; raises ValueError (MediaError, NoFaceError) on bad input."""
    avatar, known = core.register(request.media, request.filename or None, crop_settings(request.crop),
                                  request.tenant_id)
    info = common_pb2.AvatarMotionInfo(avatar_id=avatar.avatar_id, tensors=codec.named(avatar.motion_info()),
                                       is_video=avatar.is_video)
    return renderer_pb2.RegisterSourceResponse(
        avatar_id=avatar.avatar_id, width=avatar.width, height=avatar.height, source_frames=avatar.num_frames,
        motion_info=info, already_registered=known)


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
    batcher: RenderBatcher = MicroBatcher(core.step, "renderer", max_batch=64)
    return await rpc.start_server([service(core, batcher)], host, port, max_message_bytes)
