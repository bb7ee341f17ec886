"""Serving backends of the MotionDiT one-step graph: which runtime runs it, and the ONNX / engine caches.

- `open_stage_backend(checkpoint, profile, device, backend, cache_dir)`: 'torch', 'onnxruntime', 'tensorrt' or
  'auto' (PyTorch) -> a `MotionBackend` (numpy `one_step(x, cond_frame, cond, time_cond)`).
- `cached_onnx(checkpoint, profile, cache_dir)`: our ONNX export of the guided one-step graph, written once per
  checkpoint content (`lmdm-<profile>-<sha256>-opset<N>.onnx`) and reused.
- `TensorRTBackend`: a TensorRT 10 fp32 engine (the reference builds LMDM in fp32, no TF32) of that ONNX with a dynamic
  batch 1..max_batch, cached as `lmdm-<key>.engine`, key = GPU name + compute capability + TensorRT version + ONNX
  sha256 + batch range, so an engine is only ever used on the GPU and TensorRT it was built for.
- `build_engine(onnx_path, max_batch)`: the one engine builder (training's `build_tensorrt` writes its bytes).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ditto.weights import CheckpointError

from .dit import MotionDiTConfig
from .export import INPUT_NAMES, OPSET, OUTPUT_NAMES
from .models import MotionBackend

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
TRT_MAX_BATCH = 64            # MotionGenerator's default max_batch: one engine call per batched diffusion step


class BackendError(RuntimeError):
    """A backend cannot run here (missing package, no GPU, engine build failed); the message says what to do."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    # Several workers may share a cache volume: each writes its own temporary file, the rename is atomic.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_bytes(data)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------------
# ONNX export cache


def onnx_cache_path(checkpoint: str | Path, profile: str, cache_dir: str | Path) -> Path:
    """Where the export of this checkpoint lives: named by its content, so a retrained file is exported anew."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: file not found")
    return Path(cache_dir) / f"lmdm-{profile}-{file_sha256(checkpoint)[:20]}-opset{OPSET}.onnx"


def cached_onnx(checkpoint: str | Path, profile: str, cache_dir: str | Path) -> Path:
    """The one-step ONNX graph of `checkpoint`, exported on first use into cache_dir and reused afterwards."""
    from .export import export_onnx
    from .models import load_motion_decoder

    path = onnx_cache_path(checkpoint, profile, cache_dir)
    if path.is_file():
        return path
    model = load_motion_decoder(checkpoint, profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.onnx")
    export_onnx(model, tmp)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# TensorRT


def import_tensorrt() -> Any:
    """`import tensorrt` (version 10) or a BackendError saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise BackendError("the motion backend 'tensorrt' needs the TensorRT 10 Python package, which is not "
                           "installed: pip install '.[gpu]' (tensorrt>=10,<11) on a CUDA machine, or use "
                           "backend 'torch' or 'onnxruntime'") from err
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendError(f"the motion backend 'tensorrt' needs TensorRT 10, found {trt.__version__}")
    return trt


def build_engine(onnx_path: str | Path, max_batch: int = TRT_MAX_BATCH) -> bytes:
    """A serialized fp32 TensorRT engine of the one-step graph, batch profile 1 / max_batch / max_batch."""
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise BackendError("building a TensorRT engine needs a CUDA GPU, and none is visible")
    onnx_path = Path(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)              # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    config.clear_flag(trt.BuilderFlag.TF32)          # fp32 like the reference's lmdm engine
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        tail = tuple(inp.shape)[1:]
        profile.set_shape(inp.name, (1, *tail), (max_batch, *tail), (max_batch, *tail))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    return bytes(serialized)


