"""Loading the MotionDiT and running its guided one-step call on a backend (PyTorch or ONNX Runtime).

- `load_motion_decoder(path, profile)`: the official `lmdm_v0.4_hubert.pth` as published, or any checkpoint our
  training writes (same container: a dict with 'model_state_dict'), checked and loaded by `ditto.weights.load_weights`
  (errors name the file and the first bad key; the 11 rotary copies must agree, being one shared tensor).
- `GuidedOneStep`: the inference graph (docs/model.md §3.4), the module we export to ONNX.
- `TorchBackend` / `OnnxBackend`: numpy in, numpy out `one_step(x, cond_frame, cond, t) -> (pred_noise, x_start)`,
  the callable the numpy DDIM sampler drives.
- `open_backend(weights, profile)`: `.pth`/`.pt` -> PyTorch, `.onnx` -> ONNX Runtime (chosen by extension, as the
  reference does); 'synthetic' -> golden-init v1 weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ditto.accel import onnx_session
from ditto.weights import OFFICIAL_FILES, Checkpoint, CheckpointError, Generated, load_weights

from .diffusion import cosine_schedule
from .dit import MotionDecoder, MotionDiTConfig

SYNTHETIC_SEED = 0


class MotionBackend(Protocol):
    name: str
    cfg: MotionDiTConfig

    def one_step(self, x: np.ndarray, cond_frame: np.ndarray, cond: np.ndarray,
                 t: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def load_motion_decoder(path: str | Path, profile: str = "full") -> MotionDecoder:
    """Official or trained checkpoint ({'model_state_dict': ...}) -> MotionDecoder in eval mode."""
    return load_weights(MotionDecoder(MotionDiTConfig.for_profile(profile)), Checkpoint(Path(path), "model_state_dict"))


def synthetic_motion_decoder(profile: str = "full", seed: int = SYNTHETIC_SEED) -> MotionDecoder:
    return load_weights(MotionDecoder(MotionDiTConfig.for_profile(profile)), Generated(seed))


def save_checkpoint(model: MotionDecoder, path: str | Path, **extra: Any) -> Path:
    """Write a checkpoint in the official container (what `load_motion_decoder` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": model.state_dict(), **extra}, path)
    return path


class GuidedOneStep(nn.Module):
    """(x, cond_frame, cond, time_cond) -> (pred_noise, x_start): guidance inside, as the reference LMDM.forward."""

    def __init__(self, model: MotionDecoder) -> None:
        super().__init__()
        self.model = model
        sch = cosine_schedule()
        self.sqrt_recip1m: torch.Tensor
        self.sqrt_recipm1: torch.Tensor
        self.register_buffer("sqrt_recip1m", torch.from_numpy(sch.sqrt_recip1m.copy()), persistent=False)
        self.register_buffer("sqrt_recipm1", torch.from_numpy(sch.sqrt_recipm1.copy()), persistent=False)

    def forward(self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor,
                time_cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_start = self.model.guided(x, cond_frame, cond, time_cond)
        a = self.sqrt_recip1m[time_cond][:, None, None]
        bc = self.sqrt_recipm1[time_cond][:, None, None]
        return a * x - x_start / bc, x_start


class TorchBackend:
    name = "torch"

    def __init__(self, model: MotionDecoder, device: str = "cpu") -> None:
        self.cfg = model.cfg
        self.device = torch.device(device)
        self.graph = GuidedOneStep(model).to(self.device).eval()

    @property
    def model(self) -> MotionDecoder:
        return self.graph.model

    @torch.inference_mode()
    def one_step(self, x: np.ndarray, cond_frame: np.ndarray, cond: np.ndarray,
                 t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dev = self.device
        out = self.graph(torch.as_tensor(x, device=dev), torch.as_tensor(cond_frame, device=dev),
                         torch.as_tensor(cond, device=dev), torch.as_tensor(t, dtype=torch.int64, device=dev))
        return out[0].cpu().numpy(), out[1].cpu().numpy()


class OnnxBackend:
    """The exported one-step graph in ONNX Runtime; the DDIM loop stays in numpy."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, profile: str = "full", device: str = "cpu") -> None:
        self.cfg = MotionDiTConfig.for_profile(profile)
        self.session = onnx_session(path, device)
        names = [i.name for i in self.session.get_inputs()]
        if names != ["x", "cond_frame", "cond", "time_cond"]:
            raise CheckpointError(f"{path}: inputs {names}, expected x, cond_frame, cond, time_cond")

    def one_step(self, x: np.ndarray, cond_frame: np.ndarray, cond: np.ndarray,
                 t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = {"x": np.ascontiguousarray(x, np.float32), "cond_frame": np.ascontiguousarray(cond_frame, np.float32),
                "cond": np.ascontiguousarray(cond, np.float32), "time_cond": np.asarray(t, np.int64)}
        pred_noise, x_start = self.session.run(["pred_noise", "x_start"], feed)
        return pred_noise, x_start


def open_backend(weights: str | Path, profile: str = "full", device: str = "cpu") -> MotionBackend:
    """'synthetic', a weights folder (official layout), a .pth/.pt checkpoint or a .onnx one-step graph."""
    if str(weights) == "synthetic":
        return TorchBackend(synthetic_motion_decoder(profile), device)
    path = Path(weights)
    if path.is_dir():
        path = path / OFFICIAL_FILES["lmdm"].path
    if path.suffix == ".onnx":
        return OnnxBackend(path, profile, device)
    if path.suffix in (".pth", ".pt"):
        return TorchBackend(load_motion_decoder(path, profile), device)
    raise CheckpointError(f"{path}: unknown model format (use .pth/.pt for PyTorch or .onnx for ONNX Runtime)")
