"""StitchingNetwork (S): an MLP that corrects the driving keypoints so the head stays attached to the shoulders.

See docs/model.md §5.4. Input [source | driving] keypoints flattened to 126 values, output 65 deltas:
63 per-keypoint offsets plus one (tx, ty) shift shared by all keypoints. Unlike upstream LivePortrait, Ditto's forward
applies the deltas and returns the stitched driving keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StitchingConfig:
    num_kp: int = 21
    hidden_sizes: tuple[int, ...] = (128, 128, 64)

    @property
    def input_size(self) -> int:
        return 2 * 3 * self.num_kp        # [x_s | x_d], each flattened (kp0.x, kp0.y, kp0.z, kp1.x, ...)

    @property
    def output_size(self) -> int:
        return 3 * self.num_kp + 2        # per-keypoint deltas, then (tx, ty)

    @classmethod
    def full(cls) -> StitchingConfig:
        return cls()

    @classmethod
    def tiny(cls) -> StitchingConfig:
        return cls(hidden_sizes=(32, 32, 16))


class StitchingNetwork(nn.Module):
    def __init__(self, cfg: StitchingConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or StitchingConfig.full()
        layers: list[nn.Module] = []
        width = cfg.input_size
        for hidden in cfg.hidden_sizes:
            # Linear at even indices, ReLU at odd ones: keys are mlp.0/2/4/6 as in the official checkpoint.
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Linear(width, cfg.output_size))
        self.mlp = nn.Sequential(*layers)

    def deltas(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """The raw MLP output [N, 3K+2] (source first, driving second)."""
        n = kp_source.shape[0]
        z = torch.cat([kp_source.reshape(n, -1), kp_driving.reshape(n, -1)], dim=1)  # [N, 6K]
        return self.mlp(z)

    def forward(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """x_s, x_d [N, K, 3] -> stitched x_d [N, K, 3]; inputs are not modified."""
        n, k = kp_driving.shape[0], self.cfg.num_kp
        delta = self.deltas(kp_source, kp_driving)              # [N, 3K+2]
        delta_kp = delta[:, : 3 * k].reshape(n, k, 3)
        delta_txy = delta[:, 3 * k:].reshape(n, 1, 2)
        # out = x_d + delta_kp, then (tx, ty) added to x and y of every keypoint; z gets only delta_kp.
        # Written with cat instead of an in-place slice update so the ONNX graph stays a plain dataflow graph.
        out = kp_driving + delta_kp
        return torch.cat([out[..., :2] + delta_txy, out[..., 2:]], dim=-1)
