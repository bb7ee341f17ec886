"""The `ditto.v1.AudioEncoder` gRPC service: streamed audio in, 25 fps HuBERT features out.

Protocol of `Encode` (protos/ditto/v1/audio_encoder.proto): the client sends an `EncodeConfig` first (unset
fields mean PCM16, 16 kHz, mono), then audio chunks of any size, then `EndOfStream`. The server answers
`EncodeStarted`, a `FeatureChunk` whenever chunks complete 200 ms windows (5 frames each, `first_frame` counting
from the session start), and a final OK `Status` after the end. Bad audio or a protocol error ends that call with
INVALID_ARGUMENT and a message saying what was wrong; the server and every other call go on, and the client may
open a new call.

All concurrent calls share one backend through a `WindowBatcher`: windows that become ready at about the same time
in different sessions run as one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
from ditto_client.v1 import audio_encoder_pb2, audio_encoder_pb2_grpc, common_pb2

from ditto import codec, rpc
from services.audio_encoder.encoder import StreamingEncoder
from services.audio_encoder.formats import AudioError, InputFormat, SampleFormat
from services.audio_encoder.hubert import HubertBackend
from services.audio_encoder.windows import ENCODER_FRAMES, FEATURE_DIM

FPS = 25
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


class WindowBatcher:
    """Dynamic batching across sessions: callers await `encode(windows)`; one task gathers what is queued (up to
    `max_batch` windows, waiting at most `max_wait_ms` for more) and runs the backend once, off the event loop."""

    def __init__(self, backend: HubertBackend, max_batch: int = 16, max_wait_ms: float = 5.0) -> None:
        self.backend, self.max_batch, self.max_wait = backend, max_batch, max_wait_ms / 1000.0
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batch_sizes: list[int] = []  # windows per backend call, for tests and metrics

    async def encode(self, windows: np.ndarray) -> np.ndarray:
        if not len(windows):
            return np.zeros((0, ENCODER_FRAMES, FEATURE_DIM), np.float32)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put((windows, future))
        return await future

    async def _gather(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        count = len(batch[0][0])
        deadline = loop.time() + self.max_wait
        while count < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(item)
            count += len(item[0])
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            windows = np.concatenate([w for w, _ in batch])
            self.batch_sizes.append(len(windows))
            try:
                encoding = await asyncio.to_thread(self.backend.encode_windows, windows)
            except Exception as err:  # a backend failure fails the calls in this batch, not the server
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            pos = 0
            for w, future in batch:
                if not future.done():
                    future.set_result(encoding[pos:pos + len(w)])
                pos += len(w)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


def _features_message(first_frame: int, feats: np.ndarray) -> audio_encoder_pb2.EncodeResponse:
    return audio_encoder_pb2.EncodeResponse(
        features=common_pb2.FeatureChunk(first_frame=first_frame, features=codec.to_proto(feats)))


class AudioEncoderServicer(audio_encoder_pb2_grpc.AudioEncoderServicer):
    def __init__(self, batcher: WindowBatcher) -> None:
        self.batcher = batcher

    async def Encode(self, request_iterator: AsyncIterator[audio_encoder_pb2.EncodeRequest],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[audio_encoder_pb2.EncodeResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("event") != "config":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message of Encode must be an EncodeConfig with the audio format")
            return
        try:
            enc = StreamingEncoder(None, input_format(first.config.format))
        except AudioError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad audio format: {err}")
            return
        yield audio_encoder_pb2.EncodeResponse(started=audio_encoder_pb2.EncodeStarted(
            feature_dim=FEATURE_DIM, fps=FPS, backend=self.batcher.backend.name))
        async for request in request_iterator:
            kind = request.WhichOneof("event")
            if kind == "audio":
                try:
                    windows = enc.feed(request.audio)
                except AudioError as err:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"bad audio chunk after frame {enc.frames_out}: {err}")
            elif kind == "end":
                break
            else:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"unexpected {kind or 'empty'} message: send audio chunks, then end")
            if len(windows):
                first_frame = enc.frames_out
                yield _features_message(first_frame, enc.features(await self.batcher.encode(windows)))
        # end of audio (EndOfStream, or the client half-closed without one): flush the last windows
        windows = enc.finish()
        if len(windows):
            first_frame = enc.frames_out
            yield _features_message(first_frame, enc.features(await self.batcher.encode(windows)))
        yield audio_encoder_pb2.EncodeResponse(final=common_pb2.Status(code=0, message="ok"))


async def start(backend: HubertBackend, host: str = "127.0.0.1", port: int = 0, max_batch: int = 16,
                max_wait_ms: float = 5.0) -> tuple[rpc.RunningServer, WindowBatcher]:
    """Start the AudioEncoder service (with health and reflection) on `host:port`; port 0 picks a free one."""
    batcher = WindowBatcher(backend, max_batch, max_wait_ms)
    service = rpc.Service(audio_encoder_pb2_grpc.add_AudioEncoderServicer_to_server, AudioEncoderServicer(batcher),
                          rpc.service_name(audio_encoder_pb2, "AudioEncoder"))
    return await rpc.start_server([service], host, port), batcher
