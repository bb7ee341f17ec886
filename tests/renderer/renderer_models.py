"""Shared helpers for the avatar / server tests: the real renderer networks (tiny profile, synthetic weights) and
a synthetic portrait."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np


@cache
def tiny_models() -> Any:
    from services.renderer.models import RendererModels

    return RendererModels.load("synthetic", "tiny", "cpu", "torch")


def face_image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """A smooth synthetic RGB picture (an ellipse 'face' on a gradient), uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w].astype(np.float32)
    img = np.stack([x / w * 200, y / h * 200, np.full_like(x, 90)], axis=-1)
    inside = ((x - w / 2) / (w / 5)) ** 2 + ((y - h / 2) / (h / 3)) ** 2 < 1
    img[inside] = (220, 180, 150)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
