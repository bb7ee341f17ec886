"""One live session: client events in, bus entries out; frames back from the renderer, paced to realtime.

The reader side validates each client message (`validation`, `controls`), spends credits (`credits`: audio seconds
in flight) and stops reading the client when it is ahead, so gRPC flow control reaches the client. The writer side
paces frames by presentation time, reports lag, and queues them for the client (`outbox`), which ends with one
FinalStatus. Interrupt bumps the epoch: every stage drops older work, the motion stage eases back to rest, and the
client learns the last frame it was sent. Housekeeping feeds idle silence, enforces the session's limits and keeps
its presence keys alive.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import numpy as np

from ditto import codec, pipeline, telemetry
from ditto.bus.base import BusError
from ditto.bus.retry import retry_bus
from ditto.look_ahead import audio_look_ahead_ms
from ditto.pipeline import FPS
from ditto.redaction import redact
from ditto_client.status import status_code
from ditto_client.v1 import avatar_pb2, bus_pb2, common_pb2, renderer_pb2
from services.orchestrator.controls import Span, TokenBucket, live_spans, timed_spans
from services.orchestrator.credits import Credits, read_ahead_s, video_frame_bytes
from services.orchestrator.errors import ApiError
from services.orchestrator.outbox import Outbox
from services.orchestrator.validation import SAMPLE_BYTES, validate_controls

if TYPE_CHECKING:
    from services.orchestrator.placement import Placement
    from services.orchestrator.service import Orchestrator
    from services.orchestrator.tenants import Tenant

FRAME_S = 1 / FPS
# A live session is told this long before it reaches its maximum duration (at most half of it), in a WarningEvent.
SESSION_ENDING_WARNING_S = 10.0

log = telemetry.get_logger("ditto.orchestrator")
_first_frame = telemetry.histogram("ditto_first_frame_seconds", "First audio chunk to first frame sent", (),
                                   buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10))
_lag = telemetry.gauge("ditto_session_lag_seconds", "How far behind realtime a session's frames are", ("session",))
_frames = telemetry.counter("ditto_frames_sent_total", "Frames delivered to clients", ())
_late = telemetry.counter("ditto_frames_late_total", "Frames sent more than one frame late", ())
_active = telemetry.gauge("ditto_sessions_active", "Open sessions on this replica, per tenant", ("tenant",))
_ended = telemetry.counter("ditto_sessions_ended_total", "Sessions ended after they started, by final status code "
                           "(CANCELLED: the client went away)", ("code",))
_fps = telemetry.gauge("ditto_session_delivered_fps", "Delivered frames per second, per session", ("session",))


def lost_entries(entry: bus_pb2.StreamEntry, expected: int) -> bus_pb2.StreamEntry:
    """The ERROR that ends a session whose renderer entries `expected` .. `entry.seq - 1` never came: never end OK
    with frames missing."""
    status = common_pb2.Status(
        code=grpc.StatusCode.UNAVAILABLE.value[0],
        message=f"frames {expected}..{entry.seq - 1} of this answer were lost by the session store (Redis failed "
                "over to a replica that had not caught up, or lost its data); start a new session")
    return bus_pb2.StreamEntry(session_id=entry.session_id, epoch=entry.epoch, seq=entry.seq,
                               kind=bus_pb2.ENTRY_KIND_ERROR, meta=status.SerializeToString())


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
        self.route = self.placement.route(self.orch.bus, self.orch.frames_stream_of(self.session_id))
        self.epoch = 0
        self.seq = 0
        self.epoch_base = {0: 0}
        self.last_sent_index = -1
        self.frames_sent = 0
        self.audio_seconds = 0.0
        self.outbox = Outbox(s.outgoing_buffer_frames, self._final_message)
        # per epoch, the seq of the renderer's next entry: its entries are numbered 0, 1, 2... per epoch, so a lower
        # one is a redelivery and a higher one means entries were lost (a Redis failover to a replica behind)
        self.renderer_seq: dict[int, int] = {}
        self.control_rate = TokenBucket(s.control_rate_per_s, s.control_burst)
        self.spans: list[Span] = []  # live timed controls, session frames
        self.handler_task: asyncio.Task | None = None  # the gRPC call serving this session, ended on a stall
        self.frames_in: asyncio.Queue[tuple[int, bus_pb2.StreamEntry] | None] = asyncio.Queue()
        self.ended_audio = False
        self.closed = False
        self.started_at = time.monotonic()
        self.last_client_msg = time.monotonic()
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
        self.read_ahead_s = read_ahead_s(s, self.offline, self.look_ahead_s, self.overlap,
                                         video_frame_bytes(self.config.output, self.avatar))
        self.credits = Credits(self.read_ahead_s)
        self.final: tuple[grpc.StatusCode, str] | None = None
        self._t0: float | None = None
        self._paced_index0 = 0
        self._fps_window: list[float] = []
        self._last_lag_report = 0.0
        self._tasks: list[asyncio.Task] = []
        self._reaper: asyncio.Task | None = None  # ends the call of a client that stalled and still reads nothing

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
            # Safe to repeat: a stage acknowledges an entry it has seen (same epoch and seq) without applying it.
            await retry_bus(lambda: self.orch.bus.publish(self.route[pipeline.active().first.name], entry),
                            self.orch.settings.bus_outage_s, "publish")

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
        _active.labels(self.tenant.id).inc()

    # ---- client side ----
    async def audio(self, data: bytes, idle: bool = False) -> None:
        if not data:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "empty audio chunk; send samples or EndOfAudio")
        if self.ended_audio:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "audio after EndOfAudio; start a new session")
        if len(data) % self.frame_bytes:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"chunk of {len(data)} bytes is not a whole number of {self.frame_bytes}-byte "
                           "sample frames for the declared audio_format")
        if len(data) > self.max_chunk_bytes:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"chunk of {1000 * len(data) / self.bytes_per_second:.0f} ms exceeds the maximum of "
                           f"{self.orch.settings.max_chunk_ms} ms; send smaller chunks")
        if self.config.audio_format.sample_format == common_pb2.SAMPLE_FORMAT_FLOAT32LE:
            if not np.all(np.isfinite(np.frombuffer(data, dtype="<f4"))):
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "audio chunk holds NaN or infinite samples")
        await self._wait_credit()
        if self.final is not None:
            return  # the session ended while this chunk waited
        if not idle and self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        seconds = len(data) / self.bytes_per_second
        meta = bus_pb2.AudioMeta(idle=idle, first_sample=self.first_input_sample)
        self.first_input_sample += len(data) // self.frame_bytes
        await self._publish(bus_pb2.ENTRY_KIND_DATA, meta.SerializeToString(),
                            {"pcm": np.frombuffer(data, dtype=np.uint8)})
        self.credits.spent(seconds)
        self.audio_seconds += seconds
        self.last_audio_at = time.monotonic()

    async def _wait_credit(self) -> None:
        """Out of credits: stop reading the client (gRPC flow control reaches it) until it takes frames."""
        if await self.credits.wait(lambda: self.final is not None):
            # While the server does not read, the client is not idle: a client that sends speech faster than
            # realtime (text-to-speech) waits here, and its silence must not count toward the idle timeout.
            self.last_client_msg = time.monotonic()

    async def control(self, update: avatar_pb2.ControlUpdate, with_audio: bool = False) -> None:
        """Validate and publish a ControlUpdate. `with_audio`: it rides on an audio chunk, whose credits bound it."""
        added = timed_spans(update, self.last_sent_index, int(self.max_duration_s * FPS))
        if update.HasField("overall"):
            validate_controls(update.overall, "overall")
        live = live_spans(self.spans, added, self.last_sent_index + 1)
        if len(live) > self.orch.settings.max_control_spans:
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"this ControlUpdate would make {len(live)} time-coded control spans live at once, "
                           f"above the limit of {self.orch.settings.max_control_spans} per session "
                           "(DITTO_MAX_CONTROL_SPANS); give spans an end_frame, or replace controls with overall")
        if not with_audio:
            await self.control_rate.take()
        await self._wait_credit()
        if self.final is not None:
            return
        self.spans = live
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
        await self.control_rate.take()
        # the interrupted epoch's audio is still in the pipeline until the renderer passes the INTERRUPT marker:
        # it keeps counting against credits, so interrupting never lets more audio in than credits allow
        self.credits.interrupted()
        self.spans = []  # the motion stage starts the new epoch with the session's overall controls only
        self.epoch += 1
        self.seq = 0
        await retry_bus(lambda: self.orch.bus.set_state(self.orch.bus.keys.epoch(self.session_id),
                                                        str(self.epoch).encode(), self.orch.bus.state_ttl_s),
                        self.orch.settings.bus_outage_s, "epoch")
        self.epoch_base[self.epoch] = self.last_sent_index + 1
        self._t0 = None  # pacing restarts with the next epoch's first frame
        spec = bus_pb2.SessionSpec(overlap=self.overlap)
        await self._publish(bus_pb2.ENTRY_KIND_INTERRUPT, spec.SerializeToString())
        await self.outbox.put(avatar_pb2.ConverseResponse(event=avatar_pb2.SessionEvent(
            interrupted=avatar_pb2.InterruptedEvent(last_frame_index=self.last_sent_index,
                                                    last_pts_ms=max(0, self.last_sent_index) * 40,
                                                    new_epoch=self.epoch))))

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
                        await self.control(avatar_pb2.ControlUpdate(controls=req.audio.controls), with_audio=True)
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
                    raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                                   "a second SessionConfig; configure once, then use ControlUpdate")
                else:
                    raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "empty ConverseRequest")
            await self.end_of_audio()
        except ApiError as err:
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
        if entry.kind != bus_pb2.ENTRY_KIND_ERROR:  # an error may come from any stage, numbered by it; it ends all
            expected = self.renderer_seq.get(entry.epoch, 0)
            if entry.seq < expected:
                return  # delivered again (a commit retried across a failover): the client gets each frame once
            if entry.seq > expected:
                entry = lost_entries(entry, expected)
            else:
                self.renderer_seq[entry.epoch] = expected + 1
        if entry.kind in (bus_pb2.ENTRY_KIND_INTERRUPT, bus_pb2.ENTRY_KIND_DATA):
            # entries of a session pass every stage in order: the new epoch's marker (or a frame) here means the
            # interrupted epochs' audio has left the pipeline
            self.credits.pipeline_cleared()
        if entry.kind == bus_pb2.ENTRY_KIND_INTERRUPT:
            return
        # bounded by credits: the frames of at most credits_s + look-ahead of audio are ever in flight
        self.frames_in.put_nowait((entry.epoch, entry))

    # ---- to the client ----
    async def next_outgoing(self) -> avatar_pb2.ConverseResponse | None:
        """The next message for the client: queued frames and events, then the FinalStatus once, then None."""
        return await self.outbox.next()

    def _final_message(self) -> avatar_pb2.ConverseResponse:
        assert self.final is not None
        code, message = self.final
        return avatar_pb2.ConverseResponse(final=avatar_pb2.FinalStatus(
            status=common_pb2.Status(code=code.value[0], message=message), frames_sent=self.frames_sent,
            audio_seconds=self.audio_seconds))

    def taken(self, msg: avatar_pb2.ConverseResponse) -> None:
        """The client took `msg` (the transport accepted it): credits for a frame come back only now."""
        self.outbox.taken()
        if msg.WhichOneof("kind") == "frame" and msg.frame.epoch == self.epoch:
            self.credits.frame_taken()

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
        await self.outbox.put(avatar_pb2.ConverseResponse(frame=frame))
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
            await self.outbox.put(avatar_pb2.ConverseResponse(event=avatar_pb2.SessionEvent(
                lag=avatar_pb2.LagEvent(lag_ms=lag * 1000, delivered_fps=fps))))

    async def _housekeeping(self) -> None:
        """Idle feed, limits, and keep-alive of the session's presence keys."""
        s = self.orch.settings
        last_touch = 0.0
        warn_at, warned = self.max_duration_s - min(SESSION_ENDING_WARNING_S, self.max_duration_s / 2), False
        silence = b"\0" * (self.frame_bytes * (self.config.audio_format.sample_rate_hz // 5))  # 200 ms
        try:
            while not self.closed:
                await asyncio.sleep(0.04)
                now = time.monotonic()
                if now - last_touch > 5:
                    last_touch = now
                    try:
                        await self.orch.quotas.touch(self.tenant.id, self.session_id)
                        await self.orch.placer.touch(self.session_id, self.placement)
                    except BusError as err:
                        # presence with a TTL far longer than this period: one missed refresh is harmless, and a
                        # session store that stays away ends the session through the frames dispatcher
                        log.warning("session presence not refreshed; retrying", session=self.session_id,
                                    error=str(err))
                        last_touch = now - 4
                if self.outbox.stalled_s() > s.client_stall_s:
                    await self.stall()
                    return
                if self.offline:
                    continue
                if now - self.started_at > self.max_duration_s:
                    await self.fail(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"session reached its maximum duration of {self.max_duration_s:.0f} s")
                    return
                if not warned and now - self.started_at > warn_at:
                    warned = True
                    left = self.max_duration_s - (now - self.started_at)
                    self.warn("SESSION_ENDING",
                              f"the session ends in {left:.0f} s, at its maximum duration of "
                              f"{self.max_duration_s:.0f} s (SessionConfig.max_duration_s, DITTO_MAX_DURATION_S, or "
                              "the tenant's remaining session minutes); finish the answer, or open a new session")
                # after EndOfAudio the client has nothing more to say while the last frames drain, and while its
                # audio is held back (by our credits, or by its own pacing to the read-ahead) it waits for us: no idle
                # timeout then
                if (not self.ended_audio and not self.credits.waiting and not self.credits.waiting_for_frames()
                        and now - self.last_client_msg > self.idle_timeout_s):
                    await self.fail(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no message from the client for {self.idle_timeout_s:.0f} s; send audio or "
                                    "KeepAlive to keep the session open")
                    return
                alive = self.config.idle_policy in (avatar_pb2.IDLE_POLICY_UNSPECIFIED, avatar_pb2.IDLE_POLICY_ALIVE)
                if (alive and not self.ended_audio and now - self.last_audio_at > s.idle_feed_after_ms / 1000
                        and self.credits.in_flight_s() < self.look_ahead_s + 0.2):
                    await self.audio(silence, idle=True)
        except asyncio.CancelledError:
            pass
        except ApiError as err:
            await self.fail(err.code, str(err))
        except Exception as err:
            log.exception("session housekeeping failed", session=self.session_id)
            await self.fail(grpc.StatusCode.UNAVAILABLE,
                            redact(f"session store unavailable: {err}; start a new session"))

    def warn(self, code: str, message: str) -> None:
        """Tell the client something it should act on that does not end the session (yet): a WarningEvent."""
        log.info("session warned", session=self.session_id, code=code)
        self.outbox.notice(avatar_pb2.ConverseResponse(event=avatar_pb2.SessionEvent(
            warning=avatar_pb2.WarningEvent(code=code, message=message))))

    # ---- ending ----
    async def finish(self, code: grpc.StatusCode, message: str) -> None:
        if self.final is not None:
            return
        self.final = (code, message)
        self.outbox.end()
        self.credits.release()  # a reader waiting for credits sees the end

    async def stall(self) -> None:
        """The client stopped taking frames: end the session, free what it holds now (the client may never read
        again), and end its call."""
        limit = self.orch.settings.client_stall_s
        await self.fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the client took no video frame for {limit:g} s while frames were waiting (the limit is "
                        "DITTO_CLIENT_STALL_S); read frames as they arrive, or ask for smaller ones (JPEG, no "
                        "paste-back)")
        self.outbox.drop_queued()  # the frames it left go now; the FinalStatus is what it reads next, if it ever reads
        self._tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        await self.orch.close_session(self)
        handler = self.handler_task
        if handler is not None:
            async def end_call() -> None:  # a client that still reads nothing: end the call itself too
                await asyncio.sleep(limit)
                if not handler.done():
                    handler.cancel()

            self._reaper = asyncio.create_task(end_call())

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
        _active.labels(self.tenant.id).dec()
        _ended.labels(self.final[0].name if self.final else "CANCELLED").inc()
        try:
            _lag.remove(self.session_id)
            _fps.remove(self.session_id)
        except KeyError:
            pass
        try:
            self.epoch += 1  # everything still queued for this session is stale now
            self.seq = 0
            await self.orch.bus.set_state(self.orch.bus.keys.epoch(self.session_id), str(self.epoch).encode(), 600)
            await self._publish(bus_pb2.ENTRY_KIND_CLOSE)
            await self.orch.quotas.release(self.tenant.id, self.session_id, time.monotonic() - self.started_at)
            await self.orch.placer.release(self.session_id, self.placement)
        except Exception as err:  # Redis gone: keys expire on their own
            log.warning("session cleanup incomplete", session=self.session_id, error=str(err))

    def info(self) -> avatar_pb2.SessionInfo:
        return avatar_pb2.SessionInfo(session_id=self.session_id, avatar_id=self.config.avatar_id,
                                      frames_sent=self.frames_sent, audio_seconds=self.audio_seconds,
                                      epoch=self.epoch, active=not self.closed)

