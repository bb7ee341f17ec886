"""Serving benchmark, in the manner of a realtime avatar load test: N clients talk at once, each streaming speech at
realtime pace (200 ms chunks sent when they would be spoken) and receiving the video. Per concurrency level it
reports first-frame latency percentiles (first audio chunk sent -> first frame received) and the frame rate each
session is delivered at, for the embedded server (`ditto serve`, one process, in-memory bus) and for the distributed
stack (ditto_app.cluster.LocalCluster: Redis, one worker process per stage, an orchestrator), so the
latency the distributed path adds shows. Tiny profile with synthetic weights: it measures the serving machinery
(transport, pacing, batching across sessions), not model speed. `python -m tools.bench` (`make bench`) calls
`run`.

Two more cases. Bursty speech: a text-to-speech voice hands over audio faster than realtime, so the first
BURST_S of audio is sent at once and the rest stays that far ahead of realtime; first-frame latency is reported
next to the realtime-paced figures. Spread: SPREAD_SESSIONS equal sessions on a distributed stack with two workers
per stage, and again with one worker per stage while the first half starts and a second joining before the other
half: completion time (first audio sent -> last frame) of the slowest over the fastest, target <= 1.2, with the
number of sessions each worker got.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ditto_app.cluster import ServeProcess, start_serve, stop_group
from tools.bench import record

LEVELS = (1, 2, 4)          # concurrent sessions
ROUNDS = {1: 3, 2: 2, 4: 1}  # repeated so every level has 3-4 first-frame samples
SECONDS = 4.0               # speech per session
CHUNK_MS = 200
BURST_S = 2.0               # bursty speech: this much audio at once, then the rest stays this far ahead
SPREAD_SESSIONS = 4
SESSION_TIMEOUT_S = 900      # a session on an overloaded CPU takes minutes; the bench measures it, not a deadline


@dataclass
class SessionResult:
    first_frame_s: float  # first audio chunk sent -> first frame received
    fps: float            # frames / (last frame - first frame) * (n - 1) / n
    frames: int
    expected: int
    code: str
    completion_s: float = float("nan")  # first audio chunk sent -> last frame received


def _portrait() -> bytes:
    import cv2
    from skimage import data

    return cv2.imencode(".png", cv2.resize(data.astronaut()[:, :, ::-1], (160, 128)))[1].tobytes()


def _speech(seconds: float, seed: int, rate: int = 16000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + np.random.default_rng(seed).uniform(0, 6)))
    voice = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((130, 260, 650, 1100)))
    return (np.clip(0.25 * env * voice, -1, 1) * 32767).astype("<i2").tobytes()


async def _session(stub, avatar_id: str, seed: int, burst_s: float = 0.0,
                   started: asyncio.Event | None = None, seconds: float = SECONDS) -> SessionResult:
    import grpc

    from ditto_client.v1 import avatar_pb2, common_pb2

    pcm = _speech(seconds, seed)
    step = 16000 * CHUNK_MS // 1000 * 2
    cfg = avatar_pb2.SessionConfig(
        avatar_id=avatar_id, seed=seed + 1, idle_policy=avatar_pb2.IDLE_POLICY_FREEZE,
        audio_format=common_pb2.AudioFormat(sample_format=common_pb2.SAMPLE_FORMAT_PCM_S16LE, sample_rate_hz=16000,
                                            channels=1),
        output=common_pb2.OutputOptions(encoding=common_pb2.FRAME_ENCODING_JPEG, paste_back=True))
    first_sent: list[float] = []

    async def requests():
        yield avatar_pb2.ConverseRequest(config=cfg)
        t0 = time.monotonic()
        for i, start in enumerate(range(0, len(pcm), step)):
            # realtime pace, or `burst_s` ahead of it (the first burst_s at once)
            await asyncio.sleep(max(0.0, t0 + i * CHUNK_MS / 1000 - burst_s - time.monotonic()))
            if not first_sent:
                first_sent.append(time.monotonic())
            yield avatar_pb2.ConverseRequest(audio=avatar_pb2.AudioChunk(data=pcm[start:start + step]))
        yield avatar_pb2.ConverseRequest(end_of_audio=avatar_pb2.EndOfAudio())

    arrivals: list[float] = []
    call = stub.Converse(requests(), timeout=SESSION_TIMEOUT_S)
    try:
        async for msg in call:
            if msg.WhichOneof("kind") == "frame":
                arrivals.append(time.monotonic())
            elif msg.WhichOneof("kind") == "started" and started is not None:
                started.set()
        code = (await call.code()).name
    except grpc.aio.AioRpcError as err:
        code = err.code().name
    n = len(arrivals)
    span = arrivals[-1] - arrivals[0] if n > 1 else 0.0
    return SessionResult(first_frame_s=arrivals[0] - first_sent[0] if arrivals and first_sent else float("nan"),
                         fps=(n - 1) / span if span > 0 else 0.0, frames=n, expected=int(np.ceil(seconds * 25)),
                         code=code,
                         completion_s=arrivals[-1] - first_sent[0] if arrivals and first_sent else float("nan"))


async def _load(address: str) -> dict:
    import grpc

    from ditto import rpc
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

    async with grpc.aio.insecure_channel(address, options=rpc.channel_options()) as channel:
        stub = avatar_pb2_grpc.AvatarStub(channel)
        avatar = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=_portrait(), filename="p.png"),
                                           timeout=120)
        await _session(stub, avatar.avatar_id, 0)  # warm-up: first-call costs stay out of the numbers
        levels: dict = {}
        for burst_s, key in ((0.0, ""), (BURST_S, "bursty_")):
            for n in LEVELS:
                results: list[SessionResult] = []
                for r in range(ROUNDS[n]):
                    results += await asyncio.gather(*(_session(stub, avatar.avatar_id, 100 * r + k, burst_s)
                                                      for k in range(n)))
                first = np.array([x.first_frame_s for x in results])
                levels[f"{key}{n}"] = {
                    "sessions": len(results),
                    "first_frame_ms": {f"p{q}": round(float(np.nanpercentile(first, q)) * 1000, 1)
                                       for q in (50, 90, 95, 99)},
                    "delivered_fps": {"min": round(min(x.fps for x in results), 2),
                                      "mean": round(float(np.mean([x.fps for x in results])), 2)},
                    "frames_complete": all(x.frames == x.expected for x in results),
                    "errors": sorted({x.code for x in results if x.code != "OK"}),
                }
                print(f"  {key or 'realtime_'}{n} concurrent: {json.dumps(levels[f'{key}{n}'])}", flush=True)
        return levels


def _placements(redis_url: str, prefix: str, slots: int) -> dict[str, dict[str, int]]:
    """Per stage, how many of the live sessions each worker serves (placement keys and slot leases in Redis)."""
    import redis

    from services.orchestrator.placement import STAGES

    client = redis.Redis.from_url(redis_url)
    try:
        out: dict[str, dict[str, int]] = {}
        for stage in STAGES:
            owners = client.mget([f"{prefix}:{stage}:lease:{k}" for k in range(slots)])
            counts: dict[str, int] = {}
            for key in client.scan_iter(match=f"{prefix}:placement:{stage}:*", count=1000):
                owner = owners[int(key.decode().split(":")[-2])]
                name = owner.decode() if isinstance(owner, bytes) else str(owner or "(none)")
                counts[name] = counts.get(name, 0) + 1
            out[stage] = counts
        return out
    finally:
        client.close()


def _workers_live(redis_url: str, prefix: str, slots: int, workers: int) -> bool:
    import redis

    from services.orchestrator.placement import STAGES

    client = redis.Redis.from_url(redis_url)
    try:
        return all(len({o for o in client.mget([f"{prefix}:{stage}:lease:{k}" for k in range(slots)]) if o})
                   >= workers for stage in STAGES)
    finally:
        client.close()


def _wait_workers_live(cluster, workers: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not _workers_live(cluster.redis_url, cluster.prefix, cluster.slots, workers):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {workers} live workers per stage after {timeout} s")
        time.sleep(0.1)


def _second_workers(cluster) -> None:
    from ditto_app.stages import STAGES

    names = [cluster.start_worker(stage, f"{stage}-2").name for stage in STAGES]
    cluster.wait_ready(names=names)
    _wait_workers_live(cluster, 2)


async def _spread_run(cluster, joining: bool) -> dict:
    import grpc

    from ditto import rpc
    from ditto_client.v1 import avatar_pb2, avatar_pb2_grpc

    async with grpc.aio.insecure_channel(cluster.address, options=rpc.channel_options()) as channel:
        stub = avatar_pb2_grpc.AvatarStub(channel)
        avatar = await stub.RegisterAvatar(avatar_pb2.RegisterAvatarRequest(media=_portrait(), filename="p.png"),
                                           timeout=120)
        await _session(stub, avatar.avatar_id, 0)  # warm-up
        if not joining:
            await asyncio.to_thread(_second_workers, cluster)
        half = SPREAD_SESSIONS // 2
        events = [asyncio.Event() for _ in range(SPREAD_SESSIONS)]
        tasks = [asyncio.create_task(_session(stub, avatar.avatar_id, 10 + k, 0.0, events[k])) for k in range(half)]
        if joining:
            await asyncio.gather(*(e.wait() for e in events[:half]))
            await asyncio.to_thread(_second_workers, cluster)  # joins while the first half is speaking
        tasks += [asyncio.create_task(_session(stub, avatar.avatar_id, 10 + k, 0.0, events[k]))
                  for k in range(half, SPREAD_SESSIONS)]
        await asyncio.gather(*(e.wait() for e in events))
        placed = _placements(cluster.redis_url, cluster.prefix, cluster.slots)
        results = await asyncio.gather(*tasks)
    done = [x.completion_s for x in results]
    return {"sessions": SPREAD_SESSIONS, "completion_s": [round(x, 2) for x in done],
            "spread": round(max(done) / min(done), 3), "target": 1.2,
            "sessions_per_worker": {stage: sorted(c.values()) for stage, c in placed.items()},
            "frames_complete": all(x.frames == x.expected for x in results),
            "errors": sorted({x.code for x in results if x.code != "OK"})}


def spread(logs: Path) -> dict:
    from ditto_app.cluster import LocalCluster

    out = {}
    for joining in (False, True):
        name = "worker_joins_midway" if joining else "two_workers_per_stage"
        print(f"serving bench: spread, {name}", flush=True)
        cluster = LocalCluster(prefix=f"ditto-bench-{uuid.uuid4().hex[:8]}", slots=8, log_dir=logs / name)
        try:
            cluster.start(timeout=180)
            out[name] = asyncio.run(_spread_run(cluster, joining))
            print(f"  {json.dumps(out[name])}", flush=True)
        finally:
            cluster.stop()
            cluster.purge()
    return out


def _start_embedded(log: Path, profile: str = "tiny", device: str = "cpu") -> ServeProcess:
    return start_serve(log, ["--weights", "synthetic", "--profile", profile, "--device", device], timeout_s=180)


def run(out_dir: Path, with_spread: bool = True) -> dict:
    """Every part; `with_spread=False` keeps the spread of an earlier run from serving.json (it is the longest)."""
    from ditto_app.cluster import LocalCluster
    from ditto_app.synthetic import ensure_synthetic

    ensure_synthetic("tiny")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="ditto-bench-serving-"))
    result: dict = {"setup": {"profile": "tiny", "weights": "synthetic", "device": "cpu",
                              "audio_s_per_session": SECONDS, "chunk_ms": CHUNK_MS, "encoding": "JPEG",
                              "clients": "realtime-paced, one process",
                              "cpus": os.cpu_count(), "logs": str(logs)}}

    print("serving bench: embedded (ditto serve, in-memory bus)", flush=True)
    server = _start_embedded(logs / "embedded.log")
    try:
        result["embedded"] = asyncio.run(_load(server.address))
    finally:
        stop_group(server.popen, 20)

    print("serving bench: distributed (LocalCluster over Redis)", flush=True)
    cluster = LocalCluster(prefix=f"ditto-bench-{uuid.uuid4().hex[:8]}", slots=8, log_dir=logs / "cluster")
    try:
        cluster.start(timeout=180)
        result["distributed"] = asyncio.run(_load(cluster.address))
    finally:
        cluster.stop()
        cluster.purge()

    added = {}
    for key in result["embedded"]:
        e, d = result["embedded"][key]["first_frame_ms"], result["distributed"][key]["first_frame_ms"]
        added[key] = {k: round(d[k] - e[k], 1) for k in e}
    result["distributed_added_first_frame_ms"] = added
    earlier = out_dir / "serving.json"
    if with_spread or not earlier.is_file():
        result["spread"] = spread(logs)
    else:
        result["spread"] = {**json.loads(earlier.read_text())["spread"], "kept_from_an_earlier_run": True}
    return result


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", type=Path, default=Path("bench/results"))
    ap.add_argument("--without-spread", action="store_true", help="keep the spread of the earlier serving.json")
    a = ap.parse_args()
    print(json.dumps(record("serving", a.out, run, with_spread=not a.without_spread), indent=2))
