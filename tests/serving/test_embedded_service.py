"""The public API end to end on the whole service in one process: real gRPC on loopback, real stage code (tiny
profile, synthetic weights), the in-memory bus."""

from __future__ import annotations

import asyncio
import math
import time

import grpc
import numpy as np
import pytest
from serving_helpers import (
    chunks,
    collect,
    config,
    embedded_service,
    frames_of,
    portrait_png,
    requests,
    speech_pcm16,
    tenants_file,
)

from ditto_client.v1 import avatar_pb2, common_pb2
from services.orchestrator.tenants import TenantDirectory


async def _register(stub, metadata=()):
    return await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png(), filename="p.png"),
                                     metadata=metadata)


async def test_converse_streams_every_frame_in_order_then_a_final_status():
    async with embedded_service() as (stub, orch):
        avatar = await _register(stub)
        assert avatar.width == 160 and avatar.height == 128
        again = await _register(stub)
        assert again.avatar_id == avatar.avatar_id and again.already_registered
        seconds = 2.3
        out, code, _ = await collect(stub, requests(config(avatar.avatar_id), chunks(speech_pcm16(seconds))))
        assert code == grpc.StatusCode.OK
        assert out[0].WhichOneof("kind") == "started" and out[0].started.fps == 25
        assert out[-1].WhichOneof("kind") == "final" and out[-1].final.status.code == 0
        frames = frames_of(out)
        assert len(frames) == math.ceil(seconds * 25) == out[-1].final.frames_sent
        assert [f.index for f in frames] == list(range(len(frames)))
        assert [f.pts_ms for f in frames] == [40 * i for i in range(len(frames))]
        img = np.frombuffer(frames[0].data, np.uint8).reshape(frames[0].height, frames[0].width, 3)
        assert img.shape == (128, 160, 3) and img.std() > 1
        assert not orch.sessions, "the session must be closed and forgotten"


async def test_frames_are_paced_to_realtime_and_jpeg_encoded():
    async with embedded_service() as (stub, _):
        avatar = await _register(stub)
        cfg = config(avatar.avatar_id, output=common_pb2.OutputOptions(encoding=common_pb2.FRAME_ENCODING_JPEG))
        loop = asyncio.get_running_loop()
        times = []

        async def gen():
            for r in requests(cfg, chunks(speech_pcm16(3.0))):
                yield r

        async for msg in stub.Converse(gen()):
            if msg.WhichOneof("kind") == "frame":
                times.append(loop.time())
                assert msg.frame.data[:2] == b"\xff\xd8"  # JPEG
        span = times[-1] - times[0]
        assert len(times) == 75
        assert span >= 0.8 * 74 / 25, f"{len(times)} frames in {span:.2f} s: not paced to 25 fps"


async def test_interrupt_returns_the_last_frame_sent_and_the_session_goes_on():
    async with embedded_service() as (stub, _):
        avatar = await _register(stub)
        queue: asyncio.Queue = asyncio.Queue()
        for r in requests(config(avatar.avatar_id), chunks(speech_pcm16(3.0)), end=False):
            queue.put_nowait(r)

        async def gen():
            while (r := await queue.get()) is not None:
                yield r

        out = []
        interrupted = None
        async for msg in stub.Converse(gen()):
            out.append(msg)
            kind = msg.WhichOneof("kind")
            if kind == "frame" and msg.frame.index == 10 and interrupted is None:
                interrupted = False
                queue.put_nowait(avatar_pb2.ConverseRequest(interrupt=avatar_pb2.Interrupt()))
                for c in chunks(speech_pcm16(1.0, seed=3)):
                    queue.put_nowait(avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=c)))
                queue.put_nowait(avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio()))
                queue.put_nowait(None)
            if kind == "event" and msg.event.WhichOneof("event") == "interrupted":
                interrupted = msg.event.interrupted
        assert interrupted, "no InterruptedEvent"
        frames = frames_of(out)
        before = [f for f in frames if f.epoch == 0]
        after = [f for f in frames if f.epoch == 1]
        assert before and before[-1].index == interrupted.last_frame_index
        assert after and after[0].index == interrupted.last_frame_index + 1, "the timeline must go on seamlessly"
        assert [f.index for f in frames] == list(range(len(frames)))
        # eased back to rest, then the new speech: 8 rest frames + ceil(1.0 * 25)
        assert len(after) == 8 + 25
        assert out[-1].final.status.code == 0


