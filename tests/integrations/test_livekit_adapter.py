"""LiveKit Agents adapter, everything short of a LiveKit room: our VideoGenerator against a real Ditto service,
the avatar token, the dispatcher (`ditto livekit-worker`) on a real HTTP port. No LiveKit server runs here."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import jwt
import pytest
from agent_speech import pieces, speech_24k
from livekit import api, rtc
from livekit.agents.voice.avatar import AudioSegmentEnd

from ditto_client import AsyncAvatarClient
from ditto_client.v1 import avatar_pb2
from integrations.core import AvatarBridge, BridgeOptions
from integrations.livekit import DittoVideoGenerator, mint_avatar_token
from integrations.livekit.dispatcher import serve
from integrations.livekit.settings import LiveKitWorkerSettings

ROOT = Path(__file__).resolve().parents[2]
RATE = 24000
FRAME_AUDIO = RATE // 25  # samples of audio that go with one video frame


class RunnerLedger:
    """The playback accounting of livekit.agents' AvatarRunner (its _forward_video / _on_clear_buffer): the position
    is the duration of the audio frames the generator yielded since the segment began; a segment end reports it
    uninterrupted, clear_buffer reports it interrupted. What it records is what lk.playback_finished would carry."""

    def __init__(self) -> None:
        self.items: list = []
        self.position = 0.0
        self.playing = False
        self.finished: list[tuple[float, bool]] = []
        self.video = asyncio.Event()

    def on_item(self, item) -> None:
        self.items.append(item)
        if isinstance(item, AudioSegmentEnd):
            if self.playing:
                self.finished.append((self.position, False))
            self.playing, self.position = False, 0.0
        elif isinstance(item, rtc.AudioFrame):
            self.playing = True
            self.position += item.duration

    def on_clear(self) -> None:
        if self.playing:
            self.finished.append((self.position, True))
        self.playing, self.position = False, 0.0

    def speech_frames(self) -> int:
        return sum(1 for a, b in zip(self.items, self.items[1:], strict=False)
                   if isinstance(a, rtc.VideoFrame) and isinstance(b, rtc.AudioFrame))


async def wait_until(cond, timeout: float = 240.0) -> None:
    async def poll():
        while not cond():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(poll(), timeout)


@contextlib.asynccontextmanager
async def generator_with_runner(server):
    """Our VideoGenerator on a started session, its output consumed into a RunnerLedger as AvatarRunner would."""
    gen = DittoVideoGenerator(AvatarBridge(BridgeOptions(server.address, server.avatar_id, seed=7)))
    assert await gen.bridge.start()
    ledger = RunnerLedger()

    async def consume():
        async for item in gen:
            ledger.on_item(item)

    consumer = asyncio.create_task(consume())
    try:
        yield gen, ledger
    finally:
        await gen.aclose()
        await consumer


async def push_speech(gen: DittoVideoGenerator, pcm: bytes) -> None:
    for p in pieces(pcm):
        await gen.push_audio(rtc.AudioFrame(p, RATE, 1, len(p) // 2))


async def clear(gen: DittoVideoGenerator, ledger: RunnerLedger) -> int:
    """The runner's clear_buffer; returns how many items came before it."""
    cleared_at = len(ledger.items)
    ledger.on_clear()
    await gen.clear_buffer()
    return cleared_at


