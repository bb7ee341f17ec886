"""Session limits end a session with a clear status: idle timeout (no client message), maximum duration; keep-alive
messages hold an idle session open."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from serving_helpers import config, embedded_service, portrait_png

from ditto_client.v1 import avatar_pb2


async def _avatar(stub) -> str:
    return (await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png()))).avatar_id


async def _run(stub, cfg, messages_every_s: float | None, total_s: float):
    async def gen():
        yield avatar_pb2.ConverseRequest(config=cfg)
        t = 0.0
        while t < total_s:
            await asyncio.sleep(messages_every_s or total_s)
            t += messages_every_s or total_s
            if messages_every_s:
                yield avatar_pb2.ConverseRequest(keep_alive=avatar_pb2.KeepAlive())
        yield avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio())

    call = stub.Converse(gen())
    last = None
    try:
        async for msg in call:
            last = msg
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details(), last
    return await call.code(), await call.details(), last


async def test_idle_timeout_ends_a_silent_session_and_keep_alive_prevents_it():
    async with embedded_service() as (stub, _):
        avatar_id = await _avatar(stub)
        code, details, last = await asyncio.wait_for(
            _run(stub, config(avatar_id, idle_timeout_s=1), None, 4.0), 30)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "KeepAlive" in details
        assert last is not None and last.WhichOneof("kind") == "final" and last.final.status.code == code.value[0]
        code, details, _ = await asyncio.wait_for(_run(stub, config(avatar_id, idle_timeout_s=1), 0.3, 2.5), 30)
        assert code == grpc.StatusCode.OK, details


async def test_maximum_duration_ends_the_session():
    async with embedded_service() as (stub, _):
        avatar_id = await _avatar(stub)
        code, details, _ = await asyncio.wait_for(
            _run(stub, config(avatar_id, max_duration_s=1), 0.2, 5.0), 30)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "maximum duration" in details


async def test_a_session_is_warned_before_it_reaches_its_maximum_duration():
    """A WarningEvent (SESSION_ENDING) comes before the end, in time to finish the answer: half the session's
    duration before it when the session is shorter than twice the server's warning lead."""
    async with embedded_service() as (stub, _):
        avatar_id = await _avatar(stub)

        async def gen():
            yield avatar_pb2.ConverseRequest(config=config(avatar_id, max_duration_s=2))
            for _ in range(100):  # until the session ends (the server stops reading at its end)
                await asyncio.sleep(0.1)
                yield avatar_pb2.ConverseRequest(keep_alive=avatar_pb2.KeepAlive())

        messages = []
        call = stub.Converse(gen())
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for msg in call:
                messages.append(msg)
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        warnings = [(i, m.event.warning) for i, m in enumerate(messages)
                    if m.WhichOneof("kind") == "event" and m.event.WhichOneof("event") == "warning"]
        assert len(warnings) == 1, messages
        at, warning = warnings[0]
        assert warning.code == "SESSION_ENDING" and "maximum duration of 2 s" in warning.message
        assert messages[-1].WhichOneof("kind") == "final" and at < len(messages) - 1


async def test_no_idle_timeout_while_the_last_frames_drain_after_end_of_audio():
    import time

    from serving_helpers import chunks, collect, frames_of, requests, speech_pcm16

    async with embedded_service() as (stub, _):
        avatar_id = await _avatar(stub)
        # 3 s of audio sent at once, then silence from the client: the frames are paced to realtime, so they keep
        # coming for about 3 s after the client's last message, longer than the 1 s idle timeout
        sent_all = 0.0

        def timed(reqs):
            nonlocal sent_all
            yield from reqs
            sent_all = time.monotonic()

        out, code, details = await asyncio.wait_for(
            collect(stub, timed(requests(config(avatar_id, idle_timeout_s=1), chunks(speech_pcm16(3.0))))), 120)
        drained_for = time.monotonic() - sent_all
        assert code == grpc.StatusCode.OK, details
        assert len(frames_of(out)) == 75
        assert drained_for > 1.0, f"the frames drained in {drained_for:.2f} s: the idle timeout was never at stake"
