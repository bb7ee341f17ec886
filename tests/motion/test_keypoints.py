"""Golden parity of the shared keypoint math (keypoint_transform case) for numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditto import keypoints as K
from tests.conftest import golden_case

CASE = "keypoint_transform"


@pytest.mark.golden
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_keypoint_transform(backend: str) -> None:
    _, io, _ = golden_case(CASE)
    info = {k: io[k] for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")}
    if backend == "numpy":
        deg = [K.bin66_to_degree(io[k]) for k in ("pitch", "yaw", "roll")]
        rot = K.rotation_matrix(*deg)
        kp = K.transform_keypoints(info)
    else:
        t = {k: torch.from_numpy(v) for k, v in info.items()}
        deg = [K.bin66_to_degree_torch(t[k]).numpy() for k in ("pitch", "yaw", "roll")]
        rot = K.rotation_matrix_torch(*(torch.from_numpy(d) for d in deg)).numpy()
        kp = K.transform_keypoints_torch(t).numpy()
    # numpy sums the bins in float64 like the reference; torch sums in float32 (a few ulp at ~90 degrees)
    deg_tol = 1e-5 if backend == "numpy" else 5e-5
    for name, got in zip(("pitch_deg", "yaw_deg", "roll_deg"), deg, strict=True):
        assert got.shape == io[name].shape
        assert np.max(np.abs(got - io[name])) <= deg_tol, name
    assert np.max(np.abs(rot - io["rot_mat"])) <= 1e-5
    assert kp.shape == (1, 21, 3)
    assert np.max(np.abs(kp - io["kp_transformed"])) <= 1e-5


def test_batched_equals_rowwise_and_degrees_pass_through() -> None:
    rng = np.random.default_rng(0)
    n = 5
    info = {"pitch": 3 * rng.standard_normal((n, 66)), "yaw": 3 * rng.standard_normal((n, 66)),
            "roll": 3 * rng.standard_normal((n, 66)), "t": 0.1 * rng.standard_normal((n, 3)),
            "exp": 0.02 * rng.standard_normal((n, 63)), "scale": 1 + 0.1 * rng.standard_normal((n, 1)),
            "kp": 0.3 * rng.standard_normal((n, 63))}
    info = {k: v.astype(np.float32) for k, v in info.items()}
    whole = K.transform_keypoints(info)
    rows = np.concatenate([K.transform_keypoints({k: v[i:i + 1] for k, v in info.items()}) for i in range(n)])
    np.testing.assert_allclose(whole, rows, atol=1e-6)
    # degrees given directly give the same keypoints as the logits they came from
    as_deg = dict(info, **{k: K.bin66_to_degree(info[k]) for k in ("pitch", "yaw", "roll")})
    np.testing.assert_allclose(K.transform_keypoints(as_deg), whole, atol=1e-6)
    # tz has no effect, tx moves every x
    moved = dict(info, t=info["t"] + np.array([[0.5, 0, 3.0]], np.float32))
    diff = K.transform_keypoints(moved) - whole
    np.testing.assert_allclose(diff[..., 0], 0.5, atol=1e-6)
    np.testing.assert_allclose(diff[..., 1:], 0, atol=1e-6)
