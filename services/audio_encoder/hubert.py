"""HuBERT backends behind one interface: `encode_windows(windows [B, 6480] float32) -> [B, 20, 1024] float32`.

- `OnnxHubert`: ONNX Runtime (CPU or CUDA) on the official `hubert_streaming_fix_kv.onnx` / `hubert.onnx`
  ([1, N] -> [T, 1024], no batch axis: windows run one by one) or on our batched export ([B, N] -> [B, T, 1024]).
- `TensorRTHubert`: a TensorRT 10 fp32 engine built from either ONNX file and cached beside it (or in a cache folder).
- `open_onnx_backend(path, backend, device)`: the stage's loading (`model_spec`, walked by `ditto.loading`).
- `TorchHubert`: a transformers `HubertModel` (a local checkpoint folder, or random for tests).
- `FunctionHubert`: any per-call function with the official session's contract, e.g. the golden fake HuBERT.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ditto import loading
from ditto.accel import BackendError as BackendError  # re-exported: callers catch the stage's errors from here
from ditto.accel import EngineSpec, TensorRTEngine, import_tensorrt, onnx_session, require_cuda
from ditto.loading import ModelSpec, PublishedOnnx
from ditto.weights import CheckpointError
from services.audio_encoder.hubert_model import INPUT_NAME, OUTPUT_NAME
from services.audio_encoder.windows import WINDOW

DEFAULT_MAX_BATCH = 16


class HubertBackend(Protocol):
    name: str
    max_batch: int

    def encode_windows(self, windows: np.ndarray) -> np.ndarray: ...


def check_windows(windows: np.ndarray) -> np.ndarray:
    w = np.asarray(windows)
    if w.ndim != 2 or w.shape[1] != WINDOW:
        raise ValueError(f"windows must be [B, {WINDOW}] float32, got shape {w.shape}")
    return np.ascontiguousarray(w, dtype=np.float32)


def _stack(outputs: list[np.ndarray]) -> np.ndarray:
    return np.stack(outputs).astype(np.float32, copy=False)


class FunctionHubert:
    """Wraps `fn(input_values [1, N]) -> [T, D]` (the official session's contract); windows go one by one."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], name: str = "function") -> None:
        self.fn, self.name, self.max_batch = fn, name, DEFAULT_MAX_BATCH

    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        w = check_windows(windows)
        return _stack([np.asarray(self.fn(w[i:i + 1])) for i in range(w.shape[0])])


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime


class OnnxHubert:
    """ONNX Runtime session on a HuBERT ONNX file with the reference's names (input_values -> encoding_out)."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0,
                 max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path, device, threads=threads or None)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
            raise CheckpointError(
                f"{self.path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', found inputs "
                f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}"
            )
        out = next(o for o in outputs if o.name == OUTPUT_NAME)
        # the official graph: [T, 1024]; our batched export: [B, T, 1024]
        self.batched = len(out.shape) == 3
        self.max_batch = max_batch if self.batched else 1
        self.name = f"onnxruntime-{'cuda' if device.startswith('cuda') else 'cpu'}"

    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        w = check_windows(windows)
        if self.batched:
            parts = [self.session.run([OUTPUT_NAME], {INPUT_NAME: w[i:i + self.max_batch]})[0]
                     for i in range(0, w.shape[0], self.max_batch)]
            return np.concatenate(parts).astype(np.float32, copy=False)
        return _stack([self.session.run([OUTPUT_NAME], {INPUT_NAME: w[i:i + 1]})[0] for i in range(w.shape[0])])


# ---------------------------------------------------------------------------------------------------------------
# TensorRT


class TensorRTHubert:
    """A TensorRT 10 fp32 engine built from a HuBERT ONNX file (either layout), cached as `<stem>-<key>.engine` in
    cache_dir (default: beside the ONNX file); see `ditto.accel.TensorRTEngine`.

    Shape profile as the reference's converter for the official layout: [1, 3240] / [1, 6480] / [1, 12960];
    for the batched layout: batch 1 / max_batch / max_batch at 6480 samples. I/O lives in torch CUDA tensors.
    """

    def __init__(self, onnx_path: str | Path, device: str = "cuda", max_batch: int = DEFAULT_MAX_BATCH,
                 cache_dir: str | Path | None = None) -> None:
        import_tensorrt("the HuBERT backend 'tensorrt'")
        require_cuda("the HuBERT backend 'tensorrt'")
        import onnx
        import torch

        self.torch = torch
        self.onnx_path = Path(onnx_path)
        graph = onnx.load(str(self.onnx_path), load_external_data=False).graph
        out = next(o for o in graph.output if o.name == OUTPUT_NAME)
        self.batched = len(out.type.tensor_type.shape.dim) == 3
        self.max_batch = max_batch if self.batched else 1
        if self.batched:
            spec = EngineSpec(tf32=False, workspace_bytes=4 << 30,
                              shapes={INPUT_NAME: ((1, WINDOW), (self.max_batch, WINDOW), (self.max_batch, WINDOW))})
        else:
            spec = EngineSpec(tf32=False, workspace_bytes=4 << 30,
                              shapes={INPUT_NAME: ((1, WINDOW // 2), (1, WINDOW), (1, 2 * WINDOW))})
        self.engine = TensorRTEngine(self.onnx_path, device if device.startswith("cuda") else "cuda",
                                     cache_dir or self.onnx_path.parent, spec)
        self.name = "tensorrt-fp32"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self.engine.run({INPUT_NAME: self.torch.from_numpy(batch)}, [OUTPUT_NAME])[OUTPUT_NAME]
        return out.float().cpu().numpy()           # .cpu() waits for the launch

    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        w = check_windows(windows)
        if self.batched:
            return np.concatenate([self._run(w[i:i + self.max_batch]) for i in range(0, w.shape[0], self.max_batch)])
        return _stack([self._run(w[i:i + 1]) for i in range(w.shape[0])])


# ---------------------------------------------------------------------------------------------------------------
# PyTorch (transformers)


class TorchHubert:
    """A transformers HubertModel run directly: `TorchHubert.from_folder(dir)` or around a built model."""

    def __init__(self, model: Any, device: str = "cpu", max_batch: int = DEFAULT_MAX_BATCH) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.max_batch = max_batch
        self.name = f"torch-{self.device.type}"

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", max_batch: int = DEFAULT_MAX_BATCH) -> TorchHubert:
        from services.audio_encoder.hubert_model import load_hubert_folder

        return cls(load_hubert_folder(folder), device, max_batch)

    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        w = check_windows(windows)
        torch = self.torch
        parts = []
        with torch.inference_mode():
            for i in range(0, w.shape[0], self.max_batch):
                x = torch.from_numpy(w[i:i + self.max_batch]).to(self.device)
                parts.append(self.model(x).last_hidden_state.float().cpu().numpy())
        return np.concatenate(parts)


def model_spec(onnx_path: str | Path, device: str = "cpu", max_batch: int = DEFAULT_MAX_BATCH,
               cache_dir: str | Path | None = None) -> ModelSpec[HubertBackend]:
    """The audio stage's loading (`ditto.loading`): HuBERT is published as an ONNX file, so there is nothing to build
    or export; ONNX Runtime opens it on the device, or TensorRT builds an engine of it into cache_dir (default: beside
    the file)."""
    return ModelSpec("HuBERT", [PublishedOnnx("hubert", Path(onnx_path))], default="onnxruntime", backends={
        "onnxruntime": lambda ready: OnnxHubert(ready["hubert"], device, max_batch=max_batch),
        "tensorrt": lambda ready: TensorRTHubert(ready["hubert"], device, max_batch, cache_dir),
    })


def open_onnx_backend(path: str | Path, backend: str = "auto", device: str = "cpu",
                      max_batch: int = DEFAULT_MAX_BATCH, cache_dir: str | Path | None = None) -> HubertBackend:
    """The backend for a HuBERT ONNX file: 'onnxruntime', 'tensorrt', or 'auto' (ONNX Runtime on the device). The
    weights exist only as ONNX, so 'torch' runs them on ONNX Runtime too."""
    return loading.load(model_spec(path, device, max_batch, cache_dir),
                        "onnxruntime" if backend == "torch" else backend, device)
