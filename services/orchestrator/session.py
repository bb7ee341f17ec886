"""One live session: client events in, bus entries out; frames back from the renderer, paced to realtime.

The reader side validates each client message, spends credits (audio seconds in flight) and stops reading the
client when it is ahead, so gRPC flow control reaches the client. The writer side paces frames by presentation
time, reports lag, and ends with one FinalStatus. Interrupt bumps the epoch: every stage drops older work, the
motion stage eases back to rest, and the client learns the last frame it was sent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import numpy as np

from ditto import codec, telemetry
from ditto.bus.worker import epoch_key
from ditto.look_ahead import audio_look_ahead_ms
from ditto.redaction import redact
from ditto_client.v1 import avatar_pb2, bus_pb2, common_pb2, renderer_pb2

if TYPE_CHECKING:
    from services.orchestrator.placement import Placement
    from services.orchestrator.service import Orchestrator
    from services.orchestrator.tenants import Tenant

FPS = 25
FRAME_S = 1 / FPS

log = telemetry.get_logger("ditto.orchestrator")
_first_frame = telemetry.histogram("ditto_first_frame_seconds", "First audio chunk to first frame sent", (),
                                   buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10))
_lag = telemetry.gauge("ditto_session_lag_seconds", "How far behind realtime a session's frames are", ("session",))
_frames = telemetry.counter("ditto_frames_sent_total", "Frames delivered to clients", ())
_late = telemetry.counter("ditto_frames_late_total", "Frames sent more than one frame late", ())
_active = telemetry.gauge("ditto_sessions_active", "Open sessions on this replica", ())
_fps = telemetry.gauge("ditto_session_delivered_fps", "Delivered frames per second, per session", ("session",))

SAMPLE_BYTES = {common_pb2.SAMPLE_FORMAT_PCM_S16LE: 2, common_pb2.SAMPLE_FORMAT_FLOAT32LE: 4}


class SessionError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def validate_audio_format(fmt: common_pb2.AudioFormat) -> None:
    if fmt.sample_format not in SAMPLE_BYTES:
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT,
                           "audio_format.sample_format must be PCM_S16LE or FLOAT32LE")
    if not 8000 <= fmt.sample_rate_hz <= 192000:
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"audio_format.sample_rate_hz {fmt.sample_rate_hz} is outside 8000..192000")
    if not 1 <= fmt.channels <= 8:
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"audio_format.channels {fmt.channels} is outside 1..8")


def validate_controls(c: common_pb2.MotionControls, where: str) -> None:
    if len(c.delta_exp) not in (0, 63):
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{where}.delta_exp has {len(c.delta_exp)} values; give 63 (21 keypoints x 3) or none")
    values = [getattr(c, f) for f in ("delta_pitch", "delta_yaw", "delta_roll", "alpha_pitch", "alpha_yaw",
                                      "alpha_roll", "vad_alpha", "fade_alpha", "blink_interval_s")
              if c.HasField(f)] + list(c.delta_exp)
    if not np.all(np.isfinite(np.asarray(values, dtype=np.float64))):
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"{where} holds a NaN or infinite value")
    e = c.emotion
    if len(e.probabilities) not in (0, 8):
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}.emotion.probabilities needs 8 values")
    if e.probabilities and (min(e.probabilities) < 0 or sum(e.probabilities) <= 0):
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"{where}.emotion.probabilities must be >= 0, sum > 0")


def validate_output(o: common_pb2.OutputOptions) -> None:
    """Output options are checked at the door, so a bad value is the client's INVALID_ARGUMENT, not a stage error."""
    if o.encoding not in common_pb2.FrameEncoding.values():
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"output.encoding {o.encoding} is not a FrameEncoding")
    if o.background not in common_pb2.Background.values():
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"output.background {o.background} is not a Background")
    if o.jpeg_quality > 100:
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"output.jpeg_quality {o.jpeg_quality} is outside 1..100 (0 = default 90)")
    if o.background == common_pb2.BACKGROUND_TRANSPARENT and o.encoding == common_pb2.FRAME_ENCODING_H264:
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT,
                           "a transparent background needs RAW_RGB or JPEG frames, not H264")