async def test_idle_alive_keeps_frames_coming_without_audio():
    async with embedded_service(idle_feed_after_ms=100) as (stub, _):
        avatar = await _register(stub)
        cfg = config(avatar.avatar_id, idle_policy=avatar_pb2.IDLE_POLICY_ALIVE)
        enough = asyncio.Event()  # the client stays silent until 20 idle frames came (however slow the machine)

        async def gen():
            yield avatar_pb2.ConverseRequest(config=cfg)
            await asyncio.wait_for(enough.wait(), 300)
            yield avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio())

        out = []
        async for m in stub.Converse(gen()):
            out.append(m)
            if sum(1 for f in frames_of(out) if f.idle) >= 20:
                enough.set()
        frames = frames_of(out)
        assert len(frames) >= 20, f"only {len(frames)} idle frames while the client was silent"
        assert sum(f.idle for f in frames) >= 20, "frames made from idle silence are marked idle"
        arrays = [np.frombuffer(f.data, np.uint8).astype(np.int16) for f in frames]
        assert max(np.abs(a - arrays[0]).max() for a in arrays) > 0, "an idle face must not be a still image"


@pytest.mark.parametrize("case,expected", [
    ("no_config", grpc.StatusCode.FAILED_PRECONDITION),
    ("unknown_avatar", grpc.StatusCode.NOT_FOUND),
    ("odd_bytes", grpc.StatusCode.INVALID_ARGUMENT),
    ("chunk_too_long", grpc.StatusCode.INVALID_ARGUMENT),
    ("bad_rate", grpc.StatusCode.INVALID_ARGUMENT),
    ("second_config", grpc.StatusCode.FAILED_PRECONDITION),
    ("nan_control", grpc.StatusCode.INVALID_ARGUMENT),
    ("audio_after_end", grpc.StatusCode.FAILED_PRECONDITION),
])
async def test_bad_input_gets_a_clear_status_and_the_server_keeps_serving(case, expected):
    async with embedded_service(max_chunk_ms=500) as (stub, _):
        avatar = await _register(stub)
        cfg = config(avatar.avatar_id)
        good = chunks(speech_pcm16(0.4))
        reqs = {
            "no_config": [avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=good[0]))],
            "unknown_avatar": requests(config("nope"), []),
            "odd_bytes": requests(cfg, [good[0][:101]]),
            "chunk_too_long": requests(cfg, [speech_pcm16(0.8)]),
            "bad_rate": requests(config(avatar.avatar_id, audio_format=common_pb2.AudioFormat(
                sample_format=common_pb2.SAMPLE_FORMAT_PCM_S16LE, sample_rate_hz=1000, channels=1)), []),
            "second_config": requests(cfg, good, extra=[avatar_pb2.ConverseRequest(config=cfg)]),
            "nan_control": requests(cfg, good, extra=[avatar_pb2.ConverseRequest(control=avatar_pb2.ControlUpdate(
                overall=common_pb2.MotionControls(delta_pitch=float("nan"))))]),
            "audio_after_end": requests(cfg, good) + [avatar_pb2.ConverseRequest(
                audio=avatar_pb2.AudioChunk(data=good[0]))],
        }[case]
        out, code, details = await collect(stub, reqs)
        assert code == expected, (code, details)
        assert len(details) > 15, "the message must say what to fix"
        out, code, _ = await collect(stub, requests(cfg, good))
        assert code == grpc.StatusCode.OK and len(frames_of(out)) == 10


