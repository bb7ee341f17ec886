"""The distributed service on a real Redis Cluster (tests/redis_cluster.py: 3 primaries, 3 replicas on loopback):
the same REDIS_URL setting, pointed at one node, serves whole sessions; a primary killed mid-session is replaced by its
replica without restarting any process; and the key design spreads a balanced load over the primaries."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import grpc
import pytest
import redis
from test_distributed import FRAMES, KILL_AT, Run, assert_same_frames, audio, converse, new_cluster, reference, running

from ditto.bus import RedisBus
from ditto.keys import Keys
from ditto.pipeline import PIPELINE
from ditto_client.v1 import avatar_pb2, bus_pb2

pytestmark = pytest.mark.e2e
__all__ = ["reference"]  # the embedded service's frames (a fixture of test_distributed)


def test_redis_cluster_serves_a_whole_session_and_ditto_status_reads_it(redis_cluster_url, reference, tmp_path):
    with running(new_cluster(redis_cluster_url, tmp_path)) as c:
        run = asyncio.run(converse(c.address, audio()))
        assert run.code == grpc.StatusCode.OK, run.details
        assert run.final is not None and run.final.frames_sent == FRAMES
        assert_same_frames(run.frames, reference)
        # `ditto status` finds every worker, its slots and the orchestrator with the same REDIS_URL (keys spread
        # over the primaries: it scans them all)
        env = {**os.environ, "REDIS_URL": c.redis_url, "DITTO_BUS__PREFIX": c.prefix, "DITTO_BUS__SLOTS": str(c.slots)}
        out = subprocess.run([sys.executable, "-m", "ditto_app.cli", "status", "--json", "--server", c.address],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        snap = json.loads(out.stdout)
        assert snap["server"] == {c.address: "SERVING"} and len(snap["orchestrators"]) == 1
        for st in snap["stages"]:
            (worker,) = st["workers"]
            assert worker["worker"] == c.procs[st["stage"]].owner and st["slots_held"] == c.slots
        assert [st["stage"] for st in snap["stages"]] == list(PIPELINE.names)


def _placed_slot(url: str, prefix: str, stage: str, session_id: str) -> int:
    from ditto.bus.redis_streams import sync_client

    r = sync_client(url, decode_responses=True)
    try:
        members = [m for m in r.zrange(Keys(prefix).placements(stage), 0, -1) if m.endswith(f":{session_id}")]
    finally:
        r.close()
    assert len(members) == 1, f"session {session_id} has placements {members} for {stage}"
    return int(members[0].split(":", 1)[0])


def test_redis_cluster_primary_killed_mid_session_fails_over(redis_cluster, reference, tmp_path):
    """SIGKILL of the primary that holds the session's renderer slot (its stream, lease and checkpoints): its replica
    is promoted within a few node timeouts. The session finishes whole or ends UNAVAILABLE naming the cause -- never
    OK with frames missing -- and a new session succeeds afterwards with every process as it was."""
    with running(new_cluster(redis_cluster.url, tmp_path)) as c:
        killed: dict[str, float] = {}

        async def kill_primary(frame: avatar_pb2.VideoFrame, session_id: str) -> None:
            if frame.index == KILL_AT and not killed:
                slot = _placed_slot(c.redis_url, c.prefix, "renderer", session_id)
                port = redis_cluster.primary_of(Keys(c.prefix).slot_stream("renderer", slot))
                killed["port"], killed["at"] = port, time.monotonic()
                redis_cluster.kill(port)

        ended: dict[str, float] = {}

        async def session() -> Run:
            run = await converse(c.address, audio(), kill_primary, pace_s=0.2, timeout=120)
            ended["at"] = time.monotonic()
            return run

        run = asyncio.run(session())
        assert killed, "the session never reached the frame at which the primary is killed"
        if run.code == grpc.StatusCode.OK:
            assert_same_frames(run.frames, reference)  # whole: every frame once, in order
        else:
            assert run.code == grpc.StatusCode.UNAVAILABLE, (run.code, run.details)
            assert run.details, "an UNAVAILABLE session must say why"
            assert ended["at"] - killed["at"] < 60, "the session took more than 60 s to end after the kill"
            indices = [f.index for f in run.frames]
            assert indices == list(range(len(indices))), f"frames out of order or repeated: {indices}"

        redis_cluster.wait_ok(60)  # the replica took the slots over
        deadline = time.monotonic() + 60
        attempts: list[str] = []
        while True:
            again = asyncio.run(converse(c.address, audio(), timeout=60))
            if again.code == grpc.StatusCode.OK:
                break
            attempts.append(f"{again.code}: {again.details}")
            assert again.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED), attempts
            assert time.monotonic() < deadline, f"no new session succeeded within 60 s of the failover: {attempts}"
        assert_same_frames(again.frames, reference)
        for p in c.procs.values():
            assert p.popen.poll() is None, f"{p.name} died with the primary:\n{p.log.read_text()[-2000:]}"
    redis_cluster.restart(killed["port"])  # back as a replica, for the tests after this one


async def _balanced_load(url: str, prefix: str, sessions: int, seconds: int) -> dict[str, int]:
    """What `sessions` sessions of `seconds` s leave on the bus, entry for entry: per second 5 audio chunks into their
    audio_encoder slot, 5 motion windows into their motion_generator and renderer slots, 25 frames into their
    orchestrator replica's frames stream (4 replicas, 12 shards each, a session on one shard). The placement spreads
    sessions over a stage's 64 slots. Returns stream -> entries."""
    bus = RedisBus(url, prefix)
    keys = bus.keys
    count: dict[str, int] = {}
    try:
        for i in range(sessions):
            streams = [keys.slot_stream(stage, (i * 7 + j * 13) % 64) for j, stage in enumerate(PIPELINE.names)]
            frames = keys.frames_stream(f"replica-{i % 4}", (i // 4) % 12, 12)
            for stream, n in [*((s, 5 * seconds) for s in streams), (frames, 25 * seconds)]:
                for seq in range(n):
                    await bus.publish(stream, bus_pb2.StreamEntry(session_id=f"s{i}", seq=seq))
                count[stream] = count.get(stream, 0) + n
    finally:
        await bus.close()
    return count


def test_redis_cluster_spreads_a_balanced_load_over_the_primaries(redis_cluster, unique_prefix):
    count = asyncio.run(_balanced_load(redis_cluster.url, unique_prefix, sessions=48, seconds=2))
    per_primary: dict[int, int] = {}
    for port in redis_cluster.primaries():  # entries as each primary holds them
        node = redis.Redis(port=port, socket_timeout=5)
        try:
            per_primary[port] = sum(int(node.xlen(s)) for s in count
                                    if redis_cluster.primary_of(s) == port)
        finally:
            node.close()
    total = sum(count.values())
    assert sum(per_primary.values()) == total, "entries unaccounted for"
    shares = {port: n / total for port, n in per_primary.items()}
    print(f"share of entries per primary: {shares}")
    assert len(shares) == 3 and max(shares.values()) <= 0.5, f"one primary carries more than half: {shares}"
    from ditto.bus.redis_streams import sync_client

    r = sync_client(redis_cluster.url)
    try:
        for pattern in Keys(unique_prefix).patterns():
            for key in list(r.scan_iter(match=pattern, count=1000)):
                r.delete(key)
    finally:
        r.close()