def validate_config(c: avatar_pb2.SessionConfig) -> None:
    validate_audio_format(c.audio_format)
    validate_output(c.output)
    validate_controls(c.controls, "config.controls")
    if c.HasField("emotion"):
        validate_controls(common_pb2.MotionControls(emotion=c.emotion), "config")
    if c.idle_policy not in avatar_pb2.IdlePolicy.values():
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"config.idle_policy {c.idle_policy} is not an IdlePolicy")
    if c.overlap and c.overlap >= 80:
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, "config.overlap must be below 80 frames")
    if c.sampling_steps > 1000:
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, "config.sampling_steps must be at most 1000")
    if c.seed < 0:
        raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"config.seed {c.seed} is negative; give 0 (random) "
                           "or a positive seed")


@dataclass
class _EpochCounters:
    audio_s: float = 0.0
    frames: int = 0


@dataclass
class Session:
    orch: Orchestrator
    tenant: Tenant
    config: avatar_pb2.SessionConfig
    avatar: renderer_pb2.RegisterSourceResponse
    placement: Placement
    offline: bool = False
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        s = self.orch.settings
        self.route = self.placement.route(self.orch.bus, self.orch.frames_stream)
        self.epoch = 0
        self.seq = 0
        self.counters = _EpochCounters()
        self.epoch_base = {0: 0}
        self.last_sent_index = -1
        self.frames_sent = 0
        self.audio_seconds = 0.0
        self.outgoing: asyncio.Queue[avatar_pb2.ConverseResponse | None] = asyncio.Queue()
        self.frames_in: asyncio.Queue[tuple[int, bus_pb2.StreamEntry] | None] = asyncio.Queue()
        self.credit = asyncio.Event()
        self.ended_audio = False
        self.closed = False
        self.started_at = time.monotonic()
        self.last_client_msg = time.monotonic()
        self.waiting_for_credit = False
        self.last_audio_at = 0.0
        self.first_audio_at: float | None = None
        self.first_input_sample = 0
        fmt = self.config.audio_format
        self.bytes_per_second = SAMPLE_BYTES[fmt.sample_format] * fmt.channels * fmt.sample_rate_hz
        self.frame_bytes = SAMPLE_BYTES[fmt.sample_format] * fmt.channels
        self.max_chunk_bytes = int(self.bytes_per_second * s.max_chunk_ms / 1000)
        self.max_duration_s = float(min(self.config.max_duration_s or s.max_duration_s, s.max_duration_s))
        self.idle_timeout_s = float(self.config.idle_timeout_s or s.idle_timeout_s)
        self.overlap = self.config.overlap or s.default_overlap
        # Audio the stages need beyond a frame before it can be made (announced in SessionStarted; credits and the
        # idle feed count on top of it).
        self.look_ahead_ms = audio_look_ahead_ms(self.overlap)
        self.look_ahead_s = self.look_ahead_ms / 1000
        self.final: tuple[grpc.StatusCode, str] | None = None
        self._t0: float | None = None
        self._paced_index0 = 0
        self._fps_window: list[float] = []
        self._last_lag_report = 0.0
        self._tasks: list[asyncio.Task] = []

    # ---- publishing ----
    def _entry(self, kind: bus_pb2.EntryKind, meta: bytes = b"", tensors: dict | None = None) -> bus_pb2.StreamEntry:
        e = bus_pb2.StreamEntry(session_id=self.session_id, epoch=self.epoch, seq=self.seq, kind=kind, meta=meta,
                                tenant_id=self.tenant.id, created_unix_ms=int(time.time() * 1000))
        e.route.update(self.route)
        e.trace_context.update(telemetry.inject())
        if tensors:
            e.tensors.extend(codec.named(tensors))
        self.seq += 1
        return e

    async def _publish(self, kind: bus_pb2.EntryKind, meta: bytes = b"", tensors: dict | None = None) -> None:
        with telemetry.tracer("ditto.orchestrator").start_as_current_span(
                "orchestrator.publish", attributes={"session": self.session_id, "epoch": self.epoch,
                                                    "seq": self.seq, "kind": kind}):
            entry = self._entry(kind, meta, tensors)
            log.debug("entry published", session=self.session_id, seq=entry.seq, kind=kind)
            await self.orch.bus.publish(self.route["audio_encoder"], entry)

    async def start(self) -> None:
        c = self.config
        spec = bus_pb2.SessionSpec(
            avatar_id=c.avatar_id, tenant_id=self.tenant.id, audio_format=c.audio_format, emotion=c.emotion,
            controls=c.controls, sampling_steps=c.sampling_steps or self.orch.settings.default_sampling_steps,
            overlap=self.overlap, seed=c.seed, output=c.output,
            offline=self.offline)
        spec.avatar.CopyFrom(self.avatar.motion_info)
        await self._publish(bus_pb2.ENTRY_KIND_START, spec.SerializeToString())
        self._tasks.append(asyncio.create_task(self._pace()))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        _active.inc()

    # ---- client side ----
    async def audio(self, data: bytes, idle: bool = False) -> None:
        if not data:
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, "empty audio chunk; send samples or EndOfAudio")
        if self.ended_audio:
            raise SessionError(grpc.StatusCode.FAILED_PRECONDITION, "audio after EndOfAudio; start a new session")
        if len(data) % self.frame_bytes:
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"chunk of {len(data)} bytes is not a whole number of {self.frame_bytes}-byte "
                               "sample frames for the declared audio_format")
        if len(data) > self.max_chunk_bytes:
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"chunk of {1000 * len(data) / self.bytes_per_second:.0f} ms exceeds the maximum of "
                               f"{self.orch.settings.max_chunk_ms} ms; send smaller chunks")
        if self.config.audio_format.sample_format == common_pb2.SAMPLE_FORMAT_FLOAT32LE:
            if not np.all(np.isfinite(np.frombuffer(data, dtype="<f4"))):
                raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, "audio chunk holds NaN or infinite samples")
        while not self.offline and self._in_flight_s() > self.orch.settings.credits_s + self.look_ahead_s:
            await self._wait_for_credit()  # out of credits: stop reading the client until frames come back
        while self.offline and self._in_flight_s() > 4 * (self.orch.settings.credits_s + self.look_ahead_s):
            await self._wait_for_credit()
        if not idle and self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        seconds = len(data) / self.bytes_per_second
        meta = bus_pb2.AudioMeta(idle=idle, first_sample=self.first_input_sample)
        self.first_input_sample += len(data) // self.frame_bytes
        await self._publish(bus_pb2.ENTRY_KIND_DATA, meta.SerializeToString(),
                            {"pcm": np.frombuffer(data, dtype=np.uint8)})
        self.counters.audio_s += seconds
        self.audio_seconds += seconds
        self.last_audio_at = time.monotonic()

    def _in_flight_s(self) -> float:
        return self.counters.audio_s - self.counters.frames * FRAME_S

    async def control(self, update: avatar_pb2.ControlUpdate) -> None:
        for i, tc in enumerate(update.controls):
            validate_controls(tc.controls, f"controls[{i}].controls")
            if tc.start_frame < 0 or (tc.end_frame and tc.end_frame <= tc.start_frame):
                raise SessionError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"controls[{i}]: need 0 <= start_frame < end_frame (or end_frame 0 = open)")
            if tc.start_frame <= self.last_sent_index:
                raise SessionError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"controls[{i}] starts at frame {tc.start_frame}, but frame {self.last_sent_index}"
                                   " was already sent; time-code controls for frames still to come")
        if update.HasField("overall"):
            validate_controls(update.overall, "overall")
        spec = bus_pb2.ControlSpec(overall=update.overall, has_overall=update.HasField("overall"))
        for tc in update.controls:
            shifted = spec.timed.add()
            shifted.CopyFrom(tc)
            # the client counts frames over the whole session; stages count within the epoch
            base = self.epoch_base[self.epoch]
            shifted.start_frame = max(0, tc.start_frame - base)
            shifted.end_frame = max(0, tc.end_frame - base) if tc.end_frame else 0
        await self._publish(bus_pb2.ENTRY_KIND_CONTROL, spec.SerializeToString())

    async def interrupt(self) -> None:
        self.epoch += 1
        self.seq = 0
        await self.orch.bus.set_state(epoch_key(self.orch.bus, self.session_id), str(self.epoch).encode(),
                                      self.orch.bus.state_ttl_s)
        self.epoch_base[self.epoch] = self.last_sent_index + 1
        self.counters = _EpochCounters()
        self._t0 = None  # pacing restarts with the next epoch's first frame
        spec = bus_pb2.SessionSpec(overlap=self.overlap)
        await self._publish(bus_pb2.ENTRY_KIND_INTERRUPT, spec.SerializeToString())
        self.credit.set()
        await self.outgoing.put(avatar_pb2.ConverseResponse(event=avatar_pb2.SessionEvent(
            interrupted=avatar_pb2.InterruptedEvent(last_frame_index=self.last_sent_index,
                                                    last_pts_ms=max(0, self.last_sent_index) * 40,
                                                    new_epoch=self.epoch))))

    async def _wait_for_credit(self) -> None:
        # While the server does not read, the client is not idle: a client that sends speech faster than realtime
        # (text-to-speech) waits here, and its silence must not count toward the idle timeout.
        self.credit.clear()
        self.waiting_for_credit = True
        try:
            await self.credit.wait()
        finally:
            self.waiting_for_credit = False
            self.last_client_msg = time.monotonic()

    async def end_of_audio(self) -> None:
        if not self.ended_audio:
            self.ended_audio = True
            await self._publish(bus_pb2.ENTRY_KIND_END)

    async def read_client(self, requests) -> None:
        """Consume the client's stream. Stops with a status on bad input; EOF without EndOfAudio ends audio too."""
        try:
            async for req in requests:
                self.last_client_msg = time.monotonic()
                kind = req.WhichOneof("kind")
                if kind == "audio":
                    if req.audio.controls:
                        await self.control(avatar_pb2.ControlUpdate(controls=req.audio.controls))
                    await self.audio(req.audio.data)
                elif kind == "control":
                    await self.control(req.control)
                elif kind == "interrupt":
                    await self.interrupt()
                elif kind == "end_of_audio":
                    await self.end_of_audio()
                elif kind == "keep_alive":
                    pass
                elif kind == "config":
                    raise SessionError(grpc.StatusCode.FAILED_PRECONDITION,
                                       "a second SessionConfig; configure once, then use ControlUpdate")
                else:
                    raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, "empty ConverseRequest")
            await self.end_of_audio()
        except SessionError as err:
            await self.fail(err.code, str(err))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the bus went away, or a bug: end this session cleanly, keep the server
            log.exception("session reader failed", session=self.session_id)
            await self.fail(grpc.StatusCode.UNAVAILABLE,
                            redact(f"session store unavailable: {err}; start a new session"))

    # ---- frames side ----
    def on_entry(self, entry: bus_pb2.StreamEntry) -> None:
        """Called by the frames dispatcher for every entry the renderer sent this session."""
        if entry.epoch != self.epoch or self.closed:
            return  # stale work of an interrupted epoch
        if entry.kind == bus_pb2.ENTRY_KIND_DATA:
            self.counters.frames += 1
            self.credit.set()
        self.frames_in.put_nowait((entry.epoch, entry))

    async def _pace(self) -> None:
        try:
            while True:
                item = await self.frames_in.get()
                if item is None:
                    return
                epoch, entry = item
                if epoch != self.epoch:
                    continue
                if entry.kind == bus_pb2.ENTRY_KIND_END:
                    await self.finish(grpc.StatusCode.OK, "")
                    return
                if entry.kind == bus_pb2.ENTRY_KIND_ERROR:
                    st = common_pb2.Status()
                    st.ParseFromString(entry.meta)
                    await self.finish(status_code(st.code), st.message)
                    return
                if entry.kind != bus_pb2.ENTRY_KIND_DATA:
                    continue
                await self._send_frame(entry)
        except asyncio.CancelledError:
            pass

    async def _send_frame(self, entry: bus_pb2.StreamEntry) -> None:
        meta = bus_pb2.FrameMeta()
        meta.ParseFromString(entry.meta)
        index = self.epoch_base[entry.epoch] + meta.index
        now = time.monotonic()
        lag = 0.0
        if not self.offline:
            if self._t0 is None:
                self._t0, self._paced_index0 = now, index
            due = self._t0 + (index - self._paced_index0) * FRAME_S
            if due > now:
                await asyncio.sleep(due - now)
                if entry.epoch != self.epoch:
                    return
            lag = max(0.0, time.monotonic() - due)
        data = codec.unnamed(entry.tensors).get("frame")
        frame = avatar_pb2.VideoFrame(index=index, pts_ms=index * 40, data=bytes(data) if data is not None else b"",
                                      width=meta.width, height=meta.height, encoding=meta.encoding,
                                      epoch=entry.epoch, idle=meta.idle)
        await self.outgoing.put(avatar_pb2.ConverseResponse(frame=frame))
        if self.frames_sent == 0 and self.first_audio_at is not None:
            _first_frame.observe(time.monotonic() - self.first_audio_at)
        if self.frames_sent == 0:
            with telemetry.tracer("ditto.orchestrator").start_as_current_span(
                    "orchestrator.first_frame", context=telemetry.extract(entry.trace_context)):
                log.info("first frame", session=self.session_id, index=index)
        self.frames_sent += 1
        self.last_sent_index = index
        _frames.inc()
        if lag > FRAME_S:
            _late.inc()
        t = time.monotonic()
        self._fps_window = [x for x in self._fps_window if t - x < 2.0] + [t]
        if not self.offline and t - self._last_lag_report >= self.orch.settings.lag_report_every_s:
            self._last_lag_report = t
            fps = len(self._fps_window) / 2.0
            _lag.labels(self.session_id).set(lag)
            _fps.labels(self.session_id).set(fps)
            await self.outgoing.put(avatar_pb2.ConverseResponse(event=avatar_pb2.SessionEvent(
                lag=avatar_pb2.LagEvent(lag_ms=lag * 1000, delivered_fps=fps))))

    async def _housekeeping(self) -> None:
        """Idle feed, limits, and keep-alive of the session's presence keys."""
        s = self.orch.settings
        last_touch = 0.0
        silence = b"\0" * (self.frame_bytes * (self.config.audio_format.sample_rate_hz // 5))  # 200 ms
        try:
            while not self.closed:
                await asyncio.sleep(0.04)
                now = time.monotonic()
                if now - last_touch > 5:
                    last_touch = now
                    await self.orch.quotas.touch(self.tenant.id, self.session_id)
                    await self.orch.placer.touch(self.session_id, self.placement)
                if self.offline:
                    continue
                if now - self.started_at > self.max_duration_s:
                    await self.fail(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"session reached its maximum duration of {self.max_duration_s:.0f} s")
                    return
                # after EndOfAudio the client has nothing more to say while the last frames drain: no idle timeout
                if (not self.ended_audio and not self.waiting_for_credit
                        and now - self.last_client_msg > self.idle_timeout_s):
                    await self.fail(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no message from the client for {self.idle_timeout_s:.0f} s; send audio or "
                                    "KeepAlive to keep the session open")
                    return
                alive = self.config.idle_policy in (avatar_pb2.IDLE_POLICY_UNSPECIFIED, avatar_pb2.IDLE_POLICY_ALIVE)
                if (alive and not self.ended_audio and now - self.last_audio_at > s.idle_feed_after_ms / 1000
                        and self._in_flight_s() < self.look_ahead_s + 0.2):
                    await self.audio(silence, idle=True)
        except asyncio.CancelledError:
            pass
        except SessionError as err:
            await self.fail(err.code, str(err))
        except Exception as err:
            log.exception("session housekeeping failed", session=self.session_id)
            await self.fail(grpc.StatusCode.UNAVAILABLE,
                            redact(f"session store unavailable: {err}; start a new session"))

    # ---- ending ----
    async def finish(self, code: grpc.StatusCode, message: str) -> None:
        if self.final is not None:
            return
        self.final = (code, message)
        await self.outgoing.put(avatar_pb2.ConverseResponse(final=avatar_pb2.FinalStatus(
            status=common_pb2.Status(code=code.value[0], message=message), frames_sent=self.frames_sent,
            audio_seconds=self.audio_seconds)))
        await self.outgoing.put(None)

    async def fail(self, code: grpc.StatusCode, message: str) -> None:
        log.info("session ends with an error", session=self.session_id, code=code.name, reason=message)
        await self.finish(code, message)

    async def close(self) -> None:
        """Free everything: stages drop the session's state, quota and placement are released."""
        if self.closed:
            return
        self.closed = True
        for t in self._tasks:
            t.cancel()
        self.frames_in.put_nowait(None)
        _active.dec()
        try:
            _lag.remove(self.session_id)
            _fps.remove(self.session_id)
        except KeyError:
            pass
        try:
            self.epoch += 1  # everything still queued for this session is stale now
            self.seq = 0
            await self.orch.bus.set_state(epoch_key(self.orch.bus, self.session_id), str(self.epoch).encode(), 600)
            await self._publish(bus_pb2.ENTRY_KIND_CLOSE)
            await self.orch.quotas.release(self.tenant.id, self.session_id, time.monotonic() - self.started_at)
            await self.orch.placer.release(self.session_id, self.placement)
        except Exception as err:  # Redis gone: keys expire on their own
            log.warning("session cleanup incomplete", session=self.session_id, error=str(err))

    def info(self) -> avatar_pb2.SessionInfo:
        return avatar_pb2.SessionInfo(session_id=self.session_id, avatar_id=self.config.avatar_id,
                                      frames_sent=self.frames_sent, audio_seconds=self.audio_seconds,
                                      epoch=self.epoch, active=not self.closed)


def status_code(value: int) -> grpc.StatusCode:
    for c in grpc.StatusCode:
        if c.value[0] == value:
            return c
    return grpc.StatusCode.UNKNOWN
