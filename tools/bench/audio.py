"""Audio encoder benchmark: milliseconds per 200 ms window and the realtime factor against batch size.

A full-size (HuBERT-Large-shaped, random) encoder runs batches of 1, 4 and 16 windows of 6480 samples, through
PyTorch and through ONNX Runtime on our batched export (the official file has no batch axis), on the GPU when one
is visible (plus TensorRT fp32 when installed), else on the CPU. Realtime factor = 200 ms of audio per window divided
by the time per window: above 1 means faster than realtime for that many concurrent sessions' windows.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WINDOW_MS = 200.0
BATCHES = (1, 4, 16)


def _time(fn: Any, x: np.ndarray, repeats: int) -> float:
    fn(x)  # warm-up: allocations, kernel selection
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best


def rows(name: str, backend: Any, batches: tuple[int, ...] = BATCHES, repeats: int = 2,
         budget_s: float = float("inf")) -> list[dict]:
    """One row per batch size of `backend.encode_windows`: ms per window and the realtime factor (batch 16 is timed
    once: on a CPU it takes seconds). Batches that start after `budget_s` are listed as skipped."""
    from services.audio_encoder.windows import WINDOW

    rng = np.random.default_rng(0)
    deadline = time.monotonic() + budget_s
    out = []
    for b in batches:
        if time.monotonic() > deadline:
            out.append({"backend": name, "batch": b, "skipped": f"over the {budget_s:.0f} s budget"})
            continue
        x = (0.1 * rng.standard_normal((b, WINDOW))).astype(np.float32)
        seconds = _time(backend.encode_windows, x, repeats if b < 16 else 1)
        ms = 1000.0 * seconds / b
        out.append({"backend": name, "batch": b, "ms_per_window": round(ms, 2),
                    "realtime_factor": round(WINDOW_MS / ms, 3)})
    return out


def run(out_dir: Path) -> dict:
    import torch

    from services.audio_encoder.hubert import OnnxHubert, TensorRTHubert, TorchHubert
    from services.audio_encoder.hubert_model import HubertShape, export_onnx, random_hubert

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = random_hubert(HubertShape.full(), seed=0)
    params = sum(p.numel() for p in model.parameters())
    table = rows(f"torch-{device}", TorchHubert(model, device), repeats=2)
    model.cpu()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "hubert_batched.onnx", batch_axis=True)
        del model
        table += rows(f"onnxruntime-{device}", OnnxHubert(onnx_path, device), repeats=2)
        if cuda:
            try:
                table += rows("tensorrt-fp32", TensorRTHubert(onnx_path, "cuda", cache_dir=tmp), repeats=3)
            except Exception as err:  # TensorRT missing or failing: the table says so
                table.append({"backend": "tensorrt-fp32", "error": str(err)})
    result = {
        "stage": "audio_encoder",
        "model": f"HuBERT-Large shape, random weights, {params / 1e6:.0f} M parameters",
        "window": "6480 samples (200 ms of new audio + context) -> 5 features",
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if cuda else None},
        "rows": table,
    }
    lines = [f"# Audio encoder ({result['model']})", "", f"Machine: {result['machine']}", "",
             "| backend | batch | ms / window | realtime factor |", "|---|---|---|---|"]
    for r in table:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['backend']} | - | {r.get('error', r.get('skipped'))} | - |")
        else:
            lines.append(f"| {r['backend']} | {r['batch']} | {r['ms_per_window']} | {r['realtime_factor']} |")
    (out_dir / "audio.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    import sys

    from tools.bench import record

    print(json.dumps(record("audio", Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results"), run), indent=1))
