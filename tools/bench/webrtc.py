"""WebRTC gateway benchmark (`make bench`, part `webrtc`): what the gateway adds to a conversation.

One `ditto serve` (tiny profile, synthetic weights) and one `ditto webrtc-gateway`, each its own process, on
loopback. The same speech is streamed at realtime twice:
- **gRPC direct**: the SDK sends 80 ms chunks (the gateway's chunk size) to Converse; a frame's latency is the time
  from sending the chunk that holds its first audio sample to receiving the frame;
- **through the gateway**: an aiortc peer sends the speech as 20 ms Opus packets and decodes the VP8 video; a
  frame's latency is the time from sending the packet that holds its first audio sample to decoding the frame.
The difference of the medians is the latency the gateway adds (resampling, chunking, JPEG decode, scheduling, VP8
encode, RTP, the receiver's jitter buffer and decode). On a machine whose CPUs the service saturates, both medians
are dominated by the service's queueing and move with the load, so two more figures isolate the gateway: how long
it holds each frame (from the service's message to the encoder: decode and scheduling) and the CPU of the gateway
process per session (from /proc). Also the audio-video offset of every frame as it left the gateway (lip sync).
`tools/bench.py` calls `run`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from ditto_client.timeline import FPS, FRAME_SAMPLES

SECONDS = 4.0
ROUNDS = 2
CHUNK_MS = 80


def _speech(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + np.random.default_rng(seed).uniform(0, 6)))
    voice = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((130, 260, 650, 1100)))
    return (np.clip(0.25 * env * voice, -1, 1) * 32767).astype(np.int16)


def _portrait() -> bytes:
    import cv2
    from skimage import data

    return cv2.imencode(".png", cv2.resize(data.astronaut()[:, :, ::-1], (160, 128)))[1].tobytes()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _latencies(frame_times: list[float], sent: list[tuple[int, float]], samples_per_frame: int) -> list[float]:
    """Frame k stands for audio from sample k * samples_per_frame; its latency runs from when that sample left."""
    positions = np.array([p for p, _ in sent])
    times = np.array([t for _, t in sent])
    out = []
    for k, t in enumerate(frame_times):
        i = int(np.searchsorted(positions, k * samples_per_frame, side="right")) - 1
        if i >= 0:
            out.append(t - times[i])
    return out


async def _direct(address: str, avatar_id: str, seed: int) -> dict:
    from ditto_client import AsyncAvatarClient

    pcm = _speech(SECONDS, 16000, seed).tobytes()
    step = 16000 * CHUNK_MS // 1000 * 2
    sent: list[tuple[int, float]] = []
    frames: list[float] = []
    async with AsyncAvatarClient(address) as client:
        # a loaded machine can hold the service's reads back for long: no idle timeout while it catches up
        stream = await client.open_session(avatar_id, sample_rate_hz=16000, seed=seed + 1, idle_timeout_s=600)

        async def send() -> None:
            t0 = time.monotonic()
            for i, start in enumerate(range(0, len(pcm), step)):
                await asyncio.sleep(max(0.0, t0 + i * CHUNK_MS / 1000 - time.monotonic()))
                sent.append((start // 2, time.monotonic()))
                await stream.send_audio(pcm[start:start + step])
            await stream.end_audio()

        sender = asyncio.create_task(send())
        async for msg in stream:
            if msg.WhichOneof("kind") == "frame":
                frames.append(time.monotonic())
        await sender
    lat = _latencies(frames[:int(SECONDS * FPS)], sent, FRAME_SAMPLES)
    return {"frames": len(frames), "latency_ms": lat}


async def _through_gateway(url: str, avatar_id: str, gateway_pid: int) -> dict:
    import aiohttp
    import av
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamTrack

    speech = _speech(SECONDS, 48000)
    sent: list[tuple[int, float]] = []

    class Speech(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.position = 0
            self.t0: float | None = None

        async def recv(self) -> av.AudioFrame:
            self.t0 = self.t0 or time.monotonic()
            await asyncio.sleep(max(0.0, self.t0 + self.position / 48000 - time.monotonic()))
            chunk = speech[self.position:self.position + 960]
            chunk = np.concatenate([chunk, np.zeros(960 - len(chunk), np.int16)])
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, self.position, Fraction(1, 48000)
            sent.append((self.position, time.monotonic()))
            self.position += 960
            return frame

    frames: list[float] = []
    wanted = int(SECONDS * FPS)
    done = asyncio.Event()
    pc = RTCPeerConnection()
    pc.addTrack(Speech())
    pc.addTransceiver("video", direction="recvonly")

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def consume() -> None:
            while True:
                try:
                    await track.recv()
                except Exception:
                    return
                if track.kind == "video":
                    frames.append(time.monotonic())
                    if len(frames) >= wanted:
                        done.set()

        asyncio.ensure_future(consume())

    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        r = await http.post(f"{url}/whip", data=pc.localDescription.sdp, params={"avatar": avatar_id},
                            headers={"Content-Type": "application/sdp"})
        assert r.status == 201, await r.text()
        location = r.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
        cpu0, t0 = _cpu_s(gateway_pid), time.monotonic()
        await asyncio.wait_for(done.wait(), 300)
        cpu1, t1 = _cpu_s(gateway_pid), time.monotonic()
        r = await http.delete(f"{url}{location}")
        stats = await r.json()
    await pc.close()
    return {"frames": len(frames), "latency_ms": _latencies(frames[:wanted], sent, 1920), "stats": stats,
            "gateway_cpu_s": cpu1 - cpu0, "wall_s": t1 - t0}


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {f"p{q}": round(float(np.percentile(a, q)), 1) for q in (50, 90)}


async def _measure(grpc_address: str, url: str, gateway_pid: int) -> dict:
    from ditto_client import AsyncAvatarClient

    async with AsyncAvatarClient(grpc_address) as client:
        avatar_id = (await client.register_avatar(_portrait(), timeout=120)).avatar_id
    await _direct(grpc_address, avatar_id, 99)  # warm-up: first-call costs stay out of the numbers
    direct, gateway = [], []
    for r in range(ROUNDS):
        d = await _direct(grpc_address, avatar_id, r)
        direct += d["latency_ms"]
        print(f"  direct round {r}: {d['frames']} frames, p50 {np.median(d['latency_ms']) * 1000:.0f} ms",
              flush=True)
        g = await _through_gateway(url, avatar_id, gateway_pid)
        gateway.append(g)
        print(f"  gateway round {r}: {g['frames']} frames, p50 {np.median(g['latency_ms']) * 1000:.0f} ms, "
              f"sync {g['stats']['av_sync']}", flush=True)
    lat_gw = [x for g in gateway for x in g["latency_ms"]]
    cpu = sum(g["gateway_cpu_s"] for g in gateway)
    wall = sum(g["wall_s"] for g in gateway)
    frames_out = sum(g["stats"]["frames_sent"] for g in gateway)
    return {
        "frame_latency_ms": {"grpc_direct": _pct(direct), "through_gateway": _pct(lat_gw)},
        "gateway_added_latency_ms_p50": round((np.median(lat_gw) - np.median(direct)) * 1000, 1),
        "gateway_internal_latency_ms_p50": [g["stats"]["latency_ms"]["p50"] for g in gateway],
        # what the gateway itself holds a frame: from the service's message to the encoder (decode + scheduling)
        "gateway_frame_hold_ms": [g["stats"].get("hold_ms") for g in gateway],
        # most of it is per second, not per frame (Opus down and up, 50 packets/s each, SRTP, the 20 ms clock)
        "gateway_cpu_per_session": {"cores": round(cpu / wall, 3), "fps_sent": round(frames_out / wall, 2)},
        "av_offset_ms": [g["stats"]["av_sync"] for g in gateway],
        "frames_dropped_by_gateway": sum(g["stats"]["frames_dropped"] for g in gateway),
        "video_codec": gateway[0]["stats"]["video_codec"],
    }


def run(out_dir: Path) -> dict:
    from ditto_app.cluster import free_port, start_ditto, stop_group
    from ditto_app.synthetic import ensure_synthetic

    ensure_synthetic("tiny")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="ditto-bench-webrtc-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DITTO_")}
    env.update(PYTHONUNBUFFERED="1", DITTO_WEBRTC_ICE_HOST_ADDRESSES='["127.0.0.1"]')
    grpc_port, http_port = free_port(), free_port()
    serve = start_ditto(["serve", "--weights", "synthetic", "--profile", "tiny", "--device", "cpu", "--port",
                        str(grpc_port)], logs / "serve.log", "READY orchestrator", env)
    try:
        gw = start_ditto(["webrtc-gateway", "--port", str(http_port), "--orchestrator", f"127.0.0.1:{grpc_port}"],
                         logs / "gateway.log", "READY webrtc-gateway", env)
        try:
            # the loopback peer in this process must gather on 127.0.0.1 too
            from services.webrtc_gateway.session import limit_host_addresses

            limit_host_addresses(["127.0.0.1"])
            idle0, t0 = _cpu_s(gw.pid), time.monotonic()
            time.sleep(2.0)
            idle_cores = (_cpu_s(gw.pid) - idle0) / (time.monotonic() - t0)
            result = asyncio.run(_measure(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", gw.pid))
        finally:
            stop_group(gw)
    finally:
        stop_group(serve)
    result["gateway_idle_cores"] = round(idle_cores, 4)
    result["setup"] = {"profile": "tiny", "weights": "synthetic", "device": "cpu", "speech_s": SECONDS,
                       "rounds": ROUNDS, "chunk_ms": CHUNK_MS, "transport": "loopback", "frames": "JPEG from the "
                       "service, VP8 to the peer", "cpus": os.cpu_count(), "logs": str(logs),
                       "note": "on a CPU-bound machine the service delivers fewer than 25 fps, so the gateway's "
                               "CPU per session is for that frame rate (ms_per_frame scales it)"}
    return result


if __name__ == "__main__":
    from tools.bench import record

    print(json.dumps(record("webrtc", Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results"), run), indent=2))
