"""Avatar registry: registration goes to a renderer (in-process or over gRPC); the result and the source media are
kept per tenant on the bus's state store, so any orchestrator replica and any renderer worker can serve it.

What is kept is not the upload but its normalised copy (`ditto.media.visual.normalise`, made in a decoder helper
process): the decoded pixels re-encoded, no metadata, colour profile or audio, so a 64x64 JPEG carrying a 15 MB
colour profile costs a few KB. Each tenant's stored copies are counted and weighed against its `max_avatars` and
`max_avatar_mb` (tenants file) in one atomic step before the renderer does any work."""

from __future__ import annotations

import abc
import contextlib
import hashlib
from typing import TYPE_CHECKING

import grpc

from ditto import rpc, telemetry
from ditto.bus import Bus, BusError, Reservation
from ditto.media import MediaError, short
from ditto.media.pool import Decoder
from ditto.media.visual import DEFAULT_MAX_SIZE, MediaLimits, NormalisedMedia
from ditto_client.v1 import renderer_pb2, renderer_pb2_grpc
from services.orchestrator.errors import ApiError

if TYPE_CHECKING:
    from services.orchestrator.tenants import Tenant

log = telemetry.get_logger("ditto.orchestrator")

AVATAR_TTL_S = 30 * 24 * 3600


class Registrar(abc.ABC):
    @abc.abstractmethod
    async def register(self, request: renderer_pb2.RegisterSourceRequest) -> renderer_pb2.RegisterSourceResponse:
        ...

    async def forget(self, avatar_id: str) -> int:
        """Delete the avatar's media and features from every renderer that cached it; returns how many held it."""
        return 0


class GrpcRegistrar(Registrar):
    """Registers through a renderer's gRPC API; the address is fixed or discovered from live renderer workers."""

    def __init__(self, bus: Bus, address: str = "") -> None:
        self.bus = bus
        self.address = address

    async def _addresses(self) -> list[str]:
        if self.address:
            return [self.address]
        return await self.bus.live_members(self.bus.keys.addresses("renderer"))

    async def register(self, request: renderer_pb2.RegisterSourceRequest) -> renderer_pb2.RegisterSourceResponse:
        addresses = await self._addresses()
        if not addresses:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "no renderer is running to register the avatar")
        last: grpc.aio.AioRpcError | None = None
        for address in addresses:
            async with grpc.aio.insecure_channel(address, options=rpc.channel_options()) as ch:
                try:
                    return await renderer_pb2_grpc.RendererStub(ch).RegisterAvatar(request, timeout=120)
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.UNAVAILABLE:
                        raise ApiError(err.code(), err.details() or "registration failed") from err
                    last = err
        raise ApiError(grpc.StatusCode.UNAVAILABLE, f"no renderer answered: {last.details() if last else ''}")

    async def forget(self, avatar_id: str) -> int:
        """Ask every live renderer to drop the avatar. One that does not answer drops it from its disk cache after
        `DITTO_MEDIA__AVATAR_CACHE_TTL_S` unused (its sweep), and never serves it again: the orchestrator refuses
        sessions of a deleted avatar."""
        held = 0
        for address in await self._addresses():
            async with grpc.aio.insecure_channel(address, options=rpc.channel_options()) as ch:
                try:
                    reply = await renderer_pb2_grpc.RendererStub(ch).ForgetAvatar(
                        renderer_pb2.ForgetAvatarRequest(avatar_id=avatar_id), timeout=10)
                    held += int(reply.held)
                except grpc.aio.AioRpcError as err:
                    log.warning("renderer did not forget an avatar; its cache sweep will", renderer=address,
                                code=err.code().name)
        return held


def _member(record: bytes) -> str:
    return hashlib.sha256(record).hexdigest()[:32]


class AvatarRegistry:
    def __init__(self, bus: Bus, registrar: Registrar, decoder: Decoder, limits: MediaLimits | None = None) -> None:
        self.bus = bus
        self.registrar = registrar
        self.decoder = decoder
        self.limits = limits or MediaLimits()

    async def normalise(self, request: renderer_pb2.RegisterSourceRequest) -> NormalisedMedia:
        """The copy to keep, made in a decoder helper (header checks first, by the bytes' own format)."""
        what = f"'{short(request.filename)}'" if request.filename else "the media"
        try:
            return await self.decoder.run_async("normalise", request.media, what,
                                                request.crop.max_size or DEFAULT_MAX_SIZE, request.crop.max_frames,
                                                self.limits)
        except MediaError as err:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err

    async def register(self, tenant: Tenant, request: renderer_pb2.RegisterSourceRequest
                       ) -> renderer_pb2.RegisterSourceResponse:
        normalised = await self.normalise(request)
        source = renderer_pb2.RegisterSourceRequest(media=normalised.media, filename=normalised.filename,
                                                    crop=request.crop, tenant_id=tenant.id)
        record = source.SerializeToString(deterministic=True)
        # counted and weighed before the renderer works: a tenant at its quota costs no registration
        held = await self.bus.reserve(self.bus.keys.avatar_quota(tenant.id), _member(record), len(record),
                                      tenant.max_avatars, tenant.max_avatar_bytes, AVATAR_TTL_S * 1000)
        if held.refused:
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal(tenant, held, len(record)))
        try:
            info = await self.registrar.register(source)
        except BaseException:
            if not held.existed:  # its place is given back (the original error is what the caller hears)
                with contextlib.suppress(BusError):
                    await self.bus.unreserve(self.bus.keys.avatar_quota(tenant.id), _member(record))
            raise
        existed = await self.bus.get_state(self.bus.keys.avatar_info(tenant.id, info.avatar_id)) is not None
        info.already_registered = existed
        await self.bus.set_state(self.bus.keys.avatar_source(tenant.id, info.avatar_id), record, AVATAR_TTL_S)
        await self.bus.set_state(self.bus.keys.avatar_info(tenant.id, info.avatar_id), info.SerializeToString(),
                                 AVATAR_TTL_S)
        return info

    @staticmethod
    def _refusal(tenant: Tenant, held: Reservation, size: int) -> str:
        if held.refused == "count":
            return (f"tenant {tenant.id} has {held.count} of {tenant.max_avatars} avatars registered (max_avatars "
                    "in the tenants file); delete one with DeleteAvatar first")
        return (f"tenant {tenant.id} stores {held.weight / 2**20:.1f} MB of avatar media; this one ({size / 2**20:.2f}"
                f" MB) would pass its {tenant.max_avatar_mb:g} MB (max_avatar_mb in the tenants file); delete an "
                "avatar with DeleteAvatar first, or send a smaller or shorter source")

    async def get(self, tenant: str, avatar_id: str) -> renderer_pb2.RegisterSourceResponse | None:
        raw = await self.bus.get_state(self.bus.keys.avatar_info(tenant, avatar_id)) if avatar_id else None
        if raw is None:
            return None
        info = renderer_pb2.RegisterSourceResponse()
        info.ParseFromString(raw)
        return info

    async def delete(self, tenant: str, avatar_id: str) -> bool:
        if await self.get(tenant, avatar_id) is None:
            return False
        record = await self.bus.get_state(self.bus.keys.avatar_source(tenant, avatar_id))
        await self.bus.set_state(self.bus.keys.avatar_info(tenant, avatar_id), None)
        await self.bus.set_state(self.bus.keys.avatar_source(tenant, avatar_id), None)
        if record is not None:
            await self.bus.unreserve(self.bus.keys.avatar_quota(tenant), _member(record))
        await self.registrar.forget(avatar_id)
        return True
