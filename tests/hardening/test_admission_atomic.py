"""Admission is atomic: simultaneous Converse calls of a tenant limited to N sessions admit exactly N, over a real
Redis (several orchestrator replicas share it) and over the in-memory bus, through the real gRPC server."""

from __future__ import annotations

import asyncio

import grpc
from hardening_helpers import config, portrait_png, service_over, speech_pcm16, tenants_file

from ditto_client.v1 import avatar_pb2
from services.orchestrator.tenants import TenantDirectory

KEY = (("x-api-key", "key-of-acme"),)


async def test_ten_simultaneous_converse_calls_of_a_tenant_limited_to_two_admit_exactly_two(bus, tmp_path):
    tenants = TenantDirectory.from_file(tenants_file(tmp_path / "tenants.json",
                                                     {"acme": {"key": "key-of-acme", "max_sessions": 2}}))
    async with service_over(bus, tenants) as (stub, orch):
        avatar = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png(), filename="p.png"),
                                           metadata=KEY)
        release = asyncio.Event()

        def open_call():
            async def gen():
                yield avatar_pb2.ConverseRequest(config=config(avatar.avatar_id))
                await release.wait()
                yield avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=speech_pcm16(0.2)))
                yield avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio())

            return stub.Converse(gen(), metadata=KEY)

        calls = [open_call() for _ in range(10)]
        firsts = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 60)
        kinds = [f.WhichOneof("kind") for f in firsts]
        assert kinds.count("started") == 2, f"{kinds.count('started')} of 10 admitted for a limit of 2"
        refused = [f.final.status for f in firsts if f.WhichOneof("kind") == "final"]
        assert len(refused) == 8
        assert all(s.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] for s in refused)
        assert all("2 of 2 sessions open" in s.message for s in refused), refused[0].message
        for c, kind in zip(calls, kinds, strict=True):
            if kind == "final":  # refused: the server ended it, nothing more to send
                c.cancel()
        release.set()
        for c, kind in zip(calls, kinds, strict=True):
            if kind == "started":
                assert await asyncio.wait_for(_drain(c), 120) == grpc.StatusCode.OK
        # the places come back when the two sessions end: the next call is admitted
        deadline = asyncio.get_running_loop().time() + 30
        while orch.sessions:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        again = stub.Converse(iter([avatar_pb2.ConverseRequest(config=config(avatar.avatar_id)),
                                    avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=speech_pcm16(0.2))),
                                    avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio())]),
                              metadata=KEY)
        assert (await asyncio.wait_for(again.read(), 30)).WhichOneof("kind") == "started"
        assert await asyncio.wait_for(_drain(again), 120) == grpc.StatusCode.OK


async def _drain(call) -> grpc.StatusCode:
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as err:
        return err.code()
    return await call.code()
