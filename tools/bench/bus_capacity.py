"""How far one Redis shard carries the bus, for `make bench` (part `bus_capacity`).

Every entry of a session crosses Redis the way the bus moves it: appended to a stage slot stream (XADD), read by the
stage's consumer group (XREADGROUP), then acknowledged and deleted (XACK + XDEL). This part pushes entries of frame
size (50 KB, a 512x512 JPEG) and of audio/motion size (1 KB) through that cycle, pipelined, over the 48 slot streams
of a default deployment (3 stages x 16 slots, named by the kernel), and reports:

- entries/s and MB/s through one redis-server, and through a Redis Cluster of 3 primaries with one replica each
  (6 `redis-server --cluster-enabled yes` + `redis-cli --cluster create`), with redis-py's RedisCluster client;
- redis-server CPU seconds per 1000 entries (utime + stime of the server processes from /proc), per shard;
- the share of entries each primary took (its XADD count from INFO commandstats);
- the orchestrator's bus cost per delivered frame: CPU of reading a frames stream, parsing each frame entry and
  acknowledging it, in this process (the gRPC send to the client is not included);
- a projection: sessions of 512x512 JPEG at 25 fps one shard carries, and orchestrator replicas per 100 sessions.

On one small machine the shards, the replicas and this client share the cores, so the cluster's throughput here is
not 3x one Redis: the per-shard CPU cost is the number to project from. Every server is private (free loopback
ports, no persistence) and stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FRAME_BYTES = 50_000
SMALL_BYTES = 1_000
FPS = 25
# Entries per second one session puts through Redis besides its frames: 200 ms audio chunks into the audio encoder,
# their features into the motion stage, motion windows into the renderer (5 each per second), all about 1 KB.
SMALL_PER_SESSION_S = 15
SHARD_BUDGET = 0.7   # share of one core a Redis shard may use before latency suffers (it runs commands on one thread)
ORCH_BUDGET = 0.7    # the same for one orchestrator replica's core
SLOTS = 16
BATCH = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, where nodes talk to each other) is free and valid too."""
    while True:
        port = _free_port()
        if port + 10000 < 65536:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                pass


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _streams() -> list[str]:
    """The streams a balanced load writes, named by the kernel: every stage slot, and the frames shards of two
    orchestrator replicas."""
    from ditto.keys import Keys
    from ditto.pipeline import PIPELINE
    from services.orchestrator.config import OrchestratorSettings

    names, shards = Keys("bench"), OrchestratorSettings.model_fields["frames_shards"].default
    return [names.slot_stream(stage, k) for stage in PIPELINE.names for k in range(SLOTS)] + \
        [names.frames_stream(replica, k, shards) for replica in ("replica-a", "replica-b") for k in range(shards)]


def _start(port: int, workdir: Path, *extra: str) -> subprocess.Popen:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ping(port: int) -> None:
    import redis

    deadline = time.monotonic() + 30
    while True:
        try:
            if redis.Redis(port=port, socket_connect_timeout=1).ping():
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def _cycle(client: Any, streams: list[str], count: int, size: int) -> float:
    """Push `count` entries of `size` bytes through XADD -> XREADGROUP -> XACK + XDEL, round robin over `streams`;
    returns the wall seconds."""
    payload = os.urandom(size)
    for s in streams:
        try:
            client.xgroup_create(s, "g", id="0", mkstream=True)
        except Exception as err:  # BUSYGROUP from an earlier round
            if "BUSYGROUP" not in str(err):
                raise
    started = time.perf_counter()
    done = 0
    while done < count:
        n = min(BATCH, count - done)
        pipe = client.pipeline(transaction=False)
        targets = [streams[(done + i) % len(streams)] for i in range(n)]
        for s in targets:
            pipe.xadd(s, {b"e": payload})
        pipe.execute()
        pipe = client.pipeline(transaction=False)
        for s in sorted(set(targets)):
            pipe.xreadgroup("g", "c", {s: ">"}, count=BATCH)
        rows = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for res in rows:
            for stream, items in res or []:
                ids = [i for i, _ in items]
                if ids:
                    pipe.xack(stream, "g", *ids)
                    pipe.xdel(stream, *ids)
        pipe.execute()
        done += n
    return time.perf_counter() - started


