"""What one tenant may take of what all share: upload slots, avatar storage, and the size of a reply.

Real gRPC servers on loopback running the whole service in-process (tiny synthetic weights); the avatar store over
both buses (in memory, and a real Redis) where its accounting lives there.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from hardening_helpers import config, portrait_png, service_over, tenants_file
from serving_helpers import embedded_service

from ditto_client.v1 import avatar_pb2
from services.orchestrator.tenants import TenantDirectory
from tools.hostile import jpeg_with_icc_profile

MALLORY = (("x-api-key", "mallory-key"),)
ALICE = (("x-api-key", "alice-key"),)
REGISTER = "/ditto.v1.Avatar/RegisterAvatar"


def two_tenants(tmp_path, **mallory) -> TenantDirectory:
    return TenantDirectory.from_file(tenants_file(tmp_path / "tenants.json", {
        "mallory": {"key": "mallory-key", **mallory}, "alice": {"key": "alice-key"}}))


def stalled_register(ch: grpc.aio.Channel, metadata) -> grpc.aio.StreamUnaryCall:
    """A RegisterAvatar that sends its headers and never its body."""
    stall = asyncio.Event()

    async def nothing():
        await stall.wait()
        yield avatar_pb2.RegisterAvatarRequest()  # pragma: no cover - never reached

    multi = ch.stream_unary(REGISTER, request_serializer=avatar_pb2.RegisterAvatarRequest.SerializeToString,
                            response_deserializer=avatar_pb2.RegisterAvatarResponse.FromString)
    return multi(nothing(), metadata=metadata)


async def test_a_tenant_that_sends_no_body_cannot_starve_the_others(tmp_path):
    """Mallory opens four RegisterAvatar calls that send headers and never a body. Its share is two upload slots:
    the third and fourth are refused at once, alice registers meanwhile, and the two stalled calls end with
    DEADLINE_EXCEEDED when the body deadline passes, giving their slots back."""
    body_timeout_s = 3.0
    async with embedded_service(tenants=two_tenants(tmp_path, max_uploads=2),
                                upload_body_timeout_s=body_timeout_s) as (stub, _):
        async with grpc.aio.insecure_channel(stub.address) as ch:
            stalled = [stalled_register(ch, MALLORY) for _ in range(2)]
            await asyncio.sleep(0)  # the two calls' headers are on their way before the next two
            guard_deadline = time.monotonic() + 30
            while stub.guard.in_progress < 2:  # both hold their slot
                assert time.monotonic() < guard_deadline, "the stalled calls never reached the server"
                await asyncio.sleep(0.02)
            opened = time.monotonic()
            for _ in range(2):  # refused at once (a call let in would wait for its body: bounded here)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await asyncio.wait_for(stalled_register(ch, MALLORY), 30)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "tenant mallory has 2 of its 2 uploads" in err.value.details()
                assert "max_uploads" in err.value.details()
            reply = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png()),
                                              metadata=ALICE, timeout=120)
            assert reply.avatar_id
            for call in stalled:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await asyncio.wait_for(call, 60)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "DITTO_UPLOAD_BODY_TIMEOUT_S" in err.value.details()
            assert time.monotonic() - opened < body_timeout_s + 20
            assert stub.guard.in_progress == 0 and not stub.guard.per_tenant
            again = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png((96, 96))),
                                              metadata=MALLORY, timeout=120)
            assert again.avatar_id


async def test_stored_avatars_are_normalised_copies_counted_against_a_quota(bus, tmp_path):
    """Mallory registers small JPEGs that each carry a 15.5 MB colour profile. What is stored is the decoded
    pixels re-encoded (kilobytes, no profile); the fourth avatar is past its max_avatars of 3 and refused with
    RESOURCE_EXHAUSTED; registering one of the three again is fine; after a DeleteAvatar the fourth fits; and the
    byte quota refuses what would pass max_avatar_mb. Accounting is one atomic step per registration, on either
    bus."""
    tenants = two_tenants(tmp_path, max_avatars=3, max_avatar_mb=0.05)
    async with service_over(bus, tenants, model={"cache_dir": tmp_path / "cache"}) as (stub, orch):
        jpegs = [jpeg_with_icc_profile(80, 80, 15_500_000, seed) for seed in range(4)]
        ids = []
        for jpeg in jpegs[:3]:
            reply = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=jpeg, filename="p.jpg"),
                                              metadata=MALLORY, timeout=120)
            stored = await orch.bus.get_state(orch.bus.keys.avatar_source("mallory", reply.avatar_id))
            assert stored is not None and len(stored) < 20_000, f"{len(stored or b'')} bytes stored for an 80x80 face"
            assert b"ICC_PROFILE" not in stored
            ids.append(reply.avatar_id)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=jpegs[3]), metadata=MALLORY, timeout=120)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3 of 3 avatars" in err.value.details() and "max_avatars" in err.value.details()
        again = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=jpegs[0]), metadata=MALLORY,
                                          timeout=120)
        assert again.avatar_id == ids[0] and again.already_registered
        await stub.DeleteAvatar(avatar_pb2.GetAvatarRequest(avatar_id=ids[1]), metadata=MALLORY)
        fourth = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=jpegs[3]), metadata=MALLORY,
                                           timeout=120)
        assert fourth.avatar_id not in ids
        # 0.05 MB in all: with room for one more avatar, a picture of noise whose normalised PNG is larger than what
        # is left is refused on bytes
        await stub.DeleteAvatar(avatar_pb2.GetAvatarRequest(avatar_id=ids[2]), metadata=MALLORY)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            noisy = jpeg_with_icc_profile(200, 200, 10, 9, noise=40)
            await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=noisy), metadata=MALLORY, timeout=120)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_avatar_mb" in err.value.details()
        # alice's quota is her own
        assert (await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=jpegs[3]), metadata=ALICE,
                                          timeout=120)).avatar_id


async def test_ids_are_bounded_and_never_echoed_whole(tmp_path):
    """A 4 MiB avatar_id (or session_id, or file name) is INVALID_ARGUMENT with a short message, on every call that
    takes one; before, the id came back inside the message and tripped the metadata limit (RESOURCE_EXHAUSTED)."""
    huge = "a" * (4 * 1024 * 1024)
    async with embedded_service(tenants=two_tenants(tmp_path)) as (stub, _):
        calls = {
            "GetAvatar": lambda: stub.GetAvatar(avatar_pb2.GetAvatarRequest(avatar_id=huge), metadata=ALICE),
            "DeleteAvatar": lambda: stub.DeleteAvatar(avatar_pb2.GetAvatarRequest(avatar_id=huge), metadata=ALICE),
            "GetSession": lambda: stub.GetSession(avatar_pb2.GetSessionRequest(session_id=huge), metadata=ALICE),
            "RegisterAvatar": lambda: stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(
                media=portrait_png(), filename=huge), metadata=ALICE),
            "Render": lambda: _drain(stub.Render(avatar_pb2.RenderRequest(avatar_id=huge, audio=b"RIFF"),
                                                 metadata=ALICE)),
            "Converse": lambda: _drain(stub.Converse(iter([avatar_pb2.ConverseRequest(config=config(huge))]),
                                                     metadata=ALICE)),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value.code())
            assert len(err.value.details()) < 300 and "characters" in err.value.details(), name
        # an unknown id of a sane length is NOT_FOUND, and shown shortened
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetAvatar(avatar_pb2.GetAvatarRequest(avatar_id="b" * 120), metadata=ALICE)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) < 200


async def _drain(call) -> None:
    async for _ in call:
        pass
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise grpc.aio.AioRpcError(code, None, None, await call.details())