async def test_controls_for_frames_already_sent_are_refused():
    async with embedded_service() as (stub, _):
        avatar = await _register(stub)
        queue: asyncio.Queue = asyncio.Queue()
        for r in requests(config(avatar.avatar_id), chunks(speech_pcm16(3.0)), end=False):
            queue.put_nowait(r)

        async def gen():
            while (r := await queue.get()) is not None:
                yield r

        call = stub.Converse(gen())
        sent_control = False
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while (msg := await call.read()) != grpc.aio.EOF:
                if msg.WhichOneof("kind") == "frame" and msg.frame.index >= 3 and not sent_control:
                    sent_control = True
                    queue.put_nowait(avatar_pb2.ConverseRequest(control=avatar_pb2.ControlUpdate(controls=[
                        common_pb2.TimedControl(start_frame=1, controls=common_pb2.MotionControls(delta_yaw=5))])))
            raise AssertionError("the call ended without an error")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already sent" in err.value.details()
        queue.put_nowait(None)


async def test_time_coded_controls_change_the_frames_they_name():
    async with embedded_service() as (stub, _):
        avatar = await _register(stub)
        audio = chunks(speech_pcm16(2.0))
        plain, _, _ = await collect(stub, requests(config(avatar.avatar_id), audio))
        turn = avatar_pb2.ConverseRequest(control=avatar_pb2.ControlUpdate(controls=[common_pb2.TimedControl(
            start_frame=30, end_frame=40, controls=common_pb2.MotionControls(delta_yaw=25, delta_pitch=-10))]))
        steered, _, _ = await collect(stub, [requests(config(avatar.avatar_id), [])[0], turn,
                                             *requests(config(avatar.avatar_id), audio)[1:]])
        a = [np.frombuffer(f.data, np.uint8).astype(np.int16) for f in frames_of(plain)]
        b = [np.frombuffer(f.data, np.uint8).astype(np.int16) for f in frames_of(steered)]
        assert len(a) == len(b) == 50
        diff = [int(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)]
        assert max(diff[:30]) == 0 and max(diff[40:]) == 0, "frames outside the span must be the same"
        assert min(diff[30:40]) > 0, "every frame in the span must change"


