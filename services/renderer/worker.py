"""The renderer's bus handler: keypoints of many sessions -> one batched stitch + warp + decode -> paste-back and
encoding per session -> frames to the orchestrator.

Per session it checkpoints only the session spec and a frame counter; the heavy per-avatar tensors live in the
worker's avatar cache and are recomputed from the avatar's source media (kept on the bus by the orchestrator) on a
miss, so any worker can take a session over. A new worker starts a fresh H.264 stream with a key frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import grpc
import numpy as np
from ditto_client.v1 import bus_pb2, common_pb2, renderer_pb2

from ditto import codec, stage
from ditto.bus import Bus
from ditto.bus.worker import Output, WorkItem, WorkResult
from services.renderer.avatar.register import MediaError, NoFaceError
from services.renderer.server import RendererCore, RenderSession, crop_settings

FRAMES = "frames"


@dataclass
class _Live:
    spec: bus_pb2.SessionSpec
    render: RenderSession
    frames: int  # frames sent in this epoch


class RendererStage:
    stage = "renderer"

    def __init__(self, core: RendererCore, bus: Bus) -> None:
        self.core = core
        self.bus = bus
        self._live: dict[str, tuple[int, _Live]] = {}

    async def _avatar(self, spec: bus_pb2.SessionSpec):
        avatar = await asyncio.to_thread(self.core.avatar, spec.avatar_id)
        if avatar is not None:
            return avatar
        from services.orchestrator.avatars import source_key

        raw = await self.bus.get_state(source_key(self.bus, spec.tenant_id, spec.avatar_id))
        if raw is None:
            return None
        req = renderer_pb2.RegisterSourceRequest()
        req.ParseFromString(raw)
        avatar, _ = await asyncio.to_thread(self.core.register, req.media, req.filename or None,
                                            crop_settings(req.crop), req.tenant_id)
        return avatar

    async def _open(self, sid: str, spec: bus_pb2.SessionSpec, frames: int) -> _Live:
        avatar = await self._avatar(spec)
        if avatar is None:
            raise LookupError(f"avatar '{spec.avatar_id}' is unknown to the renderer; register it again")
        return _Live(spec, self.core.open(avatar, spec.output), frames)

    async def _load(self, sid: str, raw: bytes | None) -> _Live | None:
        if not raw:
            return None
        st = codec.unpack(raw)
        frames = int(st["frames"])
        cached = self._live.get(sid)
        if cached is not None and cached[0] == frames:
            return cached[1]
        spec = bus_pb2.SessionSpec()
        spec.ParseFromString(bytes(st["spec"]))
        return await self._open(sid, spec, frames)

    def _save(self, sid: str, live: _Live) -> bytes:
        self._live[sid] = (live.frames, live)
        return codec.pack({"spec": np.frombuffer(live.spec.SerializeToString(), np.uint8), "frames": live.frames})

    async def process(self, items: Sequence[WorkItem]) -> list[WorkResult]:
        results = [WorkResult() for _ in items]
        lives: dict[int, _Live] = {}
        jobs: list[tuple[int, common_pb2.KeypointFrames, np.ndarray, np.ndarray, list[int]]] = []
        for i, item in enumerate(items):
            e, res, sid = item.entry, results[i], item.entry.session_id
            try:
                if e.kind == bus_pb2.ENTRY_KIND_START:
                    lives[i] = await self._open(sid, stage.session_spec(item), 0)
                    continue
                live = await self._load(sid, item.state)
                if live is None:
                    stage.state_lost(item, res, "renderer")
                    continue
                lives[i] = live
                if e.kind == bus_pb2.ENTRY_KIND_DATA:
                    meta = common_pb2.KeypointFrames()
                    meta.ParseFromString(e.meta)
                    t = codec.unnamed(e.tensors)
                    x_s, x_d = np.asarray(t["x_s"], np.float32), np.asarray(t["x_d"], np.float32)
                    src = [int(v) for v in t["source_index"]]
                    if x_s.shape != x_d.shape or len(src) != len(x_d) or max(src, default=0) >= \
                            live.render.avatar.num_frames:
                        raise ValueError(f"keypoints {x_s.shape} / {x_d.shape} / {len(src)} source indices disagree")
                    jobs.append((i, meta, x_s, x_d, src))
                elif e.kind == bus_pb2.ENTRY_KIND_INTERRUPT:
                    live.frames = 0  # the new epoch counts from 0; a new encoder starts with a key frame
                    live.render = self.core.open(live.render.avatar, live.spec.output)
                    # tells the orchestrator the interrupted epochs' entries have all passed (its credits)
                    res.outputs.append(Output(FRAMES, bus_pb2.ENTRY_KIND_INTERRUPT, {}, b""))
                elif e.kind == bus_pb2.ENTRY_KIND_END:
                    live.render.encoder.flush()
                    res.outputs.append(stage.forward(item, FRAMES))
                elif e.kind == bus_pb2.ENTRY_KIND_CLOSE:
                    res.close = True
                    self._live.pop(sid, None)
            except (LookupError, ValueError, MediaError, NoFaceError) as err:
                res.outputs.append(stage.error(grpc.StatusCode.FAILED_PRECONDITION, f"renderer: {err}"))
                res.close = True
                lives.pop(i, None)
        if jobs:
            sessions = [lives[i].render for i, *_ in jobs]

            def render_and_encode() -> list[list[tuple[bytes, int, int]]]:
                # networks, paste-back and encoding all in the worker thread: none of it on the event loop
                images = self.core.render_many([(r, x_s, x_d, src) for r, (_, _, x_s, x_d, src)
                                                in zip(sessions, jobs, strict=True)])
                return [[(r.encoder.encode(img), img.shape[0], img.shape[1]) for img in imgs]
                        for r, imgs in zip(sessions, images, strict=True)]

            encoded = await asyncio.to_thread(render_and_encode)
            for (i, meta, _, _, _), frames in zip(jobs, encoded, strict=True):
                live = lives[i]
                for k, (data, h, w) in enumerate(frames):
                    fm = bus_pb2.FrameMeta(index=meta.first_frame + k, width=w, height=h,
                                           encoding=cast(common_pb2.FrameEncoding, int(live.render.encoder.encoding)),
                                           idle=meta.idle)
                    results[i].outputs.append(Output(FRAMES, bus_pb2.ENTRY_KIND_DATA,
                                                     {"frame": np.frombuffer(data, np.uint8)},
                                                     fm.SerializeToString()))
                live.frames += len(frames)
        for i, live in lives.items():
            if not results[i].close:
                results[i].state = self._save(items[i].entry.session_id, live)
        return results
