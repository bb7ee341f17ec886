"""The `ditto.v1.AudioEncoder` gRPC service: streamed audio in, 25 fps HuBERT features out.

Protocol of `Encode` (protos/ditto/v1/audio_encoder.proto): the client sends an `EncodeConfig` first (unset
fields mean PCM16, 16 kHz, mono), then audio chunks of any size, then `EndOfStream`. The server answers
`EncodeStarted`, a `FeatureChunk` whenever chunks complete 200 ms windows (5 frames each, `first_frame` counting
from the session start), and a final OK `Status` after the end. Bad audio or a protocol error ends that call with
INVALID_ARGUMENT and a message saying what was wrong; the server and every other call go on, and the client may
open a new call.

All concurrent calls and the bus sessions of this worker share one backend: their chunks go through the stage's
`ditto.stage_runtime.MicroBatcher`, so windows that become ready at about the same time run as one batch. When its
queue is full a call ends with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np

from ditto import codec, rpc
from ditto.pipeline import FPS
from ditto.stage_runtime import MicroBatcher, run_for_call
from ditto_client.v1 import audio_encoder_pb2, audio_encoder_pb2_grpc, common_pb2
from services.audio_encoder.encoder import StreamingEncoder
from services.audio_encoder.formats import AudioError
from services.audio_encoder.hubert import HubertBackend
from services.audio_encoder.session_stage import AudioEncoderStage, AudioInput, AudioResult
from services.audio_encoder.windows import FEATURE_DIM

AudioBatcher = MicroBatcher[tuple[StreamingEncoder, AudioInput], AudioResult]


def _features_message(first_frame: int, feats: np.ndarray) -> audio_encoder_pb2.EncodeResponse:
    return audio_encoder_pb2.EncodeResponse(
        features=common_pb2.FeatureChunk(first_frame=first_frame, features=codec.to_proto(feats)))


class AudioEncoderServicer(audio_encoder_pb2_grpc.AudioEncoderServicer):
    def __init__(self, stage: AudioEncoderStage, batcher: AudioBatcher) -> None:
        self.stage, self.batcher = stage, batcher

    async def Encode(self, request_iterator: AsyncIterator[audio_encoder_pb2.EncodeRequest],  # noqa: N802
                     context: grpc.aio.ServicerContext) -> AsyncIterator[audio_encoder_pb2.EncodeResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("event") != "config":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message of Encode must be an EncodeConfig with the audio format")
            return
        try:
            enc = self.stage.new_session(first.config.format)
        except AudioError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad audio format: {err}")
            return
        yield audio_encoder_pb2.EncodeResponse(started=audio_encoder_pb2.EncodeStarted(
            feature_dim=FEATURE_DIM, fps=FPS, backend=self.stage.backend.name))
        async for request in request_iterator:
            kind = request.WhichOneof("event")
            if kind == "end":
                break
            if kind != "audio":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"unexpected {kind or 'empty'} message: send audio chunks, then end")
            feats = await self._features(enc, request.audio, context)
            if len(feats):
                yield _features_message(enc.frames_out - len(feats), feats)
        # end of audio (EndOfStream, or the client half-closed without one): flush the last windows
        feats = await self._features(enc, None, context)
        if len(feats):
            yield _features_message(enc.frames_out - len(feats), feats)
        yield audio_encoder_pb2.EncodeResponse(final=common_pb2.Status(code=0, message="ok"))

    async def _features(self, enc: StreamingEncoder, pcm: bytes | None, context: grpc.aio.ServicerContext
                        ) -> np.ndarray:
        """The features a chunk (None: the end) completes, through the stage's batcher."""
        feats = await run_for_call(self.batcher, (enc, AudioInput(pcm)), context)
        if isinstance(feats, AudioError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad audio chunk after frame {enc.frames_out}: "
                                                                  f"{feats}")
            raise feats  # unreachable: abort raises
        return feats


def service(stage: AudioEncoderStage, batcher: AudioBatcher) -> rpc.Service:
    return rpc.Service(audio_encoder_pb2_grpc.add_AudioEncoderServicer_to_server, AudioEncoderServicer(stage, batcher),
                       rpc.service_name(audio_encoder_pb2, "AudioEncoder"))


async def start(backend: HubertBackend, host: str = "127.0.0.1", port: int = 0,
                max_wait_ms: float = 5.0) -> tuple[rpc.RunningServer, AudioBatcher]:
    """Start the AudioEncoder service (with health and reflection) on `host:port`; port 0 picks a free one."""
    stage = AudioEncoderStage(backend)
    batcher: AudioBatcher = MicroBatcher(stage.step, stage.label, stage.max_batch, max_wait_ms, stage=stage.name)
    return await rpc.start_server([service(stage, batcher)], host, port), batcher