async def test_tenants_see_only_their_own_avatars_and_sessions(tmp_path):
    path = tenants_file(tmp_path / "keys.json", {"acme": {"key": "acme-key", "max_sessions": 1},
                                                  "bolt": {"key": "bolt-key"}})
    async with embedded_service(tenants=TenantDirectory.from_file(path)) as (stub, orch):
        acme, bolt = (("x-api-key", "acme-key"),), (("x-api-key", "bolt-key"),)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _register(stub)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _register(stub, (("x-api-key", "wrong"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        avatar = await _register(stub, acme)
        req = avatar_pb2.GetAvatarRequest(avatar_id=avatar.avatar_id)
        assert (await stub.GetAvatar(req, metadata=acme)).avatar_id == avatar.avatar_id
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetAvatar(req, metadata=bolt)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        _, code, _ = await collect(stub, requests(config(avatar.avatar_id), []), metadata=bolt)
        assert code == grpc.StatusCode.NOT_FOUND
        # a live session of acme: invisible to bolt, and acme's quota of one session is full
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait(avatar_pb2.ConverseRequest(config=config(avatar.avatar_id)))

        async def gen():
            while (r := await queue.get()) is not None:
                yield r

        call = stub.Converse(gen(), metadata=acme)
        started = await call.read()
        sid = started.started.session_id
        assert (await stub.GetSession(avatar_pb2.GetSessionRequest(session_id=sid), metadata=acme)).active
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSession(avatar_pb2.GetSessionRequest(session_id=sid), metadata=bolt)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        _, code, details = await collect(stub, requests(config(avatar.avatar_id), []), metadata=acme)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "session" in details
        queue.put_nowait(avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio()))
        queue.put_nowait(None)
        while await call.read() != grpc.aio.EOF:
            pass
        deadline = time.monotonic() + 30  # the session's quota is released as its call winds down
        while (code := (await collect(stub, requests(config(avatar.avatar_id), []), metadata=acme))[1]) \
                == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert code == grpc.StatusCode.OK, "the quota is free again once the session ended"


async def test_admission_refuses_with_a_retry_hint_when_slots_are_full():
    async with embedded_service(sessions_per_slot=1) as (stub, orch):
        avatar = await _register(stub)
        queues, calls = [], []
        for _ in range(4):  # 4 slots x 1 session
            q: asyncio.Queue = asyncio.Queue()
            q.put_nowait(avatar_pb2.ConverseRequest(config=config(avatar.avatar_id)))

            async def gen(q=q):
                while (r := await q.get()) is not None:
                    yield r

            call = stub.Converse(gen())
            assert (await call.read()).WhichOneof("kind") == "started"
            queues.append(q)
            calls.append(call)
        call = stub.Converse(iter(requests(config(avatar.avatar_id), [])))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry" in err.value.details()
        assert dict(err.value.trailing_metadata() or ()).get("retry-after-ms")
        for q in queues:
            q.put_nowait(None)
        for c in calls:
            c.cancel()


async def test_credits_stop_reading_a_client_that_is_ahead():
    from ditto.look_ahead import audio_look_ahead_ms

    look_ahead_s = audio_look_ahead_ms(70) / 1000  # the default overlap
    async with embedded_service(credits_s=0.5) as (stub, orch):
        avatar = await _register(stub)
        peak, done = 0.0, False

        async def monitor():
            nonlocal peak
            while not done:
                for s in list(orch.sessions.values()):
                    peak = max(peak, s.credits.in_flight_s())
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(monitor())
        # the client sends 6 s of audio at once; the server may only take what its credits allow
        out, code, _ = await collect(stub, requests(config(avatar.avatar_id), chunks(speech_pcm16(6.0))))
        done = True
        await watcher
        assert code == grpc.StatusCode.OK and len(frames_of(out)) == 150
        assert peak <= 0.5 + look_ahead_s + 0.2 + 1e-6, f"{peak:.2f} s of audio in flight"
        assert peak >= 0.5 + look_ahead_s - 0.2, "the limit was never reached: the test did not push the server"


async def test_a_client_held_back_by_credits_is_not_idle():
    """Speech handed over faster than realtime (text-to-speech): the server stops reading while the client is out of
    credits, for longer than the idle timeout; that wait is the server's, so the session goes on to every frame."""
    async with embedded_service(credits_s=0.5, idle_timeout_s=1) as (stub, orch):
        avatar = await _register(stub)
        out, code, details = await collect(stub, requests(config(avatar.avatar_id), chunks(speech_pcm16(6.0))))
        assert code == grpc.StatusCode.OK, details
        assert len(frames_of(out)) == 150


async def test_an_sdk_client_holding_speech_back_for_frames_is_not_idle():
    """The SDK writes speech only as far ahead as the server reads (SessionStarted.audio_read_ahead_ms) and holds the
    rest until frames come back; while the read-ahead is full the client is waiting for the service, so a pipeline
    slower than the idle timeout to its first frames must not end the session (found by `ditto loadtest`: bursty
    sessions under load ended with DEADLINE_EXCEEDED before their first frame)."""
    from ditto_client import AsyncAvatarClient

    async with embedded_service(idle_timeout_s=1) as (stub, orch):
        avatar = await _register(stub)
        async with AsyncAvatarClient(stub.address) as client:
            stream = await client.open_session(avatar.avatar_id, idle_policy=avatar_pb2.IDLE_POLICY_FREEZE)
            for chunk in chunks(speech_pcm16(6.0)):  # a whole answer at once, as text-to-speech hands it over
                await stream.send_audio(chunk)
            await stream.end_audio()
            frames, final = 0, None
            async for msg in stream:
                frames += msg.WhichOneof("kind") == "frame"
                final = msg.final.status if msg.WhichOneof("kind") == "final" else final
        assert final is not None and final.code == 0, final
        assert frames == 150


async def test_render_rpc_returns_an_mp4_with_video_and_audio(tmp_path):
    import av

    from ditto_client.v1 import avatar_pb2 as pb

    async with embedded_service() as (stub, _):
        avatar = await _register(stub)
        wav = tmp_path / "s.wav"
        from scipy.io import wavfile

        wavfile.write(wav, 16000, np.frombuffer(speech_pcm16(1.6), "<i2"))
        chunks_, progress = [], []
        async for msg in stub.Render(pb.RenderRequest(avatar_id=avatar.avatar_id, audio=wav.read_bytes(),
                                                      audio_filename="s.wav", seed=1)):
            kind = msg.WhichOneof("kind")
            if kind == "mp4_chunk":
                chunks_.append(msg.mp4_chunk)
            elif kind == "progress":
                progress.append(msg.progress.frames_done)
        (tmp_path / "o.mp4").write_bytes(b"".join(chunks_))
        with av.open(str(tmp_path / "o.mp4")) as c:
            assert c.streams.audio and c.streams.video
            n = sum(1 for _ in c.decode(video=0))
        assert n == 40 and progress and progress[-1] == 40


async def test_registration_reports_what_it_found_and_transparent_cuts_out_the_person():
    """The default face models (MediaPipe) on the real photograph through the public API: RegisterAvatar and
    GetAvatar report the face, the crop and the warnings; a photograph without a face is refused unless the client
    gives a crop box; a transparent frame keeps the whole person (the suit, far outside the face crop) opaque and
    the background clear."""
    import cv2
    from skimage import data

    async with embedded_service() as (stub, _):
        avatar = await _register(stub)
        face = avatar.face
        assert face.face_models == "mediapipe" and face.faces_found == 1 and face.person_matte
        assert "face_landmark.tflite" in face.models and "selfie_segmentation.tflite" in face.models
        box, crop = face.face_box, face.crop
        assert 40 < box.x0 < box.x1 < 100 and 5 < box.y0 < box.y1 < 60, box  # her face in the 160x128 portrait
        assert box.x0 < crop.center_x < box.x1 and abs(crop.rotation_deg) < 10 and crop.size > box.x1 - box.x0
        assert len(face.eye_open) == 2 and min(face.eye_open) > 0.25
        assert any(w.startswith("the face is small") for w in face.warnings), face.warnings
        got = await stub.GetAvatar(avatar_pb2.GetAvatarRequest(avatar_id=avatar.avatar_id))
        assert got.face == face

        coffee = cv2.imencode(".png", data.coffee()[:, :, ::-1])[1].tobytes()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=coffee, filename="coffee.png"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no face found" in err.value.details()
        boxed = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(
            media=coffee, filename="coffee.png", crop=common_pb2.CropOptions(box=common_pb2.CropBox(
                x0=150, y0=50, x1=450, y1=350))))
        assert boxed.face.face_box.x1 == 450 and any("no face found inside" in w for w in boxed.face.warnings)

        cfg = config(avatar.avatar_id, output=common_pb2.OutputOptions(
            encoding=common_pb2.FRAME_ENCODING_RAW_RGB, background=common_pb2.BACKGROUND_TRANSPARENT,
            paste_back=True))
        out, code, _ = await collect(stub, requests(cfg, chunks(speech_pcm16(0.4))))
        assert code == grpc.StatusCode.OK
        frame = frames_of(out)[0]
        rgba = np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 4)
        assert rgba[5, 5, 3] == 0 and rgba[5, 150, 3] == 0             # flag and wall: cut away
        assert rgba[110, 60, 3] == 255 and rgba[100, 100, 3] == 255    # the suit, below the face crop: kept
        assert rgba[int(crop.center_y), int(crop.center_x), 3] == 255  # the face
