"""Keypoint math shared by the motion generator and the renderer (LivePortrait equation 2).

See docs/model.md §4.5. Every function takes a leading batch axis and exists twice: for numpy
(float32, the reference's numpy path) and for torch (`*_torch`, used inside networks and on the GPU).

- `bin66_to_degree`: 66 pose-bin logits -> degrees (`sum softmax(l)_i * i * 3 - 97.5`, range +-97.5).
- `rotation_matrix`: degrees (pitch, yaw, roll) -> `(Rz . Ry . Rx)^T`, so that `kp @ rot` rotates each row.
- `transform_keypoints`: `scale * (kp @ rot + exp)`, then (tx, ty) added; tz is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

NUM_BINS = 66
NUM_KP = 21

__all__ = [
    "NUM_BINS", "NUM_KP", "bin66_to_degree", "rotation_matrix", "transform_keypoints", "pose_degrees",
    "bin66_to_degree_torch", "rotation_matrix_torch", "transform_keypoints_torch",
]


# ---------------------------------------------------------------------------------------------------------------
# numpy


def bin66_to_degree(logits: np.ndarray) -> np.ndarray:
    """[..., 66] logits -> [...] degrees (float32). Any other last axis (already degrees) is returned unchanged."""
    x = np.asarray(logits)
    if x.ndim == 0 or x.shape[-1] != NUM_BINS:
        return x.astype(np.float32, copy=False)
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)                                   # float32 softmax
    # The reference multiplies by an int64 arange, which numpy promotes to float64; the result is cast back.
    deg = (p * np.arange(NUM_BINS)).sum(axis=-1) * 3 - 97.5
    return deg.astype(np.float32)


def pose_degrees(value: np.ndarray) -> np.ndarray:
    """A pose entry that holds either [n, 66] logits or [n] / [n, 1] degrees -> [n] degrees."""
    v = np.asarray(value, dtype=np.float32)
    if v.ndim >= 1 and v.shape[-1] == NUM_BINS:
        return bin66_to_degree(v).reshape(-1)
    return v.reshape(-1)


def rotation_matrix(pitch: np.ndarray, yaw: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Degrees [n] each -> [n, 3, 3] float32 `(Rz . Ry . Rx)^T`."""
    p, y, r = (np.asarray(a, dtype=np.float32).reshape(-1) / np.float32(180) * np.float32(np.pi)
               for a in (pitch, yaw, roll))
    n = p.shape[0]
    one, zero = np.ones(n, np.float32), np.zeros(n, np.float32)
    cp, sp, cy, sy, cr, sr = np.cos(p), np.sin(p), np.cos(y), np.sin(y), np.cos(r), np.sin(r)
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], axis=1).reshape(n, 3, 3)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], axis=1).reshape(n, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], axis=1).reshape(n, 3, 3)
    return np.ascontiguousarray(np.transpose(rz @ ry @ rx, (0, 2, 1)))


def transform_keypoints(info: Mapping[str, Any]) -> np.ndarray:
    """Motion info (pitch/yaw/roll as [n,66] logits or [n] degrees, t [n,3], exp [n,63], scale [n,1], kp [n,63])
    -> keypoints [n, 21, 3] float32."""
    kp = np.asarray(info["kp"], dtype=np.float32)
    n = kp.shape[0]
    rot = rotation_matrix(pose_degrees(info["pitch"]), pose_degrees(info["yaw"]), pose_degrees(info["roll"]))
    exp = np.asarray(info["exp"], dtype=np.float32).reshape(n, NUM_KP, 3)
    scale = np.asarray(info["scale"], dtype=np.float32).reshape(n, 1, 1)
    t = np.asarray(info["t"], dtype=np.float32).reshape(n, 3)
    out = scale * (kp.reshape(n, NUM_KP, 3) @ rot + exp)
    out[..., :2] += t[:, None, :2]                                          # tz is ignored
    return out.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# torch (imported lazily so that numpy-only users do not pay for torch)


def bin66_to_degree_torch(logits: Any) -> Any:
    """[..., 66] logits tensor -> [...] degrees; any other last axis is returned unchanged."""
    import torch

    if logits.ndim == 0 or logits.shape[-1] != NUM_BINS:
        return logits
    idx = torch.arange(NUM_BINS, dtype=logits.dtype, device=logits.device)
    return (torch.softmax(logits, dim=-1) * idx).sum(dim=-1) * 3 - 97.5


def rotation_matrix_torch(pitch: Any, yaw: Any, roll: Any) -> Any:
    """Degrees [n] each -> [n, 3, 3] `(Rz . Ry . Rx)^T`."""
    import torch

    p, y, r = (a.reshape(-1) / 180 * np.pi for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(p), torch.zeros_like(p)
    n = p.shape[0]
    rx = torch.stack([one, zero, zero, zero, p.cos(), -p.sin(), zero, p.sin(), p.cos()], 1).reshape(n, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], 1).reshape(n, 3, 3)
    rz = torch.stack([r.cos(), -r.sin(), zero, r.sin(), r.cos(), zero, zero, zero, one], 1).reshape(n, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


def transform_keypoints_torch(info: Mapping[str, Any]) -> Any:
    """The torch twin of `transform_keypoints` -> [n, 21, 3]."""
    import torch

    kp = info["kp"]
    n = kp.shape[0]

    def deg(v: Any) -> Any:
        return bin66_to_degree_torch(v).reshape(-1) if v.shape[-1] == NUM_BINS else v.reshape(-1)

    rot = rotation_matrix_torch(deg(info["pitch"]), deg(info["yaw"]), deg(info["roll"]))
    out = info["scale"].reshape(n, 1, 1) * (kp.reshape(n, NUM_KP, 3) @ rot + info["exp"].reshape(n, NUM_KP, 3))
    t = info["t"].reshape(n, 1, 3)
    return torch.cat([out[..., :2] + t[..., :2], out[..., 2:]], dim=-1)
