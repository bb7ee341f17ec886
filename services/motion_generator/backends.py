"""Serving backends of the MotionDiT one-step graph: what the stage loads, which runtime runs it, and its caches.

- `model_spec(checkpoint, profile, device, cache_dir)`: the stage's loading (`ditto.loading`): the one network
  `lmdm`, its checkpoint, its ONNX export, and the three backends 'torch', 'onnxruntime', 'tensorrt'.
- `open_stage_backend(checkpoint, profile, device, backend, cache_dir)`: that spec loaded for a backend ('auto' is
  PyTorch) -> a `MotionBackend` (numpy `one_step(x, cond_frame, cond, time_cond)`).
- `cached_onnx(checkpoint, profile, cache_dir)`: our ONNX export of the guided one-step graph, written once per
  checkpoint content (`lmdm-<profile>-<sha256>-opset<N>.onnx`) and reused.
- `TensorRTBackend`: a TensorRT 10 fp32 engine (the reference builds LMDM in fp32, no TF32) of that ONNX with a dynamic
  batch 1..max_batch, cached as `lmdm-<key>.engine`, key = GPU name + compute capability + TensorRT version + ONNX
  sha256 + batch range, so an engine is only ever used on the GPU and TensorRT it was built for.
- `build_engine(onnx_path, max_batch)`: the one engine builder (training's `build_tensorrt` writes its bytes).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from ditto import accel, loading
from ditto.accel import BackendError as BackendError  # re-exported: callers catch the stage's errors from here
from ditto.accel import EngineSpec, TensorRTEngine, file_sha256
from ditto.loading import ModelSpec, NetworkSpec
from ditto.weights import Checkpoint, CheckpointError

from .dit import MotionDecoder, MotionDiTConfig
from .export import INPUT_NAMES, OPSET, OUTPUT_NAMES, export_onnx
from .models import MotionBackend, OnnxBackend, TorchBackend

TRT_MAX_BATCH = 64            # MotionGenerator's default max_batch: one engine call per batched diffusion step


# ---------------------------------------------------------------------------------------------------------------
# What the stage loads


def onnx_cache_path(checkpoint: str | Path, profile: str, cache_dir: str | Path) -> Path:
    """Where the export of this checkpoint lives: named by its content, so a retrained file is exported anew."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: file not found")
    return Path(cache_dir) / f"lmdm-{profile}-{file_sha256(checkpoint)[:20]}-opset{OPSET}.onnx"


def lmdm_network(checkpoint: str | Path, profile: str, cache_dir: str | Path) -> NetworkSpec:
    """The MotionDiT: built for `profile`, weights from an official or trained checkpoint ({'model_state_dict': ...}),
    exported as the guided one-step graph into cache_dir, named by the checkpoint's content."""
    return NetworkSpec("lmdm", Checkpoint(Path(checkpoint), "model_state_dict"),
                       build=partial(MotionDecoder, MotionDiTConfig.for_profile(profile)), export=export_onnx,
                       export_path=lambda _model: onnx_cache_path(checkpoint, profile, cache_dir))


def model_spec(checkpoint: str | Path, profile: str, device: str = "cpu", cache_dir: str | Path | None = None,
               max_batch: int = TRT_MAX_BATCH) -> ModelSpec[MotionBackend]:
    """The motion stage's loading. 'auto' is PyTorch on every device (TensorRT is opt-in: its first start builds an
    engine); 'onnxruntime' and 'tensorrt' run our ONNX export, cached with the engines in cache_dir."""
    if cache_dir is None:
        from ditto.config import default_cache_dir

        cache_dir = default_cache_dir() / "motion"
    cache = Path(cache_dir)
    return ModelSpec("motion", [lmdm_network(checkpoint, profile, cache)], default="torch", backends={
        "torch": lambda ready: TorchBackend(ready["lmdm"], device),
        "onnxruntime": lambda ready: OnnxBackend(ready["lmdm"], profile, device),
        "tensorrt": lambda ready: TensorRTBackend(ready["lmdm"], profile, device, cache / "trt", max_batch),
    })


def open_stage_backend(checkpoint: str | Path, profile: str, device: str = "cpu", backend: str = "auto",
                       cache_dir: str | Path | None = None, max_batch: int = TRT_MAX_BATCH) -> MotionBackend:
    """The motion stage's backend for a .pth checkpoint (see `model_spec`)."""
    return loading.load(model_spec(checkpoint, profile, device, cache_dir, max_batch), backend, device)


def cached_onnx(checkpoint: str | Path, profile: str, cache_dir: str | Path) -> Path:
    """The one-step ONNX graph of `checkpoint`, exported on first use into cache_dir and reused afterwards."""
    return loading.onnx_file(lmdm_network(checkpoint, profile, cache_dir))


# ---------------------------------------------------------------------------------------------------------------
# TensorRT


def engine_spec(max_batch: int) -> EngineSpec:
    """fp32 like the reference's lmdm engine (no TF32), batch profile 1 / max_batch / max_batch."""
    return EngineSpec(batch=(1, max_batch, max_batch), tf32=False, workspace_bytes=4 << 30)


def build_engine(onnx_path: str | Path, max_batch: int = TRT_MAX_BATCH) -> bytes:
    """A serialized fp32 TensorRT engine of the one-step graph."""
    return accel.build_engine(onnx_path, engine_spec(max_batch))


class TensorRTBackend:
    """The one-step graph as a TensorRT engine; numpy in and out like the other backends, torch CUDA tensors inside.

    Batches larger than the engine's max_batch run in chunks. Calls are serialised (one execution context).
    """

    name = "tensorrt"

    def __init__(self, onnx_path: str | Path, profile: str = "full", device: str = "cuda",
                 cache_dir: str | Path | None = None, max_batch: int = TRT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.cfg = MotionDiTConfig.for_profile(profile)
        self.max_batch = max_batch
        onnx_path = Path(onnx_path)
        self.engine = TensorRTEngine(onnx_path, device, cache_dir or onnx_path.parent, engine_spec(max_batch),
                                     stem="lmdm")

    def one_step(self, x: np.ndarray, cond_frame: np.ndarray, cond: np.ndarray,
                 t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, mb = len(x), self.max_batch
        if n <= mb:
            return self._run(x, cond_frame, cond, t)
        parts = [self._run(x[i:i + mb], cond_frame[i:i + mb], cond[i:i + mb], t[i:i + mb]) for i in range(0, n, mb)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _run(self, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        feeds = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in zip(INPUT_NAMES, arrays, strict=True)}
        outs = self.engine.run(feeds, OUTPUT_NAMES)
        pred_noise, x_start = (outs[k].float().cpu().numpy() for k in OUTPUT_NAMES)   # .cpu() waits for the launch
        return pred_noise, x_start
