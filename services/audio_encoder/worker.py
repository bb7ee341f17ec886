"""The audio encoder's bus handler: audio chunks of many sessions -> one batched HuBERT call -> features.

Per session it checkpoints the `StreamingEncoder` state (resampler and window tails, counters) after every chunk,
so a worker that takes over the slot resumes the stream exactly. START, CONTROL and CLOSE entries pass through to
the motion stage in order; INTERRUPT drops the buffered audio of the old epoch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import numpy as np
from ditto_client.v1 import bus_pb2, common_pb2

from ditto import codec, stage
from ditto.bus.worker import Output, WorkItem, WorkResult
from services.audio_encoder.encoder import StreamingEncoder, encode_many
from services.audio_encoder.formats import AudioError, InputFormat
from services.audio_encoder.hubert import HubertBackend
from services.audio_encoder.server import input_format

NEXT = "motion_generator"
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps


class AudioStage:
    stage = "audio_encoder"

    def __init__(self, backend: HubertBackend) -> None:
        self.backend = backend
        self._prefill: dict[int, np.ndarray] = {}

    def silence_features(self, frames: int) -> np.ndarray:
        """Features of `frames` x 640 zero samples: what the motion stage's window buffer starts with (the
        reference pre-fills it with HuBERT's answer to silence, not with zeros)."""
        if frames not in self._prefill:
            enc = StreamingEncoder(self.backend, InputFormat("float32le", 16000, 1))
            zeros = np.zeros(frames * SAMPLES_PER_FRAME, np.float32)
            feats = np.concatenate([enc.push(zeros), enc.end()])[:frames]
            self._prefill[frames] = np.ascontiguousarray(feats, dtype=np.float32)
        return self._prefill[frames]

    async def _with_prefill(self, item: WorkItem, overlap: int) -> Output:
        out = stage.forward(item, NEXT)
        if overlap > 0:
            out.tensors["prefill"] = await asyncio.to_thread(self.silence_features, overlap)
        return out

    def _encoder(self, item: WorkItem) -> StreamingEncoder | None:
        return StreamingEncoder.from_state_bytes(item.state, None) if item.state else None

    async def process(self, items: Sequence[WorkItem]) -> list[WorkResult]:
        results = [WorkResult() for _ in items]
        pushes: list[tuple[int, StreamingEncoder, bytes | None, bool]] = []
        limits: dict[int, int] = {}
        for i, item in enumerate(items):
            e, res = item.entry, results[i]
            try:
                if e.kind == bus_pb2.ENTRY_KIND_START:
                    spec = stage.session_spec(item)
                    enc = StreamingEncoder(None, input_format(spec.audio_format))
                    res.state = enc.state_bytes()
                    res.outputs.append(await self._with_prefill(item, spec.overlap or 70))
                    continue
                loaded = self._encoder(item)
                if loaded is None:
                    stage.state_lost(item, res, "audio encoder")
                    continue
                enc = loaded
                if e.kind == bus_pb2.ENTRY_KIND_DATA:
                    meta = bus_pb2.AudioMeta()
                    meta.ParseFromString(e.meta)
                    pcm = codec.unnamed(e.tensors)["pcm"]
                    pushes.append((i, enc, pcm.tobytes(), meta.idle))
                elif e.kind == bus_pb2.ENTRY_KIND_END:
                    # the stream ends with exactly the real frames: ceil(16 kHz samples / 640), as the reference's
                    # num_f; the zero-padded last window would otherwise add a few
                    real = -(-enc.resampler.output_length(enc.resampler.consumed) // SAMPLES_PER_FRAME)
                    limits[i] = real
                    pushes.append((i, enc, None, False))
                elif e.kind == bus_pb2.ENTRY_KIND_INTERRUPT:
                    res.state = StreamingEncoder(None, enc.format).state_bytes()  # old audio is dropped
                    # the orchestrator's INTERRUPT carries a SessionSpec with the session's overlap
                    res.outputs.append(await self._with_prefill(item, stage.session_spec(item).overlap or 70))
                elif e.kind == bus_pb2.ENTRY_KIND_CLOSE:
                    res.outputs.append(stage.forward(item, NEXT))
                    res.close = True
                else:  # CONTROL and anything newer: pass through in order
                    res.outputs.append(stage.forward(item, NEXT))
            except AudioError as err:
                res.outputs.append(stage.error(grpc.StatusCode.INVALID_ARGUMENT, str(err)))
                res.close = True
        if pushes:
            feats = await asyncio.to_thread(encode_many, self.backend, [(enc, data) for _, enc, data, _ in pushes])
            for (i, enc, data, idle), f in zip(pushes, feats, strict=True):
                res = results[i]
                if isinstance(f, AudioError):
                    res.outputs.append(stage.error(grpc.StatusCode.INVALID_ARGUMENT, str(f)))
                    res.close = True
                    continue
                first = enc.frames_out - len(f)
                if i in limits:
                    f = f[:max(0, limits[i] - first)]
                if len(f):
                    chunk = common_pb2.FeatureChunk(first_frame=first, idle=idle)
                    res.outputs.append(Output(NEXT, bus_pb2.ENTRY_KIND_DATA, {"features": np.asarray(f)},
                                              chunk.SerializeToString()))
                if data is None:
                    res.outputs.append(stage.forward(items[i], NEXT))  # END after the last features
                res.state = enc.state_bytes()
        return results
