"""The orchestrator: the public `ditto.v1.Avatar` API over the stage workers.

Stateless beyond the bus: sessions live on the replica that holds the client's stream, everything another replica or
a stage worker needs (avatars, placements, quotas, epochs) is on the bus's state store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator

import grpc

from ditto import pipeline, telemetry
from ditto.bus import Bus, BusError, Commit
from ditto.bus.retry import backoff_s
from ditto.media import short
from ditto.media.pool import Decoder, shared_pool
from ditto.media.visual import MediaLimits
from ditto.pipeline import FPS
from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc, common_pb2, renderer_pb2
from services.orchestrator.avatars import AvatarRegistry, Registrar
from services.orchestrator.config import OrchestratorSettings
from services.orchestrator.errors import ApiError, api_errors, as_api_error
from services.orchestrator.placement import Placement, Placer
from services.orchestrator.session import Session
from services.orchestrator.tenants import SESSION_KEY_TTL_S, Quotas, Tenant, TenantDirectory
from services.orchestrator.validation import check_id, check_name, validate_config

log = telemetry.get_logger("ditto.orchestrator")
_refused = telemetry.counter("ditto_sessions_refused_total", "Sessions refused before they started, by reason "
                             "(quota, capacity, auth, request, unavailable) and status code", ("reason", "code"))
_admitted = telemetry.counter("ditto_sessions_admitted_total", "Sessions admitted, per tenant", ("tenant",))
_workers = telemetry.gauge("ditto_stage_workers", "Live workers of each stage, as this orchestrator sees them on the "
                           "bus (0: sessions cannot start)", ("stage",))


STORE_MARKER_TTL_S = 7 * 24 * 3600  # refreshed on every frames read; outlives any pause of the replica


def refusal_reason(err: ApiError) -> str:
    """Why a session was refused, from its status: a refusal to retry after a wait is capacity (no worker or no
    room), one without is the tenant's quota; a lost session store is UNAVAILABLE; the rest is the request."""
    if err.code == grpc.StatusCode.UNAUTHENTICATED:
        return "auth"
    if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "capacity" if err.retry_after_ms is not None else "quota"
    if err.code == grpc.StatusCode.UNAVAILABLE:
        return "unavailable"
    return "request"


@contextlib.contextmanager
def counted_refusals() -> Iterator[None]:
    """Count a session refused before it started (ditto_sessions_refused_total), by why and the status the client
    got, whichever step refused it."""
    try:
        yield
    except (ApiError, BusError) as raised:
        err = as_api_error(raised, "session store")
        _refused.labels(refusal_reason(err), err.code.name).inc()
        raise


