"""Avatar registry: registration goes to a renderer (in-process or over gRPC); the result and the source media are
kept per tenant on the bus's state store, so any orchestrator replica and any renderer worker can serve it."""

from __future__ import annotations

import abc

import grpc

from ditto import rpc, telemetry
from ditto.avatar_keys import info_key, source_key
from ditto.bus import Bus
from ditto.bus.worker import addresses_key
from ditto_client.v1 import renderer_pb2, renderer_pb2_grpc

log = telemetry.get_logger("ditto.orchestrator")

AVATAR_TTL_S = 30 * 24 * 3600


class RegistrationError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


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
        return await self.bus.live_members(addresses_key(self.bus, "renderer"))

    async def register(self, request: renderer_pb2.RegisterSourceRequest) -> renderer_pb2.RegisterSourceResponse:
        addresses = await self._addresses()
        if not addresses:
            raise RegistrationError(grpc.StatusCode.UNAVAILABLE, "no renderer is running to register the avatar")
        last: grpc.aio.AioRpcError | None = None
        for address in addresses:
            async with grpc.aio.insecure_channel(address, options=rpc.channel_options()) as ch:
                try:
                    return await renderer_pb2_grpc.RendererStub(ch).RegisterAvatar(request, timeout=120)
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.UNAVAILABLE:
                        raise RegistrationError(err.code(), err.details() or "registration failed") from err
                    last = err
        raise RegistrationError(grpc.StatusCode.UNAVAILABLE, f"no renderer answered: {last.details() if last else ''}")

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


class AvatarRegistry:
    def __init__(self, bus: Bus, registrar: Registrar) -> None:
        self.bus = bus
        self.registrar = registrar

    async def register(self, tenant: str, request: renderer_pb2.RegisterSourceRequest
                       ) -> renderer_pb2.RegisterSourceResponse:
        request.tenant_id = tenant
        info = await self.registrar.register(request)
        existed = await self.bus.get_state(info_key(self.bus, tenant, info.avatar_id)) is not None
        info.already_registered = existed
        await self.bus.set_state(source_key(self.bus, tenant, info.avatar_id), request.SerializeToString(),
                                 AVATAR_TTL_S)
        await self.bus.set_state(info_key(self.bus, tenant, info.avatar_id), info.SerializeToString(), AVATAR_TTL_S)
        return info

    async def get(self, tenant: str, avatar_id: str) -> renderer_pb2.RegisterSourceResponse | None:
        raw = await self.bus.get_state(info_key(self.bus, tenant, avatar_id)) if avatar_id else None
        if raw is None:
            return None
        info = renderer_pb2.RegisterSourceResponse()
        info.ParseFromString(raw)
        return info

    async def delete(self, tenant: str, avatar_id: str) -> bool:
        if await self.get(tenant, avatar_id) is None:
            return False
        await self.bus.set_state(info_key(self.bus, tenant, avatar_id), None)
        await self.bus.set_state(source_key(self.bus, tenant, avatar_id), None)
        await self.registrar.forget(avatar_id)
        return True
