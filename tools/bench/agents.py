"""`make bench` part `agents`: the latency each voice-agent adapter adds over the plain SDK.

One `ditto serve` (tiny profile, synthetic weights) in its own process; this process is the client. For each of 20
rounds, three fresh sessions in turn (order rotated per round) speak the same 2 s of speech at realtime pace (100 ms
pieces, like a streaming TTS): the plain SDK (`AsyncAvatarClient`, 16 kHz PCM), the LiveKit `DittoVideoGenerator`
(24 kHz `rtc.AudioFrame`s) and the Pipecat `DittoVideoService` in a real pipeline (24 kHz `TTSAudioRawFrame`s). Each
measures first audio in -> first frame that shows that speech out. `fresh`: the speech starts the session (the idle
feed held off), so the difference is the adapters' own work (resampling, JPEG decoding, cutting the speech per frame,
Pipecat's frame queues). `after_idle` (fewer runs): the face idles 3 s first, as in a real agent, so the speech also
waits behind the silence in flight (`idle_lead_s`). Called by tools/bench.py; needs the [livekit] and [pipecat]
extras.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ditto_app.cluster import start_serve, stop_group

ROUNDS = 20
IDLE_ROUNDS = 5
IDLE_S = 3.0
FRESH = 60.0  # idle_after_s that keeps the idle feed off for a whole fresh run
SECONDS = 2.0
PIECE_MS = 100
ROOT = Path(__file__).resolve().parents[1]


def _speech(rate: int, seed: int) -> bytes:
    t = np.arange(int(rate * SECONDS)) / rate
    env = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + np.random.default_rng(seed).uniform(0, 6)))
    voice = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((130, 260, 650, 1100)))
    return (np.clip(0.25 * env * voice, -1, 1) * 32767).astype("<i2").tobytes()


def _pieces(pcm: bytes, rate: int) -> list[bytes]:
    step = rate * PIECE_MS // 1000 * 2
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


async def _paced(pieces: list[bytes], send) -> float:
    """Send at realtime pace; returns when the first piece went out."""
    t0 = time.monotonic()
    for k, p in enumerate(pieces):
        await asyncio.sleep(max(0.0, t0 + k * PIECE_MS / 1000 - time.monotonic()))
        await send(p)
    return t0


async def _sdk(address: str, avatar_id: str, seed: int) -> float:
    from ditto_client import AsyncAvatarClient
    from ditto_client.v1 import avatar_pb2

    async with AsyncAvatarClient(address) as client:
        stream = await client.open_session(avatar_id, sample_rate_hz=16000, seed=7,
                                           idle_policy=avatar_pb2.IDLE_POLICY_FREEZE)
        first = asyncio.get_running_loop().create_future()

        async def read():
            async for msg in stream:
                if msg.WhichOneof("kind") == "frame" and not first.done():
                    first.set_result(time.monotonic())

        reader = asyncio.create_task(read())
        t0 = time.monotonic()
        sender = asyncio.create_task(_paced(_pieces(_speech(16000, seed), 16000), stream.send_audio))
        t_first = await first
        sender.cancel()
        stream.cancel()
        reader.cancel()
        await asyncio.gather(reader, sender, return_exceptions=True)
        return t_first - t0


async def _livekit(address: str, avatar_id: str, seed: int, idle_s: float = 0.0) -> float:
    from livekit import rtc

    from integrations.core import AvatarBridge, BridgeOptions
    from integrations.livekit import DittoVideoGenerator

    gen = DittoVideoGenerator(AvatarBridge(BridgeOptions(address, avatar_id, seed=7,
                                                         idle_after_s=FRESH if not idle_s else 0.4)))
    await gen.bridge.start()
    first = asyncio.get_running_loop().create_future()

    async def read():
        last = None
        async for item in gen:
            if isinstance(item, rtc.AudioFrame) and isinstance(last, rtc.VideoFrame) and not first.done():
                first.set_result(time.monotonic())
            last = item

    reader = asyncio.create_task(read())
    await asyncio.sleep(idle_s)

    async def send(p: bytes) -> None:
        await gen.push_audio(rtc.AudioFrame(p, 24000, 1, len(p) // 2))

    t0 = time.monotonic()
    sender = asyncio.create_task(_paced(_pieces(_speech(24000, seed), 24000), send))
    t_first = await first
    sender.cancel()
    await gen.aclose()
    await asyncio.gather(reader, sender, return_exceptions=True)
    return t_first - t0


async def _pipecat(address: str, avatar_id: str, seed: int, idle_s: float = 0.0) -> float:
    from pipecat.frames.frames import OutputImageRawFrame, TTSAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    from integrations.pipecat import DittoVideoService

    first = asyncio.get_running_loop().create_future()

    class FirstSpeechImage(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if (isinstance(frame, OutputImageRawFrame) and frame.metadata.get("ditto_speech")
                    and not first.done()):
                first.set_result(time.monotonic())
            await self.push_frame(frame, direction)

    service = DittoVideoService(address=address, avatar_id=avatar_id, seed=7, idle_after_s=FRESH if not idle_s else 0.4)
    worker = PipelineWorker(Pipeline([service,
                                      FirstSpeechImage()]), cancel_on_idle_timeout=False, params=PipelineParams())
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(w, frame):
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    await started.wait()
    await asyncio.sleep(idle_s)

    async def send(p: bytes) -> None:
        await worker.queue_frame(TTSAudioRawFrame(audio=p, sample_rate=24000, num_channels=1))

    t0 = time.monotonic()
    sender = asyncio.create_task(_paced(_pieces(_speech(24000, seed), 24000), send))
    t_first = await first
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    await worker.cancel()
    await run
    return t_first - t0


def _stats(xs: list[float]) -> dict:
    ms = sorted(1000 * x for x in xs)
    return {"runs": len(ms), "p50": round(statistics.median(ms), 1), "p90": round(float(np.percentile(ms, 90)), 1),
            "mean": round(statistics.fmean(ms), 1), "min": round(ms[0], 1), "max": round(ms[-1], 1)}


async def _measure(address: str, rounds: int, idle_rounds: int) -> dict:
    """Samples in seconds: {"fresh": {"sdk"|"livekit"|"pipecat": [...]}, "after_idle": {"livekit"|"pipecat": [...]}}."""
    from ditto_client import AsyncAvatarClient

    async with AsyncAvatarClient(address) as client:
        avatar = await client.register_avatar(_portrait())
    samples: dict[str, list[float]] = {"sdk": [], "livekit": [], "pipecat": []}
    runs = {"sdk": _sdk, "livekit": _livekit, "pipecat": _pipecat}
    order = list(runs)
    for r in range(rounds):
        for name in order[r % 3:] + order[:r % 3]:  # rotated, so load drifts on the machine hit all three alike
            samples[name].append(await runs[name](address, avatar.avatar_id, r))
        print(f"agents bench round {r + 1}/{rounds}: " + ", ".join(f"{k} {1000 * v[-1]:.0f} ms"
                                                                     for k, v in samples.items()), flush=True)
    idle: dict[str, list[float]] = {"livekit": [], "pipecat": []}
    for r in range(idle_rounds):
        idle["livekit"].append(await _livekit(address, avatar.avatar_id, r, IDLE_S))
        idle["pipecat"].append(await _pipecat(address, avatar.avatar_id, r, IDLE_S))
        print(f"agents bench after idle {r + 1}/{idle_rounds}: " + ", ".join(f"{k} {1000 * v[-1]:.0f} ms"
                                                                             for k, v in idle.items()), flush=True)
    return {"fresh": samples, "after_idle": idle}


def _summary(fresh: dict, after_idle: dict) -> dict:
    base = fresh["sdk"]
    return {"fresh": fresh, "after_idle": after_idle,
            "added_over_sdk_ms": {
                f"{k}_{when}": {"p50": round(d[k]["p50"] - base["p50"], 1),
                                "mean": round(d[k]["mean"] - base["mean"], 1),
                                "ratio_p50": round(d[k]["p50"] / base["p50"], 3)}
                for when, d in (("fresh", fresh), ("after_idle", after_idle)) if d for k in ("livekit", "pipecat")}}


def _portrait() -> bytes:
    import cv2
    from skimage import data

    return cv2.imencode(".png", cv2.resize(data.astronaut()[:, :, ::-1], (160, 128)))[1].tobytes()


def run(out_dir: Path, rounds: int = ROUNDS, idle_rounds: int = IDLE_ROUNDS, only_after_idle: bool = False) -> dict:
    """`only_after_idle`: measure the after-idle case again and keep the fresh numbers of the last agents.json."""
    from ditto import telemetry
    from ditto.config import TelemetrySettings

    telemetry.setup(TelemetrySettings(log_level="warning", log_format="console"), "ditto-bench-agents")
    from loguru import logger  # Pipecat's logger: its per-frame debug lines would drown the bench's output

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkdtemp(prefix="ditto-bench-agents-")) / "serve.log"
    server = start_serve(log, timeout_s=180)
    try:
        result = {"setup": {"profile": "tiny", "weights": "synthetic", "device": "cpu", "speech_s": SECONDS,
                            "piece_ms": PIECE_MS, "pace": "realtime", "encoding": "JPEG",
                            "idle_s_before_speech": IDLE_S, "idle_lead_s": 1.4,
                            "measure": "first audio in -> first frame showing it out", "cpus": os.cpu_count(),
                            "server_log": str(log), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}}
        samples = asyncio.run(_measure(server.address, 0 if only_after_idle else rounds, idle_rounds))
        after_idle = {k: _stats(v) for k, v in samples["after_idle"].items() if v}
        if only_after_idle:
            previous = json.loads((out_dir / "agents.json").read_text())
            fresh = previous["fresh"]
            if "machine" in previous:  # `record` names this run's machine; the fresh numbers came from that one
                result["setup"]["fresh_machine"] = previous["machine"]
            result["setup"]["fresh_measured"] = previous.get("fresh_measured", previous["setup"].get("date"))
        else:
            fresh = {k: _stats(v) for k, v in samples["fresh"].items()}
        result.update(_summary(fresh, after_idle))
    finally:
        stop_group(server.popen, 30)
    return result


if __name__ == "__main__":
    import argparse

    from tools.bench import record

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--idle-rounds", type=int, default=IDLE_ROUNDS)
    ap.add_argument("--only-after-idle", action="store_true")
    a = ap.parse_args()
    print(json.dumps(record("agents", a.out, run, rounds=a.rounds, idle_rounds=a.idle_rounds,
                            only_after_idle=a.only_after_idle), indent=2))
