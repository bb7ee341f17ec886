"""Offline jobs: one whole audio file -> an MP4 (H.264 + the file's audio as AAC), or with a transparent
background a WebM (VP9 with alpha + the audio as Opus); a green background is an MP4 of the person on green.

The same session machinery as a live Converse, with no pacing and no idle feed: the audio goes through the stage
workers as fast as credits allow and the frames are written as they come. `ditto render` runs this over the
in-memory bus in one process; the `Render` RPC runs it over whatever bus the server uses.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np

from ditto.media import MediaError, MediaTooLong, short
from ditto.media.audio import DecodedAudio
from ditto.pipeline import FPS
from ditto_client.v1 import avatar_pb2, common_pb2
from services.orchestrator.errors import ApiError
from services.orchestrator.tenants import Tenant
from services.orchestrator.validation import check_id, check_name

CHUNK_S = 0.2


async def decode_render_audio(orch, request: avatar_pb2.RenderRequest) -> DecodedAudio:
    """The Render file as 16 kHz mono float (what the features need) plus the AAC track of the MP4, decoded in one
    of the server's decoder helper processes: a file that crashes FFmpeg, or needs more memory or time than the
    helper's limits, fails this job with INVALID_ARGUMENT and nothing else."""
    if not request.audio:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "audio is empty; send a whole audio file")
    max_seconds = float(orch.settings.max_render_audio_s)
    what = f"'{short(request.audio_filename)}'" if request.audio_filename else "the audio"
    try:
        async with orch.heavy:
            decoded: DecodedAudio = await orch.decoder.run_async("decode_for_render", request.audio, what,
                                                                 max_seconds)
    except MediaTooLong as err:
        how = f"lasts {err.seconds:.0f} s" if err.from_header else "lasts longer than that"
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"the audio {how}; one Render job takes at most {max_seconds:g} s "
                       "(DITTO_MAX_RENDER_AUDIO_S): split it, or stream it with Converse") from err
    except MediaError as err:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err
    return decoded


async def run_render(orch, tenant: Tenant, request: avatar_pb2.RenderRequest, mp4_path: Path,
                     progress: Callable[[int, int], None] | None = None) -> int:
    """Render `request` into `mp4_path`; returns the number of frames written. Cancelling it (the client left)
    stops the job and releases its session, quota and placement before it returns."""
    from ditto.media.writers import Mp4Writer, WebmAlphaWriter
    from services.orchestrator.guard import in_thread

    check_id(request.avatar_id, "avatar_id")
    check_name(request.audio_filename, "audio_filename")
    limit_bytes = orch.settings.max_render_audio_bytes
    if len(request.audio) > limit_bytes:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"audio file of {len(request.audio)} bytes exceeds the limit of {limit_bytes} bytes "
                       "(DITTO_MAX_RENDER_AUDIO_BYTES); compress it (e.g. Opus) or stream it with Converse")
    decoded = await decode_render_audio(orch, request)
    samples, rate = decoded.samples, decoded.sample_rate
    seconds = decoded.seconds
    total = math.ceil(seconds * FPS)
    config = avatar_pb2.SessionConfig(
        avatar_id=request.avatar_id,
        audio_format=common_pb2.AudioFormat(sample_format=common_pb2.SAMPLE_FORMAT_FLOAT32LE, sample_rate_hz=rate,
                                            channels=samples.shape[1]),
        output=common_pb2.OutputOptions(encoding=common_pb2.FRAME_ENCODING_RAW_RGB, paste_back=True,
                                        background=request.background),
        emotion=request.emotion, controls=request.controls, idle_policy=avatar_pb2.IDLE_POLICY_FREEZE,
        sampling_steps=request.sampling_steps, seed=request.seed)
    session = await orch.open_session(tenant, config, offline=True)
    writer: Mp4Writer | None = None
    feeder: asyncio.Task | None = None
    writing: asyncio.Future | None = None  # the frame being encoded, in its worker thread
    written = 0
    try:
        if request.timed_controls:
            await session.control(avatar_pb2.ControlUpdate(controls=request.timed_controls))
        step = max(1, int(rate * CHUNK_S))

        async def feed() -> None:
            for start in range(0, samples.shape[0], step):
                await session.audio(samples[start:start + step].tobytes())
            await session.end_of_audio()

        feeder = asyncio.create_task(feed())
        while True:
            msg = await session.next_outgoing()
            if msg is None:
                break
            kind = msg.WhichOneof("kind")
            if kind == "frame":
                f = msg.frame
                frame = np.frombuffer(f.data, dtype=np.uint8).reshape(f.height, f.width, -1)
                if writer is None:
                    kind_of = WebmAlphaWriter if frame.shape[2] == 4 else Mp4Writer
                    writer = kind_of(mp4_path, f.width, f.height, fps=FPS, audio_track=decoded.aac_track)
                # H.264 encoding, off the event loop. Shielded: a cancel (the client left) must not leave the encode
                # running in its thread while close() runs in another -- two threads in one encoder hang both
                writing = asyncio.ensure_future(in_thread(orch.heavy, writer.write, frame))
                await asyncio.shield(writing)
                session.taken(msg)
                written += 1
                if progress:
                    progress(written, total)
        await feeder
        if session.final and session.final[0] != grpc.StatusCode.OK:
            raise ApiError(session.final[0], session.final[1])
    finally:
        # one place releases everything, whichever way the job ends (error, client cancel, server stop)
        if feeder is not None and not feeder.done():
            feeder.cancel()
        await orch.close_session(session)
        if feeder is not None:
            await asyncio.gather(feeder, return_exceptions=True)
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)  # the last encode finishes before close()
        if writer is not None:
            await asyncio.to_thread(writer.close)
    return written


async def render_job(orch, tenant: Tenant, request: avatar_pb2.RenderRequest
                     ) -> AsyncIterator[avatar_pb2.RenderResponse]:
    """The Render RPC: progress messages while rendering, then the MP4 in chunks, then a final status. When the
    client leaves, the job is cancelled and awaited before its temporary folder goes."""
    queue: asyncio.Queue = asyncio.Queue()

    def progress(done: int, total: int) -> None:
        if done % 25 == 0 or done == total:
            queue.put_nowait(avatar_pb2.RenderResponse(progress=avatar_pb2.RenderProgress(frames_done=done,
                                                                                          frames_total=total)))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.mp4"
        task = asyncio.create_task(run_render(orch, tenant, request, path, progress))
        try:
            while not task.done() or not queue.empty():
                try:
                    yield await asyncio.wait_for(queue.get(), 0.2)
                except TimeoutError:
                    continue
            frames = task.result()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield avatar_pb2.RenderResponse(mp4_chunk=chunk)
            yield avatar_pb2.RenderResponse(final=avatar_pb2.FinalStatus(status=common_pb2.Status(code=0),
                                                                         frames_sent=frames))
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its own finally releases the session
