"""Python client SDK for the public `ditto.v1.Avatar` API, asyncio and blocking.

    from ditto_client import AvatarClient
    with AvatarClient("127.0.0.1:50051", api_key="...") as client:
        avatar = client.register_avatar("portrait.png")
        for event in client.converse(avatar.avatar_id, pcm_chunks(), sample_rate_hz=16000):
            if event.WhichOneof("kind") == "frame":
                show(event.frame)

    async with AsyncAvatarClient("127.0.0.1:50051") as client:
        stream = await client.open_session(avatar_id, sample_rate_hz=16000)
        await stream.send_audio(chunk); await stream.interrupt(); await stream.end_audio()
        async for event in stream: ...

Both clients also look up and delete avatars (`get_avatar`, `delete_avatar`) and look up a live session
(`get_session`). A new session the server cannot take right now is retried as the server hints (`RetryPolicy`).

Over TLS: `AvatarClient(address, api_key, credentials=tls_credentials(root_cert="ca.pem"))` (add `client_cert=`
and `client_key=` when the server verifies client certificates).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc

from ditto_client.channel import channel_options
from ditto_client.status import DEFAULT_RETRY_FOR_S, RetryPolicy
from ditto_client.timeline import FRAME_S
from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc, common_pb2

Media = bytes | str | Path


def _refused(first: avatar_pb2.ConverseResponse) -> bool:
    """The first message of a Converse call is the server's refusal (a FinalStatus; the call's error status follows)."""
    return first.WhichOneof("kind") == "final" and first.final.status.code != 0


def _media(media: Media) -> tuple[bytes, str]:
    if isinstance(media, bytes):
        return media, ""
    p = Path(media)
    return p.read_bytes(), p.name


def session_config(avatar_id: str, sample_rate_hz: int = 16000, channels: int = 1, sample_format: str = "s16",
                   encoding: common_pb2.FrameEncoding = common_pb2.FRAME_ENCODING_JPEG,
                   background: common_pb2.Background = common_pb2.BACKGROUND_ORIGINAL,
                   emotion: Any = None, controls: common_pb2.MotionControls | None = None,
                   idle_policy: avatar_pb2.IdlePolicy = avatar_pb2.IDLE_POLICY_ALIVE, sampling_steps: int = 0,
                   seed: int = 0,
                   overlap: int = 0, max_duration_s: int = 0, idle_timeout_s: int = 0,
                   jpeg_quality: int = 0) -> avatar_pb2.SessionConfig:
    fmt = common_pb2.SAMPLE_FORMAT_PCM_S16LE if sample_format == "s16" else common_pb2.SAMPLE_FORMAT_FLOAT32LE
    cfg = avatar_pb2.SessionConfig(
        avatar_id=avatar_id, audio_format=common_pb2.AudioFormat(sample_format=fmt, sample_rate_hz=sample_rate_hz,
                                                                 channels=channels),
        output=common_pb2.OutputOptions(encoding=encoding, background=background, jpeg_quality=jpeg_quality,
                                        paste_back=True),
        idle_policy=idle_policy, sampling_steps=sampling_steps, seed=seed, overlap=overlap,
        max_duration_s=max_duration_s, idle_timeout_s=idle_timeout_s)
    if emotion is not None:
        cfg.emotion.CopyFrom(emotion_control(emotion))
    if controls is not None:
        cfg.controls.CopyFrom(controls)
    return cfg


EMOTIONS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt"]


def emotion_control(emotion: Any) -> common_pb2.EmotionControl:
    """'happy', ['happy', 'surprise'] (a mixture), 8 probabilities, or an EmotionControl."""
    if isinstance(emotion, common_pb2.EmotionControl):
        return emotion
    if isinstance(emotion, str):
        emotion = [emotion]
    values = list(emotion)
    if values and all(isinstance(v, str) for v in values):
        labels = [cast(common_pb2.Emotion, EMOTIONS.index(v.lower()) + 1) for v in values]
        return common_pb2.EmotionControl(labels=labels)
    if len(values) == 8:
        return common_pb2.EmotionControl(probabilities=[float(v) for v in values])
    raise ValueError(f"emotion must be a label, a list of labels or 8 probabilities, not {emotion!r}")


class AvatarClient:
    """Blocking client."""

    def __init__(self, address: str, api_key: str | None = None, channel: grpc.Channel | None = None,
                 retry_for_s: float = DEFAULT_RETRY_FOR_S, credentials: grpc.ChannelCredentials | None = None
                 ) -> None:
        """`credentials` (e.g. `tls_credentials(root_cert="ca.pem")`) connect over TLS; default plaintext.
        `retry_for_s`: how long a new session waits out the server's retry hints (0: not at all)."""
        self.channel = channel or (grpc.secure_channel(address, credentials, options=channel_options()) if credentials
                                   else grpc.insecure_channel(address, options=channel_options()))
        self.stub = avatar_pb2_grpc.AvatarStub(self.channel)
        self.metadata = (("x-api-key", api_key),) if api_key else ()
        self.retry_for_s = retry_for_s

    def __enter__(self) -> AvatarClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def register_avatar(self, media: Media, crop: common_pb2.CropOptions | None = None,
                        timeout: float = 300) -> avatar_pb2.RegisterAvatarResponse:
        data, name = _media(media)
        req = avatar_pb2.RegisterAvatarRequest(media=data, filename=name, crop=crop)
        return self.stub.RegisterAvatar(req, metadata=self.metadata, timeout=timeout)

    def get_avatar(self, avatar_id: str, timeout: float = 30) -> avatar_pb2.RegisterAvatarResponse:
        """A registered avatar's size and source frames; NOT_FOUND if this tenant has no such avatar."""
        return self.stub.GetAvatar(avatar_pb2.GetAvatarRequest(avatar_id=avatar_id), metadata=self.metadata,
                                   timeout=timeout)

    def delete_avatar(self, avatar_id: str, timeout: float = 30) -> None:
        """Forget a registered avatar; NOT_FOUND if this tenant has no such avatar."""
        self.stub.DeleteAvatar(avatar_pb2.GetAvatarRequest(avatar_id=avatar_id), metadata=self.metadata,
                               timeout=timeout)

    def get_session(self, session_id: str, timeout: float = 30) -> avatar_pb2.SessionInfo:
        """A live session's figures (SessionStarted.session_id); NOT_FOUND once it has ended."""
        return self.stub.GetSession(avatar_pb2.GetSessionRequest(session_id=session_id), metadata=self.metadata,
                                    timeout=timeout)

    def converse(self, avatar_id: str, audio_chunks: Iterable[Any], config: avatar_pb2.SessionConfig | None = None,
                 end: bool = True, retry_for_s: float | None = None,
                 **config_kw: Any) -> Iterator[avatar_pb2.ConverseResponse]:
        """Open a session, stream `audio_chunks` (bytes or ConverseRequests), yield what the server sends.

        The audio is taken from `audio_chunks` in a thread of its own as fast as it comes, and written only as far
        ahead of the frames received as the server reads (SessionStarted.audio_read_ahead_ms); a ConverseRequest
        carrying an Interrupt drops the audio not written yet and goes next, so an interrupt behind a long
        text-to-speech answer reaches the server at once. A refusal with a retry hint (no capacity right now) is
        retried after the hinted time, for up to `retry_for_s` seconds (default: the client's); nothing is taken from
        `audio_chunks` until the session is admitted, so nothing of it is lost."""
        cfg = config or session_config(avatar_id, **config_kw)
        retry = RetryPolicy(self.retry_for_s if retry_for_s is None else retry_for_s)
        while True:
            try:
                opened = self._open(cfg)
                break
            except grpc.RpcError as err:
                time.sleep(retry.delay_s(err))
        if opened is None:
            return
        call, outbox, first = opened
        threading.Thread(target=outbox.feed, args=(audio_chunks, end, call), daemon=True,
                         name="ditto-converse-audio").start()
        try:
            yield first
            for msg in call:
                outbox.received(msg)
                if msg.WhichOneof("kind") == "final":
                    outbox.abort()  # the session is over: stop writing (as the asyncio client does)
                yield msg
        except grpc.RpcError as err:
            if outbox.error is not None:  # the caller's audio iterable failed: that is the error to see
                raise outbox.error from err
            raise
        finally:
            outbox.abort()
            call.cancel()  # the caller stopped reading: end the session on the server too

    def _open(self, cfg: avatar_pb2.SessionConfig) -> tuple[Any, _BlockingOutbox, avatar_pb2.ConverseResponse] | None:
        """One try at opening a session: the call, its outbox and the server's first message; raises the call's
        error when the server refuses; None when the server ended the call without a word."""
        outbox = _BlockingOutbox()
        outbox.put(avatar_pb2.ConverseRequest(config=cfg))
        call = self.stub.Converse(outbox.blocking_requests(), metadata=self.metadata)
        try:
            first = next(call, None)
            if first is not None and _refused(first):
                for _ in call:  # the FinalStatus comes first, then the call's error status
                    pass
        except grpc.RpcError:
            outbox.abort()
            raise
        if first is None:
            outbox.abort()
            return None
        outbox.admitted(cfg, first)
        return call, outbox, first

    def render(self, avatar_id: str, audio: Media, out: str | Path | None = None, **kw: Any) -> bytes:
        data, name = _media(audio)
        req = avatar_pb2.RenderRequest(avatar_id=avatar_id, audio=data, audio_filename=name, **kw)
        chunks = []
        for msg in self.stub.Render(req, metadata=self.metadata):
            if msg.WhichOneof("kind") == "mp4_chunk":
                chunks.append(msg.mp4_chunk)
        mp4 = b"".join(chunks)
        if out is not None:
            Path(out).write_bytes(mp4)
        return mp4


