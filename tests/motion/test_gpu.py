"""CUDA path of the MotionDiT: the same guided one-step results as the CPU (needs a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from services.motion_generator.models import TorchBackend, synthetic_motion_decoder


@pytest.mark.gpu
def test_cuda_one_step_matches_cpu() -> None:
    cpu = TorchBackend(synthetic_motion_decoder("full", seed=2), "cpu")
    gpu = TorchBackend(synthetic_motion_decoder("full", seed=2), "cuda")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 80, 265)).astype(np.float32)
    cf = rng.standard_normal((4, 265)).astype(np.float32)
    cond = rng.standard_normal((4, 80, 1103)).astype(np.float32)
    t = np.array([999, 600, 100, 0], np.int64)
    for a, b in zip(cpu.one_step(x, cf, cond, t), gpu.one_step(x, cf, cond, t), strict=True):
        # TF32 may be on for matmuls on Ampere+: allow its precision
        assert np.max(np.abs(a - b)) / max(1.0, np.abs(a).max()) <= 5e-3