async def test_video_generator_speaks_interrupts_and_idles(ditto_server):
    first, second = speech_24k(1.5, seed=1), speech_24k(1.5, seed=2)
    async with generator_with_runner(ditto_server) as (gen, ledger):
        await push_speech(gen, first)
        await wait_until(lambda: ledger.speech_frames() >= 10)
        cleared_at = await clear(gen, ledger)
        await push_speech(gen, second)
        await gen.push_audio(AudioSegmentEnd())
        await wait_until(lambda: len(ledger.finished) == 2)
        ended_at = len(ledger.items)
        await wait_until(lambda: sum(isinstance(i, rtc.VideoFrame) for i in ledger.items[ended_at:]) >= 10)

    items = ledger.items
    videos = [i for i in items if isinstance(i, rtc.VideoFrame)]
    assert {(v.width, v.height) for v in videos} == {(ditto_server.width, ditto_server.height)}
    assert all(v.type == rtc.VideoBufferType.RGB24 for v in videos)
    # every audio frame leaves right after the video frame that shows it, 40 ms each (the utterance's tail may be
    # shorter)
    for k, item in enumerate(items):
        if isinstance(item, rtc.AudioFrame):
            assert isinstance(items[k - 1], rtc.VideoFrame)
            assert item.sample_rate == RATE and item.num_channels == 1
            assert item.samples_per_channel <= FRAME_AUDIO
    before = b"".join(bytes(i.data) for i in items[:cleared_at] if isinstance(i, rtc.AudioFrame))
    after = b"".join(bytes(i.data) for i in items[cleared_at:] if isinstance(i, rtc.AudioFrame))
    # the interrupted speech: what was shown is exactly its beginning, and nothing of it comes after the clear
    assert 0 < len(before) < len(first) and first.startswith(before)
    # the speech after the interrupt comes out whole, bit for bit, and its frames tile it at 25 fps
    assert after == second
    second_frames = ledger.speech_frames() - sum(
        1 for a, b in zip(items[:cleared_at], items[1:cleared_at + 1], strict=False)
        if isinstance(a, rtc.VideoFrame) and isinstance(b, rtc.AudioFrame))
    assert second_frames == -(-len(second) // 2 // FRAME_AUDIO)  # ceil(1.5 s / 40 ms) = 38
    # lk.playback_finished: the interrupted position is what was shown; the next one ran to its end
    (pos_cut, cut), (pos_end, interrupted) = ledger.finished
    assert cut and pos_cut == pytest.approx(len(before) / 2 / RATE)
    assert not interrupted and pos_end == pytest.approx(1.5, abs=1e-6)
    # idle: the face keeps moving after the speech, without audio
    tail = items[ended_at:]
    assert sum(isinstance(i, rtc.VideoFrame) for i in tail) >= 10
    assert not any(isinstance(i, rtc.AudioFrame) for i in tail)


async def test_clear_buffer_behind_a_long_answer_handed_over_at_once(ditto_server):
    """Barge-in after the agent's TTS pushed 30 s of speech in one go: the clear must not wait behind the audio
    still unsent, so the server reads little past the interrupt and nothing of the old speech plays after it."""
    speech = speech_24k(30.0, seed=5)
    async with generator_with_runner(ditto_server) as (gen, ledger):
        await push_speech(gen, speech)
        await wait_until(lambda: ledger.speech_frames() >= 10)
        cleared_at = await clear(gen, ledger)
        await wait_until(lambda: sum(isinstance(i, rtc.VideoFrame) for i in ledger.items[cleared_at:]) >= 10)
        async with AsyncAvatarClient(ditto_server.address) as client:
            info = await client.stub.GetSession(avatar_pb2.GetSessionRequest(session_id=gen.bridge.session_id))
    # the server read the speech up to its look-ahead before the clear and the idle feed since, not the 30 s
    assert info.audio_seconds < 10, info.audio_seconds
    played = b"".join(bytes(i.data) for i in ledger.items[:cleared_at] if isinstance(i, rtc.AudioFrame))
    assert 0 < len(played) < len(speech) and speech.startswith(played)
    assert not any(isinstance(i, rtc.AudioFrame) for i in ledger.items[cleared_at:])
    (position, interrupted), = ledger.finished
    assert interrupted and position == pytest.approx(len(played) / 2 / RATE)


async def test_video_generator_without_a_server_passes_the_speech_through():
    gen = DittoVideoGenerator(AvatarBridge(BridgeOptions("127.0.0.1:9", "no-such-avatar", start_timeout_s=10)))
    assert not await gen.bridge.start()
    assert "cannot reach the Ditto server at 127.0.0.1:9" in gen.bridge.error
    speech = speech_24k(0.5)
    out: list = []

    async def consume():
        async for item in gen:
            out.append(item)

    consumer = asyncio.create_task(consume())
    await push_speech(gen, speech)
    await gen.push_audio(AudioSegmentEnd())
    await wait_until(lambda: out and isinstance(out[-1], AudioSegmentEnd), 10)
    await gen.aclose()
    await consumer
    assert not any(isinstance(i, rtc.VideoFrame) for i in out)
    assert b"".join(bytes(i.data) for i in out if isinstance(i, rtc.AudioFrame)) == speech
    assert isinstance(out[-1], AudioSegmentEnd)


def test_avatar_token_grants_and_publish_on_behalf():
    token = mint_avatar_token(api_key="APIkey123", api_secret="s" * 32, room_name="room-7",
                              avatar_identity="ditto-avatar", agent_identity="agent-AJ_1",
                              ttl=datetime.timedelta(minutes=10))
    claims = api.TokenVerifier("APIkey123", "s" * 32).verify(token)
    assert claims.identity == "ditto-avatar"
    assert claims.kind == "agent"
    assert claims.video.room_join is True and claims.video.room == "room-7"
    assert claims.attributes == {"lk.publish_on_behalf": "agent-AJ_1"}
    raw = jwt.decode(token, "s" * 32, algorithms=["HS256"], options={"verify_aud": False})
    assert raw["iss"] == "APIkey123" and raw["sub"] == "ditto-avatar"
    assert raw["video"]["roomJoin"] is True and raw["video"]["room"] == "room-7"
    assert raw["attributes"]["lk.publish_on_behalf"] == "agent-AJ_1"
    assert 0 < raw["exp"] - raw["nbf"] <= 600
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "t" * 32, algorithms=["HS256"], options={"verify_aud": False})
    with pytest.raises(ValueError, match="LIVEKIT_API_KEY"):
        mint_avatar_token(api_key="", api_secret="", room_name="r", avatar_identity="a", agent_identity="b")