def _bytes_per_second(fmt: common_pb2.AudioFormat) -> int:
    width = 4 if fmt.sample_format == common_pb2.SAMPLE_FORMAT_FLOAT32LE else 2
    return width * (fmt.sample_rate_hz or 16000) * (fmt.channels or 1)


class _Outbox:
    """The requests of one live session that gRPC has not taken yet, in order, written no further ahead than the
    server reads.

    The server reads a session's audio only so far ahead of the frames the client has taken (SessionStarted's
    `audio_read_ahead_ms`); whatever a client writes beyond that waits in gRPC's buffers, and an Interrupt written
    after it waits behind it: with speech handed over faster than realtime (text-to-speech) the face would go on
    talking for as long as that speech lasts. So audio beyond the read-ahead stays here, where an interrupt can drop
    it. `send_audio` never waits (a caller may send a whole file before reading a frame); what is held here is the
    caller's own audio, counted in `buffered_audio_bytes`."""

    def __init__(self) -> None:
        self._items: deque[avatar_pb2.ConverseRequest] = deque()
        self._audio_bytes = 0
        self._closed = False  # nothing more goes in; the stream half-closes once what is here has been written
        self._wake = asyncio.Event()
        # held by every method that changes the state; on one event loop nothing else can run in between, so no
        # lock is needed (the blocking client's subclass, shared by threads, puts a real one here)
        self._lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        # pacing, once the server has said how far it reads ahead (0: an older server, no pacing)
        self._bytes_per_s = 0
        self._read_ahead_s = 0.0
        self._in_flight_s = 0.0  # audio written whose frames have not come back, this epoch
        self._epoch = 0
        self._interrupting = False  # between our Interrupt and the server's answer: frames are of the old epoch

    @property
    def audio_bytes(self) -> int:
        return self._audio_bytes

    def _changed(self) -> None:
        # one event per change, so every waiter of the old one wakes and re-checks (all synchronous, so the reader
        # of the responses and the senders can call it from anywhere on the loop)
        self._wake.set()
        self._wake = asyncio.Event()

    def pace(self, fmt: common_pb2.AudioFormat, read_ahead_ms: int) -> None:
        with self._lock:
            self._bytes_per_s, self._read_ahead_s = _bytes_per_second(fmt), read_ahead_ms / 1000
            self._changed()

    def admitted(self, cfg: avatar_pb2.SessionConfig, first: avatar_pb2.ConverseResponse) -> None:
        """The server admitted the session: pace the audio by the read-ahead its SessionStarted names."""
        if first.WhichOneof("kind") == "started":
            self.pace(cfg.audio_format, first.started.audio_read_ahead_ms)

    def put(self, request: avatar_pb2.ConverseRequest) -> None:
        with self._lock:
            if not self._closed:
                self._items.append(request)
                if request.WhichOneof("kind") == "audio":
                    self._audio_bytes += len(request.audio.data)
                self._changed()

    def interrupt(self) -> None:
        """Drop the audio not written yet (the server would read it only to throw it away) and send the Interrupt
        next, behind only what is not audio."""
        with self._lock:
            self._items = deque(r for r in self._items if r.WhichOneof("kind") != "audio")
            self._audio_bytes = 0
            self._in_flight_s, self._interrupting = 0.0, True
            self.put(avatar_pb2.ConverseRequest(interrupt=avatar_pb2.Interrupt()))

    def received(self, msg: avatar_pb2.ConverseResponse) -> None:
        """Count what comes back: each frame of the current epoch is 40 ms of audio the server no longer holds."""
        kind = msg.WhichOneof("kind")
        with self._lock:
            if kind == "event" and msg.event.WhichOneof("event") == "interrupted":
                self._epoch, self._interrupting = msg.event.interrupted.new_epoch, False
            elif kind == "frame" and not self._interrupting and msg.frame.epoch >= self._epoch:
                self._epoch = msg.frame.epoch
                self._in_flight_s = max(0.0, self._in_flight_s - FRAME_S)
                self._changed()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._changed()

    def abort(self) -> None:
        """The session is over: what is still here will never be read."""
        with self._lock:
            self._items.clear()
            self._audio_bytes = 0
            self.close()

    def _head_may_go(self) -> bool:
        head = self._items[0]
        return (head.WhichOneof("kind") != "audio" or not self._bytes_per_s
                or self._in_flight_s < self._read_ahead_s)

    async def requests(self) -> AsyncIterator[avatar_pb2.ConverseRequest]:
        """The call's request stream: what is put here, in order and paced, until closed and written out."""
        while True:
            while not self._may_pop():
                await self._wake.wait()
            if not self._items:
                return
            yield self._pop()

    def _may_pop(self) -> bool:
        """The head may be written now, or everything has been and the stream is closed."""
        return bool(self._items and self._head_may_go()) or (self._closed and not self._items)

    def _pop(self) -> avatar_pb2.ConverseRequest:
        request = self._items.popleft()
        if request.WhichOneof("kind") == "audio":
            size = len(request.audio.data)
            self._audio_bytes -= size
            if self._bytes_per_s:
                self._in_flight_s += size / self._bytes_per_s
        return request


