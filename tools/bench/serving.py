"""Serving benchmark, with the load test operators run (`ditto loadtest`, ditto_app/loadtest): steps of 1, 2 and 4
sessions at once, each session speaking SECONDS of speech, realtime-paced (200 ms chunks sent when they would be
spoken) and again bursty (each answer handed over at once, as text-to-speech does). Per step: first-frame latency
percentiles (first audio chunk sent -> first frame received), the frame rate each session is delivered at, lag,
refusals and errors, for the embedded server (`ditto serve`, one process, in-memory bus) and for the distributed
stack (ditto_app.cluster.LocalCluster: Redis, one worker process per stage, an orchestrator), so the latency the
distributed path adds shows. Each run's HTML report is written next to serving.json. Tiny profile with synthetic
weights: it measures the serving machinery (transport, pacing, batching across sessions), not model speed.
`python -m tools.bench` (`make bench`) calls `run`.

One more case, spread: SPREAD_SESSIONS equal sessions on a distributed stack with two workers per stage, and again
with one worker per stage while the first half starts and a second joining before the other half: completion time
(first audio sent -> last frame) of the slowest over the fastest, target <= 1.2, with the number of sessions each
worker got (as `ditto status` reads it).
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

from ditto.pipeline import FPS
from ditto_app.cluster import ServeProcess, start_serve, stop_group
from tools.bench import record

LEVELS = [1, 2, 4]          # sessions at once, one load-test step each
SESSIONS_PER_STEP = 4       # every step runs this many sessions (1 at once: 4 in a row; 4 at once: one round)
SECONDS = 4.0               # speech per session
CHUNK_MS = 200
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


async def _session(stub, avatar_id: str, seed: int, started: asyncio.Event | None = None,
                   seconds: float = SECONDS) -> SessionResult:
    """One realtime-paced session of the spread case, timed to its last frame."""
    import grpc

    from ditto_app.loadtest.driver import synthetic_speech
    from ditto_client.v1 import avatar_pb2, common_pb2

    pcm = synthetic_speech(seconds).pcm
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
            await asyncio.sleep(max(0.0, t0 + i * CHUNK_MS / 1000 - time.monotonic()))  # realtime pace
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
                         fps=(n - 1) / span if span > 0 else 0.0, frames=n, expected=int(np.ceil(seconds * FPS)),
                         code=code,
                         completion_s=arrivals[-1] - first_sent[0] if arrivals and first_sent else float("nan"))


def _load(address: str, name: str, out_dir: Path, logs: Path) -> dict:
    """The load test at LEVELS, realtime-paced then bursty; each run's HTML report lands in `out_dir`."""
    from ditto_app.loadtest import LoadPlan, run_load, summarize
    from ditto_app.loadtest.report import html

    portrait = logs / "portrait.png"
    portrait.write_bytes(_portrait())
    common = {"server": address, "speech_s": SECONDS, "chunk_ms": CHUNK_MS, "session_timeout_s": SESSION_TIMEOUT_S,
              "step_s": SESSION_TIMEOUT_S, "max_sessions_per_step": SESSIONS_PER_STEP, "keep_going": True}
    warm = asyncio.run(run_load(LoadPlan(portrait=portrait, steps=[1], **{**common, "max_sessions_per_step": 1})))
    levels: dict = {}
    for speech, key in (("realtime", ""), ("bursty", "bursty_")):  # first-call costs stayed in the warm-up
        summary = summarize(asyncio.run(run_load(LoadPlan(avatar_id=warm.avatar_id, steps=LEVELS, speech=speech,
                                                          **common))))
        (out_dir / f"serving-{name}-{speech}.html").write_text(html(summary))
        for step in summary["steps"]:
            levels[f"{key}{step['users']}"] = {
                "sessions": step["sessions"],
                "first_frame_ms": step["first_frame_ms"],
                "delivered_fps": step["fps"],
                "fps_kept_share": step["fps_kept_share"],
                "lag_ms": step["lag_ms"],
                "frames_complete": step["frames_complete"],
                "refusals": step["refusals"]["by_code"],
                "errors": step["errors"],
            }
        levels[f"{key}verdict"] = summary["verdict"]
        print(f"  {speech}: {summary['verdict']}", flush=True)
    return levels


def _workers(cluster) -> dict:
    """Per stage, its live workers with their slots and sessions, as `ditto status` reads them from Redis."""
    from ditto.bus import RedisBus
    from ditto_app.status import snapshot

    async def read() -> dict:
        bus = RedisBus(cluster.redis_url, cluster.prefix)
        try:
            snap = await snapshot(bus, cluster.slots, 4, bus.url)
        finally:
            await bus.close()
        return {st.stage: [w for w in st.workers if w.slots] for st in snap.stages}

    return asyncio.run(read())


def _wait_workers_live(cluster, workers: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not all(len(live) >= workers for live in _workers(cluster).values()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not {workers} live workers holding slots per stage after {timeout} s")
        time.sleep(0.1)


def _second_workers(cluster) -> None:
    from ditto import pipeline

    names = [cluster.start_worker(stage, f"{stage}-2").name for stage in pipeline.active().names]
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
        tasks = [asyncio.create_task(_session(stub, avatar.avatar_id, 10 + k, events[k])) for k in range(half)]
        if joining:
            await asyncio.gather(*(e.wait() for e in events[:half]))
            await asyncio.to_thread(_second_workers, cluster)  # joins while the first half is speaking
        tasks += [asyncio.create_task(_session(stub, avatar.avatar_id, 10 + k, events[k]))
                  for k in range(half, SPREAD_SESSIONS)]
        await asyncio.gather(*(e.wait() for e in events))
        placed = await asyncio.to_thread(_workers, cluster)
        results = await asyncio.gather(*tasks)
    done = [x.completion_s for x in results]
    return {"sessions": SPREAD_SESSIONS, "completion_s": [round(x, 2) for x in done],
            "spread": round(max(done) / min(done), 3), "target": 1.2,
            "sessions_per_worker": {stage: sorted(w.sessions for w in live) for stage, live in placed.items()},
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
                              "sessions_per_step": SESSIONS_PER_STEP,
                              "clients": "ditto loadtest (realtime-paced, then bursty), one process",
                              "cpus": os.cpu_count(), "logs": str(logs)}}

    print("serving bench: embedded (ditto serve, in-memory bus)", flush=True)
    server = _start_embedded(logs / "embedded.log")
    try:
        result["embedded"] = _load(server.address, "embedded", out_dir, logs)
    finally:
        stop_group(server.popen, 20)

    print("serving bench: distributed (LocalCluster over Redis)", flush=True)
    cluster = LocalCluster(prefix=f"ditto-bench-{uuid.uuid4().hex[:8]}", slots=8, log_dir=logs / "cluster")
    try:
        cluster.start(timeout=180)
        result["distributed"] = _load(cluster.address, "distributed", out_dir, logs)
    finally:
        cluster.stop()
        cluster.purge()

    added = {}
    for key, level in result["embedded"].items():  # the levels (the verdicts are strings)
        e, d = (x.get(key) for x in (result["embedded"], result["distributed"]))
        if isinstance(level, dict) and e["first_frame_ms"] and d["first_frame_ms"]:
            added[key] = {k: round(d["first_frame_ms"][k] - e["first_frame_ms"][k], 1) for k in e["first_frame_ms"]}
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
