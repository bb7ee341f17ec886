"""Shared pieces of the audio tests: the fake HuBERT of the hubert_windows case and a small random HuBERT export."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class FakeHubert:
    """hubert_windows/case.json fake_session: enc[t] = float32(float64(x[0, 320t:320t+400]) @ W + b), output [T, D]."""

    def __init__(self, W: np.ndarray, b: np.ndarray) -> None:
        self.W, self.b = W.astype(np.float64), b.astype(np.float64)
        self.calls: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        assert x.ndim == 2 and x.shape[0] == 1, x.shape
        self.calls.append(x.copy())
        t = (x.shape[1] - 400) // 320 + 1
        frames = np.stack([x[0, 320 * i:320 * i + 400] for i in range(t)]).astype(np.float64)
        return (frames @ self.W + self.b).astype(np.float32)


def random_fake(seed: int = 0, dim: int = 1024) -> FakeHubert:
    rng = np.random.default_rng(seed)
    return FakeHubert((rng.standard_normal((400, dim)) / 20).astype(np.float32),
                      (0.1 * rng.standard_normal(dim)).astype(np.float32))


def export_small(path: Path, batch_axis: bool = False, seed: int = 0) -> Path:
    from services.audio_encoder.hubert_model import HubertShape, export_onnx, random_hubert

    return export_onnx(random_hubert(HubertShape.tiny(), seed), path, batch_axis=batch_axis)
