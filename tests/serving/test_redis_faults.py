"""What the distributed service does when its one Redis fails, end to end on real processes: a `redis-server` this
test starts itself on a free port, one `ditto worker` per stage and a `ditto serve --redis` orchestrator
(ditto_app.cluster.LocalCluster), driven over the public gRPC API.

- Redis killed and back empty 3 s later (no persistence): the session in flight ends with UNAVAILABLE naming the
  session store within 60 s, every process rebuilds what it keeps in Redis by itself (consumer groups, leases, the
  workers' presence and addresses, the orchestrator's replica record and frames stream), and a new session -- after
  registering the avatar again, its record went with the data -- is whole within 90 s of the restart.
- Redis killed and restarted on its append-only file (`appendonly yes`, `appendfsync everysec`): the avatar record and
  the tenant's used seconds are still there, and a new session on that avatar, without registering it again, is
  whole.
- Redis paused for 6 s (SIGSTOP, then SIGCONT: a network blip or a stalled host): the running session finishes
  whole, every frame exactly once and in order.

The down time and the pause are the faults themselves; every wait on the system's answer is a condition polled with a
deadline, so the tests hold on a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from serving_helpers import config, portrait_png, requests
from test_distributed import FRAMES, Run, assert_same_frames, audio, new_cluster, reference, running, wait_for

from ditto import rpc
from ditto_app.cluster import LocalCluster, free_port, redis_answers
from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

pytestmark = pytest.mark.e2e

__all__ = ["reference"]  # the embedded service's frames (a module fixture of test_distributed), used here too

DOWN_S = 3.0             # how long Redis stays away before it comes back
PAUSE_S = 6.0            # how long Redis is frozen (SIGSTOP .. SIGCONT)
ENDS_WITHIN_S = 60       # an in-flight session has its status this long after the fault
WHOLE_WITHIN_S = 90      # a new session is whole this long after Redis is back
FAULT_AT = 10            # frame index at which the fault starts: 3.6 s of the session's audio still to come


class RedisServer:
    """A `redis-server` on a free loopback port that this test owns: it can kill it, start it again on the same port
    (and the same data directory), freeze and thaw it."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (apt-get install redis-server)"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                      str(self.data_dir), "--save", "", *self.extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: redis_answers(self.url), 30, f"redis-server on port {self.port} answering")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5, decode_responses=True)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis-data")
    yield server
    server.stop()


@pytest.fixture
def aof_redis_server(tmp_path) -> Iterator[RedisServer]:
    # the settings the deploy README recommends: every write in the log, fsync'ed once a second
    server = RedisServer(tmp_path / "redis-aof", "--appendonly", "yes", "--appendfsync", "everysec")
    yield server
    server.stop()


def cluster_on(server: RedisServer, log_dir: Path) -> LocalCluster:
    server.start()
    return new_cluster(server.url, log_dir)


async def register(address: str) -> str:
    async with grpc.aio.insecure_channel(address, options=rpc.channel_options()) as channel:
        stub = avatar_pb2_grpc.AvatarStub(channel)
        reply = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=portrait_png(), filename="p.png"),
                                          timeout=60)
        return reply.avatar_id


async def get_avatar(address: str, avatar_id: str) -> avatar_pb2.RegisterAvatarResponse:
    async with grpc.aio.insecure_channel(address, options=rpc.channel_options()) as channel:
        stub = avatar_pb2_grpc.AvatarStub(channel)
        return await stub.GetAvatar(avatar_pb2.GetAvatarRequest(avatar_id=avatar_id), timeout=30)


async def session(address: str, avatar_id: str, on_frame=None, pace_s: float = 0.0, timeout: float = 120) -> Run:
    """One Converse on an avatar registered already; everything it got, its status and when it ended."""
    run = Run()
    async with grpc.aio.insecure_channel(address, options=rpc.channel_options()) as channel:
        stub = avatar_pb2_grpc.AvatarStub(channel)

        async def gen():
            for r in requests(config(avatar_id), audio()):
                if pace_s and r.WhichOneof("kind") == "audio":
                    await asyncio.sleep(pace_s)
                yield r

        call = stub.Converse(gen(), timeout=timeout)
        try:
            async for msg in call:
                kind = msg.WhichOneof("kind")
                if kind == "started":
                    run.session_id = msg.started.session_id
                elif kind == "frame":
                    run.frames.append(msg.frame)
                    run.arrivals.append(time.monotonic())
                    if on_frame is not None:
                        on_frame(msg.frame)
                elif kind == "final":
                    run.final = msg.final
            run.code, run.details = await call.code(), await call.details() or ""
        except grpc.aio.AioRpcError as err:
            run.code, run.details = err.code(), err.details() or ""
    return run


def assert_whole_or_failed(run: Run) -> None:
    """No session may end OK with frames missing, duplicated or out of order."""
    if run.code == grpc.StatusCode.OK:
        indices = [f.index for f in run.frames]
        assert indices == list(range(FRAMES)), f"a session ended OK with frames {indices}"


def new_session_until_whole(address: str, deadline: float, reference_frames, register_first: bool,
                            avatar_id: str = "") -> Run:
    """Sessions one after another until one ends OK (it must then be whole), each refusal one of the statuses a
    recovering service gives; fails at `deadline`."""
    attempts: list[str] = []
    while True:
        try:
            if register_first:
                avatar_id = asyncio.run(register(address))
            run = asyncio.run(session(address, avatar_id, timeout=60))
        except grpc.aio.AioRpcError as err:  # RegisterAvatar before the renderer advertised itself again
            run = Run(code=err.code(), details=err.details() or "")
        if run.code == grpc.StatusCode.OK:
            assert_same_frames(run.frames, reference_frames)
            return run
        attempts.append(f"{run.code}: {run.details}")
        assert run.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED), attempts
        assert time.monotonic() < deadline, f"no whole session in time after Redis came back: {attempts}"
        time.sleep(0.5)  # between attempts, not a wait on a result


