"""The renderer's core: registered avatars (memory and disk cache, bounded) and render sessions, and the batched
render step (stitch, warp + decode, paste back, encode) that both the stage's bus adapter (`session_stage.py`) and its
gRPC service (`server.py`) drive through the stage runtime's micro-batcher.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cachetools import LRUCache

from ditto.media.pool import Decoder, InProcess
from ditto.stage_runtime import MicroBatcher
from ditto_client.v1 import bus_pb2, common_pb2

from .avatar.crop import CropSettings
from .avatar.register import (
    Avatar,
    MediaLimits,
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
# Sessions in one step (the stage's batch bound, `SessionStage.max_batch`): each brings a window of frames, which go
# through the networks RENDER_BATCH at a time, so this bounds a step's work, not the networks' batch.
MAX_SESSIONS_PER_STEP = 64


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


class AvatarTooLarge(ValueError):
    """One avatar needs more memory than the renderer keeps for all of them."""


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


def _safe_id(avatar_id: str) -> bool:
    return bool(avatar_id) and all(c.isalnum() for c in avatar_id)


class RendererCore:
    """Registration and frame rendering without gRPC: what the servicer (and the embedded pipeline) calls."""

    def __init__(self, models: Any, aux: AuxModels | None = None, cache_dir: Path | None = None,
                 stitch: bool = True, max_avatar_bytes: int = 4 << 30, limits: MediaLimits | None = None,
                 max_concurrent_registrations: int = 2, cache_ttl_s: float = 24 * 3600,
                 decoder: Decoder | None = None):
        self.models = models
        self.max_batch = MAX_SESSIONS_PER_STEP
        self.aux = aux or AuxModels.none()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.stitch = stitch  # False when the keypoints arrive already stitched
        self.putback = PutBack()
        self._device_frames: Any = None  # gpu_post.DeviceFrames, made on the first GPU paste-back
        self.max_avatar_bytes = max_avatar_bytes
        self.limits = limits or MediaLimits()
        # where media is decoded: a server passes its pool of helper processes (a crash or a bomb there fails one
        # registration, not the renderer); library use decodes in this process
        self.decoder: Decoder = decoder or InProcess()
        self.cache_ttl_s = cache_ttl_s
        # the most recently used avatars, bounded by the memory they hold (a video avatar can hold 100x a photo's)
        self._avatars: LRUCache[str, Avatar] = LRUCache(max_avatar_bytes, getsizeof=lambda a: a.nbytes)
        # registrations run in worker threads; this bounds how many decode at once (each may take hundreds of MB)
        self._registering = threading.BoundedSemaphore(max_concurrent_registrations)
        self._last_sweep = 0.0

    # -- avatars ------------------------------------------------------------------------------------------------

    def register(self, media: bytes, filename: str | None, crop: CropSettings, tenant: str = "") -> tuple[Avatar, bool]:
        """(avatar, already_registered). Blocking: call it from a worker thread."""
        with self._registering:
            try:
                avatar = register_avatar(media, filename, crop, self.models, self.aux, self.cache_dir, tenant=tenant,
                                         limits=self.limits, decoder=self.decoder)
            finally:
                release_memory()
        known = avatar.avatar_id in self._avatars or avatar.cache_hit
        try:
            self._remember(avatar)
        except AvatarTooLarge:
            self.forget(avatar.avatar_id)  # and its disk copy: it could never be served
            raise
        self._touch(avatar.avatar_id)
        self.sweep_cache()
        return avatar, known

    def avatar(self, avatar_id: str) -> Avatar | None:
        avatar = self._avatars.get(avatar_id)
        if avatar is None and self.cache_dir is not None and _safe_id(avatar_id):
            avatar = load_cached(avatar_id, self.cache_dir, self.models, self.limits, self.decoder)
            if avatar is not None and avatar.nbytes <= self.max_avatar_bytes:
                self._remember(avatar)  # (one registered under a larger budget is served, not kept)
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
                if folder.name.startswith("."):  # a registration being written (ditto.accel.atomic_dir), maybe by
                    # another process sharing the folder: only an abandoned one, untouched for the TTL, goes
                    stale = folder.is_dir() and t - folder.stat().st_mtime > self.cache_ttl_s
                else:
                    stale = folder.is_dir() and (not meta.exists() or t - meta.stat().st_mtime > self.cache_ttl_s)
            except OSError:
                continue
            if stale and folder.name not in self._avatars:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def _remember(self, avatar: Avatar) -> None:
        if avatar.nbytes > self.max_avatar_bytes:
            raise AvatarTooLarge(
                f"this avatar needs {avatar.nbytes / 2**20:.0f} MB of memory, more than this renderer keeps for all "
                f"avatars ({self.max_avatar_bytes / 2**20:.0f} MB, DITTO_MEDIA__MAX_AVATAR_MEMORY_MB); send a "
                "shorter video or a smaller image")
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
                    avatar = session.avatar
                    out[j].append(self.putback(avatar.frames[src], render, avatar.M_c2o[src], session.paste,
                                               avatar.alpha[src] if avatar.alpha is not None else None))
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


