"""Clients retry what the server says to retry: a distributed orchestrator with no workers yet refuses sessions with
RESOURCE_EXHAUSTED and a retry-after-ms hint, reports NOT_SERVING on gRPC health, and the SDK (blocking and asyncio)
waits out the hint up to the caller's deadline, then converses normally once the workers are up."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_helpers import chunks, speech_pcm16

from ditto import rpc
from ditto_app.cluster import LocalCluster
from ditto_client import AsyncAvatarClient, AvatarClient
from ditto_client.v1 import avatar_pb2

pytestmark = pytest.mark.e2e


def health(address: str) -> int:
    with grpc.insecure_channel(address, options=rpc.channel_options()) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="ditto.v1.Avatar"),
                                                     timeout=10).status


def register_when_a_renderer_answers(address: str, timeout: float = 240) -> str:
    from serving_helpers import portrait_png

    deadline = time.monotonic() + timeout
    with AvatarClient(address) as client:
        while True:
            try:
                return client.register_avatar(portrait_png(), timeout=60).avatar_id
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


@pytest.fixture
def half_a_stack(redis_url, tmp_path):
    """The orchestrator of a distributed stack and its renderer, but no audio or motion worker yet (as right after
    `ditto up` opens its port, or while those workers restart); an avatar is registered."""
    cluster = LocalCluster(redis_url=redis_url, prefix=f"ditto-retry-{uuid.uuid4().hex[:10]}", slots=2,
                           log_dir=tmp_path / "logs")
    cluster.ensure_redis()
    cluster.start_worker("renderer")
    cluster._spawn("orchestrator", ["serve", "--port", str(cluster.port)],
                   "READY orchestrator")
    try:
        cluster.wait_ready(180)
        yield cluster, register_when_a_renderer_answers(cluster.address)
    finally:
        cluster.stop()
        cluster.purge()


def test_missing_workers_mean_not_serving_and_a_refusal_with_a_hint(half_a_stack):
    c, avatar_id = half_a_stack
    assert health(c.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    with AvatarClient(c.address, retry_for_s=0) as client:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(client.converse(avatar_id, [b"\0\0" * 320], idle_policy=avatar_pb2.IDLE_POLICY_FREEZE))
        assert time.monotonic() - started < 30  # retry_for_s=0: no 2 s waits until a deadline
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no audio_encoder worker is running" in err.value.details()
    assert dict(err.value.trailing_metadata()).get("retry-after-ms") == "2000"


def test_the_sdk_waits_out_the_hint_until_workers_come(half_a_stack):
    """A session asked for before its workers run is admitted once they run, with every frame of its audio."""
    c, avatar_id = half_a_stack
    result: dict[str, object] = {}
    client = AvatarClient(c.address, retry_for_s=240)

    def converse() -> None:
        try:
            result["events"] = list(client.converse(avatar_id, chunks(speech_pcm16(0.8)),
                                                    idle_policy=avatar_pb2.IDLE_POLICY_FREEZE))
        except BaseException as exc:  # reported by the test thread
            result["error"] = exc

    t = threading.Thread(target=converse)
    try:
        t.start()
        for stage in ("audio_encoder", "motion_generator"):
            c.start_worker(stage)
        c.wait_ready(180)
        c.wait_serving(120)
        t.join(300)
        assert not t.is_alive(), "the client is still waiting"
    finally:
        client.close()
    assert "error" not in result, result.get("error")
    kinds = [m.WhichOneof("kind") for m in result["events"]]
    assert kinds[0] == "started" and kinds[-1] == "final"
    assert kinds.count("frame") == 20
    assert health(c.address) == health_pb2.HealthCheckResponse.SERVING


def test_the_async_sdk_gives_up_at_its_deadline_with_the_servers_reason(half_a_stack):
    c, avatar_id = half_a_stack

    async def attempt() -> tuple[float, grpc.aio.AioRpcError]:
        async with AsyncAvatarClient(c.address, retry_for_s=3) as client:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.open_session(avatar_id, sample_rate_hz=16000)
            return time.monotonic() - started, err.value

    waited, error = asyncio.run(attempt())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry after 2000 ms" in error.details()
    # one retry fits in 3 s (2 s hint), a second would not: the SDK stopped at its deadline instead of sleeping on
    assert 1.9 <= waited < 30