class _BlockingOutbox(_Outbox):
    """`_Outbox` for the blocking client, where three threads share it: `feed` takes the caller's audio iterable,
    gRPC's request thread takes `blocking_requests`, and the caller's thread reports the frames it iterates."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()  # re-entrant: interrupt() and abort() call put() and close() under it
        self._lock = self._cond
        self.error: BaseException | None = None  # what the caller's iterable raised, if it did

    def _changed(self) -> None:
        self._cond.notify_all()  # always called with the lock held, by the base class's methods

    def feed(self, audio_chunks: Iterable[Any], end: bool, call: Any) -> None:
        """Take the caller's audio as fast as it comes (so an Interrupt among it is seen at once), then the end."""
        try:
            for chunk in audio_chunks:
                if self._closed:
                    return  # the session is over or the caller stopped reading: take no more
                if not isinstance(chunk, avatar_pb2.ConverseRequest):
                    self.put(avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=chunk)))
                elif chunk.WhichOneof("kind") == "interrupt":
                    self.interrupt()
                else:
                    self.put(chunk)
            if end:
                self.put(avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio()))
            self.close()
        except BaseException as exc:  # surfaced by converse() in the caller's thread
            self.error = exc
            self.abort()
            call.cancel()

    def blocking_requests(self) -> Iterator[avatar_pb2.ConverseRequest]:
        while True:
            with self._cond:
                self._cond.wait_for(self._may_pop)
                if not self._items:
                    return
                request = self._pop()
            yield request