def redis_keys(server: RedisServer, prefix: str, part: str) -> list[str]:
    r = server.client()
    try:
        return [k for k in r.scan_iter(match=f"*{part}*", count=1000) if prefix in k]
    finally:
        r.close()


def processes_alive(c: LocalCluster) -> None:
    for p in c.procs.values():
        assert p.popen.poll() is None, f"{p.name} died with Redis:\n{p.log.read_text()[-2000:]}"


# ---------------------------------------------------------------------------------------------------- tests
def test_redis_restarted_empty_every_process_recovers_by_itself(redis_server, reference, tmp_path):
    with running(cluster_on(redis_server, tmp_path)) as c:
        avatar_id = asyncio.run(register(c.address))
        fault: dict[str, float] = {}

        def outage() -> None:
            redis_server.kill()
            time.sleep(DOWN_S)  # the fault: Redis is away this long
            redis_server.start()  # same port, no persistence: empty
            fault["back_at"] = time.monotonic()

        restarter = threading.Thread(target=outage)

        def on_frame(frame: avatar_pb2.VideoFrame) -> None:
            if frame.index == FAULT_AT and not fault:
                fault["down_at"] = time.monotonic()
                restarter.start()

        run = asyncio.run(session(c.address, avatar_id, on_frame, pace_s=0.2, timeout=ENDS_WITHIN_S + 30))
        ended_at = time.monotonic()
        assert fault, "the session never reached the frame at which Redis is killed"
        restarter.join(60)
        assert run.code == grpc.StatusCode.UNAVAILABLE, (run.code, run.details, len(run.frames))
        assert "redis" in run.details.lower(), f"the status must name the cause: {run.details!r}"
        assert ended_at - fault["down_at"] < ENDS_WITHIN_S, f"the session ended {ended_at - fault['down_at']:.0f} s " \
                                                            "after Redis went away"
        assert_whole_or_failed(run)

        # The avatar's record was in Redis: a session on it now is refused with what to do, not left hanging.
        again = asyncio.run(session(c.address, avatar_id, timeout=60))
        assert again.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE), (again.code, again.details)

        new_session_until_whole(c.address, fault["back_at"] + WHOLE_WITHIN_S, reference, register_first=True)
        # what each process keeps in Redis is back without any restart: presence of every stage's workers, their
        # addresses, their held slots, the orchestrator replica
        for part in ("workers", "addrs", "held", "orchestrators"):
            assert redis_keys(redis_server, c.prefix, part), f"no '{part}' key after the restart"
        processes_alive(c)


def test_redis_restarted_on_its_append_only_file_keeps_avatars_and_usage(aof_redis_server, reference, tmp_path):
    server = aof_redis_server
    with running(cluster_on(server, tmp_path)) as c:
        avatar_id = asyncio.run(register(c.address))
        first = asyncio.run(session(c.address, avatar_id))
        assert first.code == grpc.StatusCode.OK, first.details
        used_keys: list[str] = []

        def usage_recorded() -> bool:  # the orchestrator adds a session's seconds when it closes the session
            used_keys[:] = redis_keys(server, c.prefix, "seconds_used")
            return bool(used_keys)

        wait_for(usage_recorded, 30, "the tenant's used seconds recorded")
        r = server.client()
        used = {k: int(r.get(k) or 0) for k in used_keys}
        r.close()
        assert all(v > 0 for v in used.values()), used

        server.kill()  # SIGKILL: nothing flushed on the way out
        server.start()  # same directory: replays appendonlydir
        r = server.client()
        try:
            assert {k: int(r.get(k) or 0) for k in used_keys} == used, "the tenant's usage did not survive"
        finally:
            r.close()

        def avatar_back() -> bool:
            try:
                return asyncio.run(get_avatar(c.address, avatar_id)).avatar_id == avatar_id
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
                return False

        wait_for(avatar_back, 60, "GetAvatar answering for the avatar registered before the restart")
        # no RegisterAvatar: the record came back with the data
        new_session_until_whole(c.address, time.monotonic() + WHOLE_WITHIN_S, reference, register_first=False,
                                avatar_id=avatar_id)
        processes_alive(c)


def test_redis_paused_for_6_s_loses_no_frame(redis_server, reference, tmp_path):
    with running(cluster_on(redis_server, tmp_path)) as c:
        avatar_id = asyncio.run(register(c.address))
        paused: dict[str, float] = {}

        def blip() -> None:
            redis_server.signal(signal.SIGSTOP)
            time.sleep(PAUSE_S)  # the fault: Redis answers nothing this long
            redis_server.signal(signal.SIGCONT)
            paused["resumed_at"] = time.monotonic()

        thawer = threading.Thread(target=blip)

        def on_frame(frame: avatar_pb2.VideoFrame) -> None:
            if frame.index == FAULT_AT and not paused:
                paused["at"] = time.monotonic()
                thawer.start()

        run = asyncio.run(session(c.address, avatar_id, on_frame, pace_s=0.2, timeout=120))
        assert paused, "the session never reached the frame at which Redis is paused"
        thawer.join(60)
        assert "resumed_at" in paused
        assert run.code == grpc.StatusCode.OK, (run.code, run.details, len(run.frames))
        assert_same_frames(run.frames, reference)
        assert run.longest_gap() >= PAUSE_S / 3, "the pause did not reach the session: the test proves nothing"
        processes_alive(c)
