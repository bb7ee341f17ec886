"""The asyncio SDK against a served stack, and `ditto up` as a user starts it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_helpers import chunks, embedded_service, portrait_png, speech_pcm16

from ditto import rpc
from ditto_app.cluster import free_port
from ditto_client import AsyncAvatarClient, AvatarClient, emotion_control
from ditto_client.sdk import _Outbox
from ditto_client.v1 import avatar_pb2, common_pb2

ROOT = Path(__file__).resolve().parents[2]


async def test_async_client_streams_controls_interrupts_and_ends():
    async with embedded_service() as (stub, _):
        async with AsyncAvatarClient(stub.address) as client:
            avatar = await client.register_avatar(portrait_png())
            stream = await client.open_session(avatar.avatar_id, sample_rate_hz=16000, emotion="happy",
                                               encoding=common_pb2.FRAME_ENCODING_JPEG,
                                               idle_policy=avatar_pb2.IDLE_POLICY_FREEZE)
            for c in chunks(speech_pcm16(1.2)):
                await stream.send_audio(c)
            await stream.control(overall=common_pb2.MotionControls(delta_yaw=5))
            await stream.end_audio()
            kinds = [m.WhichOneof("kind") async for m in stream]
        assert kinds[0] == "started" and kinds[-1] == "final"
        assert kinds.count("frame") == 30


async def test_both_clients_look_up_and_delete_avatars_and_look_up_sessions():
    async with embedded_service() as (stub, _):
        async with AsyncAvatarClient(stub.address) as client:
            avatar = await client.register_avatar(portrait_png())
            got = await client.get_avatar(avatar.avatar_id)
            assert (got.avatar_id, got.width, got.height) == (avatar.avatar_id, avatar.width, avatar.height)
            stream = await client.open_session(avatar.avatar_id, idle_policy=avatar_pb2.IDLE_POLICY_FREEZE)
            session_id = stream.started.session_id
            for c in chunks(speech_pcm16(1.2)):
                await stream.send_audio(c)
            frames = 0
            async for m in stream:
                frames += m.WhichOneof("kind") == "frame"
                if frames == 5:
                    break
            info = await client.get_session(session_id)
            assert info.active and info.avatar_id == avatar.avatar_id and info.frames_sent >= 5

            def blocking() -> None:
                with AvatarClient(stub.address) as same:
                    assert same.get_avatar(avatar.avatar_id).source_frames == avatar.source_frames
                    assert same.get_session(session_id).session_id == session_id
                    same.delete_avatar(avatar.avatar_id)
                    for call in (same.get_avatar, same.delete_avatar):
                        with pytest.raises(grpc.RpcError) as err:
                            call(avatar.avatar_id)
                        assert err.value.code() == grpc.StatusCode.NOT_FOUND

            await asyncio.to_thread(blocking)  # the server runs on this loop: the blocking client in a thread
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.get_avatar(avatar.avatar_id)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            stream.cancel()  # the session ends: it is no longer found
            deadline = time.monotonic() + 30
            while True:
                try:
                    await client.get_session(session_id)
                except grpc.aio.AioRpcError as ended:
                    assert ended.code() == grpc.StatusCode.NOT_FOUND
                    break
                assert time.monotonic() < deadline, "the cancelled session is still there"
                await asyncio.sleep(0.05)


async def test_an_interrupt_overtakes_speech_handed_over_faster_than_realtime():
    """Text-to-speech hands 30 s over at once; the server reads only a few seconds ahead of the frames taken. The
    interrupt must not wait behind the rest (it did: the server read and threw away all 30 s first, so the face went
    on talking for as long as that speech lasted)."""
    async with embedded_service() as (stub, _):
        async with AsyncAvatarClient(stub.address) as client:
            avatar = await client.register_avatar(portrait_png())
            stream = await client.open_session(avatar.avatar_id, sample_rate_hz=16000,
                                               encoding=common_pb2.FRAME_ENCODING_JPEG,
                                               idle_policy=avatar_pb2.IDLE_POLICY_FREEZE)
            for c in chunks(speech_pcm16(30.0)):
                await stream.send_audio(c)
            final = None
            async for m in stream:
                kind = m.WhichOneof("kind")
                if kind == "frame" and m.frame.index == 0:
                    await stream.interrupt()
                    await stream.end_audio()
                elif kind == "final":
                    final = m.final
    assert final is not None and final.status.code == 0
    # what the server read: what it needed before the first frame, plus what gRPC's window held, far from 30 s
    assert final.audio_seconds < 10, final.audio_seconds


async def test_the_sdk_writes_audio_only_as_far_ahead_as_the_server_reads():
    def audio(seconds: float) -> avatar_pb2.ConverseRequest:
        return avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=bytes(int(32000 * seconds))))

    def frame(epoch: int = 0) -> avatar_pb2.ConverseResponse:
        return avatar_pb2.ConverseResponse(frame=avatar_pb2.VideoFrame(epoch=epoch))

    box = _Outbox()
    box.pace(common_pb2.AudioFormat(sample_format=common_pb2.SAMPLE_FORMAT_PCM_S16LE, sample_rate_hz=16000,
                                    channels=1), read_ahead_ms=1000)
    for _ in range(5):
        box.put(audio(0.4))
    box.put(avatar_pb2.ConverseRequest(keep_alive=avatar_pb2.KeepAlive()))
    reader = box.requests()
    for _ in range(3):  # 1.2 s written: the server reads 1 s ahead, so the fourth chunk stays here
        assert (await reader.__anext__()).WhichOneof("kind") == "audio"
    held = asyncio.ensure_future(reader.__anext__())
    await asyncio.sleep(0)  # one turn of the loop: the writer runs until it waits for frames
    assert not held.done() and box.audio_bytes == 2 * 12800
    for _ in range(5):  # 200 ms of frames back: 1.0 s still ahead, still held
        box.received(frame())
    await asyncio.sleep(0)
    assert not held.done()
    box.received(frame())  # 0.96 s ahead: the next chunk goes
    assert (await held).WhichOneof("kind") == "audio" and box.audio_bytes == 12800
    # an interrupt drops the audio not written (the keep-alive behind it stays, in order) and goes next
    box.interrupt()
    box.received(frame(epoch=0))  # a frame of the old epoch, after our interrupt: not counted for the new one
    box.close()
    assert [r.WhichOneof("kind") async for r in reader] == ["keep_alive", "interrupt"]
    assert box.audio_bytes == 0


def test_emotion_control_forms():
    assert list(emotion_control("happy").labels) == [common_pb2.EMOTION_HAPPY]
    assert list(emotion_control(["happy", "sad"]).labels) == [common_pb2.EMOTION_HAPPY, common_pb2.EMOTION_SAD]
    assert len(emotion_control([0.1] * 8).probabilities) == 8
    with pytest.raises(ValueError):
        emotion_control([1, 2])


@pytest.mark.e2e
def test_ditto_up_runs_the_stack_and_stops_cleanly(tmp_path, redis_url):
    port, web_port = free_port(), free_port()
    env = dict(os.environ, DITTO_BUS__PREFIX=f"ditto-up-test-{port}", PYTHONUNBUFFERED="1", REDIS_URL=redis_url)
    proc = subprocess.Popen([sys.executable, "-m", "ditto_app.cli", "up", "--port", str(port), "--profile", "tiny",
                             "--slots", "2", "--quiet", "--webrtc-port", str(web_port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "ditto is up" in line or proc.poll() is not None:
                break
        assert any("ditto is up" in x for x in lines), "".join(lines)[-3000:]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=rpc.channel_options()) as ch:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="ditto.v1.Avatar"),
                                                     timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        with AvatarClient(f"127.0.0.1:{port}") as client:
            avatar = client.register_avatar(portrait_png())
            out = list(client.converse(avatar.avatar_id, chunks(speech_pcm16(0.8)),
                                       idle_policy=avatar_pb2.IDLE_POLICY_FREEZE))
        assert sum(1 for m in out if m.WhichOneof("kind") == "frame") == 20
        # the WebRTC gateway came up with the stack, in front of its orchestrator
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["status"] == "ready"
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as r:
            assert b"/static/app.js" in r.read()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0


async def test_the_blocking_client_lets_an_interrupt_overtake_speech_handed_over_faster_than_realtime():
    """The same for `AvatarClient.converse`: the caller's iterable yields 30 s of speech at once, then (after the
    first frame) an Interrupt; it must reach the server before the rest of the speech."""
    import queue

    async with embedded_service() as (stub, _):
        def talk() -> avatar_pb2.FinalStatus:
            requests: queue.Queue[object] = queue.Queue()
            for c in chunks(speech_pcm16(30.0)):
                requests.put(c)

            def audio():
                while (item := requests.get()) is not None:
                    yield item

            final = None
            with AvatarClient(stub.address) as client:
                avatar = client.register_avatar(portrait_png())
                for m in client.converse(avatar.avatar_id, audio(), idle_policy=avatar_pb2.IDLE_POLICY_FREEZE):
                    kind = m.WhichOneof("kind")
                    if kind == "frame" and m.frame.index == 0:
                        requests.put(avatar_pb2.ConverseRequest(interrupt=avatar_pb2.Interrupt()))
                        requests.put(None)  # then the end of audio
                    elif kind == "final":
                        final = m.final
            assert final is not None
            return final

        final = await asyncio.to_thread(talk)
    assert final.status.code == 0
    assert final.audio_seconds < 10, final.audio_seconds


def test_an_error_in_the_callers_audio_reaches_the_caller():
    """The blocking client reads the caller's audio in a thread of its own: an exception there must end the
    session and come out of `converse`, not vanish in that thread."""

    async def serve_and_talk():
        async with embedded_service() as (stub, _):
            def talk():
                def audio():
                    yield from chunks(speech_pcm16(0.4))
                    raise OSError("microphone unplugged")

                with AvatarClient(stub.address) as client:
                    avatar = client.register_avatar(portrait_png())
                    for _ in client.converse(avatar.avatar_id, audio()):
                        pass

            await asyncio.to_thread(talk)

    with pytest.raises(OSError, match="microphone unplugged"):
        asyncio.run(serve_and_talk())
