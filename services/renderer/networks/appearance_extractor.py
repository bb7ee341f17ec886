"""AppearanceFeatureExtractor (F): source image -> 3-D appearance feature volume (docs/model.md §5.2).

Runs once per avatar. 2-D encoder (SameBlock2d, two DownBlock2d, 1x1 conv), a reshape of channels into
(channels, depth), then pre-activation 3-D residual blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import DownBlock2d, ResBlock3d, SameBlock2d


@dataclass(frozen=True)
class AppearanceConfig:
    image_channel: int = 3
    block_expansion: int = 64
    num_down_blocks: int = 2
    max_features: int = 512
    reshape_channel: int = 32
    reshape_depth: int = 16
    num_resblocks: int = 6
    image_size: int = 256

    @property
    def feature_shape(self) -> tuple[int, int, int, int]:
        """(C, D, H, W) of f_s for one image."""
        side = self.image_size // 2**self.num_down_blocks
        return (self.reshape_channel, self.reshape_depth, side, side)

    @classmethod
    def full(cls) -> AppearanceConfig:
        return cls()

    @classmethod
    def tiny(cls) -> AppearanceConfig:
        # One more down block than the official network: a 32x32 volume keeps W and G cheap on CPU.
        return cls(block_expansion=8, num_down_blocks=3, max_features=32, reshape_channel=8, reshape_depth=4,
                   num_resblocks=2)


class AppearanceFeatureExtractor(nn.Module):
    def __init__(self, cfg: AppearanceConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or AppearanceConfig.full()
        if cfg.reshape_channel * cfg.reshape_depth != cfg.max_features:
            raise ValueError("reshape_channel * reshape_depth must equal max_features")
        self.first = SameBlock2d(cfg.image_channel, cfg.block_expansion)
        self.down_blocks = nn.ModuleList()
        for i in range(cfg.num_down_blocks):
            in_features = min(cfg.max_features, cfg.block_expansion * 2**i)
            out_features = min(cfg.max_features, cfg.block_expansion * 2 ** (i + 1))
            self.down_blocks.append(DownBlock2d(in_features, out_features))
        self.second = nn.Conv2d(out_features, cfg.max_features, kernel_size=1)
        # Children are named 3dr0..3drN (not 0..N): keys like resblocks_3d.3dr0.conv1.weight.
        self.resblocks_3d = nn.Sequential()
        for i in range(cfg.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(cfg.reshape_channel))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image [N, 3, 256, 256] RGB in [0, 1] -> f_s [N, 32, 16, 64, 64] (full profile)."""
        out = self.first(image)                                        # [N, 64, 256, 256]
        for block in self.down_blocks:
            out = block(out)                                           # [N, 256, 64, 64]
        out = self.second(out)                                         # [N, 512, 64, 64]
        n, _, h, w = out.shape
        out = out.view(n, self.cfg.reshape_channel, self.cfg.reshape_depth, h, w)   # channel k -> (k // 16, k % 16)
        return self.resblocks_3d(out)                                  # [N, 32, 16, 64, 64]
