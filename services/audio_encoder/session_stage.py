"""The audio encoder as a `ditto.stage_runtime.SessionStage`: audio chunks of many sessions -> one batched HuBERT
call -> features.

A session is a `StreamingEncoder` (resampler and window tails, counters), checkpointed after every chunk so a worker
that takes the slot over resumes the stream exactly. START, CONTROL and CLOSE pass on to the motion stage in order;
INTERRUPT drops the buffered audio of the old epoch. START and INTERRUPT carry the features of silence the motion
stage's window buffer starts with.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from ditto import codec, pipeline
from ditto.bus.worker import Output
from ditto.stage_runtime import forward, session_spec
from ditto_client.v1 import bus_pb2, common_pb2
from services.audio_encoder.encoder import SAMPLES_PER_FRAME, StreamingEncoder, encode_many
from services.audio_encoder.formats import AudioError, InputFormat, SampleFormat
from services.audio_encoder.hubert import HubertBackend

DEFAULT_OVERLAP = 70
_SAMPLE_FORMATS: dict[int, SampleFormat] = {
    common_pb2.SAMPLE_FORMAT_UNSPECIFIED: "pcm_s16le",
    common_pb2.SAMPLE_FORMAT_PCM_S16LE: "pcm_s16le",
    common_pb2.SAMPLE_FORMAT_FLOAT32LE: "float32le",
}


def input_format(msg: common_pb2.AudioFormat) -> InputFormat:
    """AudioFormat -> InputFormat; unset fields take PCM16 / 16 kHz / mono. Raises AudioError when out of range."""
    if msg.sample_format not in _SAMPLE_FORMATS:
        raise AudioError(f"unknown sample_format {msg.sample_format}; use PCM_S16LE or FLOAT32LE")
    return InputFormat(_SAMPLE_FORMATS[msg.sample_format], msg.sample_rate_hz or 16000, msg.channels or 1)


@dataclass
class AudioInput:
    """One session's part of a step: a chunk, or None for the end of its audio."""

    pcm: bytes | None
    idle: bool = False        # the orchestrator's idle silence, not the client's speech


# a step's answer for one session: its new features [n, 1024], or why its chunk was refused
AudioResult = np.ndarray | AudioError


class AudioEncoderStage:
    name = "audio_encoder"
    label = "audio encoder"
    input_errors: tuple[type[Exception], ...] = (AudioError,)
    input_error_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, backend: HubertBackend) -> None:
        self.backend = backend
        self.max_batch = backend.max_batch  # what the backend runs in one call: rounds never exceed it
        self.next = pipeline.active().next_of(self.name)  # the motion stage, as ditto.pipeline has it
        self.passthrough: str | None = self.next
        # one answer per overlap (the orchestrator allows 0..79 frames)
        self.silence_features = functools.lru_cache(maxsize=80)(self._silence_features)

    def new_session(self, fmt: common_pb2.AudioFormat) -> StreamingEncoder:
        return StreamingEncoder(None, input_format(fmt))

    def step(self, batch: Sequence[tuple[StreamingEncoder, AudioInput]]) -> list[AudioResult]:
        return encode_many(self.backend, [(enc, x.pcm) for enc, x in batch])

    # ---- the bus ----
    def _silence_features(self, frames: int) -> np.ndarray:
        """Features of `frames` x 640 zero samples: what the motion stage's window buffer starts with (the
        reference pre-fills it with HuBERT's answer to silence, not with zeros)."""
        enc = StreamingEncoder(self.backend, InputFormat("float32le", 16000, 1))
        zeros = np.zeros(frames * SAMPLES_PER_FRAME, np.float32)
        feats = np.concatenate([enc.push(zeros), enc.end()])[:frames]
        return np.ascontiguousarray(feats, dtype=np.float32)

    async def _with_prefill(self, entry: bus_pb2.StreamEntry, overlap: int) -> Output:
        out = forward(entry, self.next)
        if overlap > 0:
            out.tensors["prefill"] = await asyncio.to_thread(self.silence_features, overlap)
        return out

    async def open(self, spec: bus_pb2.SessionSpec, entry: bus_pb2.StreamEntry
                   ) -> tuple[StreamingEncoder, list[Output]]:
        enc = self.new_session(spec.audio_format)
        return enc, [await self._with_prefill(entry, spec.overlap or DEFAULT_OVERLAP)]

    async def restore(self, state: bytes) -> StreamingEncoder:
        return StreamingEncoder.from_state_bytes(state, None)

    def state(self, session: StreamingEncoder) -> bytes:
        return session.state_bytes()

    def data(self, session: StreamingEncoder, entry: bus_pb2.StreamEntry) -> AudioInput:
        meta = bus_pb2.AudioMeta()
        meta.ParseFromString(entry.meta)
        return AudioInput(codec.unnamed(entry.tensors)["pcm"].tobytes(), meta.idle)

    def end(self, session: StreamingEncoder, entry: bus_pb2.StreamEntry) -> AudioInput:
        return AudioInput(None)

    def emit(self, session: StreamingEncoder, entry: bus_pb2.StreamEntry, step_input: AudioInput,
             result: AudioResult) -> list[Output]:
        if isinstance(result, AudioError):
            raise result
        first = session.frames_out - len(result)
        # the stream ends with exactly the real frames (what `ditto features` writes too): ceil(16 kHz samples / 640)
        feats = session.trim_final(result) if step_input.pcm is None else result
        outputs = []
        if len(feats):
            chunk = common_pb2.FeatureChunk(first_frame=first, idle=step_input.idle)
            outputs.append(Output(self.next, bus_pb2.ENTRY_KIND_DATA, {"features": np.asarray(feats)},
                                  chunk.SerializeToString()))
        if step_input.pcm is None:
            outputs.append(forward(entry, self.next))  # END after the last features
        return outputs

    def control(self, session: StreamingEncoder, entry: bus_pb2.StreamEntry) -> list[Output]:
        return [forward(entry, self.next)]

    async def interrupt(self, session: StreamingEncoder, entry: bus_pb2.StreamEntry
                        ) -> tuple[StreamingEncoder, list[Output]]:
        # the old audio is dropped; the orchestrator's INTERRUPT carries a SessionSpec with the session's overlap
        fresh = StreamingEncoder(None, session.format)
        return fresh, [await self._with_prefill(entry, session_spec(entry).overlap or DEFAULT_OVERLAP)]
