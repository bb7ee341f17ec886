"""The motion stage's bus handler: features of many sessions -> MotionDiT windows in one batched forward ->
controlled keypoints for the renderer.

Per session it checkpoints the `MotionSession` state (window buffers, conditioning frame, blink schedule, control
timeline) plus the last keypoints it sent, so a worker that takes over resumes with identical frames. On INTERRUPT
the face eases from the last frame sent back to the source pose over `REST_FRAMES` frames, then a fresh stream
starts (the orchestrator feeds idle silence or new speech).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from ditto_client.v1 import bus_pb2, common_pb2

from ditto import codec, stage
from ditto.bus.worker import Output, WorkItem, WorkResult
from services.motion_generator.generator import KeypointBatch, MotionGenerator, MotionSession
from services.motion_generator.protocol import avatar_from_proto, controls_from_proto, settings_from_proto

NEXT = "renderer"
REST_FRAMES = 8  # 320 ms back to rest after an interrupt


@dataclass
class _Live:
    spec: bus_pb2.SessionSpec
    session: MotionSession
    offset: int                # frame index of the session's frame 0 within the epoch
    last_xs: np.ndarray | None
    last_xd: np.ndarray | None


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
    stage = "motion_generator"

    def __init__(self, generator: MotionGenerator, v_min_max: np.ndarray | None = None) -> None:
        self.generator = generator
        self.v_min_max = v_min_max  # per-dimension clamp of generated motion [2, 265] (None = none)
        self._cache: dict[str, tuple[int, _Live]] = {}  # session -> (hash of its last checkpoint, live objects)

    # ---- state ----
    def _new(self, spec: bus_pb2.SessionSpec, offset: int = 0, last_xs: Any = None, last_xd: Any = None,
             prefill: np.ndarray | None = None) -> _Live:
        settings = settings_from_proto(spec.sampling_steps, spec.overlap, spec.seed, spec.emotion, spec.controls)
        settings.v_min_max = self.v_min_max
        settings.prefill = prefill
        session = self.generator.session(avatar_from_proto(spec.avatar), settings)
        return _Live(spec, session, offset, last_xs, last_xd)

    def _load(self, sid: str, raw: bytes | None) -> _Live | None:
        if not raw:
            return None
        cached = self._cache.get(sid)
        if cached is not None and cached[0] == hash(raw):
            return cached[1]
        st = codec.unpack(raw)
        spec = bus_pb2.SessionSpec()
        spec.ParseFromString(bytes(st.pop("spec")))
        live = self._new(spec, int(st.pop("offset")), st.pop("last_xs", None), st.pop("last_xd", None))
        live.session.load_state_dict({k[8:]: v for k, v in st.items() if k.startswith("session.")})
        return live

    def _save(self, sid: str, live: _Live) -> bytes:
        st: dict[str, Any] = {f"session.{k}": v for k, v in live.session.state_dict().items()}
        st["spec"] = np.frombuffer(live.spec.SerializeToString(), np.uint8)
        st["offset"] = live.offset
        if live.last_xd is not None:
            st["last_xs"], st["last_xd"] = live.last_xs, live.last_xd
        raw = codec.pack(st)
        self._cache[sid] = (hash(raw), live)
        return raw

    # ---- outputs ----
    def _frames(self, live: _Live, batch: KeypointBatch, idle: bool) -> list[Output]:
        if not len(batch):
            return []
        live.last_xs, live.last_xd = batch.x_s[-1].copy(), batch.x_d[-1].copy()
        meta = common_pb2.KeypointFrames(first_frame=live.offset + batch.first_frame, idle=idle)
        return [Output(NEXT, bus_pb2.ENTRY_KIND_DATA,
                       {"x_s": batch.x_s.astype(np.float32), "x_d": batch.x_d.astype(np.float32),
                        "source_index": batch.source_index.astype(np.int64)}, meta.SerializeToString())]

    def _interrupt(self, live: _Live, prefill: np.ndarray | None) -> tuple[_Live, list[Output]]:
        outputs: list[Output] = []
        n = 0
        if live.last_xd is not None:
            # x_s is the source's own keypoints for that frame: the face at rest
            rest = ease_to_rest(np.asarray(live.last_xs, np.float32), live.last_xd, REST_FRAMES)
            xs = np.repeat(np.asarray(live.last_xs, np.float32)[None], REST_FRAMES, 0)
            meta = common_pb2.KeypointFrames(first_frame=0, idle=True)
            outputs.append(Output(NEXT, bus_pb2.ENTRY_KIND_DATA,
                                  {"x_s": xs, "x_d": rest, "source_index": np.zeros(REST_FRAMES, np.int64)},
                                  meta.SerializeToString()))
            n = REST_FRAMES
        fresh = self._new(live.spec, offset=n, last_xs=live.last_xs, last_xd=None if not n else rest[-1],
                          prefill=prefill)
        return fresh, outputs

    # ---- the handler ----
    async def process(self, items: Sequence[WorkItem]) -> list[WorkResult]:
        results = [WorkResult() for _ in items]
        lives: dict[int, _Live] = {}
        to_run: list[tuple[int, bool]] = []
        to_end: list[int] = []
        for i, item in enumerate(items):
            e, res, sid = item.entry, results[i], item.entry.session_id
            try:
                if e.kind == bus_pb2.ENTRY_KIND_START:
                    lives[i] = self._new(stage.session_spec(item), prefill=codec.unnamed(e.tensors).get("prefill"))
                    res.outputs.append(Output(NEXT, e.kind, {}, e.meta))
                    continue
                live = self._load(sid, item.state)
                if live is None:
                    stage.state_lost(item, res, "motion stage")
                    continue
                lives[i] = live
                if e.kind == bus_pb2.ENTRY_KIND_DATA:
                    chunk = common_pb2.FeatureChunk()
                    chunk.ParseFromString(e.meta)
                    live.session.stream.push(np.asarray(codec.unnamed(e.tensors)["features"], np.float32))
                    to_run.append((i, chunk.idle))
                elif e.kind == bus_pb2.ENTRY_KIND_CONTROL:
                    spec = bus_pb2.ControlSpec()
                    spec.ParseFromString(e.meta)
                    if spec.has_overall:
                        live.session.control(controls_from_proto(spec.overall))
                    for tc in spec.timed:
                        start = max(0, tc.start_frame - live.offset)
                        end = (tc.end_frame - live.offset) if tc.end_frame else None
                        live.session.control(controls_from_proto(tc.controls), start, end)
                elif e.kind == bus_pb2.ENTRY_KIND_END:
                    to_end.append(i)
                elif e.kind == bus_pb2.ENTRY_KIND_INTERRUPT:
                    lives[i], outs = self._interrupt(live, codec.unnamed(e.tensors).get("prefill"))
                    res.outputs.append(Output(NEXT, e.kind, {}, e.meta))
                    res.outputs.extend(outs)
                elif e.kind == bus_pb2.ENTRY_KIND_CLOSE:
                    res.outputs.append(stage.forward(item, NEXT))
                    res.close = True
                    self._cache.pop(sid, None)
                else:
                    res.outputs.append(stage.forward(item, NEXT))
            except (ValueError, KeyError) as err:
                res.outputs.append(stage.error(grpc.StatusCode.INVALID_ARGUMENT, f"motion stage: {err}"))
                res.close = True
                lives.pop(i, None)
        if to_run:
            batches = await asyncio.to_thread(self.generator.run, [lives[i].session for i, _ in to_run])
            for (i, idle), batch in zip(to_run, batches, strict=True):
                results[i].outputs.extend(self._frames(lives[i], batch, idle))
        for i in to_end:
            batch = await asyncio.to_thread(lives[i].session.end)
            results[i].outputs.extend(self._frames(lives[i], batch, False))
            results[i].outputs.append(stage.forward(items[i], NEXT))
        for i, live in lives.items():
            if not results[i].close:
                results[i].state = self._save(items[i].entry.session_id, live)
        return results
