"""Renderer benchmark: milliseconds per frame and frames per second of each network at batch 1, 4 and 16.

Full-size networks with synthetic (golden-init v1) weights on the GPU when one is visible (fp16 autocast for F, W
and G as the reference), else on the CPU in fp32. "frame" is W + G, the per-frame rendering cost. On a small CPU the
big networks take seconds per frame, so a time budget skips batch sizes whose estimated run time would exceed it
(skipped rows say so), and calls slower than 2 s are timed once.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

BATCHES = (1, 4, 16)


def _timed(fn: Callable[[], Any], device: torch.device, iterations: int) -> float:
    """Best wall time of `iterations` calls, in seconds (best: least disturbed by other processes)."""
    best = float("inf")
    for _ in range(iterations):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def run(out_dir: Path, profile: str = "full", device: str = "auto", backend: str = "torch",
        batches: tuple[int, ...] = BATCHES, iterations: int = 3, budget_s: float = 150.0) -> dict:
    from services.renderer.models import RendererModels

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = RendererModels.load("synthetic", profile=profile, device=device, backend=backend)
    dev = models.device
    cfg = models.cfg
    gen = torch.Generator().manual_seed(0)

    def inputs(b: int) -> dict[str, torch.Tensor]:
        d = cfg.decoder
        x = {"img": torch.rand(b, 3, 256, 256, generator=gen),
             "f_s": torch.randn(b, *cfg.feature_shape, generator=gen),
             "x_s": 0.3 * torch.randn(b, cfg.num_kp, 3, generator=gen),
             "x_d": 0.3 * torch.randn(b, cfg.num_kp, 3, generator=gen),
             "feature": torch.randn(b, d.input_channels, d.feature_size, d.feature_size, generator=gen)}
        return {k: v.to(dev) for k, v in x.items()}

    calls: dict[str, Callable[[dict[str, torch.Tensor]], Any]] = {
        "appearance_extractor": lambda x: models.appearance(x["img"]),
        "motion_extractor": lambda x: models.motion(x["img"]),
        "stitch_network": lambda x: models.stitch(x["x_s"], x["x_d"]),
        "warp_network": lambda x: models.warp(x["f_s"], x["x_s"], x["x_d"]),
        "decoder": lambda x: models.decode(x["feature"]),
        "frame (warp + decoder)": lambda x: models.warp_decode(x["f_s"], x["x_s"], x["x_d"]),
    }
    deadline = time.perf_counter() + budget_s
    rows: list[dict[str, Any]] = []
    for name, call in calls.items():
        per_frame_s: float | None = None
        for b in batches:
            x = inputs(b)
            # Skip a batch whose estimated time (from the previous batch size, warm-up + one call) would overrun.
            estimate = 2 * (per_frame_s or 0.0) * b
            if per_frame_s is not None and time.perf_counter() + estimate > deadline:
                rows.append({"network": name, "batch": b,
                             "skipped": f"estimated {estimate:.0f} s exceeds the {budget_s:.0f} s budget"})
                continue
            warm = _timed(partial(call, x), dev, 1)          # warm-up: allocations, kernel choice
            if warm > 2.0:
                # Seconds per call (big networks on a CPU): the warm-up overhead is noise, one call is the number.
                seconds, reps = warm, 1
            else:
                seconds, reps = _timed(partial(call, x), dev, iterations), iterations
            per_frame_s = seconds / b
            rows.append({"network": name, "batch": b, "ms_per_frame": round(1000 * per_frame_s, 3),
                         # 4 significant digits, so slow rows (below 1 fps) keep fps x ms = 1000
                         "fps": float(f"{1 / per_frame_s:.4g}"), "ms_per_batch": round(1000 * seconds, 2),
                         "iterations": reps})
    result = {
        "stage": "renderer",
        "profile": profile,
        "backend": backend,
        "device": str(dev),
        "precision": "fp16 autocast for F, W, G; fp32 M, S" if dev.type == "cuda" else "fp32",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None},
        "rows": rows,
    }
    lines = [f"# Renderer networks ({profile} profile, {backend} on {dev}, {result['precision']})", "",
             f"Machine: {result['machine']}", "", "| network | batch | ms / frame | fps |", "|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['network']} | {r['batch']} | skipped: {r['skipped']} | |")
        else:
            lines.append(f"| {r['network']} | {r['batch']} | {r['ms_per_frame']} | {r['fps']} |")
    (out_dir / "renderer.md").write_text("\n".join(lines) + "\n")
    return result