class ConverseStream:
    """A live session: send audio and controls while iterating over what the server sends back.

    `send_audio` queues the chunk and returns; the SDK writes audio only as far ahead of the frames received as the
    server reads, so `interrupt` can drop the rest and reach the server at once."""

    def __init__(self, call: Any, outbox: _Outbox, first: avatar_pb2.ConverseResponse | None = None) -> None:
        self._call = call
        self._outbox = outbox
        self._first = first
        self.started: avatar_pb2.SessionStarted | None = (
            first.started if first is not None and first.WhichOneof("kind") == "started" else None)

    @property
    def buffered_audio_bytes(self) -> int:
        """Audio handed to `send_audio` that gRPC has not taken yet."""
        return self._outbox.audio_bytes

    async def send_audio(self, data: bytes, controls: Iterable[common_pb2.TimedControl] = ()) -> None:
        self._outbox.put(avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=data, controls=controls)))

    async def control(self, timed: Iterable[common_pb2.TimedControl] = (),
                      overall: common_pb2.MotionControls | None = None) -> None:
        self._outbox.put(avatar_pb2.ConverseRequest(control=avatar_pb2.ControlUpdate(controls=timed,
                                                                                    overall=overall)))

    async def interrupt(self) -> None:
        self._outbox.interrupt()

    async def keep_alive(self) -> None:
        self._outbox.put(avatar_pb2.ConverseRequest(keep_alive=avatar_pb2.KeepAlive()))

    async def end_audio(self) -> None:
        self._outbox.put(avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio()))
        self._outbox.close()

    def cancel(self) -> None:
        self._outbox.abort()
        self._call.cancel()

    def __aiter__(self) -> AsyncIterator[avatar_pb2.ConverseResponse]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[avatar_pb2.ConverseResponse]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while True:  # read(), not `async for`: grpc.aio forbids mixing the two on one call, and open_session read
            msg = await self._call.read()
            if msg is grpc.aio.EOF:
                break
            self._outbox.received(msg)
            if msg.WhichOneof("kind") == "final":
                # The session is over: stop sending (the server sends its status once we have), so that no write
                # of ours races the call's end and hides the status behind grpc.aio's INTERNAL (grpc/grpc#36066).
                self._outbox.abort()
            yield msg
        if await self._call.code() != grpc.StatusCode.OK:  # as `async for` would: the error status ends the iteration
            raise await _call_error(self._call)