def _measure(client: Any, pids: list[int], streams: list[str], count: int, size: int) -> dict:
    cpu0 = [_cpu_s(p) for p in pids]
    wall = _cycle(client, streams, count, size)
    cpu = [_cpu_s(p) - c for p, c in zip(pids, cpu0, strict=True)]
    return {"entries": count, "entry_bytes": size, "seconds": round(wall, 3),
            "entries_per_s": round(count / wall), "mb_per_s": round(count * size / wall / 1e6, 1),
            "redis_cpu_s_per_1000": round(1000 * sum(cpu) / count, 4), "_cpu_per_process": cpu}


def _single(work: Path, frames: int, small: int) -> dict:
    import redis

    port = _free_port()
    proc = _start(port, work / "single")
    try:
        _wait_ping(port)
        client = redis.Redis(port=port)
        streams = _streams()
        _cycle(client, streams, 500, SMALL_BYTES)  # warm up: groups created, allocator grown
        out = {"frame_50kb": _measure(client, [proc.pid], streams, frames, FRAME_BYTES),
               "small_1kb": _measure(client, [proc.pid], streams, small, SMALL_BYTES)}
        for v in out.values():
            v.pop("_cpu_per_process")
        client.close()
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def _cluster_ok(port: int) -> bool:
    import redis

    info = redis.Redis(port=port, decode_responses=True).execute_command("CLUSTER INFO")
    return info.get("cluster_state") == "ok" if isinstance(info, dict) else "cluster_state:ok" in str(info)


def _cluster(work: Path, frames: int, small: int) -> dict:
    import redis
    from redis.cluster import RedisCluster

    ports = [_cluster_port() for _ in range(6)]
    procs = {p: _start(p, work / f"node-{p}", "--cluster-enabled", "yes", "--cluster-config-file",
                       f"nodes-{p}.conf", "--cluster-node-timeout", "2000") for p in ports}
    try:
        for p in ports:
            _wait_ping(p)
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas",
                        "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        while not all(_cluster_ok(p) for p in ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the local Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        client = RedisCluster(host="127.0.0.1", port=ports[0])
        primaries = sorted(n.port for n in client.get_primaries())
        replicas = sorted(set(ports) - set(primaries))
        streams = _streams()
        _cycle(client, streams, 500, SMALL_BYTES)
        for p in ports:
            redis.Redis(port=p).config_resetstat()
        pids = [procs[p].pid for p in primaries] + [procs[p].pid for p in replicas]
        out: dict[str, Any] = {}
        for name, count, size in (("frame_50kb", frames, FRAME_BYTES), ("small_1kb", small, SMALL_BYTES)):
            m = _measure(client, pids, streams, count, size)
            cpu = m.pop("_cpu_per_process")
            m["redis_cpu_s_per_1000"] = round(1000 * sum(cpu[:3]) / count, 4)  # primaries: the work of the shards
            m["replicas_cpu_s_per_1000"] = round(1000 * sum(cpu[3:]) / count, 4)
            m["busiest_primary_cpu_s_per_1000"] = round(1000 * max(cpu[:3]) / count, 4)
            out[name] = m
        adds = {}
        for p in primaries:
            stats = redis.Redis(port=p).info("commandstats")
            adds[p] = int(stats.get("cmdstat_xadd", {}).get("calls", 0))
        total = sum(adds.values()) or 1
        out["share_of_entries_per_primary"] = [round(adds[p] / total, 3) for p in primaries]
        out["max_share"] = max(out["share_of_entries_per_primary"])
        client.close()
        return out
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(10)


