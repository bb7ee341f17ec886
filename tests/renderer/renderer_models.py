"""The renderer networks for avatar/server tests: `RendererModels.load('synthetic', 'tiny', 'cpu', 'torch')` when
services/renderer/models.py exists, else the same five real networks (tiny profile, golden-init v1 weights)
behind the same interface. Not a mock: every call runs the real network code."""

from __future__ import annotations

from typing import Any

import numpy as np


class _NetworkSet:
    """appearance / motion / stitch / warp_decode over the real networks, as models.py exposes them."""

    def __init__(self, seed: int = 0):
        import torch

        from ditto.weights import golden_state_dict
        from services.renderer.networks.appearance_extractor import AppearanceConfig, AppearanceFeatureExtractor
        from services.renderer.networks.decoder import DecoderConfig, SPADEDecoder
        from services.renderer.networks.motion_extractor import MotionConfig, MotionExtractor
        from services.renderer.networks.stitching_network import StitchingConfig, StitchingNetwork
        from services.renderer.networks.warping_network import WarpingConfig, WarpingNetwork

        torch.manual_seed(seed)
        self.F = AppearanceFeatureExtractor(AppearanceConfig.tiny())
        self.M = MotionExtractor(MotionConfig.tiny())
        self.S = StitchingNetwork(StitchingConfig.tiny())
        self.W = WarpingNetwork(WarpingConfig.tiny())
        self.G = SPADEDecoder(DecoderConfig.tiny())
        for i, net in enumerate((self.F, self.M, self.S, self.W, self.G)):
            net.load_state_dict(golden_state_dict(net, seed + i))
            net.eval()
        self.device = "cpu"

    def appearance(self, img: Any) -> Any:
        return self.F(img)

    def motion(self, img: Any) -> dict[str, Any]:
        keys = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
        return dict(zip(keys, self.M(img), strict=True))

    def stitch(self, x_s: Any, x_d: Any) -> Any:
        return self.S(x_s, x_d)

    def warp_decode(self, f_s: Any, x_s: Any, x_d: Any) -> Any:
        return self.G(self.W(f_s, x_s, x_d)).clamp(0, 1)  # [B, 3, S, S] in [0, 1] (S = 256 tiny, 512 full)


_CACHE: dict[str, Any] = {}


def tiny_models() -> Any:
    if "m" not in _CACHE:
        try:
            from services.renderer.models import RendererModels  # type: ignore[import-not-found]
        except ImportError:
            _CACHE["m"] = _NetworkSet()
        else:
            _CACHE["m"] = RendererModels.load("synthetic", "tiny", "cpu", "torch")
    return _CACHE["m"]


def face_image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """A smooth synthetic RGB picture (an ellipse 'face' on a gradient), uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w].astype(np.float32)
    img = np.stack([x / w * 200, y / h * 200, np.full_like(x, 90)], axis=-1)
    inside = ((x - w / 2) / (w / 5)) ** 2 + ((y - h / 2) / (h / 3)) ** 2 < 1
    img[inside] = (220, 180, 150)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
