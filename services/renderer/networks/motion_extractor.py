"""MotionExtractor (M): image -> canonical keypoints, pose bins, translation, expression, scale (docs/model.md §5.3).

A ConvNeXt-V2 backbone (tiny: depths 3,3,9,3, dims 96..768) with seven linear heads on the pooled feature. All
keys carry the `detector.` prefix of the official module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import ConvNeXtV2Block, LayerNormChannelsFirst

# Output order of the official forward, of the exported ONNX graph and of `MotionExtractor.forward`.
MOTION_OUTPUTS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


@dataclass(frozen=True)
class MotionConfig:
    in_chans: int = 3
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    num_kp: int = 21
    num_bins: int = 66

    @classmethod
    def full(cls) -> MotionConfig:
        return cls()

    @classmethod
    def tiny(cls) -> MotionConfig:
        return cls(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))


class ConvNeXtV2(nn.Module):
    """Backbone plus heads. Registration order fixes the key order: downsample_layers, stages, norm, heads."""

    def __init__(self, cfg: MotionConfig) -> None:
        super().__init__()
        dims = cfg.dims
        self.downsample_layers = nn.ModuleList()
        # Stem: 4x4/4 "patchify" conv, then LayerNorm. Later stages: LayerNorm first, then 2x2/2 conv.
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(cfg.in_chans, dims[0], kernel_size=4, stride=4), LayerNormChannelsFirst(dims[0])))
        for i in range(1, len(dims)):
            self.downsample_layers.append(nn.Sequential(
                LayerNormChannelsFirst(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtV2Block(dim) for _ in range(depth))) for dim, depth in zip(dims, cfg.depths,
                                                                                                 strict=True))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        # Heads registered kp, scale, pitch, yaw, roll, t, exp (key order), returned in MOTION_OUTPUTS order.
        self.fc_kp = nn.Linear(dims[-1], 3 * cfg.num_kp)
        self.fc_scale = nn.Linear(dims[-1], 1)
        self.fc_pitch = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_yaw = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_roll = nn.Linear(dims[-1], cfg.num_bins)
        self.fc_t = nn.Linear(dims[-1], 3)
        self.fc_exp = nn.Linear(dims[-1], 3 * cfg.num_kp)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))                                  # 64x64 -> 32 -> 16 -> 8 (256 input)
        z = self.norm(x.mean([-2, -1]))                         # global average pool before the final norm
        return (self.fc_pitch(z), self.fc_yaw(z), self.fc_roll(z), self.fc_t(z), self.fc_exp(z),
                self.fc_scale(z), self.fc_kp(z))


class MotionExtractor(nn.Module):
    def __init__(self, cfg: MotionConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or MotionConfig.full()
        self.detector = ConvNeXtV2(cfg)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """image [N, 3, 256, 256] in [0, 1] -> (pitch, yaw, roll [N,66] logits, t [N,3], exp [N,63], scale [N,1],
        kp [N,63]), raw: no softmax, no offset."""
        return self.detector(image)