async def test_dispatcher_limits_and_a_worker_that_cannot_join():
    settings = LiveKitWorkerSettings(port=0, max_workers=1, dispatch_secret="let-me-in", default_avatar_id="av",
                                     max_request_bytes=2048, ditto_address="127.0.0.1:9")
    release = asyncio.Event()
    calls = []

    async def held_launch(url, token, options, **kw):
        calls.append((url, token, options, kw))
        await release.wait()

    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, stop, ready=ready.set_result, launch=held_launch))
    port = await ready
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer let-me-in"}
    good = {"room_name": "r1", "livekit_url": "ws://127.0.0.1:9", "token": "tok", "agent_identity": "agent"}
    try:
        async with aiohttp.ClientSession() as http:
            async def post(body, headers=auth, data=None):
                async with http.post(f"{base}/v1/sessions", json=body if data is None else None, data=data,
                                     headers=headers) as r:
                    return r.status, await r.json()

            assert (await post(good, headers={}))[0] == 401
            assert (await post(good, headers={"Authorization": "Bearer nope"}))[0] == 401
            status, body = await post(None, data=b"{not json")
            assert status == 400 and "JSON" in body["error"]
            assert (await post(None, data=b"x" * 4096))[0] == 413
            assert (await post({**good, "room_name": ""}))[0] == 400
            assert (await post({**good, "sample_rate": 1}))[0] == 400
            assert (await post({k: v for k, v in good.items() if k != "token"}))[0] == 400  # no keys to mint
            status, body = await post(good)
            assert status == 202 and body["avatar_identity"] == "ditto-avatar"
            await asyncio.wait_for(_until(lambda: calls), 10)
            assert calls[0][2].avatar_id == "av" and calls[0][3]["agent_identity"] == "agent"
            status, body = await post(good)
            assert status == 429 and "DITTO_LIVEKIT_MAX_WORKERS" in body["error"]
            release.set()
            await asyncio.wait_for(_until_health(http, base, 0), 10)
            assert (await post(good))[0] == 202  # the place was freed
    finally:
        release.set()
        stop.set()
        await server


async def test_dispatcher_survives_a_room_it_cannot_join():
    """The real worker against a LiveKit URL where nothing listens: it fails alone, the dispatcher frees its place."""
    settings = LiveKitWorkerSettings(port=0, default_avatar_id="av", ditto_address="127.0.0.1:9")
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, stop, ready=ready.set_result))
    port = await ready
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/sessions", json={"room_name": "r", "livekit_url": "ws://127.0.0.1:9",
                                                              "token": "a.b.c"}) as r:
                assert r.status == 202
            await asyncio.wait_for(_until_health(http, base, 0), 60)
    finally:
        stop.set()
        dispatcher = await server
    assert dispatcher.failures == 1


async def _until(cond) -> None:
    while not cond():
        await asyncio.sleep(0.02)


async def _until_health(http, base: str, workers: int) -> None:
    while True:
        async with http.get(f"{base}/healthz") as r:
            if (await r.json())["workers"] == workers:
                return
        await asyncio.sleep(0.05)


@pytest.mark.e2e
def test_cli_lists_and_runs_the_livekit_worker():
    out = subprocess.run([sys.executable, "-m", "ditto_app.cli", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "livekit-worker" in out.stdout
    env = dict(os.environ, DITTO_LIVEKIT_DITTO_ADDRESS="127.0.0.1:9", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ditto_app.cli", "livekit-worker", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        for line in proc.stdout:
            if line.startswith("READY") or proc.poll() is not None:
                break
        assert line.startswith("READY livekit-worker http=127.0.0.1:"), line
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


WITHOUT_EXTRAS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):  # an install without the [livekit] and [pipecat] extras
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("livekit", "pipecat"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from ditto_app.cli import build_parser, main
assert "livekit-worker" in build_parser().format_help()
sys.exit(main(["livekit-worker"]))
"""


def test_cli_without_the_extra_still_helps_and_says_what_to_install():
    out = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "pip install 'ditto-service[livekit]'" in out.stdout


async def test_avatar_session_that_cannot_start_leaves_the_agent_its_audio():
    """A real AgentSession and a real (unconnected) Room: no worker can be had, so the agent's audio output stays
    what it was and the reason is kept and logged."""
    from livekit.agents import AgentSession

    from integrations.livekit import DittoAvatarSession

    session, room = AgentSession(), rtc.Room()
    avatar = DittoAvatarSession(avatar_id="av", dispatcher_url="http://127.0.0.1:9", livekit_url="ws://127.0.0.1:9",
                                api_key="APIkey", api_secret="s" * 32)
    audio_before = session.output.audio
    await avatar.start(session, room)
    try:
        assert not avatar.face and "before connecting" in avatar.error
        assert session.output.audio is audio_before
    finally:
        await avatar.aclose()