def _orchestrator_cpu_per_frame(work: Path, frames: int) -> dict:
    """The orchestrator's frames dispatcher path on the real RedisBus: read 256 at a time, parse, acknowledge."""
    import asyncio

    import numpy as np

    from ditto import codec
    from ditto.bus import Commit
    from ditto.bus.redis_streams import RedisBus
    from ditto_client.v1 import bus_pb2

    port = _free_port()
    proc = _start(port, work / "orch")

    async def go() -> dict:
        bus = RedisBus(f"redis://127.0.0.1:{port}/0", prefix="bench")
        stream = bus.keys.frames_stream("replica")
        await bus.ensure_group(stream, "orchestrator")
        jpeg = np.frombuffer(os.urandom(FRAME_BYTES), np.uint8)
        entry = bus_pb2.StreamEntry(session_id="s" * 32, kind=bus_pb2.ENTRY_KIND_DATA,
                                    meta=bus_pb2.FrameMeta(index=1, width=512, height=512).SerializeToString())
        entry.tensors.extend(codec.named({"frame": jpeg}))
        for _ in range(frames):
            await bus.publish(stream, entry)
        got = 0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while got < frames:
            ds = await bus.read("orchestrator", "replica", [stream], count=256, block_ms=100)
            for d in ds:
                codec.unnamed(d.entry.tensors).get("frame")
            if ds:
                await bus.commit("orchestrator", Commit(acks=[(d.stream, d.entry_id) for d in ds]))
            got += len(ds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await bus.close()
        return {"frames": frames, "cpu_ms_per_frame": round(1000 * cpu / frames, 4),
                "frames_per_s": round(frames / wall)}

    try:
        _wait_ping(port)
        return asyncio.run(go())
    finally:
        proc.terminate()
        proc.wait(10)


def _projection(single: dict, orch: dict) -> dict:
    frame = single["frame_50kb"]["redis_cpu_s_per_1000"] / 1000
    small = single["small_1kb"]["redis_cpu_s_per_1000"] / 1000
    per_session = FPS * frame + SMALL_PER_SESSION_S * small  # Redis CPU seconds per second of one session
    orch_per_session = FPS * orch["cpu_ms_per_frame"] / 1000
    return {
        "redis_cpu_per_session": round(per_session, 5),
        "sessions_per_shard": int(SHARD_BUDGET / per_session),
        "frame_mb_per_s_per_shard": round(SHARD_BUDGET / per_session * FPS * FRAME_BYTES / 1e6, 1),
        "orchestrator_cpu_per_session_bus_part": round(orch_per_session, 5),
        "orchestrator_replicas_per_100_sessions_bus_part": round(100 * orch_per_session / ORCH_BUDGET, 2),
        "assumptions": (f"{FPS} fps of {FRAME_BYTES // 1000} KB frames plus {SMALL_PER_SESSION_S} entries/s of "
                        f"{SMALL_BYTES // 1000} KB per session; a shard or an orchestrator core used to "
                        f"{int(SHARD_BUDGET * 100)}%; cluster: shards x sessions_per_shard when the load spreads "
                        "evenly (see max_share)"),
    }


def run(out_dir: Path | None = None, frames: int = 4000, small: int = 40_000) -> dict:
    with tempfile.TemporaryDirectory(prefix="ditto-bus-capacity-") as tmp:
        work = Path(tmp)
        single = _single(work, frames, small)
        cluster = _cluster(work, frames, small)
        orch = _orchestrator_cpu_per_frame(work, min(frames, 2000))
    return {
        "single_redis": single,
        "cluster_3_primaries": cluster,
        "orchestrator_frames_path": orch,
        "projection": _projection(single, orch),
        "note": ("one client process pipelining 64 entries at a time; on a 2-core machine the client, the servers and "
                 "(here) other jobs share the cores, so throughput is a floor and the cluster shows no 3x: project "
                 "from the CPU seconds per 1000 entries of one shard"),
    }


if __name__ == "__main__":
    import json
    import sys

    from tools.bench import record

    sys.path[:0] = [str(ROOT), str(ROOT / "clients" / "python")]
    print(json.dumps(record("bus_capacity", ROOT / "bench" / "results", run), indent=2))