async def _call_error(call: Any) -> grpc.aio.AioRpcError:
    """The error a finished grpc.aio call ended with, as `async for` over it would raise it."""
    return grpc.aio.AioRpcError(await call.code(), await call.initial_metadata(), await call.trailing_metadata(),
                                await call.details())


class AsyncAvatarClient:
    def __init__(self, address: str, api_key: str | None = None, retry_for_s: float = DEFAULT_RETRY_FOR_S,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.channel = (grpc.aio.secure_channel(address, credentials, options=channel_options()) if credentials
                        else grpc.aio.insecure_channel(address, options=channel_options()))
        self.stub = avatar_pb2_grpc.AvatarStub(self.channel)
        self.metadata = (("x-api-key", api_key),) if api_key else ()
        self.retry_for_s = retry_for_s

    async def __aenter__(self) -> AsyncAvatarClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def register_avatar(self, media: Media, crop: common_pb2.CropOptions | None = None,
                              timeout: float = 300) -> avatar_pb2.RegisterAvatarResponse:
        data, name = _media(media)
        req = avatar_pb2.RegisterAvatarRequest(media=data, filename=name, crop=crop)
        return await self.stub.RegisterAvatar(req, metadata=self.metadata, timeout=timeout)

    async def get_avatar(self, avatar_id: str, timeout: float = 30) -> avatar_pb2.RegisterAvatarResponse:
        """A registered avatar's size and source frames; NOT_FOUND if this tenant has no such avatar."""
        return await self.stub.GetAvatar(avatar_pb2.GetAvatarRequest(avatar_id=avatar_id), metadata=self.metadata,
                                         timeout=timeout)

    async def delete_avatar(self, avatar_id: str, timeout: float = 30) -> None:
        """Forget a registered avatar; NOT_FOUND if this tenant has no such avatar."""
        await self.stub.DeleteAvatar(avatar_pb2.GetAvatarRequest(avatar_id=avatar_id), metadata=self.metadata,
                                     timeout=timeout)

    async def get_session(self, session_id: str, timeout: float = 30) -> avatar_pb2.SessionInfo:
        """A live session's figures (SessionStarted.session_id); NOT_FOUND once it has ended."""
        return await self.stub.GetSession(avatar_pb2.GetSessionRequest(session_id=session_id),
                                          metadata=self.metadata, timeout=timeout)

    async def open_session(self, avatar_id: str, config: avatar_pb2.SessionConfig | None = None,
                           retry_for_s: float | None = None, **config_kw: Any) -> ConverseStream:
        """Open a session and return once the server has admitted it (`stream.started` is its SessionStarted; the
        stream yields it first too). A refusal with a retry hint is retried after the hinted time, for up to
        `retry_for_s` seconds (default: the client's); any other refusal raises grpc.aio.AioRpcError."""
        cfg = config or session_config(avatar_id, **config_kw)
        retry = RetryPolicy(self.retry_for_s if retry_for_s is None else retry_for_s)
        while True:
            try:
                return await self._open(cfg)
            except grpc.aio.AioRpcError as err:
                await asyncio.sleep(retry.delay_s(err))

    async def _open(self, cfg: avatar_pb2.SessionConfig) -> ConverseStream:
        """One try at opening a session; raises the call's error when the server refuses or ends it at once."""
        outbox = _Outbox()
        outbox.put(avatar_pb2.ConverseRequest(config=cfg))
        call = self.stub.Converse(outbox.requests(), metadata=self.metadata)
        try:
            first = await call.read()
            if first is grpc.aio.EOF or _refused(first):
                outbox.close()  # the server sends the call's status once the request stream has ended
                raise await _call_error(call)
        except grpc.aio.AioRpcError:
            outbox.abort()
            call.cancel()
            raise
        outbox.admitted(cfg, first)
        return ConverseStream(call, outbox, first)

    async def render(self, avatar_id: str, audio: Media, **kw: Any) -> bytes:
        data, name = _media(audio)
        req = avatar_pb2.RenderRequest(avatar_id=avatar_id, audio=data, audio_filename=name, **kw)
        chunks = []
        async for msg in self.stub.Render(req, metadata=self.metadata):
            if msg.WhichOneof("kind") == "mp4_chunk":
                chunks.append(msg.mp4_chunk)
        return b"".join(chunks)