class Orchestrator:
    def __init__(self, settings: OrchestratorSettings, bus: Bus, registrar: Registrar,
                 tenants: TenantDirectory | None = None, decoder: Decoder | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.tenants = tenants or TenantDirectory.from_file(settings.api_keys_file)
        self.quotas = Quotas(bus)
        self.placer = Placer(bus, settings.bus.slots, settings.sessions_per_slot)
        # client media (avatars to normalise, Render audio) is decoded in helper processes, never in this one
        self.decoder: Decoder = decoder or shared_pool(settings.decode)
        m = settings.media
        self.avatars = AvatarRegistry(bus, registrar, self.decoder,
                                      MediaLimits(m.max_image_pixels, m.max_video_frames, m.max_video_s))
        self.sessions: dict[str, Session] = {}
        self.frames_streams = self._frames_streams(settings.replica_id())
        self.replicas_key = bus.keys.replicas()
        # CPU-heavy request work (Render's audio decode, MP4 muxing) runs in threads, this many at once
        self.heavy = asyncio.Semaphore(settings.max_concurrent_decodes)
        self.store_marker = bus.keys.store_marker(settings.replica_id())
        self._dispatcher: asyncio.Task | None = None
        self._keeper: asyncio.Task | None = None

    def _frames_streams(self, replica: str) -> list[str]:
        n = self.settings.frames_shards
        return [self.bus.keys.frames_stream(replica, k, n) for k in range(n)]

    def frames_stream_of(self, session_id: str) -> str:
        """The frames stream of this replica that a session's frames come back on (stable per session)."""
        return self.frames_streams[zlib.crc32(session_id.encode()) % len(self.frames_streams)]

    async def start(self) -> None:
        # A replica that died without stopping (SIGKILL, node loss) left its frames stream behind: its heartbeat
        # stopped, so its member in the replicas set expired. Delete those streams, and this replica id's own
        # stream of an earlier life (the sessions that read it are gone); the TTL covers whatever this misses.
        for dead in await self.bus.reap_members(self.replicas_key):
            for stream in self._frames_streams(dead):
                await self.bus.delete_stream(stream)
            log.info("deleted the frames streams of a dead replica", replica=dead)
        for stream in self.frames_streams:
            await self.bus.delete_stream(stream)
            await self.bus.ensure_group(stream, "orchestrator")
        await self.bus.set_state(self.store_marker, b"1", STORE_MARKER_TTL_S)
        await self._keep_frames_stream()
        self._dispatcher = asyncio.create_task(self._dispatch_frames())
        self._keeper = asyncio.create_task(self._heartbeat())

    async def _keep_frames_stream(self) -> None:
        """This replica is alive: refresh its member and its frames stream's TTL (the stream disappears within
        `frames_stream_ttl_s` of a crash)."""
        ttl_ms = self.settings.frames_stream_ttl_s * 1000
        await self.bus.touch_member(self.replicas_key, self.settings.replica_id(), ttl_ms)
        for stream in self.frames_streams:
            if not await self.bus.expire_stream(stream, ttl_ms):
                # gone (Redis restarted empty, or the TTL ran out while Redis was away): create it and its group again
                await self.bus.delete_stream(stream)
                await self.bus.ensure_group(stream, "orchestrator")
                await self.bus.expire_stream(stream, ttl_ms)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.frames_stream_ttl_s / 4)
            try:
                await self._keep_frames_stream()
            except BusError as err:
                log.warning("cannot refresh the frames stream", error=str(err))

    async def stop(self) -> None:
        for s in list(self.sessions.values()):
            await s.fail(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; reconnect")
            await s.close()
        for task in (self._dispatcher, self._keeper):
            if task:
                task.cancel()
        try:
            await self.bus.remove_member(self.replicas_key, self.settings.replica_id())
            for stream in self.frames_streams:
                await self.bus.delete_stream(stream)
        except BusError as err:  # Redis away: the TTL removes the stream
            log.warning("frames stream left to expire", error=str(err))

    async def _store_kept_its_data(self) -> bool:
        """Whether the session store still holds what it held (checked, and the marker's TTL refreshed, in one
        atomic step); when it does not, the marker is set again for the sessions that start from now on."""
        if await self.bus.incr(self.store_marker, 0, STORE_MARKER_TTL_S) > 0:
            return True
        await self.bus.incr(self.store_marker, 1, STORE_MARKER_TTL_S)
        return False

    async def _fail_all(self, message: str) -> None:
        for s in list(self.sessions.values()):
            await s.fail(grpc.StatusCode.UNAVAILABLE, message)

    async def _dispatch_frames(self) -> None:
        """Route the renderer's output entries to their sessions; acknowledge (and so delete) them at once.

        A session store that does not answer is waited for, with backoff, up to `bus_outage_s` (a restart, a
        failover, a frozen host: the sessions go on where they were); longer, and every session ends with
        UNAVAILABLE. Before every read the store's marker is checked: a store that came back without its data ends
        the open sessions at once with UNAVAILABLE naming that, before any entry written after the loss (a stage's
        "lost this session's state") is dispatched."""
        outage_since: float | None = None
        failures = 0
        while True:
            try:
                if not await self._store_kept_its_data():
                    log.error("the session store lost its data; ending the open sessions", sessions=len(self.sessions))
                    await self._fail_all("the session store (Redis) lost its data (restarted empty, or failed over "
                                         "to a replica that had not caught up), so this session is unavailable; "
                                         "start a new session")
                got = await self.bus.read("orchestrator", self.settings.replica_id(), self.frames_streams,
                                          count=256, block_ms=200)
                for d in got:
                    session = self.sessions.get(d.entry.session_id)
                    if session is not None:
                        session.on_entry(d.entry)
                if got:
                    await self.bus.commit("orchestrator", Commit(acks=[(d.stream, d.entry_id) for d in got]))
                if outage_since is not None:
                    log.info("frames stream available again", after_s=round(time.monotonic() - outage_since, 1))
                outage_since, failures = None, 0
            except asyncio.CancelledError:
                return
            except BusError as err:
                now = time.monotonic()
                if outage_since is None:
                    outage_since = now
                    log.warning("frames stream unavailable; waiting for the session store", error=str(err),
                                grace_s=self.settings.bus_outage_s)
                if now - outage_since > self.settings.bus_outage_s and self.sessions:
                    await self._fail_all(f"the session store (Redis) has been unavailable for "
                                         f"{now - outage_since:.0f} s; start a new session")
                failures += 1
                await asyncio.sleep(backoff_s(failures))

    # ---- sessions ----
    async def open_session(self, tenant: Tenant, config: avatar_pb2.SessionConfig, offline: bool = False) -> Session:
        with counted_refusals():
            return await self._open_session(tenant, config, offline)

    async def _open_session(self, tenant: Tenant, config: avatar_pb2.SessionConfig, offline: bool) -> Session:
        validate_config(config, self.settings.max_sampling_steps)
        avatar = await self.avatars.get(tenant.id, config.avatar_id)
        if avatar is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"avatar '{short(config.avatar_id)}' is not registered for "
                           "this tenant; call RegisterAvatar")
        session_id = uuid.uuid4().hex
        # One atomic step: the tenant's quota is checked and the session counted and placed together, so concurrent
        # calls can never both take the last place.
        admission = await self.placer.admit(
            session_id, sessions_key=self.quotas.sessions_key(tenant.id), max_sessions=tenant.max_sessions,
            used_key=self.quotas.used_key(tenant.id), max_seconds=tenant.session_minutes * 60,
            ttl_ms=SESSION_KEY_TTL_S * 1000)
        if admission.refused in ("sessions", "seconds"):
            raise self.quotas.refusal(tenant, admission)
        if admission.refused:
            raise self.placer.refusal(admission)
        _admitted.labels(tenant.id).inc()
        placement = Placement(admission.slots)
        remaining = await self.quotas.remaining_s(tenant)
        session = Session(self, tenant, config, avatar, placement, offline=offline, session_id=session_id)
        session.max_duration_s = min(session.max_duration_s, remaining)
        self.sessions[session.session_id] = session
        telemetry.bind(tenant=tenant.id, session=session.session_id)
        await session.start()
        log.info("session started", avatar=config.avatar_id, slots=placement.slots, offline=offline)
        return session

    async def check_stages(self) -> list[str]:
        """The stages no live worker serves now (sessions cannot start until this is []); sets ditto_stage_workers
        from the workers' presence on the bus."""
        missing = []
        for stage in pipeline.active().names:
            _workers.labels(stage).set(len(await self.placer.live_workers(stage)))
            if not await self.placer.held_slots(stage):
                missing.append(stage)
        return missing

    async def close_session(self, session: Session) -> None:
        await session.close()
        self.sessions.pop(session.session_id, None)


