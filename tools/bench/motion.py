"""Motion generator benchmark: milliseconds per 80-frame window (10 and 50 DDIM steps) and windows per second against
batch size (1, 4, 16 windows of different sessions in one forward), full-size MotionDiT with synthetic weights.

One window emits V = 80 - overlap new frames (10 at the streaming overlap of 70, i.e. 400 ms of video), so a
realtime session needs 2.5 windows per second at overlap 70; `sessions_realtime` is windows/s divided by that.
Runs on the GPU when one is visible, else on the CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

BATCHES = (1, 4, 16)
STEPS = (10, 50)
WINDOWS_PER_SECOND_REALTIME = 25 / 10       # overlap 70: 10 new frames per window


def _window_seconds(gen, batch: int, steps: int, repeats: int) -> float:
    from services.motion_generator.generator import _step_noise, _window_noise

    rng = np.random.default_rng(0)
    cond_frame = rng.standard_normal((batch, 265)).astype(np.float32)
    cond = rng.standard_normal((batch, 80, 1103)).astype(np.float32)
    x_T = np.stack([_window_noise(s, 0) for s in range(batch)])
    noise = np.stack([_step_noise(s, steps) for s in range(batch)], axis=1)
    gen.sample(cond_frame[:1], cond[:1], 1, 1.0, x_T[:1], noise[:0])      # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        gen.sample(cond_frame, cond, steps, 1.0, x_T, noise)
        best = min(best, time.perf_counter() - t0)
    return best


def generator(profile: str, device: str):
    """The streaming generator on a full- or tiny-size MotionDiT with synthetic weights, PyTorch on `device`."""
    from services.motion_generator.generator import MotionGenerator
    from services.motion_generator.models import TorchBackend, synthetic_motion_decoder

    return MotionGenerator(TorchBackend(synthetic_motion_decoder(profile), device))


def by_batch(gen, batches: tuple[int, ...] = BATCHES, steps: int = 10, repeats: int = 1,
             budget_s: float = float("inf")) -> list[dict]:
    """One row per batch size: ms per batched window, windows per second, realtime sessions; batches that start
    after `budget_s` are listed as skipped."""
    deadline = time.monotonic() + budget_s
    rows: list[dict] = []
    for b in batches:
        if time.monotonic() > deadline:
            rows.append({"batch": b, "skipped": f"over the {budget_s:.0f} s budget"})
            continue
        sec = _window_seconds(gen, b, steps, repeats)
        wps = b / sec
        rows.append({"batch": b, "steps": steps, "ms_per_batch": round(1000 * sec, 1),
                     "windows_per_s": round(wps, 2), "sessions_realtime": round(wps / WINDOWS_PER_SECOND_REALTIME, 2)})
    return rows


def run(out_dir: Path, profile: str = "full", repeats: int = 1) -> dict:
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = generator(profile, device)
    result: dict = {"profile": profile, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                    "torch_threads": torch.get_num_threads(), "backend": "torch fp32",
                    "ms_per_window": {}}
    for steps in STEPS:
        result["ms_per_window"][f"{steps}_steps"] = round(1000 * _window_seconds(gen, 1, steps, repeats), 1)
    result["by_batch_10_steps"] = by_batch(gen, BATCHES, 10, repeats)
    return result


if __name__ == "__main__":
    import sys

    from tools.bench import record

    print(json.dumps(record("motion", Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results"), run), indent=1))
