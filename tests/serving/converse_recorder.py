"""What a client and the service said to each other in Converse, taken on the wire: a gRPC proxy on a loopback port
in front of the service records every request and response of every Converse call it forwards. From the record
follows which of the client's samples drove each frame, by the service's own rules (frame k of an epoch shows the
epoch's samples [k*640, (k+1)*640) after the frames easing back to rest), independently of what the client computed.

The adapters (WebRTC gateway, voice-agent bridge) are pointed at the proxy; tests compare the speech they hand out
with each frame against `ConverseRecord.audio_of`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import grpc
import numpy as np

from ditto import rpc
from ditto.pipeline import REST_FRAMES  # the service's own number: the truth to test by
from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

FRAME_SAMPLES = 640  # 40 ms at 16 kHz
BURST_AMPLITUDE = 8000
BURST_RMS = BURST_AMPLITUDE / np.sqrt(2)


def tone_bursts(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Speech whose every 40 ms tells apart from its neighbours': bursts of a 600 Hz tone and gaps of silence, each
    80 to 280 ms long, in an irregular order (no period a misplaced frame could hide in). PCM16 mono."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    on = np.zeros(n, dtype=bool)
    position, burst = 0, True
    while position < n:
        length = int(rng.choice([80, 120, 160, 200, 280])) * rate // 1000
        on[position:position + length] = burst
        position, burst = position + length, not burst
    tone = np.sin(2 * np.pi * 600 * np.arange(n) / rate) * BURST_AMPLITUDE
    return np.where(on, tone, 0).astype(np.int16)


def frame_rms(samples: np.ndarray, rate: int) -> float:
    """The RMS of speech over one frame's 40 ms (samples missing from the 40 ms count as silence)."""
    power = float(np.sum(samples.astype(np.float64) ** 2))
    return float(np.sqrt(power / (rate // 25)))


@dataclass
class ConverseRecord:
    requests: list[avatar_pb2.ConverseRequest] = field(default_factory=list)
    responses: list[avatar_pb2.ConverseResponse] = field(default_factory=list)

    def epoch_audio(self) -> dict[int, np.ndarray]:
        """The 16 kHz mono PCM the service got in each epoch (an Interrupt starts the next one)."""
        parts: dict[int, list[bytes]] = {0: []}
        epoch = 0
        for r in list(self.requests):
            kind = r.WhichOneof("kind")
            if kind == "interrupt":
                epoch += 1
                parts[epoch] = []
            elif kind == "audio":
                parts[epoch].append(r.audio.data)
        return {e: np.frombuffer(b"".join(p), "<i2") for e, p in parts.items()}

    def frames(self) -> list[avatar_pb2.VideoFrame]:
        return [m.frame for m in list(self.responses) if m.WhichOneof("kind") == "frame"]

    def epoch_base(self) -> dict[int, int]:
        base = {0: 0}
        for m in list(self.responses):
            if m.WhichOneof("kind") == "event" and m.event.WhichOneof("event") == "interrupted":
                base[m.event.interrupted.new_epoch] = m.event.interrupted.last_frame_index + 1
        return base

    def audio_of(self, frame: avatar_pb2.VideoFrame) -> np.ndarray | None:
        """The 640 samples (16 kHz) that drove this frame, or None for a frame easing back to rest after an
        interrupt (it shows no audio)."""
        rel = frame.index - self.epoch_base()[frame.epoch]
        if frame.epoch > 0:
            if rel < REST_FRAMES:
                return None
            rel -= REST_FRAMES
        audio = self.epoch_audio()[frame.epoch]
        return audio[rel * FRAME_SAMPLES:(rel + 1) * FRAME_SAMPLES]


class ConverseRecorder(avatar_pb2_grpc.AvatarServicer):
    """Forwards Converse to `upstream` (the API key goes along) and records both directions of every call."""

    def __init__(self, upstream: str) -> None:
        self.channel = grpc.aio.insecure_channel(upstream, options=rpc.channel_options())
        self.stub = avatar_pb2_grpc.AvatarStub(self.channel)
        self.calls: list[ConverseRecord] = []

    async def Converse(self, request_iterator, context):  # noqa: N802 - the RPC's name
        record = ConverseRecord()
        self.calls.append(record)

        async def requests():
            async for r in request_iterator:
                record.requests.append(r)
                yield r

        metadata = tuple((k, v) for k, v in context.invocation_metadata() if k == "x-api-key")
        call = self.stub.Converse(requests(), metadata=metadata)
        try:
            async for m in call:
                record.responses.append(m)
                yield m
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), err.details() or "")
        finally:
            call.cancel()


@contextlib.asynccontextmanager
async def converse_recorder(upstream: str):
    """The recording proxy on a loopback port; yields it (`.address` is where clients connect)."""
    recorder = ConverseRecorder(upstream)
    server = grpc.aio.server(options=rpc.channel_options())
    avatar_pb2_grpc.add_AvatarServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    recorder.address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        yield recorder
    finally:
        await server.stop(0)
        await recorder.channel.close()