class TensorRTBackend:
    """The one-step graph as a TensorRT engine; numpy in and out like the other backends, torch CUDA tensors inside.

    Batches larger than the engine's max_batch run in chunks. Calls are serialised (one execution context).
    """

    name = "tensorrt"

    def __init__(self, onnx_path: str | Path, profile: str = "full", device: str = "cuda",
                 cache_dir: str | Path | None = None, max_batch: int = TRT_MAX_BATCH) -> None:
        trt = import_tensorrt()
        import torch

        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise BackendError(f"the motion backend 'tensorrt' runs on CUDA devices only, not {device!r}; use "
                               "device 'cuda' or backend 'torch'/'onnxruntime'")
        if not torch.cuda.is_available():
            raise BackendError("the motion backend 'tensorrt' needs a CUDA GPU, and none is visible; use backend "
                               "'torch' or 'onnxruntime'")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.trt, self.torch = trt, torch
        self.cfg = MotionDiTConfig.for_profile(profile)
        self.max_batch = max_batch
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise CheckpointError(f"{self.onnx_path}: file not found")
        self.engine_path = Path(cache_dir or self.onnx_path.parent) / f"lmdm-{self.engine_key()}.engine"
        if not self.engine_path.is_file():
            _write_atomically(self.engine_path, build_engine(self.onnx_path, max_batch))
        with torch.cuda.device(self.device):
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
                self.engine_path.read_bytes())
            if self.engine is None:
                raise BackendError(f"{self.engine_path}: TensorRT cannot deserialize the engine; delete it to rebuild")
            self.context = self.engine.create_execution_context()
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                    trt.int64: torch.int64}
        # time_cond is int64 in the ONNX graph; take each tensor's dtype from the engine rather than assuming it
        self.dtypes = {k: to_torch[self.engine.get_tensor_dtype(k)] for k in (*INPUT_NAMES, *OUTPUT_NAMES)}
        self.lock = threading.Lock()

    def engine_key(self) -> str:
        torch = self.torch
        idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        parts = [torch.cuda.get_device_name(idx), f"sm{major}{minor}", self.trt.__version__,
                 file_sha256(self.onnx_path), "fp32", f"b1-{self.max_batch}"]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]

    def one_step(self, x: np.ndarray, cond_frame: np.ndarray, cond: np.ndarray,
                 t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, mb = len(x), self.max_batch
        if n <= mb:
            return self._run(x, cond_frame, cond, t)
        parts = [self._run(x[i:i + mb], cond_frame[i:i + mb], cond[i:i + mb], t[i:i + mb]) for i in range(0, n, mb)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _run(self, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch, ctx = self.torch, self.context
        with self.lock, torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            feeds = {k: torch.from_numpy(np.ascontiguousarray(a)).to(self.device, self.dtypes[k])
                     for k, a in zip(INPUT_NAMES, arrays, strict=True)}
            for k, v in feeds.items():
                if not ctx.set_input_shape(k, tuple(v.shape)):
                    raise ValueError(f"input {k} has shape {tuple(v.shape)}; the engine takes batch 1..{self.max_batch}"
                                     f" of {tuple(self.engine.get_tensor_shape(k))[1:]}")
                ctx.set_tensor_address(k, v.data_ptr())
            outs = {k: torch.empty(tuple(ctx.get_tensor_shape(k)), dtype=self.dtypes[k], device=self.device)
                    for k in OUTPUT_NAMES}
            for k, v in outs.items():
                ctx.set_tensor_address(k, v.data_ptr())
            # inputs and outputs were allocated on this stream: their memory is not reused before the launch ends
            if not ctx.execute_async_v3(stream.cuda_stream):
                raise BackendError("TensorRT execution of the motion one-step engine failed")
            pred_noise, x_start = (outs[k].float().cpu().numpy() for k in OUTPUT_NAMES)   # .cpu() waits for it
        return pred_noise, x_start


# ---------------------------------------------------------------------------------------------------------------
# Choosing one


def _onnx_providers(device: str) -> list[str]:
    import onnxruntime as ort

    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendError("ONNX Runtime has no CUDA provider here: install onnxruntime-gpu (pip install '.[gpu]') "
                           "or use device 'cpu'")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def open_stage_backend(checkpoint: str | Path, profile: str, device: str = "cpu", backend: str = "auto",
                       cache_dir: str | Path | None = None, max_batch: int = TRT_MAX_BATCH) -> MotionBackend:
    """The motion stage's backend for a .pth checkpoint. 'auto' is PyTorch on every device (TensorRT is opt-in: its
    first start builds an engine); 'onnxruntime' and 'tensorrt' use our ONNX export cached in cache_dir."""
    from .models import OnnxBackend, TorchBackend, load_motion_decoder

    if backend not in BACKENDS:
        raise ValueError(f"motion backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend in ("auto", "torch"):
        return TorchBackend(load_motion_decoder(checkpoint, profile), device)
    if cache_dir is None:
        from ditto.config import default_cache_dir

        cache_dir = default_cache_dir() / "motion"
    cache_dir = Path(cache_dir)
    if backend == "tensorrt":
        import_tensorrt()                 # fail before a long export when TensorRT cannot run here
        import torch

        if not torch.cuda.is_available():
            raise BackendError("the motion backend 'tensorrt' needs a CUDA GPU, and none is visible; use backend "
                               "'torch' or 'onnxruntime'")
        onnx_path = cached_onnx(checkpoint, profile, cache_dir)
        return TensorRTBackend(onnx_path, profile, device, cache_dir / "trt", max_batch)
    providers = _onnx_providers(device)
    return OnnxBackend(cached_onnx(checkpoint, profile, cache_dir), profile, providers)
