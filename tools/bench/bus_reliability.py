"""Reliability of the bus and of Redis-backed admission, for `make bench` (part `bus_reliability`):

- pending entries left after worker kills: a summing stage runs as real worker processes over a private
  redis-server; workers are SIGKILLed mid-stream one after another, the last one finishes. Reported: entries still
  pending or left in the slot streams (must be 0), outputs missing or applied twice (must be 0), and the same for
  a slot where a dead consumer left 300 pending entries (more than one claim call takes).
- time to SessionStarted with 300 000 unrelated keys in Redis vs an empty Redis (target: within 2x): the real
  orchestrator and stage code (tiny profile, synthetic weights) over a private redis-server, through gRPC.

Everything runs against its own redis-server on a free loopback port, stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGE = "summer"
UNRELATED_KEYS = 300_000


# ---- a summing stage, as its own process ----

class RunningSum:
    stage = STAGE
    max_batch = 64  # sessions per round

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def process(self, items: Sequence) -> list:
        from ditto.bus.worker import Output, WorkResult

        out = []
        for item in items:
            from ditto import codec

            total = int(item.state or b"0") + int(codec.unnamed(item.entry.tensors)["x"])
            out.append(WorkResult([Output("out", tensors={"sum": np.array(total)})], state=str(total).encode()))
        await asyncio.sleep(self.delay_s)
        return out


def _quiet() -> None:
    from ditto import telemetry
    from ditto.config import TelemetrySettings

    telemetry.setup(TelemetrySettings(log_level="warning", log_format="console"), "ditto-bench")


async def _worker_main(url: str, prefix: str, owner: str, slots: int, delay: float) -> None:
    from ditto.bus import RedisBus
    from ditto.bus.worker import SlotWorker, WorkerSettings

    bus = RedisBus(url, prefix)
    await SlotWorker(bus, RunningSum(delay), owner, WorkerSettings(slots=slots, lease_ttl_ms=600, block_ms=50,
                                                                     batch_entries=8)).run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Redis:
    def __init__(self) -> None:
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        port = _free_port()
        self.proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                      "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{port}/0"
        self.client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                self.client.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(10)


# ---- pending entries after worker kills ----

def _entry(session: str, seq: int, x: int, out: str):
    from ditto import codec
    from ditto_client.v1 import bus_pb2

    e = bus_pb2.StreamEntry(session_id=session, seq=seq, kind=bus_pb2.ENTRY_KIND_DATA)
    e.tensors.extend(codec.named({"x": np.array(x, dtype=np.int64)}))
    e.route["out"] = out
    return e


async def _check(bus, out: str, expected: dict[str, list[int]]) -> dict[str, int]:
    from ditto import codec

    await bus.ensure_group(out, "check")
    got: dict[str, list[int]] = {}
    while batch := await bus.read("check", "c", [out], count=1000):
        for d in batch:
            got.setdefault(d.entry.session_id, []).append(int(codec.unnamed(d.entry.tensors)["sum"]))
    wrong = 0
    for sid, xs in expected.items():
        want = [int(v) for v in np.cumsum(xs)]
        have = got.get(sid, [])
        wrong += sum(1 for a, b in zip(have, want, strict=False) if a != b) + abs(len(have) - len(want))
    return {"outputs": sum(len(v) for v in got.values()), "outputs_wrong_or_missing": wrong}


async def _kills(url: str, kills: int = 3, per_session: int = 150) -> dict:
    from ditto.bus import RedisBus

    bus = RedisBus(url, "bench-kills")
    out = bus.keys.key("out")
    expected: dict[str, list[int]] = {}
    for k in range(4):
        sid, stream = f"s{k}", bus.keys.slot_stream(STAGE, k % 2)
        await bus.ensure_group(stream, STAGE)
        xs = [int(v) for v in np.random.default_rng(k).integers(1, 100, per_session)]
        expected[sid] = xs
        for seq, x in enumerate(xs):
            await bus.publish(stream, _entry(sid, seq, x, out))
    total = sum(len(v) for v in expected.values())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")]))

    def spawn(owner: str, delay: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tools.bench.bus_reliability", "--worker", url, "bench-kills",
                                 owner, "2", str(delay)], cwd=ROOT, env=env)

    killed_at = []
    for i in range(kills):
        proc = spawn(f"victim{i}", 0.02)
        target = (i + 1) * total // (kills + 2)
        deadline = time.monotonic() + 120
        while await bus.stream_length(out) < target and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        killed_at.append(await bus.stream_length(out))
    t0 = time.monotonic()
    last = spawn("finisher", 0.0)
    deadline = time.monotonic() + 180
    while await bus.stream_length(out) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    drain_s = time.monotonic() - t0
    await asyncio.sleep(1.0)  # anything that would be done twice shows up now
    pending = sum([await bus.pending_count(bus.keys.slot_stream(STAGE, k), STAGE) for k in range(2)])
    left = sum([await bus.stream_length(bus.keys.slot_stream(STAGE, k)) for k in range(2)])
    last.send_signal(signal.SIGTERM)
    last.wait(30)
    result = {"entries": total, "workers_killed": kills, "outputs_at_each_kill": killed_at,
              "pending_entries_left": pending, "entries_left_in_slots": left,
              "seconds_to_finish_after_last_kill": round(drain_s, 2), **await _check(bus, out, expected)}
    await bus.close()
    return result


async def _dead_consumer_300(url: str) -> dict:
    from ditto.bus import RedisBus
    from ditto.bus.worker import SlotWorker, WorkerSettings

    bus = RedisBus(url, "bench-300")
    out, stream = bus.keys.key("out"), bus.keys.slot_stream(STAGE, 0)
    await bus.ensure_group(stream, STAGE)
    expected = {f"s{k}": list(range(1, 101)) for k in range(3)}
    for seq in range(100):
        for sid, xs in expected.items():
            await bus.publish(stream, _entry(sid, seq, xs[seq], out))
    await bus.read(STAGE, "dead", [stream], count=1000)
    pending_before = await bus.pending_count(stream, STAGE)
    worker = SlotWorker(bus, RunningSum(0.0), "rescuer", WorkerSettings(slots=1, lease_ttl_ms=1000, block_ms=20))
    task = asyncio.create_task(worker.run())
    deadline = time.monotonic() + 60
    while await bus.stream_length(out) < 300 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await worker.stop()
    await task
    result = {"pending_before": pending_before, "pending_entries_left": await bus.pending_count(stream, STAGE),
              **await _check(bus, out, expected)}
    await bus.close()
    return result


# ---- time to SessionStarted vs unrelated keys ----

async def _time_to_started(url: str, sessions: int) -> list[float]:
    import grpc

    from ditto import rpc
    from ditto.bus import RedisBus
    from ditto.config import load_settings
    from ditto_app.stack import EmbeddedStack
    from ditto_app.synthetic import ensure_synthetic
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc, common_pb2
    from services.orchestrator.config import OrchestratorSettings
    from services.orchestrator.service import AvatarService

    settings = load_settings(OrchestratorSettings)
    assert isinstance(settings, OrchestratorSettings)
    settings.bus.slots = 4
    bus = RedisBus(url, "ditto")
    stack = EmbeddedStack(ensure_synthetic("tiny"), "tiny", settings, "cpu", "torch", bus=bus)
    orch = await stack.start()
    server = await rpc.start_server([rpc.Service(avatar_pb2_grpc.add_AvatarServicer_to_server, AvatarService(orch),
                                                 rpc.service_name(avatar_pb2, "Avatar"))])
    times = []
    try:
        async with grpc.aio.insecure_channel(server.address, options=rpc.channel_options()) as channel:
            stub = avatar_pb2_grpc.AvatarStub(channel)
            import cv2

            img = np.full((128, 160, 3), 128, np.uint8)
            cv2.circle(img, (80, 64), 40, (60, 90, 200), -1)
            avatar = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(
                media=cv2.imencode(".png", img)[1].tobytes(), filename="p.png"))
            cfg = avatar_pb2.SessionConfig(avatar_id=avatar.avatar_id, audio_format=common_pb2.AudioFormat(
                sample_format=common_pb2.SAMPLE_FORMAT_PCM_S16LE, sample_rate_hz=16000, channels=1),
                idle_policy=avatar_pb2.IDLE_POLICY_FREEZE)
            for _ in range(sessions):
                t0 = time.perf_counter()
                call = stub.Converse(iter([avatar_pb2.ConverseRequest(config=cfg)]))
                first = await call.read()
                times.append(time.perf_counter() - t0)
                assert first.WhichOneof("kind") == "started", first
                call.cancel()
                deadline = time.monotonic() + 10
                while orch.sessions and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
    finally:
        await server.stop(1)
        await stack.stop()
    return times


def _fill(client, n: int) -> None:
    for start in range(0, n, 10_000):
        client.mset({f"unrelated:{i}": b"x" for i in range(start, min(n, start + 10_000))})


def run(out_dir: Path | None = None) -> dict:
    _quiet()
    results: dict = {}
    redis = _Redis()
    try:
        results["worker_kills"] = asyncio.run(_kills(redis.url))
        results["dead_consumer_300_pending"] = asyncio.run(_dead_consumer_300(redis.url))
        redis.client.flushdb()  # a private server: only this benchmark's keys
        empty = asyncio.run(_time_to_started(redis.url, 15))
        redis.client.flushdb()
        _fill(redis.client, UNRELATED_KEYS)
        keys = int(redis.client.dbsize())
        full = asyncio.run(_time_to_started(redis.url, 15))
        e, f = statistics.median(empty[1:]), statistics.median(full[1:])  # the first session warms caches
        results["session_started"] = {
            "empty_redis_ms_median": round(1000 * e, 1), "unrelated_keys": keys,
            "with_unrelated_keys_ms_median": round(1000 * f, 1), "ratio": round(f / e, 2),
            "target_ratio_at_most": 2.0, "sessions_each": len(empty) - 1}
    finally:
        redis.stop()
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=5, metavar=("URL", "PREFIX", "OWNER", "SLOTS", "DELAY"))
    a = ap.parse_args()
    if a.worker:
        _quiet()
        url, prefix, owner, slots, delay = a.worker
        asyncio.run(_worker_main(url, prefix, owner, int(slots), float(delay)))
    else:
        import json

        from tools.bench import record

        print(json.dumps(record("bus_reliability", Path("bench/results"), run), indent=2))