def public_interceptors(orch: Orchestrator) -> list[grpc.aio.ServerInterceptor]:
    """What the public server runs before any handler: authentication and upload slots ahead of large bodies."""
    from services.orchestrator.guard import UploadGuard

    return [UploadGuard(lambda: orch.tenants, orch.settings.max_concurrent_uploads,
                        orch.settings.upload_body_timeout_s)]


def _final_status(err: ApiError) -> avatar_pb2.ConverseResponse:
    """Converse's last message when it is refused: a FinalStatus, so a client still writing its stream learns the
    reason even if its transport reports the end differently."""
    return avatar_pb2.ConverseResponse(final=avatar_pb2.FinalStatus(
        status=common_pb2.Status(code=err.code.value[0], message=err.message)))


class AvatarService(avatar_pb2_grpc.AvatarServicer):
    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    def _tenant(self, context: grpc.aio.ServicerContext) -> Tenant:
        return self.orch.tenants.authenticate(context.invocation_metadata())

    @api_errors("avatar store")
    async def RegisterAvatar(self, request, context):
        tenant = self._tenant(context)
        if not request.media:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "media is empty; send image or video bytes")
        if len(request.media) > self.orch.settings.max_avatar_bytes:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"media of {len(request.media)} bytes exceeds the limit of "
                           f"{self.orch.settings.max_avatar_bytes} bytes (DITTO_MAX_AVATAR_BYTES); send a "
                           "smaller image or a shorter video")
        check_name(request.filename, "filename")
        req = renderer_pb2.RegisterSourceRequest(media=request.media, filename=request.filename, crop=request.crop)
        info = await self.orch.avatars.register(tenant, req)
        return avatar_pb2.RegisterAvatarResponse(avatar_id=info.avatar_id, width=info.width, height=info.height,
                                                 source_frames=info.source_frames,
                                                 already_registered=info.already_registered, face=info.face)

    @api_errors("avatar store")
    async def GetAvatar(self, request, context):
        check_id(request.avatar_id, "avatar_id")
        info = await self.orch.avatars.get(self._tenant(context).id, request.avatar_id)
        if info is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"no avatar '{short(request.avatar_id)}' for this tenant")
        return avatar_pb2.RegisterAvatarResponse(avatar_id=info.avatar_id, width=info.width, height=info.height,
                                                 source_frames=info.source_frames, already_registered=True,
                                                 face=info.face)

    @api_errors("avatar store")
    async def DeleteAvatar(self, request, context):
        check_id(request.avatar_id, "avatar_id")
        if not await self.orch.avatars.delete(self._tenant(context).id, request.avatar_id):
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"no avatar '{short(request.avatar_id)}' for this tenant")
        return avatar_pb2.DeleteAvatarResponse()

    @api_errors("session store")
    async def GetSession(self, request, context):
        tenant = self._tenant(context)
        check_id(request.session_id, "session_id")
        s = self.orch.sessions.get(request.session_id)
        if s is None or s.tenant.id != tenant.id:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"no session '{short(request.session_id)}' for this tenant")
        return s.info()

    async def _first_config(self, request_iterator, context) -> tuple[Tenant, avatar_pb2.SessionConfig]:
        """Converse's door: the caller's tenant and its SessionConfig, the stream's first message."""
        tenant = self._tenant(context)
        try:
            first = await asyncio.wait_for(request_iterator.__anext__(), self.orch.settings.idle_timeout_s)
        except StopAsyncIteration:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "empty stream; send a SessionConfig first") from None
        except TimeoutError:
            raise ApiError(grpc.StatusCode.DEADLINE_EXCEEDED, "no SessionConfig received in time") from None
        if first.WhichOneof("kind") != "config":
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           "the first message must be a SessionConfig (then audio, controls, end)")
        return tenant, first.config

    @api_errors("session store", final=_final_status)
    async def Converse(self, request_iterator, context) -> AsyncIterator[avatar_pb2.ConverseResponse]:
        session: Session | None = None
        reader: asyncio.Task | None = None
        try:
            it = request_iterator.__aiter__()
            with counted_refusals():
                tenant, config = await self._first_config(it, context)
            session = await self.orch.open_session(tenant, config)
            session.handler_task = asyncio.current_task()
            out = session.config.output
            yield avatar_pb2.ConverseResponse(started=avatar_pb2.SessionStarted(
                session_id=session.session_id, fps=FPS, width=session.avatar.width, height=session.avatar.height,
                encoding=out.encoding or common_pb2.FRAME_ENCODING_JPEG,
                audio_look_ahead_ms=session.look_ahead_ms,
                audio_read_ahead_ms=round(session.read_ahead_s * 1000)))
            reader = asyncio.create_task(session.read_client(it))
            while True:
                msg = await session.next_outgoing()
                if msg is None:
                    break
                session.outbox.writing = True
                yield msg  # returns once the transport took it (flow control: not while the client reads nothing)
                session.taken(msg)
            if session.final and session.final[0] != grpc.StatusCode.OK:
                context.set_code(session.final[0])
                context.set_details(session.final[1])
        finally:
            if reader:
                reader.cancel()  # and wait for it: the call's end may read the client's stream after us
                await asyncio.gather(reader, return_exceptions=True)
            if session:
                await self.orch.close_session(session)

    @api_errors("session store")
    async def Render(self, request, context):
        from services.orchestrator.render_job import render_job

        with counted_refusals():
            tenant = self._tenant(context)
        async for msg in render_job(self.orch, tenant, request):
            yield msg
