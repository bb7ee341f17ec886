"""A trained checkpoint -> the motion stage's one-step ONNX graph (and a TensorRT fp32 engine on a GPU machine).

The ONNX graph is `services.motion_generator.export.export_onnx` (inputs x/cond_frame/cond/time_cond, outputs
pred_noise/x_start, guidance weight 2 inside; docs/model.md §3.4), so `open_backend(<file>.onnx)` serves it. The engine
is built as the reference builds the LMDM engine: fp32 (no TF32), dynamic batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def export_checkpoint(ckpt: str | Path, onnx_path: str | Path, profile: str = "full",
                      check: bool = True) -> tuple[Path, float]:
    """Export and (by default) run both graphs on one random input: (path, max |onnx - torch| over x_start)."""
    from services.motion_generator.export import export_onnx
    from services.motion_generator.models import OnnxBackend, TorchBackend, load_motion_decoder

    model = load_motion_decoder(ckpt, profile)
    path = export_onnx(model, onnx_path)
    if not check:
        return path, 0.0
    cfg = model.cfg
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, cfg.seq_len, cfg.nfeats)).astype(np.float32)
    cf = rng.standard_normal((2, cfg.nfeats)).astype(np.float32)
    cond = rng.standard_normal((2, cfg.seq_len, cfg.cond_dim)).astype(np.float32)
    t = np.array([999, 10], np.int64)
    _, ref = TorchBackend(model).one_step(x, cf, cond, t)
    _, got = OnnxBackend(path, profile).one_step(x, cf, cond, t)
    return path, float(np.abs(ref - got).max())


def build_tensorrt(onnx_path: str | Path, engine_path: str | Path, max_batch: int = 64) -> Path:
    """fp32 TensorRT 10 engine of the one-step graph, batch profile 1 / max_batch / max_batch (the serving builder,
    `backends.build_engine`, written to engine_path)."""
    from ditto.accel import write_bytes_atomic
    from services.motion_generator.backends import build_engine

    return write_bytes_atomic(engine_path, build_engine(onnx_path, max_batch))
