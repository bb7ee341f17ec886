"""The renderer's five networks as one batched object: load, validate inputs, run on a chosen backend.

    models = RendererModels.load("/data/ditto", profile="full", device="cuda", backend="tensorrt")
    f_s = models.appearance(img)                 # [B, 32, 16, 64, 64]   once per avatar
    kp = models.motion(img)                      # dict pitch, yaw, roll, t, exp, scale, kp
    x_d = models.stitch(x_s, x_d)                # [B, 21, 3]
    frames = models.warp_decode(f_s, x_s, x_d)   # [B, 3, 512, 512] in [0, 1]

B is any batch: rows may belong to different sessions. Weights come from a folder in the official layout
(`ditto.weights.OFFICIAL_FILES`) or are generated (`weights="synthetic"`, golden-init v1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ditto import loading
from ditto.config import default_cache_dir
from ditto.loading import ModelSpec, NetworkSpec, build_network
from ditto.weights import OFFICIAL_FILES, Checkpoint, Generated, WeightsSource, resolve

from .backends import OnnxRuntimeBackend, RendererBackend, TensorRTBackend, TorchBackend
from .export import export_network, export_path
from .networks.appearance_extractor import AppearanceConfig, AppearanceFeatureExtractor
from .networks.decoder import DecoderConfig, SPADEDecoder
from .networks.grid_sample import GridSampleMode
from .networks.motion_extractor import MOTION_OUTPUTS, MotionConfig, MotionExtractor
from .networks.stitching_network import StitchingConfig, StitchingNetwork
from .networks.warping_network import WarpingConfig, WarpingNetwork

Profile = Literal["full", "tiny"]
NETWORKS = ("appearance_extractor", "motion_extractor", "stitch_network", "warp_network", "decoder")
IMAGE_SIZE = 256          # F and M inputs are 256x256 RGB in [0, 1]


@dataclass(frozen=True)
class RendererConfig:
    appearance: AppearanceConfig
    motion: MotionConfig
    stitching: StitchingConfig
    warping: WarpingConfig
    decoder: DecoderConfig

    @classmethod
    def full(cls) -> RendererConfig:
        return cls(AppearanceConfig.full(), MotionConfig.full(), StitchingConfig.full(), WarpingConfig.full(),
                   DecoderConfig.full())

    @classmethod
    def tiny(cls) -> RendererConfig:
        return cls(AppearanceConfig.tiny(), MotionConfig.tiny(), StitchingConfig.tiny(), WarpingConfig.tiny(),
                   DecoderConfig.tiny())

    @classmethod
    def for_profile(cls, profile: str) -> RendererConfig:
        if profile not in ("full", "tiny"):
            raise ValueError(f"profile must be 'full' or 'tiny', got {profile!r}")
        return cls.full() if profile == "full" else cls.tiny()

    @property
    def feature_shape(self) -> tuple[int, int, int, int]:
        """(C, D, H, W) of one appearance volume f_s."""
        return self.appearance.feature_shape

    @property
    def num_kp(self) -> int:
        return self.motion.num_kp

    @property
    def output_size(self) -> int:
        return self.decoder.output_size


def _factories(cfg: RendererConfig) -> dict[str, Callable[[], nn.Module]]:
    return {
        "appearance_extractor": partial(AppearanceFeatureExtractor, cfg.appearance),
        "motion_extractor": partial(MotionExtractor, cfg.motion),
        "stitch_network": partial(StitchingNetwork, cfg.stitching),
        "warp_network": partial(WarpingNetwork, cfg.warping),
        "decoder": partial(SPADEDecoder, cfg.decoder),
    }


def _cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "renderer"


def build_networks(profile: str = "full", names: tuple[str, ...] = NETWORKS) -> dict[str, nn.Module]:
    """The networks `names` (default: all five) with unloaded weights, in eval mode, keyed like `OFFICIAL_FILES`."""
    factories = _factories(RendererConfig.for_profile(profile))
    unknown = set(names) - set(factories)
    if unknown:
        raise KeyError(f"unknown renderer networks {sorted(unknown)}; expected some of {list(NETWORKS)}")
    return {name: factories[name]().eval() for name in names}


def network_specs(weights: str | Path, profile: str = "full", seed: int = 0, cache_dir: str | Path | None = None,
                  grid_sample: GridSampleMode = "native") -> list[NetworkSpec]:
    """The five networks as loading sees them: built for `profile`, weights from a folder in the official layout or
    "synthetic" (golden-init v1 with `seed`, in memory), exported into `cache_dir/onnx/` with `grid_sample`."""
    factories = _factories(RendererConfig.for_profile(profile))
    cache = _cache_dir(cache_dir)
    specs = []
    for name in NETWORKS:
        container = OFFICIAL_FILES[name].container
        assert container is not None
        source: WeightsSource = (Generated(seed) if str(weights) == "synthetic"
                                 else Checkpoint(resolve(weights, name), container))
        specs.append(NetworkSpec(name, source, build=factories[name],
                                 export=partial(export_network, name, grid_sample=grid_sample),
                                 export_path=partial(export_path, name, cache, grid_sample)))
    return specs


def load_networks(weights: str | Path, profile: str = "full", seed: int = 0) -> dict[str, nn.Module]:
    """Build the networks and load their weights strictly (CheckpointError names file and first bad key).

    `weights` is a folder in the official layout or "synthetic" (golden-init v1 with `seed`, in memory).
    """
    return {spec.name: build_network(spec) for spec in network_specs(weights, profile, seed)}


def model_spec(weights: str | Path, profile: str, device: torch.device, cache_dir: str | Path | None = None,
               seed: int = 0) -> ModelSpec[RendererBackend]:
    """The renderer's loading: its five networks on 'torch', 'onnxruntime' (our fp32 exports) or 'tensorrt' (engines
    of them, cached in `cache_dir/trt/`). ONNX Runtime's CPU provider runs 5-D GridSample; TensorRT and older CUDA
    providers do not (the CUDA one falls back to the CPU for it), so graphs for CUDA get the gather decomposition."""
    cache = _cache_dir(cache_dir)
    grid: GridSampleMode = "decomposed" if device.type == "cuda" else "native"
    return ModelSpec("renderer", network_specs(weights, profile, seed, cache, grid), default="torch", backends={
        "torch": lambda ready: TorchBackend(ready, device),
        "onnxruntime": lambda ready: OnnxRuntimeBackend(ready, device),
        "tensorrt": lambda ready: TensorRTBackend(ready, device, cache),
    })


class RendererModels:
    """Batched F, M, S, W, G on one backend. All methods take and return torch tensors (numpy accepted)."""

    def __init__(self, backend: RendererBackend, cfg: RendererConfig) -> None:
        self.backend = backend
        self.cfg = cfg

    @classmethod
    def load(cls, weights: str | Path, profile: str = "full", device: str = "cpu",
             backend: str = "torch", cache_dir: str | Path | None = None,
             seed: int = 0) -> RendererModels:
        """Load all five networks (`model_spec`; 'auto' is 'torch'). backend "onnxruntime"/"tensorrt" exports our
        own ONNX once into `cache_dir` (default ~/.cache/ditto/renderer) and builds sessions or engines from it."""
        cfg = RendererConfig.for_profile(profile)
        dev = _device(device)
        return cls(loading.load(model_spec(weights, profile, dev, cache_dir, seed), backend, str(dev)), cfg)

    # -- sizes --------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def feature_shape(self) -> tuple[int, int, int, int]:
        return self.cfg.feature_shape

    @property
    def output_size(self) -> int:
        """Side of the rendered square image (512 full, 256 tiny)."""
        return self.cfg.output_size

    @property
    def num_kp(self) -> int:
        return self.cfg.num_kp

    # -- networks -----------------------------------------------------------------------------------------------

    def appearance(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        """img [B, 3, 256, 256] RGB in [0, 1] -> f_s [B, C, D, H, W] ([B, 32, 16, 64, 64] full)."""
        image = _checked("img", img, (3, IMAGE_SIZE, IMAGE_SIZE))
        return self._run("appearance_extractor", {"image": image})["pred"]

    def motion(self, img: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """img [B, 3, 256, 256] -> pitch, yaw, roll [B, 66] bin logits, t [B, 3], exp [B, 63], scale [B, 1],
        kp [B, 63] (raw outputs, bound by name)."""
        image = _checked("img", img, (3, IMAGE_SIZE, IMAGE_SIZE))
        out = self._run("motion_extractor", {"image": image})
        return {k: out[k] for k in MOTION_OUTPUTS}

    def stitch(self, x_s: torch.Tensor | np.ndarray, x_d: torch.Tensor | np.ndarray) -> torch.Tensor:
        """x_s, x_d [B, 21, 3] -> stitched x_d [B, 21, 3] (float32 on every backend that allows it)."""
        kp_source = _checked("x_s", x_s, (self.num_kp, 3))
        kp_driving = _checked("x_d", x_d, (self.num_kp, 3), batch=kp_source.shape[0])
        return self._run("stitch_network", {"kp_source": kp_source, "kp_driving": kp_driving})["out"]

    def warp(self, f_s: torch.Tensor | np.ndarray, x_s: torch.Tensor | np.ndarray,
             x_d: torch.Tensor | np.ndarray) -> torch.Tensor:
        """f_s [B, C, D, H, W], x_s, x_d [B, 21, 3] -> warped feature [B, 256, 64, 64] (full)."""
        feature_3d = _checked("f_s", f_s, self.feature_shape)
        n = feature_3d.shape[0]
        kp_source = _checked("x_s", x_s, (self.num_kp, 3), batch=n)
        kp_driving = _checked("x_d", x_d, (self.num_kp, 3), batch=n)
        return self._run("warp_network", {"feature_3d": feature_3d, "kp_source": kp_source,
                                          "kp_driving": kp_driving})["out"]

    def decode(self, feature: torch.Tensor | np.ndarray) -> torch.Tensor:
        """warped feature [B, 256, 64, 64] -> image [B, 3, 512, 512] in [0, 1]."""
        d = self.cfg.decoder
        feature = _checked("feature", feature, (d.input_channels, d.feature_size, d.feature_size))
        return self._run("decoder", {"feature": feature})["output"].clamp_(0, 1)

    def warp_decode(self, f_s: torch.Tensor | np.ndarray, x_s: torch.Tensor | np.ndarray,
                    x_d: torch.Tensor | np.ndarray) -> torch.Tensor:
        """f_s, x_s, x_d (stitched) -> image [B, 3, output_size, output_size] in [0, 1]."""
        return self.decode(self.warp(f_s, x_s, x_d))

    def _run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = next(iter(inputs.values())).shape[0]
        step = self.backend.max_batch or n
        if n <= step:
            return self.backend.run(network, inputs)
        # Engines are built for a bounded batch: run larger batches in chunks and concatenate.
        parts = [self.backend.run(network, {k: v[i:i + step] for k, v in inputs.items()}) for i in range(0, n, step)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available here; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    return dev


def _checked(name: str, x: Any, tail: tuple[int, ...], batch: int | None = None) -> torch.Tensor:
    """A float tensor [B, *tail] or a clear ValueError saying what is wrong."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype} (images are float in [0, 1])")
    expected = ("B", *tail)
    if x.dim() != len(expected) or tuple(x.shape[1:]) != tail:
        raise ValueError(f"{name}: expected shape {list(expected)}, got {list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name}: batch {x.shape[0]} does not match the other inputs' batch {batch}")
    return x.float()
