"""Cost independent of unrelated keys, and nothing a killed process leaves in Redis lives forever. On a private
redis-server (its command counters are this test's alone), through the real gRPC server and real processes."""

from __future__ import annotations

import asyncio
import time

from hardening_helpers import config, portrait_png, service_over, speech_pcm16
from redis_processes import Orchestrator, PrivateRedis

from ditto.bus import RedisBus
from ditto.keys import Keys
from ditto_client.v1 import avatar_pb2

UNRELATED_KEYS = 20_000


def fill_unrelated(r: PrivateRedis, n: int) -> None:
    client = r.client()
    for start in range(0, n, 5000):
        client.mset({f"someone-else:{i}": "x" for i in range(start, min(n, start + 5000))})


async def test_admission_and_worker_loops_never_scan_the_keyspace(private_redis: PrivateRedis):
    fill_unrelated(private_redis, UNRELATED_KEYS)
    bus = RedisBus(private_redis.url, "ditto")
    async with service_over(bus) as (stub, orch):
        avatar = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png(), filename="p.png"))
        private_redis.client().config_resetstat()
        call = stub.Converse(iter([avatar_pb2.ConverseRequest(config=config(avatar.avatar_id)),
                                   avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=speech_pcm16(0.4))),
                                   avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio())]))
        kinds = [m.WhichOneof("kind") async for m in call]
        assert kinds[0] == "started" and kinds[-1] == "final"
        # the workers' loops keep running a while: rebalance, heartbeats, pending checks
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        calls = private_redis.command_calls()
    await bus.close()
    assert calls.get("evalsha", 0) + calls.get("eval", 0) > 0, f"nothing measured: {calls}"
    walks = {c: calls[c] for c in ("scan", "keys") if calls.get(c)}
    assert not walks, f"commands that walk the whole keyspace ({UNRELATED_KEYS} unrelated keys): {walks}"


def test_a_killed_orchestrators_frames_stream_expires_and_a_restart_cleans_it(tmp_path):
    redis = PrivateRedis()
    try:
        env = {"REDIS_URL": redis.url, "DITTO_ORCHESTRATOR_ID": "orch-x", "DITTO_FRAMES_STREAM_TTL_S": "4"}
        stream = Keys("ditto").frames_stream("orch-x", 0, 12)  # the first of its 12 (the default) frames streams
        client = redis.client()
        first = Orchestrator(tmp_path / "first.log", env)
        ttl = client.pttl(stream)
        assert 0 < ttl <= 4000, f"the frames stream has TTL {ttl} ms (-1: none; it would outlive a SIGKILL)"
        first.kill()
        # a renderer still finishing the dead replica's sessions appends to it
        for _ in range(3):
            client.xadd(stream, {"e": b"frame"})
        assert client.xlen(stream) == 3 and client.pttl(stream) > 0
        second = Orchestrator(tmp_path / "second.log", env)  # same replica id: its old stream is of no use
        assert client.xlen(stream) == 0, "a restarted replica kept its previous life's frames"
        second.kill()
        deadline = time.monotonic() + 20
        while client.exists(stream):
            assert time.monotonic() < deadline, "a killed replica's frames stream is still there after its TTL"
            time.sleep(0.1)
        assert client.zcard(Keys("ditto").replicas()) <= 1  # its presence expires with it
    finally:
        redis.stop()


def test_a_replica_that_never_comes_back_is_cleaned_by_the_next_one_to_start(tmp_path):
    """The next replica to start deletes a dead replica's stream once its presence has expired, even a stream
    without a TTL (left by an orchestrator of an older version)."""
    redis = PrivateRedis()
    try:
        client = redis.client()
        dead = Orchestrator(tmp_path / "dead.log", {"REDIS_URL": redis.url, "DITTO_ORCHESTRATOR_ID": "orch-dead",
                                                    "DITTO_FRAMES_STREAM_TTL_S": "60"})
        dead.kill()
        # as an orchestrator of an older version left it: no TTL
        client.persist(Keys("ditto").frames_stream("orch-dead", 0, 12))
        client.zadd(Keys("ditto").replicas(), {"orch-dead": 0})  # and its presence long expired
        other = Orchestrator(tmp_path / "other.log", {"REDIS_URL": redis.url, "DITTO_ORCHESTRATOR_ID": "orch-new"})
        assert not client.exists(Keys("ditto").frames_stream("orch-dead", 0, 12))
        other.kill(15)
    finally:
        redis.stop()
