"""SPADEDecoder (G): warped feature map -> RGB image (docs/model.md §5.6).

A 3x3 conv widens the 256-channel feature to 512, six SPADE residual blocks refine it at 64x64, two more upsample
it to 256x256 (each SPADE is conditioned on the original decoder input, nearest-resized), and a 3x3 conv with a
pixel shuffle produces the 512x512 image. Spectral-normalised convs are folded at load time (see
`blocks.SpectralNormConv2d`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SPADEResnetBlock


@dataclass(frozen=True)
class DecoderConfig:
    upscale: int = 2
    max_features: int = 512
    block_expansion: int = 64
    out_channels: int = 64
    num_down_blocks: int = 2
    num_middle_blocks: int = 6
    spade_hidden: int = 128
    feature_size: int = 64           # spatial size of the input feature (W's output)

    @property
    def input_channels(self) -> int:
        """Channels of the input feature, also the SPADE conditioning channels (label_nc)."""
        return min(self.max_features, self.block_expansion * 2**self.num_down_blocks)

    @property
    def output_size(self) -> int:
        return self.feature_size * 4 * self.upscale      # two x2 upsamplings, then the pixel shuffle

    @classmethod
    def full(cls) -> DecoderConfig:
        return cls()

    @classmethod
    def tiny(cls) -> DecoderConfig:
        # Matches WarpingConfig.tiny(): input [N, 32, 32, 32], output [N, 3, 256, 256].
        return cls(max_features=64, block_expansion=8, out_channels=16, num_middle_blocks=2, spade_hidden=16,
                   feature_size=32)


class SPADEDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DecoderConfig.full()
        ic, hidden = cfg.input_channels, cfg.spade_hidden
        self.fc = nn.Conv2d(ic, 2 * ic, kernel_size=3, padding=1)                 # plain conv, not spectral
        for i in range(cfg.num_middle_blocks):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * ic, 2 * ic, ic, hidden))
        self.up_0 = SPADEResnetBlock(2 * ic, ic, ic, hidden)
        self.up_1 = SPADEResnetBlock(ic, cfg.out_channels, ic, hidden)
        self.up = nn.Upsample(scale_factor=2)
        self.conv_img = nn.Sequential(
            nn.Conv2d(cfg.out_channels, 3 * cfg.upscale**2, kernel_size=3, padding=1),
            nn.PixelShuffle(upscale_factor=cfg.upscale),
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """feature [N, 256, 64, 64] -> output [N, 3, 512, 512] in (0, 1)."""
        seg = feature                                        # SPADE conditioning for every block
        x = self.fc(feature)                                 # [N, 512, 64, 64]
        for i in range(self.cfg.num_middle_blocks):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(self.up(x), seg)                       # [N, 256, 128, 128]
        x = self.up_1(self.up(x), seg)                       # [N, 64, 256, 256]
        x = self.conv_img(F.leaky_relu(x, 0.2))              # [N, 3, 512, 512]
        return torch.sigmoid(x)
